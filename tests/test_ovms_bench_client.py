"""``ovms-bench`` with the OVMS benchmark client's flags, as a subprocess against real reference servers.

The original README's commands first (list the models, a model's metadata, ``-n 8 --report_warmup
--print_all``), then each option of the original by its effect, then bad and conflicting flags.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from metrics_ext.series import OVMS_KEYS
from refserver.launcher import RefServer
from tests.conftest import scrape_counter
from tests.locust_run import ROOT, free_port

BENCH = [sys.executable, "-m", "ovms_bench.cli"]
X = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
Y = {"name": "y", "datatype": "FP32", "shape": [-1, 4]}
CONFIG = {"seed": 3, "models": [
    {"name": "flaky", "kind": "add", "inputs": [X], "outputs": [Y],
     "faults": {"rate": 1.0, "code": "UNAVAILABLE", "message": "always down"}},
    {"name": "slow", "kind": "add", "inputs": [X], "outputs": [Y], "latency": {"distribution": "fixed", "ms": 200}},
    {"name": "quick", "kind": "add", "inputs": [X], "outputs": [Y]},
]}


@pytest.fixture(scope="module")
def odd_server():
    with RefServer(config=CONFIG) as srv:
        yield srv


def bench(*args: str, cwd: Path, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(BENCH + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def addr(srv: RefServer) -> list[str]:
    host, grpc_port = srv.grpc_address.rsplit(":", 1)
    return ["-a", host, "-p", grpc_port, "-r", srv.rest_url.rsplit(":", 1)[1]]


def stats_of(cwd: Path, name: str = "ovms-result.json") -> dict:
    return json.loads((cwd / name).read_text())["statistics"]


def print_all(stdout: str, ident: str = "worker") -> dict[str, str]:
    return dict(line[len(ident) + 2:].split(": ", 1) for line in stdout.splitlines() if line.startswith(ident + ": "))


# ------------------------------------------------------------------ the original README's commands
def test_list_models(refserver, tmp_path):
    out = bench(*addr(refserver), "-l", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^resnet\s+1\s+AVAILABLE$", out.stdout, re.M) and "versioned   2" in out.stdout
    out = bench(*addr(refserver), "-l", "-j", "--api", "KFS", cwd=tmp_path)
    status = json.loads(out.stdout.split("###STATUS###", 1)[1].splitlines()[0])
    assert {"name": "versioned", "version": "2", "state": "READY"} in status   # KServe says READY


def test_model_metadata(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "resnet", "-l", "-j", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout.split("###METADATA###", 1)[1])
    assert meta == {"model_name": "resnet", "model_version": 1,
                    "inputs": {"0": {"dtype": "DT_FLOAT", "shape": [1, 3, 224, 224]}},
                    "outputs": {"1463": {"dtype": "DT_FLOAT", "shape": [1, 1000]}}}
    status = json.loads(out.stdout.split("###STATUS###", 1)[1].splitlines()[0])
    assert status["resnet"]["model_version_status"][0]["state"] == "AVAILABLE"   # OVMS's /v1/config shape
    text = bench(*addr(refserver), "-m", "resnet", "-l", cwd=tmp_path).stdout
    assert "0" in text and "FP32" in text and "1463" in text


def test_n8_report_warmup_print_all_has_every_key_and_consistent_values(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "resnet", "-n", "8", "--report_warmup", "--print_all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    shown = print_all(out.stdout)
    for prefix in ("", "window_", "warmup_"):
        for key in OVMS_KEYS:
            assert prefix + key in shown, prefix + key
    assert {"submetrics", "window_hist_factor", "window_hist_base"} <= set(shown)
    assert any(k.startswith("window_hist_latency_") for k in shown)
    stats = stats_of(tmp_path)
    assert {k: str(v) for k, v in stats.items()} == shown          # the lines are the JSON result's values
    assert stats["total_batches"] == stats["pass_batches"] == 8 and stats["total_frames"] == 8
    assert stats["window_total_batches"] + stats["warmup_total_batches"] == 8
    assert stats["brutto_batch_rate"] == pytest.approx(8 / stats["total_duration"])
    assert stats["pass_max_latency"] >= stats["latency_p50"] >= stats["min_latency"] > 0
    assert "Traceback" not in out.stderr and not (tmp_path / "ovms-result.locust").exists()


# ----------------------------------------------------------------------- each option, by its effect
def test_id_json_concurrency_and_batch_sizes(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "two_inputs", "-i", "run9", "-j", "-c", "3", "-n", "4", "-b", "1", "2",
                "--print_all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON-OUTPUT:###run9###STATISTICS###"))
    stats = json.loads(line.split("###", 3)[3])
    assert print_all(out.stdout, "run9")["total_batches"] == "12"       # -i names the lines; 3 users x 4 requests
    assert stats["total_batches"] == 12 and stats["total_frames"] == 18   # bs 1, 2, 1, 2 per user
    dash = bench(*addr(refserver), "-m", "two_inputs", "-n", "4", "-b", "1-2", cwd=tmp_path)
    assert dash.returncode == 0 and stats_of(tmp_path)["total_frames"] == 6


def test_shape_data_dataset_length_and_dump_png(refserver, tmp_path):
    # a dynamic model needs -s; the forced shape sets the tensor, -b the batch
    assert bench(*addr(refserver), "-m", "dynamic", "-n", "2", cwd=tmp_path).returncode == 2
    out = bench(*addr(refserver), "-m", "dynamic", "-s", "1", "6", "-b", "3", "-n", "2", "--print_all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:] and stats_of(tmp_path)["total_frames"] == 6
    # -k: three distinct requests over bs 1, 2 cycle as 1, 2, 1 (frames 1+2+1+1+2+1 = 8), two as 1, 2 (9)
    bench(*addr(refserver), "-m", "two_inputs", "-b", "1", "2", "-k", "3", "-n", "6", cwd=tmp_path)
    assert stats_of(tmp_path)["total_frames"] == 8
    bench(*addr(refserver), "-m", "two_inputs", "-b", "1", "2", "-n", "6", cwd=tmp_path)
    assert stats_of(tmp_path)["total_frames"] == 9
    # -d png with --dump_png: the generated images are written to the temporary folder, as the original's /tmp
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    out = bench(*addr(refserver), "-m", "image", "-d", "png-xrandom", "--xrand", "3", "-b", "2", "-n", "2",
                "--dump_png", cwd=tmp_path, env={"TMPDIR": str(dumps)})
    assert out.returncode == 0, out.stderr[-2000:]
    pngs = sorted(dumps.glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # -d string on a BYTES model
    assert bench(*addr(refserver), "-m", "string", "-d", "string", "-n", "2", cwd=tmp_path).returncode == 0


def test_model_version_reaches_the_server(refserver, tmp_path):
    def served(version: str) -> float:
        text = requests.get(f"{refserver.rest_url}/metrics", timeout=5).text
        return scrape_counter(text, "ovms_requests_success", api="KServe", interface="gRPC", method="ModelInfer",
                              name="versioned", version=version)

    before = served("1"), served("2")
    out = bench(*addr(refserver), "-m", "versioned", "-v", "1", "-n", "5", "--api", "KFS", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (served("1") - before[0], served("2") - before[1]) == (5, 0)


def test_duration_warmup_window_and_histogram(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "dummy", "-t", "3", "-u", "1", "-w", "1", "--hist_factor", "1000",
                "--hist_base", "1", "--quantile_list", "0.5", "0.9", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    s = stats_of(tmp_path)
    assert 2.9 < s["total_duration"] < 5 and s["window_total_duration"] == pytest.approx(1.0, abs=0.01)
    assert s["window_hist_factor"] == 1000 and s["window_hist_base"] == 1
    assert s["qos_quantile_1"] == 0.9 and s["qos_latency_1"] not in ("", None)
    assert "warmup_total_batches" not in s and not any(k.startswith("window_hist_latency_") for k in s)


def test_error_limit_exposition_and_print_time(odd_server, tmp_path):
    started = time.monotonic()
    out = bench(*addr(odd_server), "-m", "flaky", "-t", "60", "-e", "5", "-x", "2", "--print_time", cwd=tmp_path)
    assert time.monotonic() - started < 40                       # stopped by -e, not by -t
    assert out.returncode == 1
    xe = [line for line in out.stderr.splitlines() if "XE failed request" in line]
    assert len(xe) == 2                                           # -x 2: the first two failures in full
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\.\d{6}\] XE ", line) for line in xe)   # --print_time
    s = stats_of(tmp_path)
    assert s["pass_batches"] == 0 and 5 < s["fail_batches"] <= 30   # over the limit, then the stop (a few in flight)


def test_step_and_metadata_timeouts(odd_server, tmp_path):
    out = bench(*addr(odd_server), "-m", "slow", "-n", "3", "--step_timeout", "0.05", cwd=tmp_path)
    assert stats_of(tmp_path)["fail_batches"] == 3 and "DEADLINE_EXCEEDED" in json.dumps(stats_of(tmp_path))
    started = time.monotonic()
    out = bench("-a", "127.0.0.1", "-p", str(free_port()), "-m", "slow", "-n", "1", "--metadata_timeout", "1",
                cwd=tmp_path)
    assert out.returncode == 2 and time.monotonic() - started < 20 and "Traceback" not in out.stderr


def test_max_throughput_and_value_range(odd_server, tmp_path):
    out = bench(*addr(odd_server), "-m", "quick", "-c", "2", "-t", "3", "-b", "2", "--max_throughput", "100",
                "--min_value", "5", "--max_value", "6", "--api", "KFS", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert stats_of(tmp_path)["window_brutto_frame_rate"] == pytest.approx(100, rel=0.1)


def test_arrival_rate_poisson(odd_server, tmp_path):
    out = bench(*addr(odd_server), "-m", "quick", "-t", "4", "-u", "1", "-w", "2", "--arrival_rate", "150",
                "--arrivals", "poisson", "--seed", "4", "--api", "KFS", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = stats_of(tmp_path)
    assert stats["arrival_process"] == "poisson" and stats["arrival_rate_target"] == 150
    assert stats["window_total_batches"] == pytest.approx(300, abs=4 * 300 ** 0.5)   # 4 sd of a Poisson count
    for flags in (("--arrival_rate", "10", "--max_throughput", "10"), ("--arrivals", "poisson")):
        bad = bench(*addr(odd_server), "-m", "quick", "-t", "1", *flags, cwd=tmp_path)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr
        assert "--arrival" in bad.stderr.strip().splitlines()[-1]


def test_stateful_sequences(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "stateful", "-q", "4", "--stateful_id", "70", "--stateful_hop", "5", "-n",
                "8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert stats_of(tmp_path)["pass_batches"] == 8
    # without -q the stateful model refuses requests that carry no sequence
    assert bench(*addr(refserver), "-m", "stateful", "-n", "2", cwd=tmp_path).returncode == 1


def test_tls_certs_dir(tls_refserver, certs_dir, tmp_path):
    out = bench(*addr(tls_refserver), "-m", "dummy", "-n", "3", "--certs_dir", str(certs_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:] and stats_of(tmp_path)["pass_batches"] == 3
    plain = bench(*addr(tls_refserver), "-m", "dummy", "-n", "1", "--metadata_timeout", "1", cwd=tmp_path)
    assert plain.returncode == 2


def test_rest_api_and_print_summary(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "dummy", "-n", "6", "--api", "REST", "-ps", "--unbuffered", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    s = stats_of(tmp_path)
    assert s["pass_batches"] == 6
    assert "Benchmark Summary:" in out.stdout and f"total batches: {s['total_batches']}" in out.stdout
    assert f"window p95 latency: {s['window_latency_p95'] * 1000:.3f} ms" in out.stdout


def test_internal_version_and_status_line(refserver, tmp_path):
    out = bench("--internal_version", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, "2.7\n")
    quiet = bench(*addr(refserver), "-m", "dummy", "-t", "2", cwd=tmp_path)
    assert "[ovms]" not in quiet.stderr                          # not a terminal: no status line
    forced = bench(*addr(refserver), "-m", "dummy", "-t", "3", "--status_line", "on", cwd=tmp_path)
    assert re.search(r"\[ovms\]\s+\d+ s\s+\d+ requests\s+[\d.]+ req/s\s+0 errors", forced.stderr)


def test_mongo_flags(refserver, mongo_server, tmp_path):
    import pymongo

    out = bench(*addr(refserver), "-m", "dummy", "-n", "3", "-Y", f"mongodb://{mongo_server}:bench:client",
                "-y", "owner:qa", "build:7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    client = pymongo.MongoClient(f"mongodb://{mongo_server}", serverSelectionTimeoutMS=5000)
    try:
        (doc,) = list(client["bench"]["client"].find({"owner": "qa", "build": "7"}))
    finally:
        client.close()
    assert doc["final_results"]["xcli_total_batches"] == 3 and doc["concurr"] in (1, "1")


def test_processes_spread_the_users(refserver, tmp_path):
    out = bench(*addr(refserver), "-m", "dummy", "-c", "4", "-n", "5", "--processes", "2", cwd=tmp_path,
                timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    s = stats_of(tmp_path)
    assert s["total_batches"] == 20 and s["submetrics"] == 2


# ------------------------------------------------------------------------- bad and conflicting flags
@pytest.mark.parametrize("args, says", [
    (["-m", "dummy", "-t", "1"], "-a/--server_address"),
    (["-a", "h", "-m", "dummy", "-t", "1"], "-p/--grpc_port"),
    (["-a", "h", "-p", "9", "-m", "dummy", "-t", "1", "--api", "REST"], "-r/--rest_port"),
    (["-a", "h", "-p", "9", "-t", "1"], "-m/--model_name"),
    (["-a", "h", "-p", "9", "-m", "x"], "-t/--duration"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "soon"], "not a number"),
    (["-a", "h", "-p", "99999", "-m", "x", "-t", "1"], "port number"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "-b", "0"], "positive integers"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "-c", "0"], "-c/--concurrency"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "--quantile_list", "1.5"], "between 0 and 1"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "--min_value", "9", "--max_value", "1"], "--max_value"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "--api", "GRPC"], "--api"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "--master", "--worker", "m:1"], "exclude each other"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "--bogus"], "unrecognized arguments: --bogus"),
    (["-a", "h", "-p", "9", "-m", "x", "-t", "1", "-q", "1"], "at least 2"),
    ([], "give the server and the model"),
])
def test_bad_flags_one_line_and_exit_2(args, says, tmp_path):
    out = bench(*args, cwd=tmp_path, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_master_and_worker_join_a_distributed_run(refserver, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    master = subprocess.Popen(BENCH + [*addr(refserver), "-m", "dummy", "-t", "3", "-c", "2", "--master",
                                       "--master_bind", f"127.0.0.1:{port}", "--expect_workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    worker = subprocess.Popen(BENCH + ["--worker", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        out, err = master.communicate(timeout=60)
        assert worker.wait(timeout=30) == 0
    finally:
        for proc in (master, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert master.returncode == 0, err[-2000:]
    s = stats_of(tmp_path)
    assert s["submetrics"] == 1 and s["pass_batches"] > 50


# ------------------------------------------------------------------------------------------- sweep
def test_find_knee():
    from ovms_bench.sweep import find_knee

    rows = [{"users": 1, "rate": 100.0}, {"users": 2, "rate": 190.0}, {"users": 4, "rate": 200.0},
            {"users": 8, "rate": 150.0}]
    assert find_knee(rows, 0.10) == 2          # 2 -> 4 adds 5 %: 2 users is the knee
    assert find_knee(rows[:2], 0.10) == 2      # still gaining at the last level
    assert find_knee(rows[:1], 0.10) is None


def test_sweep_runs_each_level_and_reports(refserver, tmp_path):
    out = bench("sweep", "--levels", "1", "2", "--out_dir", str(tmp_path / "sw"), "--p99_limit_ms", "1000", "--",
                *addr(refserver), "-m", "dummy", "-t", "2", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [row["users"] for row in summary["levels"]] == [1, 2]
    for row in summary["levels"]:
        s = stats_of(tmp_path / "sw", f"users-{row['users']}.json")
        assert row["rate"] == s["window_brutto_batch_rate"] and row["requests"] == s["window_total_batches"]
    assert summary["knee_users"] in (1, 2) and summary["best_under_p99_limit"] == 2
    assert re.search(r"^\s+2\s+[\d.]+\s+[\d.]+", out.stdout, re.M) and "knee:" in out.stdout
    assert "[sweep] 2/2: 2 users" in out.stderr
    bad = bench("sweep", "--levels", "4", "2", "--", *addr(refserver), "-m", "dummy", "-t", "1", cwd=tmp_path)
    assert bad.returncode == 2 and "ascending" in bad.stderr
    again = bench("sweep", "--levels", "1", "--", *addr(refserver), "-m", "dummy", "-t", "1", "-c", "3",
                  cwd=tmp_path)
    assert again.returncode == 2 and "drop -c" in again.stderr


def test_compare_is_a_subcommand(tmp_path):
    sample = ROOT / "tests" / "data" / "sample_result.json"
    out = bench("compare", str(sample), str(sample), "--max_regression", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "brutto req/s" in out.stdout and "+0.00%" in out.stdout


def test_web_opens_the_ui_with_the_flags_in_the_form(refserver, tmp_path):
    port = free_port()
    proc = subprocess.Popen(BENCH + [*addr(refserver), "-m", "resnet_dyn", "-b", "1", "4", "--web",
                                     f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline, page = time.monotonic() + 30, None
        while page is None and time.monotonic() < deadline:
            try:
                page = requests.get(f"http://127.0.0.1:{port}/", timeout=2).text
            except requests.RequestException:
                time.sleep(0.2)
        assert page is not None, "the web UI did not answer"
        args = json.loads(re.search(r"window\.templateArgs = (\{.*?\})\s*</script>", page, re.S).group(1)) \
            if "window.templateArgs" in page else {}
        extra = args.get("extra_options") or {}
        assert extra["model_name"]["default_value"] == "resnet_dyn" and extra["bs"]["default_value"] == "1 4"
        assert args["host"] == refserver.grpc_address
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ------------------------------------------- options whose effect is in the data the users build
def suite_options(*argv: str) -> dict:
    """The suite's options that ``ovms-bench ARGV`` hands to Locust, as the users parse them."""
    from ovms_bench.client import build_parser, locust_command

    cmd = locust_command(build_parser().parse_args(list(argv)))
    tokens, values = cmd[cmd.index("--api"):], {}
    while tokens:
        name = tokens.pop(0)[2:]
        values[name] = tokens.pop(0) if tokens and not tokens[0].startswith("--") else True
    return values


def test_value_range_xrand_and_sequence_ids_reach_the_data():
    import io

    import numpy as np
    from PIL import Image

    from ovms_users.dataset import build_dataset
    from ovms_users.options import BenchOptions
    from ovms_users.workload import SequenceIds
    from ovms_wire.dtypes import by_name
    from ovms_wire.spec import ModelSpec, TensorSpec

    base = ["-a", "h", "-p", "9", "-n", "1"]
    tensor = ModelSpec("m", 1, (TensorSpec("x", by_name("FP32"), (-1, 64)),), (TensorSpec("y", by_name("FP32"),
                                                                                        (-1, 64)),))
    opts = BenchOptions.parse(suite_options(*base, "-m", "m", "--min_value", "5", "--max_value", "6", "-b", "3"))
    values = np.concatenate([e.inputs["x"][1].ravel() for e in build_dataset(tensor, opts)])
    assert values.min() >= 5 and values.max() <= 6 and values.std() > 0.1

    image = ModelSpec("img", 1, (TensorSpec("image", by_name("UINT8"), (-1, 32, 48, 3)),),
                      (TensorSpec("out", by_name("FP32"), (-1, 1)),))
    colours = {}
    for xrand in (2, 40):
        opts = BenchOptions.parse(suite_options(*base, "-m", "img", "-d", "png-xrandom", "--xrand", str(xrand),
                                                "--seed", "4"))
        (blob,) = build_dataset(image, opts)[0].inputs["image"][1].ravel()
        pixels = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).reshape(-1, 3)
        colours[xrand] = len({tuple(p) for p in pixels})
    assert colours[2] <= 2 < colours[40]          # one colour per Voronoi seed point

    opts = BenchOptions.parse(suite_options(*base, "-m", "stateful", "-q", "4", "--stateful_id", "70",
                                            "--stateful_hop", "5"))
    assert opts.stateful_length == 4
    _, first, hop = SequenceIds(opts.stateful_id, opts.stateful_hop, 0).for_new_user()
    assert [SequenceIds.nth(first, hop, k) for k in range(3)] == [70, 75, 80]


def test_sync_interval_sets_how_fresh_the_masters_live_numbers_are(refserver, tmp_path):
    def status_counts(interval: str) -> list[int]:
        out = bench(*addr(refserver), "-m", "dummy", "-t", "3", "--processes", "1", "--status_line", "on",
                    "--sync_interval", interval, cwd=tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert stats_of(tmp_path)["total_batches"] > 100     # the final snapshot carries everything anyway
        return [int(n) for n in re.findall(r"\[ovms\]\s+\d+ s\s+(\d+) requests", out.stderr)]

    fresh = status_counts("0.5")    # the load process reports twice a second: the master's status line moves
    assert fresh and max(fresh) > 0
    stale = status_counts("30")     # no report within the 3 s test: the master sees nothing until the final one
    assert stale and max(stale) == 0


def test_status_line_by_default_on_a_terminal(refserver, tmp_path):
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(BENCH + [*addr(refserver), "-m", "dummy", "-t", "3"], stdout=subprocess.DEVNULL,
                            stderr=follower, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:      # the terminal closed: the process ended
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert re.search(r"\[ovms\]\s+\d+ s\s+[1-9]\d* requests", text)   # the live line, rewritten in place
    assert text.rstrip().endswith("\x1b[K") or "\r\x1b[K" in text          # and cleared at the end
