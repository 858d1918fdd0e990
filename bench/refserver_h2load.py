"""How many small gRPC requests per second the reference server answers, measured with h2load.

The server is pinned to core 0 and h2load (a C HTTP/2 load tool, far cheaper per request than any
Python client) to core 1, so the number is the server's own capacity on one core. Each cell runs
3 times; the table shows the median. The server's /metrics counters are checked against h2load's
count, because h2load only sees HTTP statuses and a gRPC error still comes with HTTP 200.

    python bench/refserver_h2load.py [--duration 8] [--repeats 3]

Not part of `make test`. Installs Debian's nghttp2-client (h2load, nghttp) if missing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2 as kfs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ensure_tools, grpc_frame, machine  # noqa: E402

from ovms_wire.protos.tfs import serving_apis_pb2 as tfs  # noqa: E402
from ovms_wire.tensors import to_tensor_proto  # noqa: E402
from refserver.launcher import RefServer  # noqa: E402
from tests.conftest import scrape_counter  # noqa: E402


def bodies() -> dict[str, tuple[str, bytes, dict]]:
    x = np.arange(10, dtype=np.float32).reshape(1, 10)
    kreq = kfs.ModelInferRequest(model_name="dummy")
    kreq.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    kreq.raw_input_contents.append(x.tobytes())
    treq = tfs.PredictRequest()
    treq.model_spec.name = "dummy"
    treq.inputs["b"].CopyFrom(to_tensor_proto(x))
    labels_k = {"api": "KServe", "method": "ModelInfer"}
    labels_t = {"api": "TensorFlowServing", "method": "Predict"}
    return {"KServe ModelInfer": ("/inference.GRPCInferenceService/ModelInfer", grpc_frame(kreq.SerializeToString()),
                                  labels_k),
            "TFS Predict": ("/tensorflow.serving.PredictionService/Predict", grpc_frame(treq.SerializeToString()),
                            labels_t)}


def check_grpc_status(url: str, body_file: str) -> None:
    out = subprocess.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "-d", body_file, url], capture_output=True, text=True, errors="replace", timeout=30).stdout
    if "grpc-status: 0" not in out:
        raise SystemExit(f"the request body is not accepted by the server:\n{out[-2000:]}")


def run_h2load(url: str, body_file: str, clients: int, streams: int, duration: int) -> tuple[float, int]:
    cmd = ["taskset", "-c", "1", "h2load", "-D", str(duration), "--warm-up-time", "1", "-c", str(clients),
           "-m", str(streams), "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body_file, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not rate or not done:
        raise SystemExit(f"cannot read h2load's output:\n{out}")
    return float(rate.group(1)), int(done.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per run (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: the server on one, h2load on the other")
    ensure_tools("taskset", "h2load", "nghttp")
    levels = [(1, 1), (1, 8), (4, 8)]
    rows = []
    with RefServer(cpu=0) as srv, tempfile.TemporaryDirectory() as tmp:
        for name, (path, body, labels) in bodies().items():
            body_file = Path(tmp) / "body.bin"
            body_file.write_bytes(body)
            url = f"http://{srv.grpc_address}{path}"
            check_grpc_status(url, str(body_file))
            for clients, streams in levels:
                rates = []
                for _ in range(args.repeats):
                    metrics_url = f"{srv.rest_url}/metrics"
                    before = scrape_counter(urllib.request.urlopen(metrics_url).read().decode(),
                                            "ovms_requests_success", name="dummy", interface="gRPC", **labels)
                    rate, succeeded = run_h2load(url, str(body_file), clients, streams, args.duration)
                    after = scrape_counter(urllib.request.urlopen(metrics_url).read().decode(),
                                           "ovms_requests_success", name="dummy", interface="gRPC", **labels)
                    fails = scrape_counter(urllib.request.urlopen(metrics_url).read().decode(),
                                           "ovms_requests_fail", name="dummy", interface="gRPC", **labels)
                    # warm-up requests are served but not counted by h2load, so the server saw at least as many
                    if after - before < succeeded or fails:
                        raise SystemExit(f"server counted {after - before} successes and {fails} failures, "
                                         f"h2load {succeeded}")
                    rates.append(rate)
                rows.append((name, clients * streams, statistics.median(rates), min(rates), max(rates)))
                print(f"{name:18} in flight {clients * streams:3}: {statistics.median(rates):8.0f} req/s", flush=True)
    print(f"\nreference server on core 0, h2load on core 1 ({machine()['model']}), "
          f"{args.duration} s runs after 1 s warm-up, median of {args.repeats}; [1,10] FP32 request to `dummy`.\n")
    print("| API | requests in flight | req/s (median) | min | max |")
    print("|---|---|---|---|---|")
    for name, inflight, med, lo, hi in rows:
        print(f"| {name} | {inflight} | {med:.0f} | {lo:.0f} | {hi:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
