"""REST users against wrk and hey, on the same server in one run: requests/s and client CPU per request.

The reference server runs on core 0 and each client on core 1 (taskset), one after another, with
the same concurrency (8 connections) and the same request bodies, which the suite's own encoders
write once and hand to every client. Client CPU per request is marginal: the user+system time (getrusage of
the finished child) of a run minus that of a 1 s run of the same client, divided by the difference in
completed requests, so start-up and one-time preparation are not counted. Each cell runs --repeats
times; the table shows medians. A second table compares KServe v2 REST with JSON tensors against
the binary-data extension for a [1,3,224,224] FP32 tensor (602 KB raw).

    python bench/rest_peers.py [--duration 8] [--repeats 3]

Not part of `make test`. Installs Debian's wrk and hey if missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ovms_users.options import BenchOptions  # noqa: E402
from ovms_users.workload import Workload  # noqa: E402
from refserver.launcher import RefServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 8
WRK_LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"
for k, v in string.gmatch(os.getenv("HEADERS"), "([^|]+)=([^|]+)") do wrk.headers[k] = v end
"""


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 120) -> tuple[str, float]:
    """Run a client on core 1; its output and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout + proc.stderr, cpu


def wrk(url: str, body: bytes, headers: dict, seconds: int, tmp: Path) -> tuple[int, float, float]:
    (tmp / "body").write_bytes(body)
    (tmp / "post.lua").write_text(WRK_LUA)
    out, cpu = run_child(["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", str(tmp / "post.lua"),
                          url], env={"BODY_FILE": str(tmp / "body"),
                                     "HEADERS": "|".join(f"{k}={v}" for k, v in headers.items())})
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"wrk saw {non2xx.group(1)} failed responses:\n{out}")
    return total, cpu, total / seconds


def hey(url: str, body: bytes, headers: dict, seconds: int, tmp: Path) -> tuple[int, float, float]:
    (tmp / "body").write_bytes(body)
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(CONNECTIONS), "-m", "POST", "-D", str(tmp / "body")]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"] if k.lower() != "content-type" else ["-T", v]
    out, cpu = run_child(cmd + [url])
    # hey counts connection errors into requests/s: count the 200 responses only
    statuses = out[out.find("Status code distribution:"):]   # (the latency histogram also has [n] counts)
    ok = re.search(r"\[200\]\s+(\d+) responses", statuses)
    if not ok or re.search(r"\[(?!200)\d{3}\]", statuses) or "Error distribution" in out:
        raise SystemExit(f"hey saw responses other than 200:\n{out}")
    return int(ok.group(1)), cpu, int(ok.group(1)) / seconds


def locust(host: str, api: str, args: list[str], seconds: int) -> tuple[int, float, float]:
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "ovms.py"), "--host", host,
           "--headless", "-u", str(CONNECTIONS), "-r", str(CONNECTIONS), "-t", f"{seconds}s", "--json",
           "--skip-log-setup", "--api", api, *args]
    out, cpu = run_child(cmd, env={"PYTHONPATH": str(ROOT)})
    stats = json.loads(out[out.find("["):out.rfind("]") + 1])
    total = sum(e["num_requests"] for e in stats)
    if sum(e["num_failures"] for e in stats):
        raise SystemExit(f"locust saw failures:\n{out[-3000:]}")
    return total, cpu, total / seconds


def request_for(server: RefServer, api: str, model: str, extra: dict) -> tuple[str, bytes, dict]:
    opts = BenchOptions.parse({"api": api, "model_name": model, **extra})
    w = Workload.build(opts, server.rest_url)
    body, headers = w.requests[0]
    return f"{server.rest_url}{w.path}", body, headers


def median_cells(fn, repeats: int, seconds: int) -> tuple[float, float]:
    """Median req/s of runs of ``seconds``, and median marginal CPU per request: a 1 s run of the same client
    is subtracted, so start-up and one-time preparation (Python's imports, the dataset) do not count."""
    rates, cpus = [], []
    for _ in range(repeats):
        total, cpu, rate = fn(seconds)
        short_total, short_cpu, _ = fn(1)
        rates.append(rate)
        cpus.append((cpu - short_cpu) / max(total - short_total, 1) * 1e6)
        time.sleep(0.5)
    return statistics.median(rates), statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (shutil.which("wrk") and shutil.which("hey")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "hey"], check=True, stdout=subprocess.DEVNULL)
    d, r = args.duration, args.repeats
    small, large = [], []
    with RefServer(cpu=0) as srv, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for api, label, extra in (("tfs-rest", "TFS REST (columnar JSON)", {}),
                                  ("kfs-rest", "KServe v2 REST (JSON)", {"kfs_data": "json"})):
            url, body, headers = request_for(srv, api, "dummy", extra)
            flags = ["--model_name", "dummy"] + [f"--{k}={v}" for k, v in extra.items()]
            for tool, fn in (("wrk", partial(wrk, url, body, headers, tmp=tmp)),
                             ("hey", partial(hey, url, body, headers, tmp=tmp)),
                             ("ovms_users (Locust)", partial(locust, srv.rest_url, api, flags))):
                rate, cpu_us = median_cells(fn, r, d)
                small.append((label, tool, rate, cpu_us))
                print(f"{label:26} {tool:20} {rate:8.0f} req/s {cpu_us:7.0f} us CPU/request", flush=True)
        for mode in ("json", "binary"):
            url, body, headers = request_for(srv, "kfs-rest", "resnet_dyn", {"kfs_data": mode})
            flags = ["--model_name", "resnet_dyn", f"--kfs_data={mode}"]
            for tool, fn in (("wrk", partial(wrk, url, body, headers, tmp=tmp)),
                             ("ovms_users (Locust)", partial(locust, srv.rest_url, "kfs-rest", flags))):
                rate, cpu_us = median_cells(fn, r, d)
                large.append((mode, len(body), tool, rate, cpu_us))
                print(f"resnet {mode:6} {len(body):8} B {tool:20} {rate:8.0f} req/s {cpu_us:8.0f} us CPU/request",
                      flush=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    print(f"\nserver on core 0, client on core 1 ({model.group(1) if model else 'unknown CPU'}); {CONNECTIONS} "
          f"connections; {d} s runs; median of {r}.\n")
    print("| API | client | req/s | client CPU per request (us) | CPU vs wrk |")
    print("|---|---|---|---|---|")
    for label, tool, rate, cpu_us in small:
        ref = next(c for lbl, t, _, c in small if lbl == label and t == "wrk")
        print(f"| {label} | {tool} | {rate:.0f} | {cpu_us:.0f} | {cpu_us / ref:.1f}x |")
    print("\n| KServe v2 REST, [1,3,224,224] FP32 | body bytes | client | req/s | client CPU per request (us) |")
    print("|---|---|---|---|---|")
    for mode, size, tool, rate, cpu_us in large:
        print(f"| {mode} | {size} | {tool} | {rate:.0f} | {cpu_us:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
