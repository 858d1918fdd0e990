"""The metric set end to end: a server with known latency distributions and fault rate, real Locust processes.

Tolerance: a reported latency is the server's configured delay plus the client's and the server's own
time per request on this loopback, and never less than the delay. That round trip is about 1.3 ms at
the median for a model with no delay (the `make demo` runs) and measured +1.8 ms at the median, +2.8 ms
at p99 for the uniform model below (4 users, 2 cores). On 2 cores shared by the server and up to three
Locust processes, the scheduler adds more to the slowest requests. So a median must lie in
[q_true, q_true + 4 ms] and a p99 in [q_true, q_true + 8 ms]; a wrong quantile (another rank, the
mean, a unit slip) lands far outside. Counts have no tolerance: they must equal the server's own counters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from refserver.launcher import RefServer
from tests.conftest import scrape_counter, terminate
from tests.locust_run import (
    LOCUST,
    LOCUSTFILE,
    ROOT,
    free_port,
    loopback_master,
    run_distributed,
    run_locust,
    start_distributed,
)

X = {"name": "x", "datatype": "FP32", "shape": [-1, 2]}
Y = {"name": "y", "datatype": "FP32", "shape": [-1, 2]}
CONFIG = {"seed": 1, "models": [
    {"name": "uniform", "kind": "add", "inputs": [X], "outputs": [Y],
     "latency": {"distribution": "uniform", "min_ms": 2, "max_ms": 8},
     "faults": {"rate": 0.1, "code": "UNAVAILABLE", "message": "overloaded"}},
    {"name": "tail", "kind": "add", "inputs": [X], "outputs": [Y],
     "latency": {"distribution": "mixture", "components": [
         {"weight": 97, "distribution": "uniform", "min_ms": 1, "max_ms": 3}, {"weight": 3, "ms": 50}]}},
]}


@pytest.fixture(scope="module")
def server():
    with RefServer(config=CONFIG) as srv:
        yield srv


def counters(server: RefServer, model: str) -> tuple[float, float]:
    text = requests.get(f"{server.rest_url}/metrics", timeout=5).text
    labels = {"api": "KServe", "interface": "gRPC", "method": "ModelInfer", "name": model, "version": "1"}
    return scrape_counter(text, "ovms_requests_success", **labels), scrape_counter(text, "ovms_requests_fail", **labels)


def check_result(result_file, server: RefServer, model: str, before: tuple[float, float], processes: int) -> dict:
    doc = json.loads(result_file.read_text())
    s = doc["statistics"]
    ok, bad = counters(server, model)
    assert s["pass_batches"] == ok - before[0] and s["fail_batches"] == bad - before[1]
    assert s["total_batches"] > 200
    assert s["submetrics"] == processes
    assert all(state in ("final",) for state in doc["workers"].values()), doc["workers"]
    assert sum(row["pass"] + row["fail"] for row in doc["timeline"]) == s["total_batches"]
    return s


def check_uniform(s: dict) -> None:
    assert 0.002 <= s["min_latency"] and s["latency_p50"] == pytest.approx(0.0065, abs=0.0035)
    assert 0.005 <= s["window_latency_p50"] <= 0.005 + 0.004
    assert 0.00794 <= s["window_latency_p99"] <= 0.00794 + 0.008
    # faults: 10 % of requests, reported by status
    assert 0.06 < s["fail_batches"] / s["total_batches"] < 0.14
    assert set(s["errors_by_status"]) == {"UNAVAILABLE"}


@pytest.mark.parametrize("mode", ["local", "processes"])
def test_uniform_latency_and_faults(server, tmp_path, mode):
    out = tmp_path / "result.json"
    before = counters(server, "uniform")
    extra = ["--processes", "2"] if mode == "processes" else []
    result = run_locust(server.grpc_address, *extra, "--api", "kfs", "--model_name", "uniform", "--warmup", "0.5",
                        "--result_file", str(out), "--error_exposition", "1", users=4, run_time="4s")
    assert result.returncode == 1, result.stderr[-2000:]   # failed requests: non-zero, as the original
    s = check_result(out, server, "uniform", before, 2 if mode == "processes" else 1)
    check_uniform(s)
    assert s["total_batches"] == result.requests   # Locust's own count agrees


def test_master_and_two_workers_heavy_tail(server, tmp_path):
    out = ROOT / "ovms-result-test-master.json"
    before = counters(server, "tail")
    try:
        master, workers = run_distributed(server.grpc_address, "--api", "kfs", "--model_name", "tail",
                                          "--result_file", str(out), "--quantile_list", "0.5 0.99",
                                          users=4, run_time="4s")
        assert master.returncode == 0, master.stderr[-2000:]
        s = check_result(out, server, "tail", before, 2)
    finally:
        out.unlink(missing_ok=True)
    assert 0.001 <= s["window_latency_p50"] <= 0.002 + 0.004
    assert 0.050 <= s["window_latency_p99"] <= 0.050 + 0.008
    assert s["window_latency_p99_9"] >= 0.050
    # the OVMS-compatible quantiles (10 ms buckets by default: coarse, as the original)
    assert s["qos_quantile_1"] == 0.99 and 0.04 <= s["qos_latency_1"] <= 0.06


@pytest.mark.parametrize("mode", ["local", "processes", "master"])
def test_web_ui_stop_yields_a_result(server, tmp_path, mode):
    port = free_port()
    out = tmp_path / "ui-result.json"
    before = counters(server, "uniform")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ui = ["--web-host", "127.0.0.1", "--web-port", str(port), "--skip-log-setup", "--result_file", str(out)]
    extra: list[str] = []
    worker_cmds: list[list[str]] = []
    if mode == "processes":
        extra = ["--processes", "2", *loopback_master(["--processes"])]
    elif mode == "master":
        master_port = free_port()
        extra = ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
        worker_cmds = [LOCUST + ["-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1", "--master-port",
                                 str(master_port), "--skip-log-setup"]] * 2
    proc = subprocess.Popen(LOCUST + ["-f", str(LOCUSTFILE), *ui, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    workers = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
               for cmd in worker_cmds]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/", timeout=2)
                if mode == "local" or requests.get(base + "/stats/requests", timeout=2).json()["workers"].__len__() \
                        == 2:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert requests.post(base + "/swarm", timeout=10, data={
            "user_count": 4, "spawn_rate": 4, "host": server.grpc_address, "api": "kfs",
            "model_name": "uniform"}).json()["success"]
        time.sleep(3)
        assert requests.post(base + "/stop", timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while not out.exists():
            assert time.monotonic() < deadline, "no result file after the web UI's stop"
            time.sleep(0.2)
    finally:
        for p in [proc, *workers]:
            terminate(p, 20)
    s = check_result(out, server, "uniform", before, 1 if mode == "local" else 2)
    check_uniform(s)


@pytest.mark.parametrize("mode", ["local", "processes", "master"])
def test_stopped_by_request_count(server, tmp_path, mode):
    # --steps_number: each user (the OVMS client's concurrent worker) sends exactly that many requests
    users, steps = 4, 25
    before = counters(server, "uniform")
    args = ["--api", "kfs", "--model_name", "uniform", "--steps_number", str(steps), "--error_exposition", "1"]
    t0 = time.monotonic()
    if mode == "master":
        out = ROOT / "ovms-result-test-steps.json"
        try:
            master, _ = run_distributed(server.grpc_address, *args, "--result_file", str(out), users=users,
                                        run_time="60s")
            doc = json.loads(out.read_text())
        finally:
            out.unlink(missing_ok=True)
        locust_count = master.requests
    else:
        out = tmp_path / "result.json"
        extra = ["--processes", "2"] if mode == "processes" else []
        result = run_locust(server.grpc_address, *extra, *args, "--result_file", str(out), users=users,
                            run_time="60s")
        doc = json.loads(out.read_text())
        locust_count = result.requests
    assert time.monotonic() - t0 < 40   # stopped by the count, not the 60 s run time
    s = doc["statistics"]
    ok, bad = counters(server, "uniform")
    assert s["total_batches"] == users * steps == locust_count
    assert (s["pass_batches"], s["fail_batches"]) == (ok - before[0], bad - before[1])


def test_outputs_thresholds_and_identity(server, tmp_path):
    out = tmp_path / "result.json"
    result = run_locust(server.grpc_address, "--api", "kfs", "--model_name", "tail", "--result_file", str(out),
                        "--ovms_json", "--print_all", "--ovms_id", "run7", "--report_warmup", "--warmup", "0.5",
                        "--check_p99_ms", "20", "--check_fail_ratio", "0.5", users=2, run_time="3s")
    assert result.returncode == 3, result.stderr[-2000:]   # p99 is about 50 ms: the threshold is broken
    assert "threshold broken: p99" in result.stderr and "--check_fail_ratio" not in result.stderr.split("broken")[-1]
    doc = json.loads(out.read_text())
    assert doc["thresholds"]["broken"] and doc["thresholds"]["broken"][0].startswith("p99 ")
    assert doc["parameters"]["server"]["name"] == "ovms-refserver" and doc["parameters"]["server"]["api"] == "kfs"
    assert doc["parameters"]["client"]["locust"] and doc["parameters"]["users"] == 2
    # the OVMS client's output lines, from the same statistics
    line = next(x for x in result.stdout.splitlines() if x.startswith("JSON-OUTPUT:###run7###STATISTICS###"))
    stats = json.loads(line.split("###", 3)[3])
    assert stats == json.loads(json.dumps(doc["statistics"]))
    assert f"run7: total_batches: {stats['total_batches']}" in result.stdout
    assert "warmup_total_batches" in stats and stats["warmup_total_batches"] > 0
    assert "OVMS metrics (window | total):" in result.stdout


def test_sigint_still_writes_the_result(server, tmp_path):
    out = tmp_path / "result.json"
    cmd = LOCUST + ["-f", str(LOCUSTFILE), "--host", server.grpc_address, "--headless", "-u", "2", "-r", "2",
                    "-t", "60s", "--skip-log-setup", "--api", "kfs", "--model_name", "uniform", "--result_file",
                    str(out), "--error_exposition", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        terminate(proc)
    # the interrupt reaches Locust's main greenlet only, never a user in the middle of a gRPC call
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err[-3000:]
    doc = json.loads(out.read_text())
    assert doc["statistics"]["total_batches"] > 50
    assert doc["phases"]["stop"] - doc["phases"]["t0"] < 20


def test_a_killed_worker_is_reported_and_its_data_kept(server, tmp_path):
    out = ROOT / "ovms-result-test-killed.json"
    master, workers = start_distributed(["--expect-workers", "2", "--headless", "-u", "4", "-r", "4", "-t", "9s",
                                         "--host", server.grpc_address, "--api", "kfs", "--model_name", "tail",
                                         "--result_file", str(out), "--json"])
    try:
        time.sleep(5.5)                    # past the first worker reports (every 3 s)
        workers[0].send_signal(signal.SIGKILL)
        stdout, err = master.communicate(timeout=60)
        doc = json.loads(out.read_text())
        locust_total = sum(e["num_requests"] for e in json.loads(stdout[stdout.rfind("\n[") + 1:]))
    finally:
        for p in [master, *workers]:
            terminate(p)
        out.unlink(missing_ok=True)
    states = sorted(doc["workers"].values())
    assert states[0] == "final" and states[1].startswith("missing final: data up to its last report at 20"), states
    assert "; lost at 20" in states[1]   # which worker, and when the master found it gone
    lost = next(c for c, state in doc["workers"].items() if state != "final")
    assert f"worker {lost} lost at 20" in err and "its data up to its last report at 20" in err, err[-3000:]
    assert "sent no final snapshot" in err
    assert doc["statistics"]["submetrics"] == 2
    # the lost worker's requests up to its last report are in the result, beside the survivor's: the same
    # reports carry Locust's own statistics, so both totals agree
    assert doc["statistics"]["total_batches"] == locust_total > 0
