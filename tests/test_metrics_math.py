"""Metric math: hand-computed cases, merge laws (property tests), HDR accuracy, the OVMS histogram formula."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics_ext.result import ovms_statistics, timeline
from metrics_ext.series import OVMS_KEYS, Phases, Recorder, Series, TimelineSum, WorkerPart
from metrics_ext.stats import LogHistogram, Moments, OvmsHistogram, PackedHistogram

samples = st.lists(st.tuples(st.booleans(), st.floats(1e-5, 5.0), st.integers(1, 8), st.floats(0, 100)),
                   max_size=60)


PHASES = Phases(0.0, 10.0, 50.0)   # warmup 0-10 s, window 10-60 s


def recorder_of(rows, phases: Phases = PHASES) -> Recorder:
    rec = Recorder(phases)
    for ok, lat, frames, done in rows:
        rec.record(ok, lat, frames, done, None if ok else "UNAVAILABLE")
    return rec


def stats_of(rec: Recorder, stop: float = 100.0, users: int = 1) -> dict:
    return ovms_statistics(rec, stop, users, submetrics=1, report_warmup=True)


def test_hand_computed_series():
    # warmup 0-10 s, window 10-60 s, stop at 100 s; latencies in seconds
    rows = [(True, 0.010, 2, 5.0),     # warmup
            (True, 0.020, 1, 12.0),    # window (first window success)
            (False, 0.040, 3, 13.0),   # window, failed
            (True, 0.030, 1, 20.0),    # window
            (True, 0.050, 4, 70.0)]    # after the window: total only
    s = stats_of(recorder_of(rows), users=2)
    # window: latencies 20, 40, 30 ms; pass 20, 30; fail 40
    assert s["window_total_duration"] == 50.0 and s["window_start_timestamp"] == 10.0
    assert s["window_total_batches"] == 3 and s["window_total_frames"] == 5
    assert (s["window_pass_batches"], s["window_fail_batches"], s["window_pass_frames"], s["window_fail_frames"]) \
        == (2, 1, 2, 3)
    assert s["window_first_latency"] == 0.020
    assert s["window_pass_max_latency"] == 0.030 and s["window_fail_max_latency"] == 0.040
    assert s["window_brutto_batch_rate"] == pytest.approx(2 / 50) and s["window_brutto_frame_rate"] == 2 / 50
    # netto: pass * users / sum of latencies = 2 * 2 / 0.090
    assert s["window_netto_batch_rate"] == pytest.approx(4 / 0.090)
    assert s["window_netto_frame_rate"] == pytest.approx(4 / 0.090)
    assert s["window_frame_passrate"] == pytest.approx(2 / 5) and s["window_batch_passrate"] == pytest.approx(2 / 3)
    assert s["window_mean_latency"] == pytest.approx(0.030)
    assert s["window_mean_latency2"] == pytest.approx((0.02 ** 2 + 0.04 ** 2 + 0.03 ** 2) / 3)
    assert s["window_stdev_latency"] == pytest.approx(math.sqrt(((0.01) ** 2 + 0 + (0.01) ** 2) / 3))
    assert s["window_cv_latency"] == pytest.approx(s["window_stdev_latency"] / 0.030)
    assert s["window_pass_mean_latency"] == pytest.approx(0.025)
    assert s["window_pass_stdev_latency"] == pytest.approx(0.005)
    assert s["window_fail_mean_latency"] == pytest.approx(0.040) and s["window_fail_stdev_latency"] == 0.0
    assert s["window_fail_cv_latency"] == 0.0          # its own deviation (0), not the pass deviation
    assert s["window_min_latency"] == 0.020 and s["window_errors_by_status"] == {"UNAVAILABLE": 1}
    # total and warmup
    assert s["total_batches"] == 5 and s["total_duration"] == 100.0 and s["pass_frames"] == 8
    assert s["first_latency"] == 0.010
    assert s["warmup_total_batches"] == 1 and s["warmup_total_duration"] == 10.0
    assert s["window_hist_factor"] == 100.0 and s["window_hist_base"] == 1.5 and s["submetrics"] == 1


def test_every_original_key_is_present():
    s = stats_of(recorder_of([(True, 0.01, 1, 20.0)]))
    for prefix in ("", "window_", "warmup_"):
        for key in OVMS_KEYS:
            assert prefix + key in s, prefix + key
    assert any(k.startswith("window_hist_latency_") for k in s)
    with_q = ovms_statistics(recorder_of([(True, 0.01, 1, 20.0)] * 40), 100.0, 1, 1, quantile_list=[0.5, 0.99])
    assert {"qos_quantile_0", "qos_latency_0", "qos_error_0", "qos_quantile_1"} <= set(with_q)
    assert not any(k.startswith("window_hist_latency_") for k in with_q)
    assert with_q["qos_latency_1"] == ""   # fewer than 6 frames above the 0.99 quantile, as the original


def test_the_originals_merge_bug_case_three_workers_1_10_100_ms():
    # the original reports 58 ms (an order-dependent running mean) and a 1.7 ms deviation; merged right:
    parts = [recorder_of([(True, lat, 1, 20.0 + i * 0.1) for i in range(100)]) for lat in (0.001, 0.010, 0.100)]
    merged = Recorder.merged([p.snapshot() for p in parts])
    s = stats_of(merged)
    assert s["window_mean_latency"] == pytest.approx(0.037)
    values = np.repeat([0.001, 0.010, 0.100], 100)
    assert s["window_stdev_latency"] == pytest.approx(values.std())   # 44.7 ms
    assert s["window_stdev_latency"] == pytest.approx(0.0447, abs=5e-5)


@settings(deadline=None)
@given(samples, samples, samples)
def test_merging_parts_equals_recording_everything(a, b, c):
    whole = stats_of(recorder_of(a + b + c))
    parts = [recorder_of(x).snapshot() for x in (a, b, c)]
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):   # commutative
        merged = stats_of(Recorder.merged([parts[i] for i in order]))
        for key, value in whole.items():
            if isinstance(value, float):
                assert merged[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            else:
                assert merged[key] == value, key


@settings(deadline=None)
@given(samples, st.lists(st.integers(0, 60), max_size=6), st.randoms(use_true_random=False))
def test_drained_reports_add_up_to_the_whole_recorder(rows, cuts, rnd):
    """A worker's report carries the timeline recorded since its previous report, and drops it; the master
    adds the reports' timelines up (TimelineSum), in whatever order they come. The sum equals recording
    everything in one recorder: the same timeline (counts, errors by status, quantiles) and statistics.
    Completion times are not sorted here, so a second recorded into again in a later report (a clock that
    stepped back) is covered too."""
    worker, part, total = Recorder(PHASES), WorkerPart(), TimelineSum()
    reports, cuts = [], set(cuts)
    for i, (ok, lat, frames, done) in enumerate(rows):
        worker.record(ok, lat, frames, done, None if ok else ("UNAVAILABLE" if i % 2 else "DEADLINE_EXCEEDED"))
        if i in cuts:
            reports.append(worker.snapshot(drain=True))
    reports.append(worker.snapshot(drain=True))   # the final
    assert worker.timeline == {}                  # nothing kept on the worker
    rnd.shuffle(reports[:-1])
    for report in reports:
        part.apply(report, total)
    rebuilt = Recorder.merged([{**part.snapshot(), "timeline": total.rows()}])
    whole = recorder_of_with_statuses(rows)
    assert timeline(rebuilt) == timeline(whole)
    assert stats_of(rebuilt) == stats_of(Recorder.merged([whole.snapshot()]))


def test_past_seconds_are_packed():
    rec, total = Recorder(PHASES), TimelineSum()
    for i in range(3000):
        rec.record(True, 0.001 + (i % 97) * 1e-5, 1, 20.0 + i * 0.01)   # 30 seconds
    assert all(isinstance(c[3], PackedHistogram) for sec, c in rec.timeline.items() if sec != rec._sec)
    total.add(rec.snapshot()["timeline"])
    assert sum(isinstance(c[3], PackedHistogram) for c in total.cells.values()) == 30 - 1 - TimelineSum.KEEP_OPEN_S


def recorder_of_with_statuses(rows) -> Recorder:
    rec = Recorder(PHASES)
    for i, (ok, lat, frames, done) in enumerate(rows):
        rec.record(ok, lat, frames, done, None if ok else ("UNAVAILABLE" if i % 2 else "DEADLINE_EXCEEDED"))
    return rec


def test_a_packed_histogram_is_the_histogram():
    hist = LogHistogram()
    for i in range(1, 500):
        hist.record(i * 1.7e-5)
    packed = PackedHistogram.of(hist)
    assert packed.to_dict() == hist.to_dict() and packed.thaw() == hist
    assert [packed.quantile(q) for q in (0.0, 0.5, 0.99, 1.0)] == [hist.quantile(q) for q in (0.0, 0.5, 0.99, 1.0)]
    assert packed.nbytes == 4 * len(hist.buckets)   # 2 bytes of index and 2 of count per bucket
    big = LogHistogram()
    big.add(7, 0.001, 70000)
    assert PackedHistogram.of(big).buckets == {7: 70000} and PackedHistogram.of(big).nbytes == 6
    merged = LogHistogram()
    merged.merge(packed)
    assert merged == hist


@settings(deadline=None)
@given(samples, samples, samples)
def test_merge_is_associative(a, b, c):
    snaps = [recorder_of(x).snapshot() for x in (a, b, c)]
    left = Recorder.merged([Recorder.merged(snaps[:2]).snapshot(), snaps[2]])
    right = Recorder.merged([snaps[0], Recorder.merged(snaps[1:]).snapshot()])
    sl, sr = stats_of(left), stats_of(right)
    for key, value in sl.items():
        assert sr[key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value), key


@given(st.lists(st.floats(-1e6, 1e6), max_size=50), st.lists(st.floats(-1e6, 1e6), max_size=50))
def test_moments_merge_matches_numpy(xs, ys):
    a, b = Moments(), Moments()
    for x in xs:
        a.add(x)
    for y in ys:
        b.add(y)
    a.merge(b)
    allv = np.array(xs + ys)
    assert a.n == len(allv)
    if len(allv):
        assert a.mean == pytest.approx(allv.mean(), rel=1e-9, abs=1e-6)
        assert a.stdev == pytest.approx(allv.std(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("dist", ["uniform", "lognormal", "exponential", "bimodal"])
def test_hdr_quantiles_within_one_percent(dist):
    rng = np.random.default_rng(7)
    n = 20000
    values = {"uniform": rng.uniform(0.002, 0.008, n), "lognormal": rng.lognormal(-5, 1.5, n),
              "exponential": rng.exponential(0.01, n),
              "bimodal": np.concatenate([rng.uniform(0.001, 0.002, n - 200), rng.uniform(1.0, 2.0, 200)])}[dist]
    h = LogHistogram()
    for v in values:
        h.record(float(v))
    for q in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        assert h.quantile(q) == pytest.approx(exact, rel=0.01), q
    assert h.quantile(0) == values.min() and h.quantile(1.0) <= values.max()


def test_hdr_range_one_microsecond_to_one_hour():
    for v in (1e-6, 3.3e-6, 0.5, 59.0, 3599.0):
        h = LogHistogram()
        h.record(v)
        h.record(v)
        assert h.quantile(0.5) == pytest.approx(v, rel=0.01)


def test_ovms_histogram_matches_the_originals_formula():
    h = OvmsHistogram(100, 1.5)
    rng = random.Random(3)
    for _ in range(500):
        lat, frames = rng.uniform(0.0001, 0.3), rng.randint(1, 4)
        h.record(lat, frames)
        k = int((100 * lat) ** 1.5)
        lo, hi = h.bounds(k)
        assert lo <= lat < hi   # bucket i spans [i^(1/base)/factor, (i+1)^(1/base)/factor)
    assert h.bounds(0) == (0.0, 0.01) and h.bounds(1000)[0] == pytest.approx(1.0)
    assert sum(h.buckets.values()) > 500   # weighted by frames


def test_ovms_quantile_interpolates_inside_the_bucket():
    h = OvmsHistogram(100, 1.0)   # linear buckets of 10 ms
    for _ in range(100):
        h.record(0.015, 1)         # all in bucket 1: [10, 20) ms
    value, error = h.quantile(0.5)
    assert value == pytest.approx(0.015) and error == pytest.approx(0.010)


def test_series_snapshot_round_trip_with_empty_phases():
    rec = recorder_of([])
    again = Recorder.merged([rec.snapshot()])
    s = stats_of(again)
    assert s["total_batches"] == 0 and s["mean_latency"] == 0.0 and s["brutto_batch_rate"] == 0.0
    assert math.isinf(s["first_latency"])
    assert isinstance(Series().to_dict(), dict)


def test_first_latency_ties_do_not_depend_on_merge_order():
    a, b = recorder_of([(True, 0.002, 1, 20.0)]), recorder_of([(True, 0.001, 1, 20.0)])
    ab = stats_of(Recorder.merged([a.snapshot(), b.snapshot()]))
    ba = stats_of(Recorder.merged([b.snapshot(), a.snapshot()]))
    whole = stats_of(recorder_of([(True, 0.002, 1, 20.0), (True, 0.001, 1, 20.0)]))
    assert ab["first_latency"] == ba["first_latency"] == whole["first_latency"] == 0.001


@given(samples, samples)
@settings(max_examples=50)
def test_batch_breakdown_and_histogram_merge_exactly(a, b):
    from metrics_ext.result import build_result

    merged = Recorder.merged([recorder_of(a).snapshot(), recorder_of(b).snapshot()])
    doc = build_result(merged, 100.0, 1, 2, {}, users_at={0: 1, 30: 2})
    window = [r for r in a + b if 10.0 <= r[3] < 60.0]
    stats = doc["statistics"]
    # the breakdown partitions the window: per batch size, every count adds up to the window's
    assert sum(row["pass_batches"] for row in doc["by_batch"]) == stats["window_pass_batches"]
    assert sum(row["fail_batches"] for row in doc["by_batch"]) == stats["window_fail_batches"]
    for row in doc["by_batch"]:
        mine = [r for r in window if r[2] == row["batch_size"]]
        assert row["pass_batches"] + row["fail_batches"] == len(mine)
        assert row["mean_latency"] == pytest.approx(sum(r[1] for r in mine) / len(mine))
        assert row["brutto_frame_rate"] == pytest.approx(sum(r[2] for r in mine if r[0]) / 50.0)
    # the histogram holds each window request once, in a bucket around its latency
    assert sum(c for _, _, c in doc["window_histogram"]) == len(window)
    for r in window:
        assert any(lo <= r[1] < hi * 1.0000001 for lo, hi, _ in doc["window_histogram"])
    # each second's row says how many users ran then (the latest count at or before it)
    for row in doc["timeline"]:
        assert row["users"] == (2 if row["t"] >= 30 else 1)
    # the split by users partitions the run; its p99 is the merged histogram's, not a mean of per-second ones
    for row in doc["by_users"]:
        mine = [r for r in a + b if (r[3] >= 30) == (row["users"] == 2)]
        assert row["pass_batches"] + row["fail_batches"] == len(mine)
        exact = sorted(r[1] for r in mine)[max(0, math.ceil(0.99 * len(mine)) - 1)]
        assert row["latency_p99"] == pytest.approx(exact, rel=0.01)
    assert sum(row["pass_batches"] for row in doc["by_users"]) == stats["pass_batches"]
