"""The gRPC users in real Locust processes: local, --processes 2, master + 2 workers, web UI; TLS,
timeouts, error limit and exposition, bad input; and a third-party KServe v2 server (MLServer)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from refserver.launcher import RefServer
from refserver.tls import generate_certs
from tests.conftest import scrape_counter, terminate
from tests.locust_run import LOCUST, LOCUSTFILE, ROOT, run_captured, run_distributed, run_locust

METHOD = {"tfs": ("TensorFlowServing", "Predict"), "kfs": ("KServe", "ModelInfer")}


def served(server: RefServer, api: str, model: str, ok: bool = True) -> float:
    api_label, method = METHOD[api]
    text = requests.get(f"{server.rest_url}/metrics", timeout=5).text
    return scrape_counter(text, "ovms_requests_success" if ok else "ovms_requests_fail", api=api_label,
                          interface="gRPC", method=method, name=model, version="1")


@pytest.mark.parametrize("api", ["tfs", "kfs"])
def test_local_run_fires_what_the_server_serves(refserver, api):
    before = served(refserver, api, "resnet_dyn")
    result = run_locust(refserver.grpc_address, "--api", api, "--model_name", "resnet_dyn", "--bs", "1 2",
                        users=3, run_time="2s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 20
    assert served(refserver, api, "resnet_dyn") - before == result.requests
    (entry,) = result.stats
    assert entry["method"] == f"{api.upper()} gRPC" and entry["name"] == "resnet_dyn:1"


def test_processes_two_stateful_ids_unique(refserver):
    # a collision of sequence ids between users or processes makes the server refuse requests
    # (ALREADY_EXISTS, NOT_FOUND), so zero failures proves every user ran its own sequences
    before, failed_before = served(refserver, "tfs", "stateful"), served(refserver, "tfs", "stateful", ok=False)
    result = run_locust(refserver.grpc_address, "--processes", "2", "--api", "tfs", "--model_name", "stateful",
                        "--stateful_length", "3", "--stateful_hop", "1", users=6, run_time="3s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 30
    assert served(refserver, "tfs", "stateful") - before == result.requests
    assert served(refserver, "tfs", "stateful", ok=False) == failed_before


def test_master_and_two_workers(refserver):
    before, failed_before = served(refserver, "kfs", "stateful"), served(refserver, "kfs", "stateful", ok=False)
    master, workers = run_distributed(refserver.grpc_address, "--api", "kfs", "--model_name", "stateful",
                                      "--stateful_length", "4", users=4, run_time="3s")
    assert master.returncode == 0, master.stderr[-3000:]
    assert all(w.returncode == 0 for w in workers), [w.stderr[-1000:] for w in workers]
    assert master.failures == 0 and master.requests > 30
    assert served(refserver, "kfs", "stateful") - before == master.requests
    assert served(refserver, "kfs", "stateful", ok=False) == failed_before


@pytest.mark.parametrize("how", ["certs_dir", "explicit", "grpcs"])
def test_mutual_tls(tls_refserver, certs_dir, how):
    tls = {"certs_dir": ["--certs_dir", str(certs_dir)],
           "explicit": ["--ssl_ca", str(certs_dir / "ca.pem"), "--ssl_cert", str(certs_dir / "client.pem"),
                        "--ssl_key", str(certs_dir / "client.key")],
           "grpcs": ["--certs_dir", str(certs_dir)]}[how]
    host = ("grpcs://" if how == "grpcs" else "") + tls_refserver.grpc_address
    result = run_locust(host, "--api", "kfs" if how == "explicit" else "tfs", "--model_name", "dummy", *tls,
                        run_time="1s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 0


def test_tls_with_an_untrusted_server(tls_refserver, tmp_path):
    other = generate_certs(tmp_path / "other")   # a different CA: the server's certificate is not trusted
    result = run_locust(tls_refserver.grpc_address, "--model_name", "dummy", "--certs_dir", str(other),
                        "--metadata_timeout", "3", run_time="1s")
    assert result.returncode == 2
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert "--certs_dir" in result.error_lines[0]


SLOW_AND_BROKEN = {"models": [
    {"name": "slow", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "latency": {"ms": 300}},
    {"name": "broken", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
     "faults": {"rate": 1.0, "code": "INTERNAL", "message": "model crashed"}},
]}


@pytest.fixture(scope="module")
def troubled_server():
    with RefServer(config=SLOW_AND_BROKEN) as srv:
        yield srv


def test_sub_second_step_timeout(troubled_server):
    t0 = time.monotonic()
    result = run_locust(troubled_server.grpc_address, "--model_name", "slow", "--step_timeout", "0.05",
                        users=2, run_time="2s")
    assert time.monotonic() - t0 < 30
    assert result.returncode == 1   # Locust's exit code when requests failed
    assert result.requests > 10 and result.failures == result.requests
    errors = result.stderr
    assert "DEADLINE_EXCEEDED" in errors
    for entry in result.stats:   # each timed out after about 50 ms, far less than the 300 ms the model takes
        assert entry["max_response_time"] < 250


def test_error_limit_and_exposition(troubled_server):
    t0 = time.monotonic()
    result = run_locust(troubled_server.grpc_address, "--model_name", "broken", "--error_limit", "5",
                        "--error_exposition", "3", users=1, run_time="60s")
    assert time.monotonic() - t0 < 30   # stopped by the limit, long before the run time
    assert result.returncode == 1
    shown = [line for line in result.stderr.splitlines() if "XE failed request" in line]
    assert len(shown) == 3 and "INTERNAL: model crashed" in shown[0]
    assert "--error_limit 5 exceeded: 6 failed requests" in result.stderr
    assert 6 <= result.failures <= 10 and result.requests == result.failures


def silent_port():
    """A socket that accepts connections and never answers: a server that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.mark.parametrize("case", ["unknown model", "unknown version", "server down", "metadata timeout",
                                  "wrong shape", "wrong data type", "dynamic without shape", "missing npy",
                                  "unreadable image", "missing TLS files", "bad value", "unknown api",
                                  "not a grpc server"])
def test_bad_input_one_line_and_exit_2(refserver, tmp_path, case):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    not_image = tmp_path / "photo.png"
    not_image.write_text("this is text")
    silent = silent_port()
    host, args, option = refserver.grpc_address, ["--model_name", "dummy"], ""
    match case:
        case "unknown model":
            args, option = ["--model_name", "nope"], "--model_name"
        case "unknown version":
            args, option = ["--model_name", "dummy", "--model_version", "7"], "--model_version"
        case "server down":
            host, args, option = f"127.0.0.1:{closed_port}", args + ["--metadata_timeout", "1.5"], "--host"
        case "metadata timeout":
            host, args, option = f"127.0.0.1:{silent.getsockname()[1]}", args + ["--metadata_timeout", "1.5"], \
                "--metadata_timeout"
        case "wrong shape":
            args, option = args + ["--shape", "b: 1 12"], "--shape"
        case "wrong data type":
            args, option = args + ["--data", "string"], "--data"
        case "dynamic without shape":
            args, option = ["--model_name", "dynamic"], "--shape"
        case "missing npy":
            args, option = args + ["--data", str(tmp_path / "none.npy")], "--data"
        case "unreadable image":
            args, option = ["--model_name", "image", "--data", str(not_image)], "--data"
        case "missing TLS files":
            args, option = args + ["--certs_dir", str(tmp_path / "no-certs")], "--certs_dir"
        case "bad value":
            args, option = args + ["--bs", "two"], "--bs"
        case "unknown api":
            args, option = args + ["--api", "soap"], "--api"
        case "not a grpc server":
            host, option = refserver.rest_address, "--host"   # the HTTP port answers, but not gRPC
    t0 = time.monotonic()
    try:
        result = run_locust(host, *args, run_time="5s", timeout=60)
    finally:
        silent.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.error_lines) == 1, result.stderr[-2000:]
    assert option in result.error_lines[0]
    assert time.monotonic() - t0 < 30


def test_options_from_config_file_and_environment(refserver, tmp_path):
    (tmp_path / "locust.conf").write_text(f"locustfile = {LOCUSTFILE}\nhost = {refserver.grpc_address}\n"
                                          "model_name = two_inputs\nbs = 2\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOCUST_API": "kfs"}
    proc = subprocess.run(LOCUST + ["--headless", "-u", "1", "-t", "1s", "--json", "--skip-log-setup"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (entry,) = json.loads(proc.stdout[proc.stdout.find("["):])
    assert entry["method"] == "KFS gRPC" and entry["name"] == "two_inputs:1" and entry["num_requests"] > 0


def test_web_ui_form_runs_the_options(refserver, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
                                      "--skip-log-setup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = requests.get(base + "/", timeout=2).text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        for option in ("model_name", "stateful_length", "certs_dir", "error_limit"):
            assert f'"{option}"' in page   # in the start form's extra options
        resp = requests.post(base + "/swarm", timeout=10, data={
            "user_count": 2, "spawn_rate": 2, "host": refserver.grpc_address, "api": "kfs",
            "model_name": "versioned", "model_version": "1", "bs": "3"})
        assert resp.json()["success"], resp.text
        deadline = time.monotonic() + 20
        while True:
            stats = requests.get(base + "/stats/requests", timeout=5).json()
            rows = [r for r in stats["stats"] if r["name"] == "versioned:1"]
            if rows and rows[0]["num_requests"] > 20:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        assert rows[0]["method"] == "KFS gRPC" and rows[0]["num_failures"] == 0
        assert requests.post(base + "/stop", timeout=10).status_code == 200
    finally:
        terminate(proc, 20)


def test_kserve_user_against_mlserver(mlserver):
    result = run_locust(mlserver[0], "--api", "kfs", "--model_name", "addone", "--bs", "1 4", users=2, run_time="2s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.failures == 0 and result.requests > 10
    (entry,) = result.stats
    assert entry["name"] == "addone"


def test_kserve_workload_results_from_mlserver(mlserver):
    import grpc
    import numpy as np

    from ovms_users.options import BenchOptions
    from ovms_users.workload import Workload

    w = Workload.build(BenchOptions.parse({"api": "kfs", "model_name": "addone", "bs": "2", "seed": "4"}),
                       mlserver[0])
    with grpc.insecure_channel(mlserver[0]) as channel:
        reply = w.protocol.decode(channel.unary_unary(w.path)(w.bodies[0], timeout=10))
    np.testing.assert_allclose(reply["y"], w.entries[0].inputs["x"][1] + 1, rtol=1e-6)


def test_locustfile_imports_without_side_effects():
    # importing the locustfile creates no gRPC channel (channels are made per user, after any fork)
    code = f"import sys; sys.argv=['x']; import runpy; runpy.run_path({str(LOCUSTFILE)!r}); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_request_event_payload(refserver, tmp_path):
    result, events = run_captured(refserver.grpc_address, "--api", "kfs", "--model_name", "stateful",
                                  "--stateful_length", "3", "--stateful_id", "5000", users=2, run_time="1s",
                                  folder=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(events) == result.requests > 6
    ids = set()
    for e in events:
        assert e["request_type"] == "KFS gRPC" and e["name"] == "stateful:1" and e["exception"] is None
        assert e["response_length"] > 0 and 0 < e["response_time"] < 1000
        ctx = e["context"]
        assert ctx["frames"] == 1 and ctx["api"] == "kfs" and ctx["model"] == "stateful" and ctx["version"] == 1
        ids.add(ctx["sequence_id"])
    # two users, each in its own block of ids starting at --stateful_id; hop 0 reuses each user's id
    assert ids == {5000, 5000 + (1 << 24)}


def test_failed_request_event_carries_status(troubled_server, tmp_path):
    _, events = run_captured(troubled_server.grpc_address, "--model_name", "broken", "--error_exposition", "1",
                             users=1, run_time="1s", folder=tmp_path)
    assert events and all(e["exception"] == "INTERNAL: model crashed" for e in events)
    assert all(e["context"]["frames"] == 1 and e["response_length"] == 0 for e in events)
