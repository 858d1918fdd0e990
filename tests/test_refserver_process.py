"""The reference server as a process: start-up errors, ready reporting, latency and faults, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from refserver.launcher import RefServer
from tests.conftest import scrape_counter

CMD = [sys.executable, "-m", "refserver"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": [{"name": "m", "kind": "add", "inputs": [], "outputs": [], "latency": {"ms": -2}}]}')
    assert_one_line_error(run_cli("--config", str(bad)), "ovms-refserver: error:", "latency.ms", ">= 0")
    assert_one_line_error(run_cli("--config", str(tmp_path / "none.json")), "cannot read config file")


def test_missing_certs(tmp_path):
    assert_one_line_error(run_cli("--certs-dir", str(tmp_path / "nope")), "--certs-dir", "--gen-certs")
    (tmp_path / "ca.pem").write_text("x")
    assert_one_line_error(run_cli("--certs-dir", str(tmp_path)), "server.pem")


def test_bad_port_argument():
    proc = run_cli("--grpc-port", "70000")
    assert proc.returncode == 2 and "not a port number" in proc.stderr


@pytest.mark.parametrize("which", ["--grpc-port", "--rest-port"])
def test_port_in_use(which):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        other = "--rest-port" if which == "--grpc-port" else "--grpc-port"
        proc = run_cli(which, str(port), other, "0")
    assert_one_line_error(proc, f"127.0.0.1:{port}", which)


def test_gen_certs(tmp_path):
    proc = run_cli("--gen-certs", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["ca.pem", "client.key", "client.pem", "server.key", "server.pem"]
    assert (tmp_path / "c" / "server.pem").read_text().count("BEGIN CERTIFICATE") == 2   # server cert + CA


def test_ready_line_ready_file_and_sigterm(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(CMD + ["--grpc-port", "0", "--rest-port", "0", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["grpc_port"] > 0 and info["rest_port"] > 0 and not info["tls"]
        assert requests.get(f"http://127.0.0.1:{info['rest_port']}/v2/health/live", timeout=5).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as ch:
            grpc.channel_ready_future(ch).result(timeout=5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"gRPC 127.0.0.1:{info['grpc_port']}" in out and f"http://127.0.0.1:{info['rest_port']}" in out
    assert "dummy" in out and "ovms-refserver stopped" in out and "Traceback" not in err


FAULTY = {"seed": 3, "models": [
    {"name": "flaky", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
     "faults": {"rate": 0.3, "code": "RESOURCE_EXHAUSTED", "message": "try later"}},
    {"name": "slow", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "latency": {"ms": 40}},
]}


@pytest.fixture(scope="module")
def faulty_server():
    with RefServer(config=FAULTY) as srv:
        yield srv


def test_fault_rate_and_server_counters(faulty_server):
    client = grpcclient.InferenceServerClient(faulty_server.grpc_address)
    inp = grpcclient.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    ok = failed = 0
    for _ in range(300):
        try:
            client.infer("flaky", [inp])
            ok += 1
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.RESOURCE_EXHAUSTED" and "try later" in exc.message()
            failed += 1
    http_ok = http_failed = 0
    for _ in range(100):
        r = requests.post(f"{faulty_server.rest_url}/v2/models/flaky/infer", timeout=5, json={
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
        if r.status_code == 200:
            http_ok += 1
        else:
            assert r.status_code == 429 and r.json() == {"error": "try later"}
            http_failed += 1
    client.close()
    assert 0.2 < (failed + http_failed) / 400 < 0.4
    text = requests.get(f"{faulty_server.rest_url}/metrics", timeout=5).text
    labels = {"api": "KServe", "method": "ModelInfer", "name": "flaky", "version": "1"}
    assert scrape_counter(text, "ovms_requests_success", interface="gRPC", **labels) == ok
    assert scrape_counter(text, "ovms_requests_fail", interface="gRPC", **labels) == failed
    assert scrape_counter(text, "ovms_requests_success", interface="REST", **labels) == http_ok
    assert scrape_counter(text, "ovms_requests_fail", interface="REST", **labels) == http_failed


def test_configured_latency_is_served(faulty_server):
    client = grpcclient.InferenceServerClient(faulty_server.grpc_address)
    inp = grpcclient.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    took = []
    for _ in range(10):
        t0 = time.perf_counter()
        client.infer("slow", [inp])
        took.append(time.perf_counter() - t0)
    client.close()
    assert min(took) >= 0.040
    assert sorted(took)[5] < 0.040 + 0.030   # median: the sleep plus loopback overhead


def test_demo_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ovms_bench.cli", "demo", "--duration", "2", "--users", "2"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "reference server up" in out and "reference server stopped" in out
    assert "it serves 22 model versions" in out
    assert sorted(p.name for p in tmp_path.glob("ovms-result-demo-*.json")) == [
        "ovms-result-demo-kfs-dummy.json", "ovms-result-demo-kfs-resnet_dyn.json", "ovms-result-demo-tfs-dummy.json"]
    for row in ("TFS gRPC  dummy:1", "KFS gRPC  dummy:1", "KFS gRPC  resnet_dyn:1"):
        line = next(line for line in out.splitlines() if line.startswith(row))
        requests_sent, failures = line.split()[3], line.split()[4]
        assert int(requests_sent) > 0 and failures.startswith("0(")
