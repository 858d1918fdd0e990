"""From merged measurements to the result document: the OVMS client's keys, and what it lacked."""

from __future__ import annotations

import math
from collections.abc import Sequence

from metrics_ext.series import LAGGED_QUANTILES, LATE_S, QUANTILES, Recorder, _qname
from metrics_ext.stats import LogHistogram

__all__ = ["build_result", "ovms_statistics", "format_summary", "summary_rows", "arrival_rows"]


def _phase_bounds(rec: Recorder, stop: float) -> dict[str, tuple[float, float]]:
    p = rec.phases
    warm_end = min(p.warmup_end, stop)
    return {"total": (p.t0, stop), "warmup": (p.t0, warm_end),
            "window": (p.warmup_end, max(p.warmup_end, min(p.window_end, stop)))}


def ovms_statistics(rec: Recorder, stop: float, users: int, submetrics: int, report_warmup: bool = False,
                    quantile_list: Sequence[float] | None = None, arrivals: dict | None = None) -> dict:
    """The flat dict the OVMS client printed as JSON-OUTPUT STATISTICS (same keys), computed right.

    ``arrivals`` (an open-loop run: ``{"process", "rate", "frame_rate"}``, see locust_ext.read_arrivals) adds
    each phase's service time, schedule lag and late requests, and the run's target and achieved rates.
    """
    bounds = _phase_bounds(rec, stop)
    out: dict = {}
    for name, prefix in (("window", "window_"), ("total", ""), ("warmup", "warmup_")):
        if name == "warmup" and not report_warmup:
            continue
        stats = rec.series[name].analyze(*bounds[name], users, lagged=arrivals is not None)
        errors = stats.pop("errors_by_status")
        for key, value in stats.items():
            out[prefix + key] = value
        out[prefix + "errors_by_status"] = errors
    if arrivals is not None:
        duration = out["window_total_duration"]
        out["arrival_process"] = arrivals.get("process") or "constant"
        out["arrival_rate_target"] = arrivals.get("rate")               # requests/s (--arrival_rate)
        out["arrival_frame_rate_target"] = arrivals.get("frame_rate")   # frames/s (--max_throughput)
        out["arrival_rate_achieved"] = out["window_total_batches"] / duration if duration else 0.0
        out["arrival_frame_rate_achieved"] = out["window_total_frames"] / duration if duration else 0.0
        out["in_flight_limit"] = users   # one request in flight per user at most
        out["late_threshold"] = LATE_S
    window = rec.series["window"].ovms
    if quantile_list:
        for j, q in enumerate(quantile_list):
            value, error = window.quantile(q)
            out[f"qos_quantile_{j}"] = q
            out[f"qos_latency_{j}"] = value
            out[f"qos_error_{j}"] = error
    else:
        for k in sorted(window.buckets):
            out[f"window_hist_latency_{k}"] = window.buckets[k]
    out["submetrics"] = submetrics
    out["window_hist_factor"] = float(rec.factor)
    out["window_hist_base"] = float(rec.base)
    return out


def _finite(value: object) -> object:
    """JSON without Infinity: an absent first latency is null (the original wrote Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def timeline(rec: Recorder, users_at: dict[int, int] | None = None) -> list[dict]:
    """One row per wall-clock second from the first completion to the last: counts, failures by status,
    p50/p90/p99, and the users running then. A second without completions (a server that stalled or was
    down) is a row of zeros with null quantiles, so the gap shows."""
    rows = []
    cells = rec.timeline
    seconds = range(min(cells), max(cells) + 1) if cells else range(0)
    empty = [0, 0, 0, None, None]
    for sec in seconds:
        ok, bad, frames, hist, errors = cells.get(sec, empty)
        row = {"t": sec, "pass": ok, "fail": bad, "frames": frames}
        if errors:
            row["errors"] = dict(sorted(errors.items()))
        for q in (0.5, 0.9, 0.99):
            row[f"p{_qname(q)}"] = hist.quantile(q) if hist is not None else None
        if users_at:
            row["users"] = users_at.get(sec, _latest_before(users_at, sec))
        rows.append(row)
    return rows


def _latest_before(users_at: dict[int, int], sec: int) -> int | None:
    earlier = [t for t in users_at if t <= sec]
    return users_at[max(earlier)] if earlier else None


def by_batch(rec: Recorder, stop: float, users: int) -> list[dict]:
    """The window split by batch size (runs over several batch sizes): rates, pass counts, latency."""
    start, end = _phase_bounds(rec, stop)["window"]
    rows = []
    for bs in sorted(rec.by_batch):
        s = rec.by_batch[bs].analyze(start, end, users)
        rows.append({"batch_size": bs, "pass_batches": s["pass_batches"], "fail_batches": s["fail_batches"],
                     "brutto_batch_rate": s["brutto_batch_rate"], "brutto_frame_rate": s["brutto_frame_rate"],
                     "mean_latency": s["mean_latency"], "latency_p50": s["latency_p50"],
                     "latency_p90": s["latency_p90"], "latency_p99": s["latency_p99"]})
    return rows


def by_users(rec: Recorder, stop: float, users_at: dict[int, int] | None) -> list[dict]:
    """A run over several user counts (a ramp), split by the users running in each second: rates and quantiles.

    Quantiles come from the merged per-second histograms of those seconds (exact to the histogram's
    1 %, not an average of per-second quantiles); a rate counts only the part of a second inside the run.
    """
    if not users_at or len(set(users_at.values())) < 2:
        return []
    groups: dict[int, list] = {}
    for sec in sorted(rec.timeline):
        users = users_at.get(sec, _latest_before(users_at, sec))
        if users is None:
            continue
        ok, bad, frames, hist, _ = rec.timeline[sec]
        cell = groups.setdefault(users, [0.0, 0, 0, 0, LogHistogram()])
        cell[0] += max(0.0, min(sec + 1.0, stop) - max(float(sec), rec.phases.t0))
        cell[1] += ok
        cell[2] += bad
        cell[3] += frames
        cell[4].merge(hist)
    rows = []
    for users in sorted(groups):
        covered, ok, bad, frames, hist = groups[users]
        rows.append({"users": users, "seconds": covered, "pass_batches": ok, "fail_batches": bad,
                     "pass_batch_rate": ok / covered if covered else 0.0,
                     "fail_batch_rate": bad / covered if covered else 0.0,
                     "latency_p50": hist.quantile(0.5), "latency_p99": hist.quantile(0.99)})
    return rows


def build_result(rec: Recorder, stop: float, users: int, submetrics: int, params: dict, report_warmup: bool = False,
                 quantile_list: Sequence[float] | None = None, workers: dict | None = None,
                 users_at: dict[int, int] | None = None, arrivals: dict | None = None) -> dict:
    stats = ovms_statistics(rec, stop, users, submetrics, report_warmup, quantile_list, arrivals)
    return _finite({"statistics": stats, "timeline": timeline(rec, users_at), "parameters": params,
                    "phases": {**rec.phases.to_dict(), "stop": stop}, "workers": workers or {},
                    "quantiles_reported": list(QUANTILES),
                    "window_histogram": rec.series["window"].hdr.bins(),
                    "by_batch": by_batch(rec, stop, users), "by_users": by_users(rec, stop, users_at)})


def summary_rows(stats: dict) -> list[tuple[str, str, str]]:
    """The short human table, window and total side by side: the console summary and the web UI tab."""
    def ms(v: object) -> str:
        return "-" if v in (None, "") else f"{float(v) * 1000:.3f}"

    rows = [("duration s", f"{stats['window_total_duration']:.2f}", f"{stats['total_duration']:.2f}"),
            ("requests (pass/fail)", f"{stats['window_pass_batches']}/{stats['window_fail_batches']}",
             f"{stats['pass_batches']}/{stats['fail_batches']}"),
            ("frames (pass/fail)", f"{stats['window_pass_frames']}/{stats['window_fail_frames']}",
             f"{stats['pass_frames']}/{stats['fail_frames']}"),
            ("brutto req/s", f"{stats['window_brutto_batch_rate']:.1f}", f"{stats['brutto_batch_rate']:.1f}"),
            ("brutto frames/s", f"{stats['window_brutto_frame_rate']:.1f}", f"{stats['brutto_frame_rate']:.1f}"),
            ("netto req/s", f"{stats['window_netto_batch_rate']:.1f}", f"{stats['netto_batch_rate']:.1f}"),
            ("pass rate %", f"{stats['window_batch_passrate'] * 100:.2f}", f"{stats['batch_passrate'] * 100:.2f}"),
            ("latency mean ms", ms(stats["window_mean_latency"]), ms(stats["mean_latency"])),
            ("latency stdev ms", ms(stats["window_stdev_latency"]), ms(stats["stdev_latency"])),
            ("latency cv", f"{stats['window_cv_latency']:.3f}", f"{stats['cv_latency']:.3f}")]
    for q in QUANTILES:
        key = f"latency_p{_qname(q)}"
        rows.append((f"latency p{_qname(q).replace('_', '.')} ms", ms(stats[f"window_{key}"]), ms(stats[key])))
    rows.append(("latency max ms", ms(max(stats["window_pass_max_latency"], stats["window_fail_max_latency"])),
                 ms(max(stats["pass_max_latency"], stats["fail_max_latency"]))))
    if "arrival_process" in stats:
        rows.extend(arrival_rows(stats))
    window_errors, total_errors = stats.get("window_errors_by_status") or {}, stats.get("errors_by_status") or {}
    for status in sorted(set(window_errors) | set(total_errors)):
        rows.append((f"errors {status}", str(window_errors.get(status, 0)), str(total_errors.get(status, 0))))
    return rows


def arrival_rows(stats: dict) -> list[tuple[str, str, str]]:
    """An open-loop run's rows (the latency rows above then run from each request's intended start)."""
    def ms(v: object) -> str:
        return "-" if v in (None, "") else f"{float(v) * 1000:.3f}"

    def rate(v: object) -> str:
        return "-" if v in (None, "") else f"{float(v):.1f}"

    frames = stats.get("arrival_frame_rate_target") is not None
    target = stats["arrival_frame_rate_target"] if frames else stats.get("arrival_rate_target")
    unit = "frames/s" if frames else "req/s"
    rows = [(f"target {unit} ({stats.get('arrival_process')})", rate(target), rate(target)),
            ("achieved req/s", rate(stats.get("arrival_rate_achieved")), "-")]
    if frames:
        rows.append(("achieved frames/s", rate(stats.get("arrival_frame_rate_achieved")), "-"))
    rows.append(("in flight max (users)", str(stats.get("in_flight_limit")), str(stats.get("in_flight_limit"))))
    for name, label in (("service_latency", "service"), ("schedule_lag", "schedule lag")):
        for stat in ("mean", *(f"p{_qname(q)}" for q in LAGGED_QUANTILES), "max"):
            key = f"{name}_{stat}"
            rows.append((f"{label} {stat} ms", ms(stats.get(f"window_{key}")), ms(stats.get(key))))
    rows.append((f"late > {stats.get('late_threshold', LATE_S) * 1000:g} ms", str(stats.get("window_late_requests")),
                 str(stats.get("late_requests"))))
    return rows


def format_summary(stats: dict) -> str:
    """A short human table: window and total side by side."""
    rows = [("", "window", "total"), *summary_rows(stats)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows)
