"""``ovms-bench compare``: rows, table, JSON, the regression gate and bad input, on the sample result."""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ovms_bench.compare import CompareError, add_compare_parser, compare_command, compare_results

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "sample_result.json"
ROW_KEYS = {"metric", "key", "a", "b", "delta", "change_pct", "better", "unit"}
RATES = ("brutto req/s", "brutto frames/s", "netto req/s")
LATENCIES = ("latency mean ms", "latency stdev ms", "latency p50 ms", "latency p90 ms", "latency p95 ms",
             "latency p99 ms", "latency p99.9 ms", "latency max ms")


def sample() -> dict:
    return json.loads(SAMPLE.read_text())


def scaled(rate: float, latency: float) -> dict:
    """The sample with every rate (not pass rates) times ``rate`` and every latency times ``latency``."""
    doc = sample()
    stats = doc["statistics"]
    for key, value in stats.items():
        if not isinstance(value, float):
            continue
        if key.endswith(("_batch_rate", "_frame_rate")):
            stats[key] = value * rate
        elif "latency" in key and "hist" not in key and not key.endswith("latency2"):
            stats[key] = value * latency
    return doc


def write(tmp_path: Path, name: str, doc: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def run_inproc(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The subcommand as the other CLI wires it: a parser with add_compare_parser, then args.func(args)."""
    parser = argparse.ArgumentParser(prog="ovms-bench")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *argv])
    assert args.func is compare_command
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovms_bench.compare", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def by_metric(rows: list[dict]) -> dict[str, dict]:
    return {r["metric"]: r for r in rows}


def table_line(out: str, metric: str) -> str:
    lines = [line for line in out.splitlines() if re.match(re.escape(metric) + r"  +\S", line)]
    assert len(lines) == 1, (metric, out)
    return lines[0]


# -------------------------------------------------------------------------------------------- rows

def test_identical_results_change_nothing(capsys):
    rows = compare_results(sample(), sample())
    assert [r["metric"] for r in rows] == [*RATES, "pass rate %", *LATENCIES, "requests", "requests failed",
                                           "frames", "duration s"]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["a"] == r["b"] is not None
        assert r["delta"] == 0 and r["change_pct"] == 0 and r["better"] == "=", r
    code, out, err = run_inproc([str(SAMPLE), str(SAMPLE)], capsys)
    assert code == 0 and err == "" and "warning" not in out
    for r in rows:
        assert table_line(out, r["metric"]).split()[-2:] == ["+0.00%", "same"]


def test_faster_run_is_better_by_the_right_percentages(tmp_path, capsys):
    base, new = sample(), scaled(1.2, 0.8)
    rows = by_metric(compare_results(base, new))
    sa, sb = base["statistics"], new["statistics"]
    expected = {"brutto req/s": ("window_brutto_batch_rate", 1), "brutto frames/s": ("window_brutto_frame_rate", 1),
                "netto req/s": ("window_netto_batch_rate", 1), "latency mean ms": ("window_mean_latency", 1000),
                "latency stdev ms": ("window_stdev_latency", 1000), "latency p50 ms": ("window_latency_p50", 1000),
                "latency p90 ms": ("window_latency_p90", 1000), "latency p95 ms": ("window_latency_p95", 1000),
                "latency p99 ms": ("window_latency_p99", 1000), "latency p99.9 ms": ("window_latency_p99_9", 1000)}
    for metric, (key, scale) in expected.items():
        r = rows[metric]
        assert r["key"] == key
        assert r["a"] == pytest.approx(sa[key] * scale) and r["b"] == pytest.approx(sb[key] * scale)
        assert r["delta"] == pytest.approx((sb[key] - sa[key]) * scale)
        assert r["change_pct"] == pytest.approx((sb[key] - sa[key]) / sa[key] * 100)
        assert r["change_pct"] == pytest.approx(20.0 if metric in RATES else -20.0)
        assert r["better"] == "b", metric
        assert r["unit"] == ("ms" if scale == 1000 else "frames/s" if "frames" in metric else "req/s")
    top = max(sa["window_pass_max_latency"], sa["window_fail_max_latency"]) * 1000
    assert rows["latency max ms"]["a"] == pytest.approx(top) and rows["latency max ms"]["better"] == "b"
    assert rows["pass rate %"]["a"] == rows["pass rate %"]["b"] == pytest.approx(100.0)
    for metric in ("pass rate %", "requests", "requests failed", "frames", "duration s"):
        assert rows[metric]["better"] == "=" and rows[metric]["change_pct"] == 0

    code, out, _ = run_inproc([str(SAMPLE), write(tmp_path, "fast.json", new)], capsys)
    assert code == 0
    line = table_line(out, "brutto frames/s")
    assert line.split()[-2:] == ["+20.00%", "better"]
    assert f"{sa['window_brutto_frame_rate']:.1f}" in line and f"{sb['window_brutto_frame_rate']:.1f}" in line
    assert table_line(out, "latency p99 ms").split()[-2:] == ["-20.00%", "better"]


def test_slower_run_is_worse(tmp_path, capsys):
    base, new = scaled(1.2, 0.8), sample()
    rows = by_metric(compare_results(base, new))
    for metric in RATES:   # 1 / 1.2 - 1
        assert rows[metric]["change_pct"] == pytest.approx(-100 / 6) and rows[metric]["better"] == "a"
    for metric in LATENCIES:   # 1 / 0.8 - 1
        assert rows[metric]["change_pct"] == pytest.approx(25.0) and rows[metric]["better"] == "a"
    code, out, _ = run_inproc([write(tmp_path, "fast.json", base), str(SAMPLE)], capsys)
    assert code == 0
    assert table_line(out, "netto req/s").split()[-2:] == ["-16.67%", "worse"]
    assert table_line(out, "latency mean ms").split()[-2:] == ["+25.00%", "worse"]


def test_total_phase_uses_the_unprefixed_keys(capsys):
    doc = sample()
    rows = by_metric(compare_results(doc, doc, phase="total"))
    assert rows["brutto frames/s"]["key"] == "brutto_frame_rate"
    assert rows["brutto frames/s"]["a"] == doc["statistics"]["brutto_frame_rate"]
    assert rows["requests"]["a"] == doc["statistics"]["total_batches"]
    assert rows["duration s"]["a"] == doc["statistics"]["total_duration"]
    code, out, _ = run_inproc([str(SAMPLE), str(SAMPLE), "--phase", "total"], capsys)
    assert code == 0 and f"{doc['statistics']['total_batches']}" in table_line(out, "requests")


def test_header_describes_both_runs(capsys):
    code, out, _ = run_inproc([str(SAMPLE), str(SAMPLE)], capsys)
    assert code == 0
    header = out.split("\n\n")[0]
    for text in ("model resnet_dyn", "api kfs", "host 127.0.0.1:19000", "users 4", "batch sizes 1-2-4",
                 "server ovms-refserver 0.1.0", "2026-11-24 19:39:42 UTC", "duration 8.04 s"):
        assert header.count(text) == 2, text


def test_zero_base_has_no_percentage(tmp_path, capsys):
    base, new = sample(), sample()
    new["statistics"]["window_fail_batches"] = 5
    new["statistics"]["window_total_batches"] += 5
    rows = by_metric(compare_results(base, new))
    row = rows["requests failed"]
    assert (row["a"], row["b"], row["delta"], row["change_pct"], row["better"]) == (0, 5, 5, None, "a")
    row = rows["requests"]   # more requests is neither better nor worse
    assert row["delta"] == 5 and row["change_pct"] == pytest.approx(500 / base["statistics"]["window_total_batches"])
    assert row["better"] is None
    code, out, _ = run_inproc([str(SAMPLE), write(tmp_path, "fails.json", new)], capsys)
    assert code == 0
    assert table_line(out, "requests failed").split() == ["requests", "failed", "0", "5", "+5", "-", "worse"]
    assert table_line(out, "requests").split()[-2:] == ["+5", "+0.27%"]


def test_missing_keys_show_a_dash(tmp_path, capsys):
    old = sample()
    for key in ("window_latency_p99_9", "window_stdev_latency", "window_fail_max_latency"):
        del old["statistics"][key]
    rows = by_metric(compare_results(old, sample()))
    for metric in ("latency p99.9 ms", "latency stdev ms"):
        r = rows[metric]
        assert r["a"] is None and r["b"] is not None
        assert r["delta"] is None and r["change_pct"] is None and r["better"] is None
    assert rows["latency max ms"]["a"] == pytest.approx(old["statistics"]["window_pass_max_latency"] * 1000)
    code, out, _ = run_inproc([write(tmp_path, "old.json", old), str(SAMPLE)], capsys)
    assert code == 0
    assert table_line(out, "latency p99.9 ms").split()[3:] == ["-", f"{rows['latency p99.9 ms']['b']:.3f}", "-", "-"]


# ------------------------------------------------------------------------------------ JSON and warnings

def test_json_output_is_the_rows(tmp_path):
    done = run_cli(str(SAMPLE), write(tmp_path, "fast.json", scaled(1.2, 0.8)), "--json")
    assert done.returncode == 0 and done.stderr == ""
    rows = json.loads(done.stdout)
    assert isinstance(rows, list) and len(rows) == 16
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["better"] in ("a", "b", "=")
        assert isinstance(r["a"], (int, float)) and isinstance(r["change_pct"], (int, float))
    assert rows == json.loads(json.dumps(compare_results(sample(), scaled(1.2, 0.8))))


def test_unlike_runs_are_flagged_not_refused(tmp_path, capsys):
    other = sample()
    other["parameters"]["options"].update(model_name="resnet", api="tfs", bs="8")
    other["parameters"]["users"] = 16
    other["parameters"]["server"]["version"] = "0.2.0"
    path = write(tmp_path, "other.json", other)
    code, out, _ = run_inproc([str(SAMPLE), path], capsys)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 5, out
    for name, a, b in (("model", "resnet_dyn", "resnet"), ("api", "kfs", "tfs"), ("batch sizes", "1-2-4", "8"),
                       ("users", "4", "16"), ("server", "ovms-refserver 0.1.0", "ovms-refserver 0.2.0")):
        assert f"warning: the runs differ in {name}: {a} (base) vs {b} (new)" in warnings
    done = run_cli(str(SAMPLE), path, "--json")   # the warnings go to stderr, stdout stays JSON
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 16
    assert len(done.stderr.splitlines()) == 5 and done.stderr.startswith("ovms-bench: warning: the runs differ")


# --------------------------------------------------------------------------------------------- the gate

def test_gate_fails_on_a_regression(tmp_path):
    fast = write(tmp_path, "fast.json", scaled(1.2, 0.8))
    done = run_cli(fast, str(SAMPLE), "--max_regression", "5")   # -16.67 % frames/s, +25 % p99
    assert done.returncode == 3, done.stderr
    assert "ovms-bench: regression: window_brutto_frame_rate fell by more than 5%" in done.stdout
    assert "ovms-bench: regression: window_latency_p99 rose by more than 5%" in done.stdout
    assert done.stderr == ""
    done = run_cli(fast, str(SAMPLE), "--max_regression", "5", "--json")   # JSON on stdout, verdict on stderr
    assert done.returncode == 3 and len(json.loads(done.stdout)) == 16
    assert len(done.stderr.splitlines()) == 2 and "Traceback" not in done.stderr


def test_gate_names_only_what_regressed(tmp_path):
    slower = write(tmp_path, "slower.json", scaled(0.9, 1.0))   # throughput -10 %, latency unchanged
    done = run_cli(str(SAMPLE), slower, "--max_regression", "5")
    assert done.returncode == 3
    assert "window_brutto_frame_rate fell" in done.stdout and "window_latency_p99" not in done.stdout
    latency = write(tmp_path, "latency.json", scaled(1.0, 1.1))   # p99 +10 %
    done = run_cli(str(SAMPLE), latency, "--max_regression", "5", "--phase", "total")   # the gate is the window's
    assert done.returncode == 3
    assert "window_latency_p99 rose" in done.stdout and "frame_rate fell" not in done.stdout


@pytest.mark.parametrize(("base", "new", "pct"), [("sample", "sample", "0"), ("fast", "sample", "30"),
                                                  ("sample", "fast", "0")])
def test_gate_passes_within_the_limit(tmp_path, base, new, pct):
    files = {"sample": str(SAMPLE), "fast": write(tmp_path, "fast.json", scaled(1.2, 0.8))}
    done = run_cli(files[base], files[new], "--max_regression", pct)
    assert done.returncode == 0, done.stdout
    assert "regression:" not in done.stdout and f"no regression beyond {pct}%" in done.stdout


def test_gate_refuses_to_pass_without_its_keys(tmp_path):
    old = sample()
    del old["statistics"]["window_latency_p99"]
    done = run_cli(write(tmp_path, "old.json", old), str(SAMPLE), "--max_regression", "5")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and "window_latency_p99" in done.stderr


# ------------------------------------------------------------------------------------------- bad input

def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    no_window = sample()
    no_window["statistics"] = {k: v for k, v in no_window["statistics"].items() if not k.startswith("window_")}
    return {"missing": (str(tmp_path / "nope.json"), "cannot read"),
            "not json": (write(tmp_path, "bad.json", "{not json"), "is not JSON"),
            "binary": (_binary(tmp_path), "is not JSON"),
            "not a result": (write(tmp_path, "other.json", {"name": "x"}), "not an ovms-bench result"),
            "a list": (write(tmp_path, "list.json", [1, 2]), "not an ovms-bench result"),
            "no window": (write(tmp_path, "nowin.json", no_window), "--phase total")}


def _binary(tmp_path: Path) -> str:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00\x01")
    return str(path)


@pytest.mark.parametrize("case", ["missing", "not json", "binary", "not a result", "a list", "no window"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    path, says = _bad_inputs(tmp_path)[case]
    for argv in ((path, str(SAMPLE)), (str(SAMPLE), path)):
        done = run_cli(*argv)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ovms-bench: error: ") and says in lines[0], lines
        assert path in lines[0]


def test_bad_input_in_process(tmp_path, capsys):
    code, out, err = run_inproc([str(tmp_path / "nope.json"), str(SAMPLE)], capsys)
    assert code == 2 and out == "" and err.startswith("ovms-bench: error: cannot read the base result")


def test_phase_without_keys_in_both_results(tmp_path):
    doc = sample()
    doc["statistics"] = {k: v for k, v in doc["statistics"].items() if k.startswith("window_")}
    path = write(tmp_path, "window_only.json", doc)
    assert run_cli(path, path).returncode == 0
    done = run_cli(path, path, "--phase", "total")
    assert done.returncode == 2 and "no total statistics (brutto_frame_rate is missing)" in done.stderr
    assert "--phase window" in done.stderr


@pytest.mark.parametrize("argv", [["--phase", "warmup"], ["--max_regression", "-1"], ["--max_regression", "x"]])
def test_bad_options_are_argparse_errors(argv):
    done = run_cli(str(SAMPLE), str(SAMPLE), *argv)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("ovms-bench compare: error: ")


def test_rows_api_rejects_what_is_not_a_result():
    with pytest.raises(CompareError, match="not an ovms-bench result"):
        compare_results({"timeline": []}, sample())
    doc = copy.deepcopy(sample())
    del doc["statistics"]["window_brutto_frame_rate"]
    with pytest.raises(CompareError, match="new has no window statistics"):
        compare_results(sample(), doc)
