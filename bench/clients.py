"""The client-cost targets, measured side by side in one run: the suite's users against peers, on one server.

    .venv/bin/python bench/clients.py [--duration 8] [--repeats 3] [--only grpc,rest,rss,latency,scaling]

writes bench/clients.md (``--out`` for another file): one table per target, with medians, ratios, the
target and whether it is met, the machine and the conditions. Not part of `make test`; about 25
minutes with the defaults on 2 cores.

Every server runs on core 0 and every client on core 1 (taskset), one after another. The suite is
driven only through its command line (``python -m locust -f locustfiles/ovms.py ...``), so it is
measured as it is at run time. The peers:

- h2load (C, HTTP/2; Debian's nghttp2-client) with the gRPC-framed request, 8 streams in flight;
- the plain-grpcio sequential client (bench/plain_grpc_client.py), the stand-in for the OVMS client;
- Locust + grpcio under gevent, the documented way (bench/peers/locust_grpc_documented.py), and the
  same user sending a request serialized once (bench/peers/locust_grpc_bytes.py);
- wrk and hey (Debian) for REST, with the suite's own request bodies;
- nginx (Debian) as a server far cheaper per request than any client, for the --processes scaling.

Groups (``--only``): grpc (CPU per request, small and large tensors), rss (64 users), latency
(concurrency 1), rest, scaling (``--processes``). Client CPU per request is marginal: the CPU of a
run minus that of a 1 s run of the same client, divided by the difference in completed requests (see
bench/harness.py). Installs nghttp2-client, wrk, hey and nginx with apt-get if they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    CLIENT_CPU,
    ROOT,
    SERVER_CPU,
    BenchError,
    CpuQuota,
    Sample,
    become_subreaper,
    cell,
    ensure_tools,
    free_port,
    grpc_frame,
    machine,
    pin_self,
    proc_children,
    proc_cpu,
    run_pinned,
    wait_port,
)
from plain_grpc_client import request  # noqa: E402

from refserver.launcher import RefServer, RefServerError  # noqa: E402

GROUPS = ("grpc", "rss", "latency", "rest", "scaling")
IN_FLIGHT = 8
RSS_USERS = 64
SCALING_USERS = 32
SIZES = {"small": ("dynamic", "x", [1, 4]), "large": ("resnet", "0", [1, 3, 224, 224])}
PEERS = ROOT / "bench" / "peers"
LOCUSTFILE = ROOT / "locustfiles" / "ovms.py"
SUITE = "ovms users (suite)"
DOCUMENTED = "Locust + grpcio, documented"
BYTES = "Locust + grpcio, bytes sent"
PLAIN = "plain grpcio (sequential)"
LIMITS = {"small_vs_plain": 0.6, "small_vs_h2load": 4.0, "large_vs_h2load": 1.2, "rss_mb": 120.0,
          "latency_us": 50.0, "rest_vs_peer": 1.5, "scaling_per_n": 0.9}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def secs(seconds: float) -> int:
    return max(1, round(seconds))


# ---------------------------------------------------------------- clients

def h2load(target: str, api: str, size: str, seconds: float, tmp: Path, streams: int = IN_FLIGHT) -> Sample:
    model, name, shape = SIZES[size]
    method, body = request(api, model, name, shape)
    (tmp / "h2load.body").write_bytes(grpc_frame(body))
    run = run_pinned(["h2load", "-c", "1", "-m", str(streams), "-D", str(secs(seconds)), "-d", str(tmp / "h2load.body"),
                      "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{target}{method}"],
                     timeout=seconds + 60)
    done = re.search(r"(\d+) succeeded, (\d+) failed", run.output)
    if not done:
        raise BenchError(f"cannot read h2load's output: {run.output[-500:]}")
    if int(done.group(2)):
        raise BenchError(f"h2load saw {done.group(2)} failed requests")
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", run.output)
    return Sample(int(done.group(1)), secs(seconds), run.cpu, run.rss_mb, _seconds(mean.group(1)) if mean else None)


def _seconds(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))
    return value / 1e6 if text.endswith("us") else value / 1e3 if text.endswith("ms") else value


def plain(target: str, api: str, size: str, seconds: float, _tmp: Path) -> Sample:
    model, name, shape = SIZES[size]
    run = run_pinned([sys.executable, str(ROOT / "bench" / "plain_grpc_client.py"), "--target", target, "--api", api,
                      "--model", model, "--input", name, "--shape", *map(str, shape), "--duration", str(seconds)],
                     timeout=seconds + 60, ok_codes=(0,))
    doc = json.loads(run.output.strip().splitlines()[-1])
    return Sample(doc["requests"], seconds, run.cpu, run.rss_mb, doc["mean_latency_s"])


def locust_peer(locustfile: str, target: str, api: str, size: str, seconds: float, tmp: Path,
                users: int = IN_FLIGHT) -> Sample:
    """One of the Locust gRPC peers (bench/peers/), headless, with Locust's --json statistics."""
    model, name, shape = SIZES[size]
    run = run_pinned([sys.executable, "-m", "locust", "-f", str(PEERS / locustfile), "--host", target, "--headless",
                      "-u", str(users), "-r", str(users), "-t", f"{secs(seconds)}s", "--json", "--skip-log-setup",
                      "--stop-timeout", "10"],
                     env={"BENCH_API": api, "BENCH_MODEL": model, "BENCH_INPUT": name,
                          "BENCH_SHAPE": " ".join(map(str, shape)), "PYTHONPATH": str(ROOT)},
                     timeout=seconds + 90, cwd=tmp)
    out = run.output
    try:
        start = out.find("[\n") if "[\n" in out else out.index("[]")
        stats = json.loads(out[start:out.rfind("]") + 1])
    except ValueError:
        raise BenchError(f"cannot read the Locust peer's --json output: {out[-500:]}") from None
    total = sum(e["num_requests"] for e in stats)
    fails = sum(e["num_failures"] for e in stats)
    if fails:
        raise BenchError(f"{locustfile} saw {fails} failed requests of {total}")
    mean = sum(e["total_response_time"] for e in stats) / max(total, 1) / 1e3
    return Sample(total, secs(seconds), run.cpu, run.rss_mb, mean)


def suite(host: str, api: str, model: str, seconds: float, tmp: Path, users: int = IN_FLIGHT,
          flags: tuple[str, ...] = (), processes: int = 0, cpus: str = str(CLIENT_CPU),
          quota: CpuQuota | None = None) -> Sample:
    """The suite's users through their command line; counts and mean latency from its JSON result."""
    result = tmp / "result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless", "-u", str(users),
           "-r", str(users), "-t", f"{secs(seconds)}s", "--only-summary", "--skip-log-setup", "--api", api,
           "--model_name", model, "--result_file", str(result), "--status_line", "off", *flags]
    if processes:
        port = str(free_port())
        cmd += ["--processes", str(processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                "--master-host", "127.0.0.1", "--master-port", port]
    run = run_pinned(cmd, cpus=cpus, env={"PYTHONPATH": str(ROOT)}, timeout=seconds + 120, cwd=tmp, cgroup=quota)
    if not result.exists():
        raise BenchError(f"the suite wrote no result file (exit code {run.returncode}): {run.output[-800:]}")
    stats = json.loads(result.read_text())["statistics"]
    if stats["fail_batches"]:
        raise BenchError(f"the suite's users saw {stats['fail_batches']} failed requests of {stats['total_batches']}")
    sample = Sample(stats["total_batches"], secs(seconds), run.cpu, run.rss_mb, stats.get("mean_latency"))
    sample.extra["procs"] = [(p.cpu, p.rss_mb) for p in run.procs.values()]   # root (master) first
    sample.extra["load_s"] = stats.get("total_duration") or secs(seconds)      # the suite's own load window
    return sample


def suite_small_flags(model: str, shape: list[int]) -> tuple[str, ...]:
    return ("--shape", " ".join(map(str, shape))) if model == "dynamic" else ()


WRK_LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"
for k, v in string.gmatch(os.getenv("HEADERS"), "([^|]+)=([^|]+)") do wrk.headers[k] = v end
"""


def wrk(url: str, body: bytes, headers: dict, seconds: float, tmp: Path) -> Sample:
    (tmp / "rest.body").write_bytes(body)
    (tmp / "post.lua").write_text(WRK_LUA)
    run = run_pinned(["wrk", "-t", "1", "-c", str(IN_FLIGHT), "-d", f"{secs(seconds)}s", "-s", str(tmp / "post.lua"),
                      url],
                     env={"BODY_FILE": str(tmp / "rest.body"),
                          "HEADERS": "|".join(f"{k}={v}" for k, v in headers.items())}, timeout=seconds + 60)
    total = re.search(r"(\d+) requests in", run.output)
    if not total:
        raise BenchError(f"cannot read wrk's output: {run.output[-500:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", run.output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", run.output)
    if bad or (sock and sum(map(int, sock.groups()))):   # timeouts (slow replies, 2 s) are not failures
        raise BenchError(f"wrk saw failed requests: {(bad or sock).group(0)}")
    mean = re.search(r"Latency\s+(\S+)", run.output)
    return Sample(int(total.group(1)), secs(seconds), run.cpu, run.rss_mb, _seconds(mean.group(1)) if mean else None)


def hey(url: str, body: bytes, headers: dict, seconds: float, tmp: Path) -> Sample:
    (tmp / "rest.body").write_bytes(body)
    cmd = ["hey", "-z", f"{secs(seconds)}s", "-c", str(IN_FLIGHT), "-m", "POST", "-D", str(tmp / "rest.body")]
    for k, v in headers.items():
        cmd += ["-T", v] if k.lower() == "content-type" else ["-H", f"{k}: {v}"]
    run = run_pinned(cmd + [url], timeout=seconds + 60)
    # hey counts connection errors into requests/s: count the 200 responses only
    statuses = run.output[run.output.find("Status code distribution:"):]
    ok = re.search(r"\[200\]\s+(\d+) responses", statuses)
    if not ok or re.search(r"\[(?!200)\d{3}\]", statuses) or "Error distribution" in run.output:
        raise BenchError(f"hey saw responses other than 200: {run.output[-500:]}")
    mean = re.search(r"Average:\s+([\d.]+) secs", run.output)
    return Sample(int(ok.group(1)), secs(seconds), run.cpu, run.rss_mb, float(mean.group(1)) if mean else None)


def rest_request(srv: RefServer, api: str, model: str, extra: dict) -> tuple[str, bytes, dict, str]:
    """(url, body, headers, origin): the suite's own first request, encoded by its Workload (the same bytes
    its users send); if that cannot be imported or built (the suite being changed), an equivalent body."""
    try:
        from ovms_users.options import BenchOptions
        from ovms_users.workload import Workload

        w = Workload.build(BenchOptions.parse({"api": api, "model_name": model, **extra}), srv.rest_url)
        body, headers = w.requests[0]
        return f"{srv.rest_url}{w.path}", body, dict(headers), "the suite's encoder"
    except Exception as exc:   # noqa: BLE001 - any failure: fall back, and say so in the report
        log(f"  (the suite's REST encoder is not usable here: {type(exc).__name__}: {exc}; using the harness's)")
    return (*_fallback_rest(srv.rest_url, api, model, extra.get("kfs_data", "json")), "the harness's encoder")


def _fallback_rest(base: str, api: str, model: str, kfs_data: str) -> tuple[str, bytes, dict]:
    import numpy as np

    name, shape = ("b", [1, 10]) if model == "dummy" else ("0", [1, 3, 224, 224])
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    if api == "tfs-rest":
        return (f"{base}/v1/models/{model}:predict", json.dumps({"inputs": {name: x.tolist()}}).encode(),
                {"Content-Type": "application/json"})
    tensor = {"name": name, "shape": shape, "datatype": "FP32"}
    if kfs_data == "binary":
        raw = x.tobytes()
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return (f"{base}/v2/models/{model}/infer", header + raw,
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    return f"{base}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}


# ---------------------------------------------------------------- the cheap server for --processes

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 600s;
  http2_max_concurrent_streams 1024;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port} http2;
    # the whole request body is read first (by the mirror module), as a real server would: a reply before
    # the body is read would end with RST_STREAM(NO_ERROR), which RFC 9113 allows but clients may mishandle
    location = /inference.GRPCInferenceService/ModelInfer {{
      mirror /_read_body;
      mirror_request_body on;
      root {tmp}/www;              # holds a file of that name: the static handler refuses a POST to it (405)
      error_page 405 =200 @grpc_ok;
    }}
    location = /_read_body {{ internal; return 204; }}
    location @grpc_ok {{
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      return 200 "\x00\x00\x00\x00\x00";
    }}
    location / {{
      grpc_pass grpc://{upstream};
    }}
  }}
  server {{
    listen 127.0.0.1:{status_port};
    location = /status {{ stub_status; }}
  }}
}}
"""


class CheapGrpcServer:
    """nginx on one core, answering every KServe ModelInfer with a fixed, valid gRPC reply (an empty
    ModelInferResponse: content-type application/grpc, body 00 00 00 00 00, trailer grpc-status 0) and
    passing every other call (metadata, readiness) to the reference server. Its CPU is read from /proc."""

    def __init__(self, upstream: str, cpu: int = SERVER_CPU):
        self.upstream, self.cpu = upstream, cpu
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        self.port, self.status_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CheapGrpcServer:
        tmp = Path(self._tmp.name)
        tmp.chmod(0o755)             # nginx's worker runs as an unprivileged user
        conf = tmp / "nginx.conf"
        reply_file = tmp / "www" / "inference.GRPCInferenceService" / "ModelInfer"
        reply_file.parent.mkdir(parents=True)
        reply_file.write_bytes(b"")
        conf.write_bytes(NGINX_CONF.format(tmp=tmp, port=self.port, status_port=self.status_port,
                                           upstream=self.upstream).encode("latin-1"))
        self.proc = subprocess.Popen(["taskset", "-c", str(self.cpu), "nginx", "-c", str(conf), "-p", str(tmp),
                                      "-e", str(tmp / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=open(tmp / "stderr.log", "wb"), start_new_session=True)
        try:
            wait_port(self.port, proc=self.proc)
            wait_port(self.status_port, proc=self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._tmp.cleanup()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        pids = [self.proc.pid, *proc_children(self.proc.pid)]
        return sum(proc_cpu(p) or 0.0 for p in pids)

    def requests(self) -> int:
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5).read().decode()
        return int(text.splitlines()[2].split()[2])

    def check_reply(self, tmp: Path) -> None:
        """The reply is a valid gRPC success, checked with nghttp (Debian's nghttp2-client)."""
        method, body = request("kfs", "dynamic", "x", [1, 4])
        (tmp / "nginx.body").write_bytes(grpc_frame(body))
        out = subprocess.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d",
                              str(tmp / "nginx.body"), f"http://{self.address}{method}"], capture_output=True,
                             text=True, errors="replace", timeout=30).stdout
        if not ("content-type: application/grpc" in out and "grpc-status: 0" in out and ":status: 200" in out):
            raise BenchError(f"nginx's reply is not a gRPC success: {out[-800:]}")


# ---------------------------------------------------------------- the groups

@dataclass
class Context:
    seconds: int
    repeats: int
    tmp: Path


def grpc_group(ctx: Context, srv: RefServer) -> dict:
    target = srv.grpc_address
    out: dict = {}
    for size in ("small", "large"):
        model, _name, shape = SIZES[size]
        for api in ("kfs", "tfs"):
            clients = {
                "h2load": lambda s, a=api, z=size: h2load(target, a, z, s, ctx.tmp),
                PLAIN: lambda s, a=api, z=size: plain(target, a, z, s, ctx.tmp),
                DOCUMENTED: lambda s, a=api, z=size: locust_peer("locust_grpc_documented.py", target, a, z, s, ctx.tmp),
                BYTES: lambda s, a=api, z=size: locust_peer("locust_grpc_bytes.py", target, a, z, s, ctx.tmp),
                SUITE: lambda s, a=api, m=model, sh=shape: suite(target, a, m, s, ctx.tmp,
                                                                 flags=suite_small_flags(m, sh)),
            }
            for name, fn in clients.items():
                c = cell(fn, ctx.seconds, ctx.repeats)
                out[(size, api, name)] = c
                log(f"grpc {size} {api} {name}: {c['rate']:.0f} req/s, {c['cpu_us']:.1f} us CPU/request "
                    f"(runs {', '.join(f'{x:.1f}' for x in c['cpus_us'])}), {c['rss_mb']:.0f} MB")
    return out


def rss_group(ctx: Context, srv: RefServer) -> dict:
    """Peak RSS per process with 64 users: the suite, and the documented Locust peer for comparison."""
    out: dict = {}
    for size in ("small", "large"):
        model, _name, shape = SIZES[size]
        flags = suite_small_flags(model, shape)
        runs = [(api, SUITE, lambda s, a=api, m=model, f=flags:
                 suite(srv.grpc_address, a, m, s, ctx.tmp, users=RSS_USERS, flags=f))
                for api in ("kfs", "tfs")]
        runs.append(("kfs", DOCUMENTED, lambda s, z=size: locust_peer("locust_grpc_documented.py", srv.grpc_address,
                                                                       "kfs", z, s, ctx.tmp, users=RSS_USERS)))
        for api, name, fn in runs:
            samples = [fn(ctx.seconds) for _ in range(ctx.repeats)]
            rss = [s.rss_mb for s in samples]
            out[(size, api, name)] = {"rss_mb": statistics.median(rss), "max_mb": max(rss),
                                      "rate": statistics.median(s.requests / s.seconds for s in samples)}
            log(f"rss {size} {api} {name} (64 users): {statistics.median(rss):.0f} MB (max {max(rss):.0f})")
    return out


def latency_group(ctx: Context, srv: RefServer) -> dict:
    """Mean latency at concurrency 1, small tensor: h2load -c1 -m1, the plain client, one suite user."""
    out: dict = {}
    model, _name, shape = SIZES["small"]
    for api in ("kfs", "tfs"):
        means: dict[str, list[float]] = {"h2load": [], PLAIN: [], SUITE: []}
        for _ in range(ctx.repeats):
            means["h2load"].append(h2load(srv.grpc_address, api, "small", ctx.seconds, ctx.tmp, streams=1).mean_s)
            means[PLAIN].append(plain(srv.grpc_address, api, "small", ctx.seconds, ctx.tmp).mean_s)
            means[SUITE].append(suite(srv.grpc_address, api, model, ctx.seconds, ctx.tmp, users=1,
                                      flags=suite_small_flags(model, shape)).mean_s)
        out[api] = {k: statistics.median(v) for k, v in means.items()}
        out[api]["runs"] = means
        log(f"latency {api}: " + ", ".join(f"{k} {statistics.median(v) * 1e6:.0f} us" for k, v in means.items()))
    return out


def rest_group(ctx: Context, srv: RefServer) -> dict:
    out: dict = {"small": {}, "large": {}, "origin": {}}
    for api, extra in (("tfs-rest", {}), ("kfs-rest", {"kfs_data": "json"})):
        url, body, headers, origin = rest_request(srv, api, "dummy", extra)
        out["origin"][api] = (origin, len(body))
        flags = tuple(f"--{k}={v}" for k, v in extra.items())
        for name, fn in (("wrk", lambda s, u=url, b=body, h=headers: wrk(u, b, h, s, ctx.tmp)),
                         ("hey", lambda s, u=url, b=body, h=headers: hey(u, b, h, s, ctx.tmp)),
                         (SUITE, lambda s, a=api, f=flags: suite(srv.rest_url, a, "dummy", s, ctx.tmp, flags=f))):
            c = cell(fn, ctx.seconds, ctx.repeats)
            out["small"][(api, name)] = c
            log(f"rest {api} {name}: {c['rate']:.0f} req/s, {c['cpu_us']:.1f} us CPU/request")
    try:
        _rest_large(ctx, srv, out)
    except BenchError as exc:     # for the record only: keep the small-request results
        out["large_error"] = str(exc.code)
        log(f"rest large: not measured: {exc.code}")
    return out


def _rest_large(ctx: Context, srv: RefServer, out: dict) -> None:
    for mode in ("json", "binary"):
        url, body, headers, _origin = rest_request(srv, "kfs-rest", "resnet_dyn", {"kfs_data": mode})
        for name, fn in (("wrk", lambda s, u=url, b=body, h=headers: wrk(u, b, h, s, ctx.tmp)),
                         (SUITE, lambda s, m=mode: suite(srv.rest_url, "kfs-rest", "resnet_dyn", s, ctx.tmp,
                                                         flags=(f"--kfs_data={m}",)))):
            c = cell(fn, ctx.seconds, ctx.repeats)
            out["large"][(mode, name)] = {**c, "bytes": len(body)}
            log(f"rest large {mode} {name}: {c['rate']:.0f} req/s, {c['cpu_us']:.0f} us CPU/request")


SCALING_QUOTA = (("one process", 0, 0.5), ("--processes 1", 1, 0.5), ("--processes 2", 2, 1.0))
SCALING_SHARED = (("one process", 0, str(CLIENT_CPU)), ("--processes 1", 1, str(CLIENT_CPU)),
                  ("--processes 2", 2, f"{SERVER_CPU},{CLIENT_CPU}"),
                  ("one process, on nginx's core", 0, str(SERVER_CPU)))
REPORT_INTERVAL_S = 3.0   # Locust's worker report interval, which the suite keeps unless --report_interval


def scaling_group(ctx: Context, srv: RefServer) -> dict:
    """The suite with and without --processes against nginx (see CheapGrpcServer), measured two ways:

    quota:  every client on core 1 alone, nginx alone on core 0; the client's process tree gets a CPU quota of
            half a core per worker (0.5 core for one process or --processes 1, the whole core for --processes 2),
            so each worker has the same CPU in both runs and the rates compare directly;
    shared: one process and --processes 1 on core 1; --processes 2 on both cores, sharing core 0 with nginx,
            whose measured CPU is subtracted from the 2 cores (and a diagnostic: one process on nginx's core).
    """
    out: dict = {"quota": {}, "shared": {}}
    with CheapGrpcServer(srv.grpc_address) as cheap:
        cheap.check_reply(ctx.tmp)
        h2 = cell(lambda s: _with_server_cpu(cheap, lambda: h2load(cheap.address, "kfs", "small", s, ctx.tmp)),
                  ctx.seconds, ctx.repeats)
        out["server_us"] = statistics.median(_server_per_request(p) for p in h2["samples"]) * 1e6
        out["h2load_rate"] = h2["rate"]
        log(f"scaling: nginx costs {out['server_us']:.1f} us CPU per request ({h2['rate']:.0f} req/s from h2load)")
        if CpuQuota.available():
            for label, processes, cores in SCALING_QUOTA:
                with CpuQuota(cores) as quota:
                    out["quota"][label] = _scaling_cell(ctx, cheap, processes, str(CLIENT_CPU), quota)
                    out["quota"][label]["quota"] = cores
                _log_scaling("quota", label, out["quota"][label])
        else:
            log("scaling: no writable cgroup (cpu controller): the quota method is skipped")
        for label, processes, cpus in SCALING_SHARED:
            out["shared"][label] = _scaling_cell(ctx, cheap, processes, cpus, None)
            out["shared"][label]["cpus"] = cpus
            _log_scaling("shared", label, out["shared"][label])
    return out


def _log_scaling(method: str, label: str, c: dict) -> None:
    log(f"scaling {method} {label}: {c['rate']:.0f} req/s, client {c['client_cores']:.2f} cores "
        f"({c['client_us']:.1f} us/request), nginx {c['server_cores']:.2f} cores, master {c['master_cores']:.3f} cores")


def _scaling_cell(ctx: Context, cheap: CheapGrpcServer, processes: int, cpus: str, quota: CpuQuota | None) -> dict:
    model, _name, shape = SIZES["small"]
    rows = []
    for _ in range(ctx.repeats):
        pair = [_with_server_cpu(cheap, lambda s=s: suite(cheap.address, "kfs", model, s, ctx.tmp, users=SCALING_USERS,
                                                          flags=suite_small_flags(model, shape), processes=processes,
                                                          cpus=cpus, quota=quota))
                for s in (ctx.seconds, 1)]
        rows.append(_scaling_pair(*pair, processes))
        time.sleep(0.3)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["rates"] = [r["rate"] for r in rows]
    return med


def _with_server_cpu(cheap: CheapGrpcServer, fn) -> Sample:
    """Run ``fn`` and add nginx's CPU and request count over it; nginx must have answered every counted request."""
    s0, n0 = cheap.cpu_seconds(), cheap.requests()
    sample = fn()
    # the status page counts its own request: one more than the run's
    sample.extra.update(server_cpu=cheap.cpu_seconds() - s0, server_requests=cheap.requests() - n0 - 1)
    if sample.extra["server_requests"] < sample.requests:
        raise BenchError(f"nginx answered {sample.extra['server_requests']} requests, the client counted "
                         f"{sample.requests}")
    return sample


def _server_per_request(pair: tuple[Sample, Sample]) -> float:
    long, short = pair
    return (long.extra["server_cpu"] - short.extra["server_cpu"]) / max(long.requests - short.requests, 1)


def _scaling_pair(long: Sample, short: Sample, processes: int) -> dict:
    """The long run's rate over the suite's own load window (with --processes the workers start at different
    moments, which a difference of two runs would not cancel), and marginal CPU per request (long minus 1 s
    run: start-up cancels) for the client, its master and nginx; cores = CPU per request x rate."""
    rate = long.requests / long.extra["load_s"]
    dn = long.requests - short.requests
    client = (long.cpu - short.cpu) / dn
    master = (long.extra["procs"][0][0] - short.extra["procs"][0][0]) / dn if processes else 0.0
    server = (long.extra["server_cpu"] - short.extra["server_cpu"]) / dn
    return {"rate": rate, "client_cores": client * rate, "client_us": client * 1e6,
            "server_cores": server * rate, "master_cores": master * rate, "master_us": master * 1e6,
            "rss_mb": max(p[1] for p in long.extra["procs"])}


# ---------------------------------------------------------------- the report

def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(args, results: dict, started: float, info: dict, errors: dict[str, str]) -> str:
    d, r = args.duration, args.repeats
    lines = ["# Client cost: the suite's users against their peers", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} by `.venv/bin/python "
             f"bench/clients.py --duration {d} --repeats {r}"
             + (f" --only {','.join(args.only)}" if tuple(args.only) != GROUPS else "") + "` "
             f"(took {(time.time() - started) / 60:.0f} min).", "",
             f"- Machine: {info['model']}, {info['cores']} cores (lscpu). Load average (1 min) at the start "
             f"{info['load_start']}, at the end {_loadavg()}: anything else running on the machine shares the "
             "cores and skews the rates (CPU per request much less).",
             f"- Server on core {SERVER_CPU}, client on core {CLIENT_CPU} (`taskset`), one client at a time against "
             "the same server in the same run; the server is the reference server (`refserver`) unless said.",
             f"- Each cell: {r} pairs of a {d} s run and a 1 s run of the same client; medians of the {r} values"
             + (" (fewer than the 3 the targets ask for: a smoke run, not a measurement)." if r < 3 else "."),
             "- Client CPU per request is marginal: (CPU of the long run - CPU of the 1 s run) / (requests "
             "difference), user + system time of the client's whole process tree from wait4, so start-up "
             "(imports, building the dataset, connecting) does not count. Rates are marginal the same way.",
             "- Peak RSS is each process's VmHWM from /proc (not ru_maxrss, which keeps the forking parent's size).",
             f"- {IN_FLIGHT} requests in flight (h2load `-c 1 -m {IN_FLIGHT}`, {IN_FLIGHT} Locust users, wrk/hey "
             f"`-c {IN_FLIGHT}`), except the plain grpcio client: one blocking call at a time, as each OVMS client "
             "process did.",
             "- Small: a [1,4] FP32 tensor to model `dynamic`; large: [1,3,224,224] FP32 (602 KB) to `resnet`.", ""]
    summary: list[tuple[str, str, str, str]] = []
    body: list[str] = []
    sections = {"grpc": _grpc_sections, "rss": _rss_section, "latency": _latency_section, "rest": _rest_section,
                "scaling": _scaling_section}
    for group, render in sections.items():
        if group in results:
            body += render(results[group], summary)
    lines += ["## Targets", "", "| target | measured | limit | result |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {v} |" for a, b, c, v in summary]
    for group, message in errors.items():
        lines.append(f"| everything in `{group}` | not measured: {message} | | **not measured** |")
    return "\n".join(lines + [""] + body) + "\n"


def _grpc_sections(g: dict, summary: list) -> list[str]:
    lines = []
    for size, title, limits in (
            ("small", "Client CPU per small gRPC request", "at most 0.6x the plain grpcio client and 4x h2load"),
            ("large", "Client CPU per large gRPC request", "at most 1.2x h2load")):
        lines += [f"## {title}", "", f"Target: {limits} (the suite's rows).", "",
                  "| API | client | req/s | CPU us/request | vs h2load | vs plain grpcio | peak RSS MB | target |",
                  "|---|---|---|---|---|---|---|---|"]
        for api in ("kfs", "tfs"):
            h2, pl = g[(size, api, "h2load")], g[(size, api, PLAIN)]
            for name in ("h2load", PLAIN, DOCUMENTED, BYTES, SUITE):
                c = g[(size, api, name)]
                vs_h2, vs_pl = c["cpu_us"] / h2["cpu_us"], c["cpu_us"] / pl["cpu_us"]
                mark = ""
                if name == SUITE and size == "small":
                    ok_pl, ok_h2 = vs_pl <= LIMITS["small_vs_plain"], vs_h2 <= LIMITS["small_vs_h2load"]
                    mark = f"vs plain {verdict(ok_pl)}; vs h2load {verdict(ok_h2)}"
                    summary.append((f"small gRPC CPU/request, {api}, vs plain grpcio", f"{vs_pl:.2f}x", "<= 0.6x",
                                    verdict(ok_pl)))
                    summary.append((f"small gRPC CPU/request, {api}, vs h2load", f"{vs_h2:.2f}x", "<= 4x",
                                    verdict(ok_h2)))
                elif name == SUITE:
                    ok = vs_h2 <= LIMITS["large_vs_h2load"]
                    mark = verdict(ok)
                    summary.append((f"large gRPC CPU/request, {api}, vs h2load", f"{vs_h2:.2f}x", "<= 1.2x",
                                    verdict(ok)))
                lines.append(f"| {api} | {name} | {c['rate']:.0f} | {c['cpu_us']:.1f} | {vs_h2:.2f}x | {vs_pl:.2f}x"
                             f" | {c['rss_mb']:.0f} | {mark} |")
        lines.append("")
    lines += ["Spread: the CPU per request of each run, us, in order:", ""]
    for (size, api, name), c in g.items():
        lines.append(f"- {size} {api} {name}: {', '.join(f'{x:.1f}' for x in c['cpus_us'])}")
    return lines + [""]


def _rss_section(g: dict, summary: list) -> list[str]:
    lines = [f"## Peak RSS per process with {RSS_USERS} users", "",
             f"Target: at most {LIMITS['rss_mb']:.0f} MB per process (the suite's rows); one process, "
             f"{RSS_USERS} users, against the reference server.", "",
             "| tensor | API | client | peak RSS MB (median) | max | req/s | target |", "|---|---|---|---|---|---|---|"]
    for (size, api, name), c in g.items():
        mark = ""
        if name == SUITE:
            ok = c["rss_mb"] <= LIMITS["rss_mb"]
            mark = verdict(ok)
            summary.append((f"RSS per process, {RSS_USERS} users, {size}, {api}", f"{c['rss_mb']:.0f} MB",
                            f"<= {LIMITS['rss_mb']:.0f} MB", verdict(ok)))
        lines.append(f"| {size} | {api} | {name} | {c['rss_mb']:.0f} | {c['max_mb']:.0f} | {c['rate']:.0f} | {mark} |")
    return lines + [""]


def _latency_section(g: dict, summary: list) -> list[str]:
    lines = ["## Mean latency at concurrency 1", "",
             "Target: the mean latency the suite reports exceeds h2load's (`-c 1 -m 1`) by at most 50 us; small "
             "tensor, one user, median of the runs' means.", "",
             "| API | h2load us | plain grpcio us | suite us | suite - h2load us | target |",
             "|---|---|---|---|---|---|"]
    for api, m in g.items():
        diff = (m[SUITE] - m["h2load"]) * 1e6
        ok = diff <= LIMITS["latency_us"]
        summary.append((f"mean latency at concurrency 1, {api}, suite - h2load", f"{diff:+.0f} us", "<= +50 us",
                        verdict(ok)))
        lines.append(f"| {api} | {m['h2load'] * 1e6:.0f} | {m[PLAIN] * 1e6:.0f} | {m[SUITE] * 1e6:.0f} | {diff:+.0f} |"
                     f" {verdict(ok)} |")
    return lines + [""]


def _rest_section(g: dict, summary: list) -> list[str]:
    lines = ["## Client CPU per small REST request", "",
             "Target: at most 1.5x wrk or hey against the same server (met if within 1.5x of either; both shown). "
             f"Model `dummy` ([1,10] FP32), {IN_FLIGHT} connections, the same body for every client: ", ""]
    for api, (origin, size) in g["origin"].items():
        lines.append(f"- {api}: {size} bytes, from {origin}.")
    lines += ["", "| API | client | req/s | CPU us/request | vs wrk | vs hey | target |",
              "|---|---|---|---|---|---|---|"]
    for api in ("tfs-rest", "kfs-rest"):
        w, h = g["small"][(api, "wrk")], g["small"][(api, "hey")]
        for name in ("wrk", "hey", SUITE):
            c = g["small"][(api, name)]
            vs_w, vs_h = c["cpu_us"] / w["cpu_us"], c["cpu_us"] / h["cpu_us"]
            mark = ""
            if name == SUITE:
                ok = min(vs_w, vs_h) <= LIMITS["rest_vs_peer"]
                mark = f"{verdict(ok)} (vs wrk {verdict(vs_w <= 1.5)}, vs hey {verdict(vs_h <= 1.5)})"
                summary.append((f"small REST CPU/request, {api}, vs wrk / hey", f"{vs_w:.2f}x / {vs_h:.2f}x",
                                "<= 1.5x either", verdict(ok)))
            lines.append(f"| {api} | {name} | {c['rate']:.0f} | {c['cpu_us']:.1f} | {vs_w:.2f}x | {vs_h:.2f}x "
                         f"| {mark} |")
    lines += ["", "KServe v2 REST, [1,3,224,224] FP32 to `resnet_dyn`, JSON tensors against the binary-data extension "
              "(no target; for the record):", "",
              "| data | body bytes | client | req/s | CPU us/request |", "|---|---|---|---|---|"]
    for (mode, name), c in g["large"].items():
        lines.append(f"| {mode} | {c['bytes']} | {name} | {c['rate']:.0f} | {c['cpu_us']:.0f} |")
    if "large_error" in g:
        lines.append(f"| not measured: {g['large_error']} | | | | |")
    return lines + [""]


def _scaling_section(g: dict, summary: list) -> list[str]:
    quota, shared = g["quota"], g["shared"]
    limit = LIMITS["scaling_per_n"] * 2
    one, p1, p2 = shared["one process"], shared["--processes 1"], shared["--processes 2"]
    colo = shared["one process, on nginx's core"]
    available = 2 - p2["server_cores"]
    factor = 2 * p2["rate"] / (available * p1["rate"])
    factor_cpu = 2 * p1["client_us"] / p2["client_us"]
    ok = factor >= limit
    summary.append(("`--processes 2` / `--processes 1`, client-bound rate per client core", f"{factor:.2f}x",
                    f">= {limit:.1f}x", verdict(ok)))
    lines = ["## `--processes N` scaling of the client-bound rate", "",
             "Target: `--processes N` scales the client-bound rate by at least 0.9 N (measured here for N = 2).", "",
             "**The server.** Against the reference server the client is never the bottleneck (the server costs "
             "about 340 us of CPU per small request), so the rate would measure the server. Here the server is nginx "
             "(Debian's) on core 0, HTTP/2 without TLS, one worker: it reads each KServe `ModelInfer` request whole "
             "and answers it with a fixed, valid gRPC reply (content-type `application/grpc`, the 5-byte frame of an "
             "empty `ModelInferResponse`, trailer `grpc-status: 0`; checked with nghttp before the runs), and passes "
             "every other call (the suite's metadata and readiness calls) to the reference server. nginx's CPU "
             f"per request, measured with h2load, is {g['server_us']:.1f} us ({g['h2load_rate']:.0f} req/s against "
             "one h2load core), several times less than the suite's. Every run checks that nginx answered at least "
             f"as many requests as the suite counted, and that the suite saw no failure. {SCALING_USERS} users, "
             "[1,4] FP32 to `dynamic`. Rates are the suite's own (requests / its load window, long runs); CPU per "
             "request is marginal (long run minus 1 s run), for the whole client tree, its master (from /proc) and "
             "nginx; cores = CPU per request x rate. Medians of the repeats.", "",
             "**Two cores, shared with nginx** (the verdict). One process and `--processes 1` run on core 1, with "
             "nginx alone on core 0; `--processes 2` runs on both cores, sharing core 0 with nginx. Its rate is "
             "compared per core the client had, the 2 cores minus nginx's CPU: factor = 2 x rate(2) / ((2 - nginx "
             "cores) x rate(1)), the rate two workers would reach with a core each. Everything else counts against "
             "the client: moments when neither process has work (a closed loop waiting on its replies), the "
             "harness's polling, kernel time charged to no process, and the cost of sharing a core with the server "
             "(caches, context switches), which the last row measures on its own (one process on nginx's core). "
             "So this factor is a lower bound.", "",
             "| client | cores | req/s | client cores | client CPU us/request | master cores | nginx cores | "
             "peak RSS MB/process |", "|---|---|---|---|---|---|---|---|"]
    for label, c in shared.items():
        lines.append(f"| {label} | {c['cpus']} | {c['rate']:.0f} | {c['client_cores']:.2f} | {c['client_us']:.1f} | "
                     f"{c['master_cores']:.3f} | {c['server_cores']:.2f} | {c['rss_mb']:.0f} |")
    lines += ["", "| measure | value | target |", "|---|---|---|",
              f"| per client core: 2 x {p2['rate']:.0f} / ((2 - {p2['server_cores']:.2f}) x {p1['rate']:.0f}) | "
              f"**{factor:.2f}x** | >= {limit:.1f}x: {verdict(ok)} |",
              f"| raw: rate(2) / rate(1) | {p2['rate'] / p1['rate']:.2f}x | |",
              f"| per client core, against one process without `--processes` | "
              f"{2 * p2['rate'] / (available * one['rate']):.2f}x | |",
              f"| from CPU per request: 2 x {p1['client_us']:.1f} / {p2['client_us']:.1f} us (the factor if the "
              f"client used every core it had) | {factor_cpu:.2f}x | |",
              f"| cost of sharing nginx's core, one process: CPU per request {colo['client_us']:.1f} against "
              f"{one['client_us']:.1f} us | {(colo['client_us'] / one['client_us'] - 1) * 100:+.0f}% | |", ""]
    if quota:
        q1, q2 = quota["--processes 1"], quota["--processes 2"]
        lines += ["**Cross-check: one client core, the same CPU per worker.** Every client on core 1 alone and nginx "
                  "alone on core 0; the client's process tree gets a CPU quota (cgroup, 10 ms period) of half a core "
                  "per worker (0.5 core for one process or `--processes 1`, the whole core for `--processes 2`), so "
                  "nothing shares the client's core and the rates compare directly. Its own bias goes the other way "
                  "round from real cores: two workers take turns on one core (context switches, caches) instead of "
                  "running side by side.", "",
                  "| client | CPU quota cores | req/s | client cores | client CPU us/request | master cores | "
                  "nginx cores |", "|---|---|---|---|---|---|---|"]
        for label, c in quota.items():
            lines.append(f"| {label} | {c['quota']:.1f} | {c['rate']:.0f} | {c['client_cores']:.2f} | "
                         f"{c['client_us']:.1f} | {c['master_cores']:.3f} | {c['server_cores']:.2f} |")
        lines += ["", f"rate(2) / rate(1) = {q2['rate'] / q1['rate']:.2f}x.", ""]
    else:
        lines += ["(The cross-check with a CPU quota needs a writable cgroup with the cpu controller; none here.)", ""]
    # the model, from the shared-core run at N = 2
    master_cores = max(p2["master_cores"], 0.0)
    mu = master_cores / 2
    per_report_ms = master_cores / (2 / REPORT_INTERVAL_S) * 1e3
    master_us = max(p2["master_us"], 0.0)
    worker_us = p2["client_us"] - master_us
    nmax = f"N = {1 / mu:.0f}" if mu > 0 else "an N this run cannot resolve"
    e = factor / 2
    lines += [f"**A model for larger N.** With `--processes N` on N cores, N workers share the cores with one "
              f"master. Measured at N = 2: a worker spends {worker_us:.1f} us of CPU per request; the master "
              f"{master_cores:.3f} cores ({master_us:.2f} us per request, or {per_report_ms:.2f} ms per worker report "
              f"if it all went to the reports, one per worker every {REPORT_INTERVAL_S:.0f} s), so mu = {mu:.4f} "
              "cores per worker. Each worker brings the master the same work (its reports, and statistics that grow "
              "with the requests it made), so the master needs mu x N cores and, being one process, keeps up while "
              f"mu x N < 1: up to {nmax}. Below that, N workers and the master on N cores reach rate(N) = "
              "N x (1 - mu) / w for a worker's CPU w per request, so factor(N) = rate(N) / rate(1) = N x e, with "
              f"e = {e:.2f} the efficiency measured at N = 2 (taken as constant: costs per worker that grow with N, "
              "such as memory bandwidth, or a server that slows under more connections, are not in the model). "
              f"That gives factor(4) = {4 * e:.1f}, factor(8) = {8 * e:.1f}, factor(16) = {16 * e:.1f} below the "
              "master's limit. The master's marginal CPU resolves about +-0.01 cores at these run lengths; a "
              "negative value is taken as 0.", ""]
    return lines


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per long run (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell, at least 3 (default 3)")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"groups to run, from {','.join(GROUPS)} (default all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "clients.md"), help="the markdown file to write")
    args = ap.parse_args()
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(args.only) - set(GROUPS))
    if unknown:
        ap.error(f"--only: unknown group {', '.join(unknown)}; choose from {','.join(GROUPS)}")
    if args.repeats < 1 or args.duration < 2:
        ap.error("--repeats must be at least 1 and --duration at least 2 s")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs 2 cores: the server on one, the client on the other")
    tools = ["taskset", "lscpu"]
    tools += ["h2load"] if {"grpc", "latency", "scaling"} & set(args.only) else []
    tools += ["wrk", "hey"] if "rest" in args.only else []
    tools += ["nginx", "nghttp"] if "scaling" in args.only else []
    ensure_tools(*tools)
    become_subreaper()
    pin_self(SERVER_CPU)
    started, info = time.time(), {**machine(), "load_start": _loadavg()}
    results: dict = {}
    errors: dict[str, str] = {}
    try:
        with RefServer(cpu=SERVER_CPU) as srv, tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp_dir:
            ctx = Context(args.duration, args.repeats, Path(tmp_dir))
            for group in GROUPS:
                if group in args.only:
                    log(f"== {group}")
                    try:
                        results[group] = globals()[f"{group}_group"](ctx, srv)
                    except (BenchError, OSError, ValueError, KeyError) as exc:   # the other groups still run
                        errors[group] = str(exc.code if isinstance(exc, SystemExit) else exc)
                        log(f"{group}: not measured: {errors[group]}")
    except RefServerError as exc:
        raise BenchError(f"the reference server did not start: {exc}") from None
    text = report(args, results, started, info, errors)
    Path(args.out).write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
