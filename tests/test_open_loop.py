"""Open-loop load (--arrival_rate, --arrivals, --max_throughput) against a real reference server, in real Locust
processes: coordinated omission made visible, achieved rates, Poisson arrivals, the merge over two load
processes, the OVMS client's --max_throughput, and bad input.

Tolerances. A constant schedule puts exactly ``rate * window`` intended starts in a window; the count of
completions in it differs only by the requests in flight at its two edges (a couple at 200 req/s and a few
ms of latency), so 1 % (10 requests of 1000) holds on a busy machine too, provided the client keeps up (a
few ms behind at worst). Poisson arrivals put N ~ Poisson(rate * window) in it: sd sqrt(N), and the check
allows 4 sd (one run in 16000 outside by chance). The stall: 200 ms of every 2 s the server holds every
request that arrives; an open-loop schedule sends 10 % of its requests into a stall, which wait up to 200 ms
from their intended start, so its p99 is about 180 ms; a closed loop of 8 users gets at most 8 requests per
stall stuck, out of thousands per period, so its p99 stays at the server's plain latency (a few ms).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import tempfile
from pathlib import Path

import pytest

from metrics_ext.report import summary_keys
from metrics_ext.result import ovms_statistics, summary_rows
from metrics_ext.series import LATE_S, Phases, Recorder
from ovms_users.arrivals import Schedule
from refserver.launcher import RefServer
from tests.locust_run import LOCUST, LOCUSTFILE, _env, run_locust

X = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
Y = {"name": "y", "datatype": "FP32", "shape": [-1, 4]}
CONFIG = {"seed": 1, "models": [
    {"name": "stall", "kind": "add", "inputs": [X], "outputs": [Y],
     "latency": {"distribution": "fixed", "ms": 0, "stall": {"every_s": 2, "duration_ms": 200}}},
    {"name": "fast", "kind": "add", "inputs": [X], "outputs": [Y]},
]}
OPEN_KEYS = [f"{p}{k}" for p in ("", "window_") for k in (
    "service_latency_mean", "service_latency_p50", "service_latency_p99", "service_latency_max",
    "schedule_lag_mean", "schedule_lag_p50", "schedule_lag_p99", "schedule_lag_max", "late_requests")] + [
    "arrival_process", "arrival_rate_target", "arrival_frame_rate_target", "arrival_rate_achieved",
    "arrival_frame_rate_achieved", "in_flight_limit", "late_threshold"]


@pytest.fixture(scope="module")
def server():
    with RefServer(config=CONFIG) as srv:
        yield srv


def run(server: RefServer, model: str, *args: str, users: int, run_time: str, folder: Path) -> dict:
    """A headless run on the KServe gRPC API; its result's statistics (exit code 0 required)."""
    result_file = folder / f"result-{len(list(folder.iterdir()))}.json"
    out = run_locust(server.grpc_address, "--api", "kfs", "--model_name", model, "--result_file", str(result_file),
                     "--status_line", "off", *args, users=users, run_time=run_time, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.failures == 0
    return json.loads(result_file.read_text())["statistics"]


def check_consistent(s: dict) -> None:
    """Every request's latency from its intended start is its service time plus its lag: so are the means."""
    for p in ("", "window_"):
        assert s[f"{p}mean_latency"] == pytest.approx(s[f"{p}service_latency_mean"] + s[f"{p}schedule_lag_mean"],
                                                      rel=1e-6)
        assert 0 <= s[f"{p}schedule_lag_p50"] <= s[f"{p}schedule_lag_p99"] <= s[f"{p}schedule_lag_max"]
        assert 0 < s[f"{p}service_latency_p50"] <= s[f"{p}service_latency_p99"] <= s[f"{p}service_latency_max"]
        # a request's intended-start latency is at least its service time: so is each quantile (within 1 %)
        assert s[f"{p}latency_p99"] >= s[f"{p}service_latency_p99"] * 0.99
        assert s[f"{p}pass_max_latency"] >= s[f"{p}service_latency_max"] * 0.99
        assert 0 <= s[f"{p}late_requests"] <= s[f"{p}total_batches"]
    assert s["late_threshold"] == LATE_S


# ---------------------------------------------------------------------------------- coordinated omission

def test_open_loop_sees_the_stall_that_a_closed_loop_hides(server, tmp_path):
    opened = run(server, "stall", "--arrival_rate", "200", "--warmup", "1", "--window", "6", users=32,
                 run_time="7s", folder=tmp_path)
    closed = run(server, "stall", "--warmup", "1", "--window", "6", users=8, run_time="7s", folder=tmp_path)
    # the same server: 10 % of open-loop requests meet a stall; a closed loop's 8 users get 8 of thousands stuck
    assert opened["window_latency_p99"] > 0.100, opened
    assert closed["window_latency_p99"] < 0.050, closed
    assert closed["window_total_batches"] > 1200   # it did send more than the open loop, and saw little of the stall
    assert set(OPEN_KEYS) <= set(opened)
    assert not any(k in closed for k in OPEN_KEYS)   # closed loop: the result is as it always was
    check_consistent(opened)
    assert opened["in_flight_limit"] == 32 and opened["arrival_process"] == "constant"
    assert opened["arrival_rate_target"] == 200 and opened["arrival_frame_rate_target"] is None
    # the stall shows in the service time too (requests keep arriving into it): open loop keeps sending
    assert opened["window_service_latency_p99"] > 0.100


# ---------------------------------------------------------------------------------------- achieved rates

def test_constant_rate_is_achieved_within_one_percent(server, tmp_path):
    s = run(server, "fast", "--arrival_rate", "200", "--warmup", "2", "--window", "5", users=16, run_time="8s",
            folder=tmp_path)
    assert s["window_total_duration"] == pytest.approx(5.0)
    assert s["arrival_rate_achieved"] == pytest.approx(200, rel=0.01)
    assert s["arrival_rate_achieved"] == s["window_total_batches"] / s["window_total_duration"]
    assert s["window_schedule_lag_p50"] < 0.010   # the client keeps up: lag is the timer's, about 1 ms
    check_consistent(s)


def test_poisson_arrivals_rate_within_four_sd(server, tmp_path):
    rate, window = 500, 5
    s = run(server, "fast", "--arrival_rate", str(rate), "--arrivals", "poisson", "--warmup", "2", "--window",
            str(window), users=32, run_time="8s", folder=tmp_path)
    expected = rate * window
    assert abs(s["window_total_batches"] - expected) <= 4 * math.sqrt(expected), s["window_total_batches"]
    assert s["arrival_process"] == "poisson"
    check_consistent(s)


def test_two_processes_share_the_rate(server, tmp_path):
    s = run(server, "fast", "--processes", "2", "--arrival_rate", "200", "--warmup", "2", "--window", "5",
            users=16, run_time="8s", folder=tmp_path)
    assert s["submetrics"] == 2
    assert s["arrival_rate_achieved"] == pytest.approx(200, rel=0.015)
    assert s["in_flight_limit"] == 16
    check_consistent(s)


def test_max_throughput_is_an_open_loop_schedule_in_frames(server, tmp_path):
    s = run(server, "fast", "--max_throughput", "400", "--bs", "2", "--warmup", "2", "--window", "5", users=8,
            run_time="8s", folder=tmp_path)
    assert s["arrival_rate_achieved"] == pytest.approx(200, rel=0.01)        # 400 frames/s in batches of 2
    assert s["arrival_frame_rate_achieved"] == pytest.approx(400, rel=0.01)
    assert s["arrival_frame_rate_target"] == 400 and s["arrival_rate_target"] is None
    assert set(OPEN_KEYS) <= set(s)
    check_consistent(s)
    # the console summary (and the web UI tab, the HTML report) show the schedule, service time and lag
    rows = {row[0]: row[1:] for row in summary_rows(s)}
    assert rows["target frames/s (constant)"] == ("400.0", "400.0")
    assert rows["achieved req/s"][0] == f"{s['arrival_rate_achieved']:.1f}"
    assert rows["service p99 ms"] == (f"{s['window_service_latency_p99'] * 1000:.3f}",
                                      f"{s['service_latency_p99'] * 1000:.3f}")
    assert rows["late > 2 ms"] == (str(s["window_late_requests"]), str(s["late_requests"]))
    assert set(summary_keys({"statistics": s})) <= set(s)


# -------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, option", [
    (["--arrival_rate", "-5"], "--arrival_rate"),
    (["--max_throughput", "0"], "--max_throughput"),
    (["--arrival_rate", "100", "--arrivals", "bursty"], "--arrivals"),
    (["--arrivals", "poisson"], "--arrivals"),
    (["--arrival_rate", "100", "--max_throughput", "50"], "--arrival_rate"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, option):
    # the options are checked before the server is asked anything: no server behind this address
    cmd = LOCUST + ["-f", str(LOCUSTFILE), "--host", "127.0.0.1:9", "--headless", "-u", "1", "-t", "5s",
                    "--skip-log-setup", "--api", "kfs", "--model_name", "fast", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(),
                         cwd=tempfile.mkdtemp(prefix="locust-bad-"))
    errors = [line for line in out.stderr.splitlines() if "ovms: error:" in line]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert len(errors) == 1 and option in errors[0], out.stderr[-2000:]


# ------------------------------------------------------------------------- the schedule and the merge math

def test_schedule_gaps_constant_and_poisson():
    constant = Schedule()
    constant.configure(400.0, per_frame=True, poisson=False, seed=0, worker_index=0)
    constant.join()
    starts = [constant.claim(2) for _ in range(5)]
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([2 / 400] * 4)   # batch size / frames/s
    gaps = []
    for worker in (0, 1):
        poisson = Schedule()
        poisson.configure(100.0, per_frame=False, poisson=True, seed=7, worker_index=worker)
        poisson.join()
        t = [poisson.claim() for _ in range(20001)]
        gaps.append([b - a for a, b in itertools.pairwise(t)])
    for g in gaps:   # exponential gaps: mean 1/rate, sd = mean; 20000 draws put both within a few %
        mean = sum(g) / len(g)
        sd = math.sqrt(sum((x - mean) ** 2 for x in g) / len(g))
        assert mean == pytest.approx(0.01, rel=0.03) and sd / mean == pytest.approx(1.0, rel=0.05)
        assert sum(x < 0.01 * math.log(2) for x in g) / len(g) == pytest.approx(0.5, abs=0.02)   # the median
    assert gaps[0][:10] != gaps[1][:10]   # each process its own stream (seeded: the same in every run)


def test_service_and_lag_merge_exactly_across_snapshots():
    phases = Phases(0.0, 10.0, 50.0)
    rows = [(i % 7 != 0, 0.005 + 0.001 * (i % 17), 1 + i % 3, 1.0 + i * 0.5, 0.0004 * (i % 11)) for i in range(100)]
    whole, parts = Recorder(phases), [Recorder(phases), Recorder(phases)]
    for i, (ok, latency, frames, done, lag) in enumerate(rows):
        whole.record(ok, latency, frames, done, None, lag)
        parts[i % 2].record(ok, latency, frames, done, None, lag)
    arrivals = {"process": "constant", "rate": 10.0, "frame_rate": None}
    a = ovms_statistics(whole, 60.0, 4, 1, arrivals=arrivals)
    b = ovms_statistics(Recorder.merged([p.snapshot() for p in parts]), 60.0, 4, 2, arrivals=arrivals)
    for key in OPEN_KEYS:   # the same, whichever process recorded which request
        expected = pytest.approx(b[key], rel=1e-12) if isinstance(b[key], float) else b[key]
        assert a[key] == expected, key
    window = [r for r in rows if 10.0 <= r[3] < 60.0]
    assert a["window_late_requests"] == sum(r[4] > LATE_S for r in window)
    assert a["window_schedule_lag_max"] == max(r[4] for r in window)
    assert a["window_service_latency_mean"] == pytest.approx(sum(r[1] - r[4] for r in window) / len(window))
    assert a["arrival_rate_achieved"] == len(window) / 50.0
    assert not any(k in ovms_statistics(whole, 60.0, 4, 1) for k in OPEN_KEYS)   # closed loop: no such keys
