"""From merged measurements to the result document: the OVMS client's keys, and what it lacked."""

from __future__ import annotations

import math
from collections.abc import Sequence

from metrics_ext.series import QUANTILES, Recorder, _qname

__all__ = ["build_result", "ovms_statistics", "format_summary"]


def _phase_bounds(rec: Recorder, stop: float) -> dict[str, tuple[float, float]]:
    p = rec.phases
    warm_end = min(p.warmup_end, stop)
    return {"total": (p.t0, stop), "warmup": (p.t0, warm_end),
            "window": (p.warmup_end, max(p.warmup_end, min(p.window_end, stop)))}


def ovms_statistics(rec: Recorder, stop: float, users: int, submetrics: int, report_warmup: bool = False,
                    quantile_list: Sequence[float] | None = None) -> dict:
    """The flat dict the OVMS client printed as JSON-OUTPUT STATISTICS (same keys), computed right."""
    bounds = _phase_bounds(rec, stop)
    out: dict = {}
    for name, prefix in (("window", "window_"), ("total", ""), ("warmup", "warmup_")):
        if name == "warmup" and not report_warmup:
            continue
        stats = rec.series[name].analyze(*bounds[name], users)
        errors = stats.pop("errors_by_status")
        for key, value in stats.items():
            out[prefix + key] = value
        out[prefix + "errors_by_status"] = errors
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


def timeline(rec: Recorder) -> list[dict]:
    rows = []
    for sec in sorted(rec.timeline):
        ok, bad, frames, hist = rec.timeline[sec]
        row = {"t": sec, "pass": ok, "fail": bad, "frames": frames}
        for q in (0.5, 0.9, 0.99):
            row[f"p{_qname(q)}"] = hist.quantile(q)
        rows.append(row)
    return rows


def build_result(rec: Recorder, stop: float, users: int, submetrics: int, params: dict, report_warmup: bool = False,
                 quantile_list: Sequence[float] | None = None, workers: dict | None = None) -> dict:
    stats = ovms_statistics(rec, stop, users, submetrics, report_warmup, quantile_list)
    return _finite({"statistics": stats, "timeline": timeline(rec), "parameters": params,
                    "phases": {**rec.phases.to_dict(), "stop": stop}, "workers": workers or {},
                    "quantiles_reported": list(QUANTILES)})


def format_summary(stats: dict) -> str:
    """A short human table: window and total side by side."""
    def ms(v: object) -> str:
        return "-" if v in (None, "") else f"{float(v) * 1000:.3f}"

    rows = [("", "window", "total"),
            ("duration s", f"{stats['window_total_duration']:.2f}", f"{stats['total_duration']:.2f}"),
            ("requests (pass/fail)", f"{stats['window_pass_batches']}/{stats['window_fail_batches']}",
             f"{stats['pass_batches']}/{stats['fail_batches']}"),
            ("frames (pass/fail)", f"{stats['window_pass_frames']}/{stats['window_fail_frames']}",
             f"{stats['pass_frames']}/{stats['fail_frames']}"),
            ("brutto req/s", f"{stats['window_brutto_batch_rate']:.1f}", f"{stats['brutto_batch_rate']:.1f}"),
            ("brutto frames/s", f"{stats['window_brutto_frame_rate']:.1f}", f"{stats['brutto_frame_rate']:.1f}"),
            ("netto req/s", f"{stats['window_netto_batch_rate']:.1f}", f"{stats['netto_batch_rate']:.1f}"),
            ("latency mean ms", ms(stats["window_mean_latency"]), ms(stats["mean_latency"])),
            ("latency stdev ms", ms(stats["window_stdev_latency"]), ms(stats["stdev_latency"]))]
    for q in QUANTILES:
        key = f"latency_p{_qname(q)}"
        rows.append((f"latency p{_qname(q).replace('_', '.')} ms", ms(stats[f"window_{key}"]), ms(stats[key])))
    rows.append(("latency max ms", ms(stats["window_pass_max_latency"]), ms(stats["pass_max_latency"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows)
