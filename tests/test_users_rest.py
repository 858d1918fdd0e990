"""The REST users (TFS REST, KServe v2 REST) in real Locust processes, model listing on every API, and
third-party servers: MLServer (KServe v2 REST) and KServe's v1 API (TF Serving REST)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.conftest import scrape_counter
from tests.locust_run import ROOT, run_captured, run_locust

FORMATS = {"tfs-rest": ["--rest_format", "columnar"], "tfs-rest-row": ["--rest_format", "row"],
           "kfs-rest": ["--kfs_data", "binary"], "kfs-rest-json": ["--kfs_data", "json"]}
LABELS = {"tfs": ("TensorFlowServing", "Predict"), "kfs": ("KServe", "ModelInfer")}


def served(server, api: str, model: str, ok: bool = True) -> float:
    api_label, method = LABELS[api[:3]]
    text = requests.get(f"{server.rest_url}/metrics", timeout=5).text
    return scrape_counter(text, "ovms_requests_success" if ok else "ovms_requests_fail", api=api_label,
                          interface="REST", method=method, name=model, version="1")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_rest_run_fires_what_the_server_serves(refserver, fmt):
    api = fmt.removesuffix("-row").removesuffix("-json")
    model = "two_inputs"
    before = served(refserver, api, model)
    result = run_locust(refserver.rest_url, "--api", api, *FORMATS[fmt], "--model_name", model, "--bs", "1 3",
                        users=3, run_time="2s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 20
    assert served(refserver, api, model) - before == result.requests
    (entry,) = result.stats
    assert entry["method"] == ("TFS REST" if api == "tfs-rest" else "KFS REST") and entry["name"] == "two_inputs:1"


@pytest.mark.parametrize("api", ["tfs-rest", "kfs-rest"])
def test_rest_stateful_with_processes(refserver, api):
    # colliding or broken sequences would be refused by the server (409, 404): zero failures proves the protocol
    before, failed = served(refserver, api, "stateful"), served(refserver, api, "stateful", ok=False)
    result = run_locust(refserver.rest_url, "--processes", "2", "--api", api, "--model_name", "stateful",
                        "--stateful_length", "4", "--stateful_hop", "3", users=4, run_time="3s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 30
    assert served(refserver, api, "stateful") - before == result.requests
    assert served(refserver, api, "stateful", ok=False) == failed


def test_rest_stateful_row_format_needs_batch_one(refserver):
    result = run_locust(refserver.rest_url, "--api", "tfs-rest", "--rest_format", "row", "--model_name", "stateful",
                        "--stateful_length", "3", "--bs", "2", run_time="1s")
    assert result.returncode == 2 and len(result.error_lines) == 1
    assert "--rest_format" in result.error_lines[0] and "--bs 1" in result.error_lines[0]


@pytest.mark.parametrize("api", ["tfs-rest", "kfs-rest"])
def test_rest_mutual_tls(tls_refserver, certs_dir, api):
    result = run_locust(tls_refserver.rest_url, "--api", api, "--model_name", "dummy", "--certs_dir", str(certs_dir),
                        run_time="1s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 0


def test_rest_tls_without_client_certificate(tls_refserver, certs_dir):
    result = run_locust(tls_refserver.rest_url, "--api", "kfs-rest", "--model_name", "dummy", "--ssl_ca",
                        str(certs_dir / "ca.pem"), "--metadata_timeout", "3", run_time="1s")
    assert result.returncode == 2 and len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert "TLS" in result.error_lines[0] or "--host" in result.error_lines[0]


def test_rest_failures_carry_status_and_message(refserver, tmp_path):
    # batch 2 for a model whose batch dimension is 1: every request is refused by the server
    result, events = run_captured(refserver.rest_url, "--api", "kfs-rest", "--model_name", "dummy", "--bs", "2",
                                  "--error_exposition", "2", users=1, run_time="1s", folder=tmp_path)
    assert result.returncode == 1
    assert events and all(e["exception"] == "HTTP 400: Invalid input batch size - Expected: 1; Actual: 2"
                          for e in events)
    assert sum("XE failed request" in line for line in result.stderr.splitlines()) == 2


class _Handler(BaseHTTPRequestHandler):
    body = b"<html><body>It works!</body></html>"
    content_type = "text/html"

    def do_GET(self):   # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(params=["html", "wrong json"])
def not_a_model_server(request):
    handler = type("H", (_Handler,), {} if request.param == "html" else
                   {"body": b'{"status": "ok", "items": [1, 2, 3]}', "content_type": "application/json"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", request.param
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("api", ["tfs-rest", "kfs-rest"])
def test_malformed_server_reply(not_a_model_server, api):
    url, kind = not_a_model_server
    result = run_locust(url, "--api", api, "--model_name", "dummy", "--metadata_timeout", "2", run_time="1s")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr
    line = result.error_lines[0]
    assert ("not JSON" in line and "REST port" in line) if kind == "html" else "format" in line


@pytest.mark.parametrize("case, option", [("unknown model", "--model_name"), ("server down", "--host"),
                                          ("grpc address for rest", "--host")])
def test_rest_bad_input(refserver, free_port, case, option):
    host, args = refserver.rest_url, ["--model_name", "dummy"]
    if case == "unknown model":
        args = ["--model_name", "nope"]
    elif case == "server down":
        host, args = f"http://127.0.0.1:{free_port}", args + ["--metadata_timeout", "1.5"]
    else:
        host = f"grpc://{refserver.grpc_address}"
    result = run_locust(host, "--api", "kfs-rest", *args, run_time="1s")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert option in result.error_lines[0]


# ----------------------------------------------------------------------------------------- listing

def ovms_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovms_bench.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize("api", ["tfs", "kfs", "tfs-rest", "kfs-rest"])
def test_listing_on_every_api(refserver, api):
    host = refserver.rest_url if api.endswith("-rest") else refserver.grpc_address
    proc = ovms_bench("list", "--api", api, "--host", host, "--model_name", "versioned", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    versions = {(m["name"], m["version"]) for m in doc["models"]}
    assert {("versioned", "1"), ("versioned", "2")} <= versions
    if api != "tfs":   # TF Serving's gRPC API answers about one model only; the others list them all
        assert ("dummy", "1") in versions and ("add_uint64", "1") in versions
    assert doc["metadata"] == {"model_name": "versioned", "model_version": 2,
                               "inputs": {"x": {"dtype": "FP32", "shape": [-1, 8]}},
                               "outputs": {"y": {"dtype": "FP32", "shape": [-1, 8]}}}


def test_listing_human_readable_and_errors(refserver, free_port):
    proc = ovms_bench("list", "--api", "kfs-rest", "--host", refserver.rest_url, "--model_name", "two_inputs")
    assert proc.returncode == 0
    assert "MODEL" in proc.stdout and "model two_inputs version 1:" in proc.stdout
    assert "  input   x  FP32  [-1, 4]" in proc.stdout and "  output  sum  FP32  [-1, 4]" in proc.stdout
    no_list = ovms_bench("list", "--api", "tfs", "--host", refserver.grpc_address)
    assert no_list.returncode == 2 and "--api tfs-rest" in no_list.stderr and "Traceback" not in no_list.stderr
    down = ovms_bench("list", "--api", "tfs-rest", "--host", f"http://127.0.0.1:{free_port}")
    assert down.returncode == 2 and down.stderr.count("\n") == 1 and "--host" in down.stderr


def test_listing_third_party_servers(mlserver, kserve_v1):
    ml = ovms_bench("list", "--api", "kfs-rest", "--host", mlserver[1], "--model_name", "addone", "--json")
    assert ml.returncode == 0, ml.stderr
    assert {m["name"] for m in json.loads(ml.stdout)["models"]} == {"addone"}
    ks = ovms_bench("list", "--api", "tfs-rest", "--host", kserve_v1, "--model_name", "addone", "--json")
    # KServe has no /v1/config: the listing falls back to the model's own status, and it has no metadata
    assert ks.returncode == 0, ks.stderr
    doc = json.loads(ks.stdout)
    assert doc["models"] == [{"name": "addone", "version": "", "state": "READY"}]
    assert doc["metadata"]["inputs"] == {} and doc["metadata"]["model_name"] == "addone"
    no_name = ovms_bench("list", "--api", "tfs-rest", "--host", kserve_v1)
    assert no_name.returncode == 2 and "give --model_name" in no_name.stderr


# ------------------------------------------------------------------------------ third-party servers

@pytest.mark.parametrize("mode", ["auto", "json"])
def test_kserve_rest_user_against_mlserver(mlserver, mode):
    # MLServer lists no binary_tensor_data extension, so auto sends JSON even for large tensors (--bs 64: 1 KiB)
    result = run_locust(mlserver[1], "--api", "kfs-rest", "--kfs_data", mode, "--model_name", "addone", "--bs",
                        "1 64", users=2, run_time="2s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 10


def test_tfs_rest_user_against_kserve_v1(kserve_v1):
    # KServe's v1 API has TF Serving's predict and status, but no metadata: the inputs come from --shape
    result = run_locust(kserve_v1, "--api", "tfs-rest", "--rest_format", "row", "--model_name", "addone",
                        "--shape", "1 4", "--bs", "1 2", users=2, run_time="2s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 10
    without_shape = run_locust(kserve_v1, "--api", "tfs-rest", "--model_name", "addone", run_time="1s")
    assert without_shape.returncode == 2 and "--shape" in without_shape.error_lines[0]


def test_tfs_rest_results_from_kserve_v1(kserve_v1):
    from ovms_users.options import BenchOptions
    from ovms_users.workload import Workload

    w = Workload.build(BenchOptions.parse({"api": "tfs-rest", "rest_format": "row", "model_name": "addone",
                                           "shape": "3 4", "seed": "1"}), kserve_v1)
    body, headers = w.requests[0]
    resp = requests.post(f"{kserve_v1}{w.path}", data=body, headers=headers, timeout=10)
    assert resp.status_code == 200
    import numpy as np

    reply = w.protocol.decode(resp.content, resp.headers, spec=w.spec)
    np.testing.assert_allclose(reply["output"], w.entries[0].inputs["input"][1] + 1, rtol=1e-6)


def test_rest_step_timeout_and_keep_alive(tmp_path):
    from refserver.launcher import RefServer

    slow = {"models": [{"name": "slow", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "latency": {"ms": 300}}]}
    with RefServer(config=slow) as srv:
        result = run_locust(srv.rest_url, "--api", "kfs-rest", "--model_name", "slow", "--step_timeout", "0.05",
                            users=2, run_time="2s")
        assert result.returncode == 1
        assert result.requests > 10 and result.failures == result.requests
        assert all(e["max_response_time"] < 250 for e in result.stats)   # cut at ~50 ms, not the model's 300 ms
        assert "Timeout" in result.stderr or "timed out" in result.stderr
        fast = run_locust(srv.rest_url, "--api", "kfs-rest", "--model_name", "slow", users=2, run_time="2s")
        assert fast.failures == 0 and fast.requests >= 8


def test_rest_sender_keeps_one_connection(refserver):
    import psutil

    from ovms_users.options import BenchOptions
    from ovms_users.senders import HttpSender
    from ovms_users.workload import Workload

    w = Workload.build(BenchOptions.parse({"api": "kfs-rest", "model_name": "dummy"}), refserver.rest_url)
    sender = HttpSender(w, user=None)
    try:
        body, headers = w.requests[0]
        for _ in range(20):
            length, exc = sender.send(body, headers, 5.0)
            assert exc is None and length > 0
        ports = {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
                 if c.raddr and c.raddr.port == refserver.rest_port and c.status == psutil.CONN_ESTABLISHED}
        assert len(ports) == 1
    finally:
        sender.close()


def test_original_api_spellings():
    from ovms_users.options import BenchOptions

    assert [BenchOptions.parse({"model_name": "m", "api": a}).api for a in ("TFS", "KFS", "REST", "tfs-rest",
                                                                             "KFS-REST")] == \
        ["tfs", "kfs", "tfs-rest", "tfs-rest", "kfs-rest"]
