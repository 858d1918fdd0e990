"""gRPC load clients side by side: client CPU per request, peak RSS and rate, small and large tensors.

The reference server runs on core 0 and each client on core 1 (taskset), one after another, against
the same server in the same run:

- h2load (C, HTTP/2) with a pre-framed request body, 8 streams in flight;
- the plain-grpcio sequential client (bench/plain_grpc_client.py), the stand-in for the OVMS
  benchmark client: one blocking call in flight, the request serialized once;
- the suite's users (`locust -f locustfiles/ovms.py`, 8 users), on the TFS and KServe v2 APIs.

Small: a [1,4] FP32 tensor (model `dynamic`); large: [1,3,224,224] FP32, 602 KB (model `resnet`).
Client CPU per request is marginal: the user+system time of a run (wait4 on that child) minus that
of a 1 s run of the same client, divided by the difference in completed requests, so start-up and
one-time preparation do not count; peak RSS is the client's VmHWM, read every 50 ms. Each cell runs
--repeats times; the table shows medians, and ratios against h2load and against the plain client.
A last table compares the mean latency at concurrency 1 (h2load -c1 -m1 against one user of the
suite).

    python bench/grpc_clients.py [--duration 8] [--repeats 3] [--out bench/grpc_clients.md]

Not part of `make test`. Installs Debian's nghttp2-client (h2load) if missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plain_grpc_client import request  # noqa: E402
from refserver_h2load import ensure_tools, grpc_frame  # noqa: E402

from refserver.launcher import RefServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 8
SIZES = {"small": ("dynamic", "x", [1, 4]), "large": ("resnet", "0", [1, 3, 224, 224])}


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 180) -> tuple[str, float, float]:
    """Run a client on core 1: its output, CPU seconds (user+system) and peak RSS in MB, from wait4."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
        deadline, peak = time.monotonic() + timeout, 0.0
        while True:
            peak = max(peak, _high_water_mb(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{cmd[0]} did not finish in {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime, peak


def _high_water_mb(pid: int) -> float:
    """The process's peak RSS so far (VmHWM). Not ru_maxrss: that one keeps the forked Python parent's size
    from before the exec, about 67 MB here, whatever the client is."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def h2load(target: str, api: str, size: str, seconds: float, tmp: Path, streams: int = IN_FLIGHT) -> dict:
    model, name, shape = SIZES[size]
    method, body = request(api, model, name, shape)
    (tmp / "body").write_bytes(grpc_frame(body))
    out, cpu, rss = run_child(["h2load", "-c", "1", "-m", str(streams), "-D", str(max(1, round(seconds))),
                               "-d", str(tmp / "body"), "-H", "content-type: application/grpc", "-H", "te: trailers",
                               f"http://{target}{method}"])
    done = int(re.search(r"(\d+) succeeded", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {"requests": done, "cpu": cpu, "rss": rss, "mean_s": _seconds(mean.group(1)) if mean else None}


def _seconds(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))
    return value / 1e6 if text.endswith("us") else value / 1e3 if text.endswith("ms") else value


def plain(target: str, api: str, size: str, seconds: float, _tmp: Path) -> dict:
    model, name, shape = SIZES[size]
    out, cpu, rss = run_child([sys.executable, str(ROOT / "bench" / "plain_grpc_client.py"), "--target", target,
                               "--api", api, "--model", model, "--input", name, "--shape", *map(str, shape),
                               "--duration", str(seconds)])
    doc = json.loads(out.strip().splitlines()[-1])
    return {"requests": doc["requests"], "cpu": cpu, "rss": rss, "mean_s": doc["mean_latency_s"]}


def suite(target: str, api: str, size: str, seconds: float, tmp: Path, users: int = IN_FLIGHT) -> dict:
    model, _name, shape = SIZES[size]
    result = tmp / "result.json"
    extra = ["--shape", " ".join(map(str, shape))] if model == "dynamic" else []
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "ovms.py"), "--host", target,
           "--headless", "-u", str(users), "-r", str(users), "-t", f"{max(1, round(seconds))}s", "--only-summary",
           "--skip-log-setup", "--api", api, "--model_name", model, "--result_file", str(result),
           "--status_line", "off", *extra]
    _out, cpu, rss = run_child(cmd, env={"PYTHONPATH": str(ROOT)})
    stats = json.loads(result.read_text())["statistics"]
    if stats["fail_batches"]:
        raise SystemExit(f"the suite's users saw {stats['fail_batches']} failures")
    return {"requests": stats["total_batches"], "cpu": cpu, "rss": rss, "mean_s": stats["mean_latency"]}


def cell(fn, target: str, api: str, size: str, seconds: float, repeats: int, tmp: Path) -> dict:
    """Medians over repeats: req/s, marginal CPU per request (us), peak RSS (MB)."""
    rates, cpus, rsss = [], [], []
    for _ in range(repeats):
        long = fn(target, api, size, seconds, tmp)
        short = fn(target, api, size, 1, tmp)
        rates.append(long["requests"] / seconds)
        cpus.append((long["cpu"] - short["cpu"]) / max(long["requests"] - short["requests"], 1) * 1e6)
        rsss.append(long["rss"])
        time.sleep(0.3)
    return {"rate": statistics.median(rates), "cpu_us": statistics.median(cpus), "rss_mb": max(rsss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "grpc_clients.md"))
    args = ap.parse_args()
    ensure_tools()
    rows, latency_rows = [], []
    with RefServer(cpu=0) as srv, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        target = srv.grpc_address
        for size in ("small", "large"):
            for api in ("kfs", "tfs"):
                cells = {name: cell(fn, target, api, size, args.duration, args.repeats, tmp)
                         for name, fn in (("h2load", h2load), ("plain grpcio", plain), ("ovms users", suite))}
                for name, c in cells.items():
                    rows.append((size, api, name, c, cells["h2load"], cells["plain grpcio"]))
                    print(f"{size} {api} {name}: {c['rate']:.0f} req/s, {c['cpu_us']:.0f} us CPU/request, "
                          f"{c['rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        for api in ("kfs", "tfs"):
            means = {"h2load": [], "ovms users": []}
            for _ in range(args.repeats):
                means["h2load"].append(h2load(target, api, "small", args.duration, tmp, streams=1)["mean_s"])
                means["ovms users"].append(suite(target, api, "small", args.duration, tmp, users=1)["mean_s"])
            latency_rows.append((api, statistics.median(means["h2load"]), statistics.median(means["ovms users"])))
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, server on "
             f"core 0, client on core 1, {args.duration:g} s runs, median of {args.repeats}.", "",
             "| size | API | client | req/s | client CPU us/request | vs h2load | vs plain grpcio | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for size, api, name, c, h2, pl in rows:
        lines.append(f"| {size} | {api} | {name} | {c['rate']:.0f} | {c['cpu_us']:.0f} | "
                     f"{c['cpu_us'] / h2['cpu_us']:.2f}x | {c['cpu_us'] / pl['cpu_us']:.2f}x | {c['rss_mb']:.0f} |")
    lines += ["", "Mean latency at concurrency 1, small tensor:", "",
              "| API | h2load us | ovms users us | difference us |", "|---|---|---|---|"]
    for api, h2_mean, suite_mean in latency_rows:
        lines.append(f"| {api} | {h2_mean * 1e6:.0f} | {suite_mean * 1e6:.0f} | {(suite_mean - h2_mean) * 1e6:+.0f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
