"""A single self-contained HTML report of one run, rendered from the suite's JSON result.

The page works offline: CSS is inline, the plots are inline SVG drawn by matplotlib, nothing is fetched.
Every number of the summary tables is printed from the result as it is, and its cell carries the exact JSON
value (``data-key``/``data-value``) so that the page can be checked against the result it came from.

matplotlib is imported only inside :func:`render_report`: the load processes import this module's package and
must stay light.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report"]

#: the latency quantiles of the summary when the result does not list them (as metrics_ext.series.QUANTILES)
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
#: an open-loop run's service time and schedule lag quantiles, and its late threshold (as metrics_ext.series's
#: LAGGED_QUANTILES and LATE_S)
LAGGED_QUANTILES = (0.5, 0.99)
LATE_S = 0.002
#: the most points a timeline plot draws; longer runs are put in bins of several seconds
MAX_TIMELINE_POINTS = 1200

_RENDER_LOCK = threading.Lock()   # matplotlib's rcParams are process-global

_COLORS = {"pass": "#2a9d4b", "fail": "#d62728", "users": "#7f7f7f", "p50": "#1f77b4", "p90": "#ff7f0e",
           "p99": "#9467bd", "mean": "#9ecae1", "warmup": "#bbbbbb", "bars": "#4c72b0"}


# ----------------------------------------------------------------------------------------------- public API

def render_report(result: dict, *, title: str | None = None) -> str:
    """The whole HTML document for one JSON result (as written by the suite at test stop)."""
    stats = result.get("statistics") or {}
    params = result.get("parameters") or {}
    options = params.get("options") or {}
    title = title or _default_title(params, options)
    plots = _render_plots(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>{_subtitle(result)}</header>",
        _thresholds_section(result.get("thresholds")),
        _run_section(result),
        _summary_section(result),
        _quantile_list_section(stats),
        _by_batch_section(result.get("by_batch")),
        _plots_section(plots),
        _options_section(options),
        _footer(params),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(result: dict, path: str | Path) -> Path:
    """Render the report and write it atomically (a temporary file beside it, then replace); returns the path."""
    path = Path(path)
    text = render_report(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ------------------------------------------------------------------------------------------- text helpers

def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _qname(q: float) -> str:
    text = f"{q * 100:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", "_")


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: object, kind: str) -> str:
    """A value as the console summary prints it; '-' for what is absent or not a finite number."""
    if value is None or value == "":
        return "-"
    if kind == "int":
        return str(value) if isinstance(value, int) else (f"{value:g}" if _finite_number(value) else "-")
    if not _finite_number(value):
        return "-"
    v = float(value)  # type: ignore[arg-type]
    if kind == "ms":
        return f"{v * 1000:.3f}"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "rate":
        return f"{v:.1f}"
    if kind == "pct":
        return f"{v * 100:.2f}"
    if kind == "cv":
        return f"{v:.3f}"
    return f"{v:g}"


def _value_attrs(key: str, value: object, **extra: object) -> str:
    attrs = f' data-key="{_e(key)}" data-value="{_e(json.dumps(value))}"'
    for name, val in extra.items():
        attrs += f' data-{name.replace("_", "-")}="{_e(val)}"'
    return attrs


def _stat(stats: dict, key: str, kind: str, tag: str = "span") -> str:
    """One statistic, marked with its key and exact JSON value (or a bare '-' when the result lacks it)."""
    if key not in stats:
        return f'<{tag} class="na" title="not in this result">-</{tag}>'
    return f"<{tag}{_value_attrs(key, stats[key])}>{_e(_fmt(stats[key], kind))}</{tag}>"


def _max_key(stats: dict, prefix: str) -> str:
    """The larger of the pass and fail max latency keys (the summary's 'latency max'), picked, not recomputed."""
    p, f = f"{prefix}pass_max_latency", f"{prefix}fail_max_latency"
    pv, fv = stats.get(p), stats.get(f)
    if _finite_number(fv) and (not _finite_number(pv) or fv > pv):  # type: ignore[operator]
        return f
    return p


def _quantiles(result: dict) -> list[float]:
    qs = result.get("quantiles_reported")
    if isinstance(qs, list) and qs and all(_finite_number(q) for q in qs):
        return [float(q) for q in qs]
    return list(DEFAULT_QUANTILES)


def _utc(ts: object) -> str:
    if not _finite_number(ts):
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")  # type: ignore[arg-type]


def _default_title(params: dict, options: dict) -> str:
    model = options.get("model_name") or "model"
    host = params.get("host") or options.get("host") or ""
    return f"Benchmark of {model}" + (f" on {host}" if host else "")


# ----------------------------------------------------------------------------------------------- sections

def _subtitle(result: dict) -> str:
    stats = result.get("statistics") or {}
    phases = result.get("phases") or {}
    bits = [f"started {_e(_utc(phases.get('t0', stats.get('start_timestamp'))))}"]
    if _finite_number(stats.get("total_duration")):
        bits.append(f"{stats['total_duration']:.2f} s")
    if _finite_number(stats.get("window_brutto_batch_rate")):
        bits.append(f"window {stats['window_brutto_batch_rate']:.1f} req/s")
    if _finite_number(stats.get("window_latency_p99")) and stats.get("window_pass_batches"):
        bits.append(f"p99 {stats['window_latency_p99'] * 1000:.3f} ms")
    return f'<p class="sub">{" · ".join(bits)}</p>'


def _thresholds_section(thresholds: object) -> str:
    if not isinstance(thresholds, dict):
        return ""
    checks = thresholds.get("checks") or {}
    broken = thresholds.get("broken") or []
    if not checks and not broken:
        return ""
    names = ", ".join(f"--{_e(k)} {_e(v)}" for k, v in checks.items())
    if broken:
        items = "".join(f"<li>{_e(b)}</li>" for b in broken)
        return f'<section class="verdict bad"><b>Thresholds broken</b> ({names})<ul>{items}</ul></section>'
    return f'<section class="verdict ok"><b>Thresholds met</b> ({names})</section>'


def _kv_table(caption: str, rows: Iterable[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>" for k, v in rows if v not in (None, "", []))
    if not body:
        body = '<tr><td class="na">not recorded</td></tr>'
    return f'<table class="kv"><caption>{_e(caption)}</caption>{body}</table>'


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return " ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _run_section(result: dict) -> str:
    params = result.get("parameters") or {}
    options = params.get("options") or {}
    phases = result.get("phases") or {}
    stats = result.get("statistics") or {}
    server = params.get("server") or {}
    client = params.get("client") or {}
    window = phases.get("window")
    run_time = options.get("run_time")
    test = [
        ("model", options.get("model_name")),
        ("model version", options.get("model_version")),
        ("API", options.get("api") or server.get("api")),
        ("host", params.get("host") or options.get("host")),
        ("users", params.get("users", options.get("num_users"))),
        ("spawn rate /s", options.get("spawn_rate")),
        ("batch sizes", options.get("bs")),
        ("shape", options.get("shape")),
        ("data", options.get("data")),
        ("warmup s", phases.get("warmup", options.get("warmup"))),
        ("window s", "to the end" if window is None and phases else window),
        ("run time s", run_time),
        ("measured duration s", _fmt(stats.get("total_duration"), "s") if "total_duration" in stats else None),
        ("started", _utc(phases.get("t0")) if "t0" in phases else None),
        ("quantile list", options.get("quantile_list")),
        ("report warmup", options.get("report_warmup")),
        ("workers", ", ".join(f"{k}: {v}" for k, v in (result.get("workers") or {}).items())),
    ]
    srv = [("name", server.get("name")), ("version", server.get("version")), ("address", server.get("address")),
           ("API", server.get("api")), ("TLS", server.get("tls")), ("extensions", server.get("extensions"))]
    cli = [("host", client.get("host")), ("python", client.get("python")), ("platform", client.get("platform")),
           ("CPUs", client.get("cpus")), ("locust", client.get("locust")),
           ("command line", " ".join(str(a) for a in client.get("argv") or []))]
    return ('<section><h2>Run</h2><div class="cols">'
            + _kv_table("Test", test) + _kv_table("Server", srv) + _kv_table("Client", cli)
            + "</div></section>")


def _summary_rows(result: dict) -> list[tuple[str, str, list[tuple[str, ...]]]]:
    """(label, kind, keys per column) in format_summary's order; a tuple of two keys prints 'a/b'."""
    rows: list[tuple[str, str, list[tuple[str, ...]]]] = []
    stats = result.get("statistics") or {}
    prefixes = _column_prefixes(stats)

    def add(label: str, kind: str, *names: str) -> None:
        rows.append((label, kind, [tuple(p + n for n in names) for p in prefixes]))

    add("duration s", "s", "total_duration")
    add("requests (pass/fail)", "int", "pass_batches", "fail_batches")
    add("frames (pass/fail)", "int", "pass_frames", "fail_frames")
    add("brutto req/s", "rate", "brutto_batch_rate")
    add("brutto frames/s", "rate", "brutto_frame_rate")
    add("netto req/s", "rate", "netto_batch_rate")
    add("pass rate %", "pct", "batch_passrate")
    add("latency mean ms", "ms", "mean_latency")
    add("latency stdev ms", "ms", "stdev_latency")
    add("latency cv", "cv", "cv_latency")
    for q in _quantiles(result):
        add(f"latency p{_qname(q).replace('_', '.')} ms", "ms", f"latency_p{_qname(q)}")
    rows.append(("latency max ms", "ms", [(_max_key(stats, p),) for p in prefixes]))
    if "arrival_process" in stats:   # an open-loop run: as result.arrival_rows
        n = len(prefixes)
        frames = stats.get("arrival_frame_rate_target") is not None
        target = "arrival_frame_rate_target" if frames else "arrival_rate_target"
        rows.append((f"target {'frames/s' if frames else 'req/s'} ({stats.get('arrival_process')})", "rate",
                     [(target,)] * n))
        rows.append(("achieved req/s", "rate", [("arrival_rate_achieved",)] + [()] * (n - 1)))
        if frames:
            rows.append(("achieved frames/s", "rate", [("arrival_frame_rate_achieved",)] + [()] * (n - 1)))
        rows.append(("in flight max (users)", "int", [("in_flight_limit",)] * n))
        for name, label in (("service_latency", "service"), ("schedule_lag", "schedule lag")):
            for stat in ("mean", *(f"p{_qname(q)}" for q in LAGGED_QUANTILES), "max"):
                add(f"{label} {stat} ms", "ms", f"{name}_{stat}")
        threshold = stats.get("late_threshold")
        add(f"late > {(threshold if _finite_number(threshold) else LATE_S) * 1000:g} ms", "int", "late_requests")
    return rows


def _column_prefixes(stats: dict) -> list[str]:
    """window and total, and the warmup too when the run reported it (--report_warmup)."""
    prefixes = ["window_", ""]
    if any(k.startswith("warmup_") for k in stats):
        prefixes.append("warmup_")
    return prefixes


_COLUMN_NAMES = {"window_": "window", "": "total", "warmup_": "warmup"}


def summary_keys(result: dict) -> list[str]:
    """Every statistics key the summary table shows, in order (for checks of the page against the result)."""
    return [k for _label, _kind, cols in _summary_rows(result) for keys in cols for k in keys]


def _summary_section(result: dict) -> str:
    stats = result.get("statistics") or {}
    prefixes = _column_prefixes(stats)
    head = "".join(f"<th>{_COLUMN_NAMES[p]}</th>" for p in prefixes)
    body = []
    for label, kind, cols in _summary_rows(result):
        na = '<span class="na">-</span>'   # a column the row has no key for (the total's achieved rate)
        cells = "".join("<td>" + ("/".join(_stat(stats, k, kind) for k in keys) if keys else na) + "</td>"
                        for keys in cols)
        body.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    body.extend(_error_rows(stats, prefixes))
    note = ""
    if not stats:
        note = '<p class="note">This result holds no statistics.</p>'
    elif not stats.get("total_batches") and not stats.get("pass_batches") and not stats.get("fail_batches"):
        note = '<p class="note">No requests completed in this run.</p>'
    if not any(stats.get(p + "errors_by_status") for p in prefixes) and any(
            isinstance(stats.get(p + "errors_by_status"), dict) for p in prefixes):
        note += '<p class="note">Errors by status: none.</p>'
    return ('<section><h2>Summary</h2>'
            + f'<table class="summary"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            + note + "</section>")


def _error_rows(stats: dict, prefixes: Sequence[str]) -> list[str]:
    """One 'errors <status>' row per failure status of any column (as the console summary); absent means 0."""
    columns = [p + "errors_by_status" for p in prefixes]
    statuses: set[str] = set()
    for key in columns:
        errors = stats.get(key)
        if isinstance(errors, dict):
            statuses.update(errors)
    rows = []
    for status in sorted(statuses, key=str):
        cells = []
        for key in columns:
            errors = stats.get(key)
            if isinstance(errors, dict) and status in errors:
                cells.append(f"<td{_value_attrs(key, errors[status], status=status)}>{_e(errors[status])}</td>")
            else:
                cells.append('<td class="na">0</td>')
        rows.append(f'<tr class="error"><th>errors {_e(status)}</th>{"".join(cells)}</tr>')
    return rows


def _quantile_list_section(stats: dict) -> str:
    """The --quantile_list run's window quantiles from the OVMS histogram (qos_* keys), with their error bound."""
    idx = sorted(int(m.group(1)) for k in stats if (m := re.fullmatch(r"qos_quantile_(\d+)", k)))
    if not idx:
        return ""
    body = "".join(
        f"<tr><td>{_stat(stats, f'qos_quantile_{j}', 'g')}</td><td>{_stat(stats, f'qos_latency_{j}', 'ms')}</td>"
        f"<td>{_stat(stats, f'qos_error_{j}', 'ms')}</td></tr>" for j in idx)
    return ('<section><h2>Requested quantiles (window, OVMS histogram)</h2><table class="summary"><thead><tr>'
            '<th>quantile</th><th>latency ms</th><th>error ms</th></tr></thead>'
            f"<tbody>{body}</tbody></table></section>")


_BATCH_COLUMNS = (("batch_size", "batch size", "int"), ("pass_batches", "requests pass", "int"),
                  ("fail_batches", "requests fail", "int"), ("brutto_batch_rate", "req/s", "rate"),
                  ("brutto_frame_rate", "frames/s", "rate"), ("mean_latency", "mean ms", "ms"),
                  ("latency_p50", "p50 ms", "ms"), ("latency_p90", "p90 ms", "ms"), ("latency_p99", "p99 ms", "ms"))


def _by_batch_section(by_batch: object) -> str:
    """The window per batch size, as a table (only when the run mixed batch sizes)."""
    if not isinstance(by_batch, list) or len(by_batch) < 2:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for _k, label, _kind in _BATCH_COLUMNS)
    body = []
    for row in by_batch:
        cells = []
        for key, _label, kind in _BATCH_COLUMNS:
            if key in row:
                attrs = (f' data-batch-size="{_e(json.dumps(row.get("batch_size")))}" data-field="{_e(key)}"'
                         f' data-value="{_e(json.dumps(row[key]))}"')
                cells.append(f"<td{attrs}>{_e(_fmt(row[key], kind))}</td>")
            else:
                cells.append('<td class="na">-</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return ('<section><h2>Window by batch size</h2><table class="summary"><thead><tr>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table></section>')


def _plots_section(plots: list[tuple[str, str | None, str]]) -> str:
    out = ["<section><h2>Plots</h2>"]
    for caption, svg, missing in plots:
        if svg is None:
            out.append(f'<p class="note nodata">{_e(caption)}: no data{": " + _e(missing) if missing else ""}.</p>')
        else:
            out.append(f'<figure class="plot">{svg}<figcaption>{_e(caption)}</figcaption></figure>')
    out.append("</section>")
    return "".join(out)


def _options_section(options: dict) -> str:
    if not options:
        return ""
    from metrics_ext.mongo import mask_options  # a result from elsewhere may not be masked: never show a secret
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>"
                   for k, v in sorted(mask_options(options).items()))
    return (f'<section><details><summary>All options ({len(options)})</summary>'
            f'<table class="kv options">{rows}</table></details></section>')


def _footer(params: dict) -> str:
    client = params.get("client") or {}
    who = ", ".join(f"{k} {_show(client[k])}" for k in ("host", "python", "platform", "cpus", "locust")
                    if client.get(k) not in (None, ""))
    return ("<footer>Client: " + (_e(who) if who else "not recorded") + "<br>Generated by ovms-locust-bench "
            "(metrics_ext.report) from the run's JSON result; plots drawn with matplotlib. "
            "This page is self-contained and works offline. Latencies are shown in ms; the data-value "
            "attributes hold the result's exact values (seconds).</footer>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;color:#222;
background:#fafafa;margin:0 auto;max-width:1150px;padding:0 20px 24px}
header{border-bottom:2px solid #4c72b0;margin-bottom:12px}
h1{font-size:22px;margin:18px 0 2px}h2{font-size:17px;margin:22px 0 8px;color:#333}
.sub{color:#555;margin:0 0 10px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:16px;align-items:start}
table{border-collapse:collapse;background:#fff;margin:4px 0 12px}
caption{text-align:left;font-weight:600;padding:2px 0 4px}
th,td{border:1px solid #ddd;padding:3px 9px;vertical-align:top}
table.kv th{text-align:left;font-weight:500;color:#555;white-space:nowrap}
table.kv{width:100%}table.kv td{overflow-wrap:anywhere}table.options{width:auto}
table.summary td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.summary th{text-align:left}table.summary thead th{text-align:center;background:#eef2f8}
.na{color:#999}tr.error th,tr.error td{color:#b00020}.note{color:#555;font-style:italic}
.verdict{padding:8px 12px;border-radius:4px;margin:10px 0}
.verdict.ok{background:#e6f4ea;border:1px solid #9bd3ab}.verdict.bad{background:#fde8e8;border:1px solid #f1a9a9}
figure.plot{margin:10px 0 18px;background:#fff;border:1px solid #e3e3e3;padding:6px}
figure.plot svg{display:block;width:100%;height:auto}
figcaption{color:#555;font-size:13px;padding:2px 6px}
details summary{cursor:pointer;font-weight:600}
footer{margin-top:26px;padding-top:8px;border-top:1px solid #ddd;color:#666;font-size:12px}
""".replace("\n", "")


# -------------------------------------------------------------------------------------------------- plots

def _render_plots(result: dict) -> list[tuple[str, str | None, str]]:
    """(caption, inline SVG or None, why it is missing) for each plot that applies to this result."""
    mpl = _import_matplotlib()
    data = _PlotData(result)
    tl_note = data.bin_note + "; the run's partial first and last seconds count over their part inside the run"
    specs = [
        ("Throughput over time", "requests per second" + tl_note, _plot_throughput,
         "no request completed" if not data.seconds else ""),
        ("Latency quantiles over time", "p50, p90 and p99 of each second" + data.bin_note, _plot_latency,
         "no latency recorded" if not data.has_latency else ""),
        ("Latency histogram of the window", "window requests by latency", _plot_histogram,
         "no request in the window" if not data.histogram else ""),
    ]
    breakdowns = []
    if data.batch_rows:
        breakdowns.append("the window by batch size")
    if data.users_rows:
        breakdowns.append("the run by user count (timeline seconds grouped by users)")
    if breakdowns:
        specs.append(("Breakdown", " and ".join(breakdowns), _plot_breakdown, ""))
    out = []
    with _RENDER_LOCK, mpl.rc_context(_RC):
        for i, (name, detail, draw, missing) in enumerate(specs):
            if missing:
                out.append((name, None, missing))
                continue
            fig = mpl.figure.Figure(figsize=(11, 3.6), layout="constrained")
            draw(fig, data)
            out.append((f"{name}: {detail}", _svg(mpl, fig, f"plot{i + 1}"), ""))
    return out


_RC = {"svg.fonttype": "none", "font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
       "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 9, "legend.frameon": False,
       "figure.dpi": 100, "path.simplify": True}


def _import_matplotlib() -> Any:
    """matplotlib, imported now; with a private config dir when none is set, and no font-cache chatter."""
    import sys
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = _private_config_dir()
    fm_log = logging.getLogger("matplotlib.font_manager")
    level = fm_log.level
    fm_log.setLevel(logging.ERROR)   # "Matplotlib is building the font cache" on the first run
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.font_manager  # noqa: F401  (builds the font cache here, quietly)
        import matplotlib.ticker  # noqa: F401
    finally:
        fm_log.setLevel(level)
    return matplotlib


def _private_config_dir() -> str:
    """A per-user matplotlib config/cache dir under the temp dir (its font cache survives between runs)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"ovms-bench-mpl-{uid}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if path.is_symlink() or (hasattr(os, "getuid") and st.st_uid != uid) or not os.access(path, os.W_OK):
            raise PermissionError(path)
        return str(path)
    except OSError:
        return tempfile.mkdtemp(prefix="ovms-bench-mpl-")


def _svg(mpl: Any, fig: Any, prefix: str) -> str:
    """The figure as inline SVG: no XML prolog or DOCTYPE, deterministic, ids unique within the page."""
    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": f"ovms-bench-report-{prefix}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = text.replace("<svg ", f'<svg role="img" aria-label="{prefix}" ', 1)
    return text.strip()


class _PlotData:
    """The result's series in plotting units (seconds since start, ms), binned for long runs."""

    def __init__(self, result: dict) -> None:
        stats = result.get("statistics") or {}
        phases = result.get("phases") or {}
        rows = [r for r in (result.get("timeline") or []) if isinstance(r, dict) and _finite_number(r.get("t"))]
        rows.sort(key=lambda r: r["t"])
        t0 = phases.get("t0")
        if not _finite_number(t0):
            t0 = stats.get("start_timestamp")
        if not _finite_number(t0):
            t0 = rows[0]["t"] if rows else 0.0
        self.t0 = float(t0)
        stop = phases.get("stop", stats.get("stop_timestamp"))
        self.stop = float(stop) if _finite_number(stop) else None
        warm = phases.get("warmup")
        self.warmup = float(warm) if _finite_number(warm) else 0.0
        window = phases.get("window")
        self.window_end = self.warmup + float(window) if _finite_number(window) else None

        # the per-second series, filled with zeros where no request completed
        self.seconds: list[float] = []
        self.passed: list[float] = []
        self.failed: list[float] = []
        self.users: list[float] = []
        self.q: dict[str, list[float]] = {"p50": [], "p90": [], "p99": []}
        self.bin = 1
        self.bin_note = ""
        if rows:
            first, last = int(rows[0]["t"]), int(rows[-1]["t"])
            span = last - first + 1
            self.bin = max(1, math.ceil(span / MAX_TIMELINE_POINTS))
            if self.bin > 1:
                self.bin_note = f" ({self.bin}-second bins)"
            by_bin: dict[int, list[dict]] = {}
            for r in rows:
                by_bin.setdefault((int(r["t"]) - first) // self.bin, []).append(r)
            nbins = (span + self.bin - 1) // self.bin
            lo_all = min(self.t0, float(first))   # a result's rows may start before its t0 (clock skew)
            hi_all = max(self.stop if self.stop is not None else -math.inf, float(last + 1))
            if self.stop is not None and self.stop >= float(last):
                hi_all = self.stop                # the last second is cut where the run stopped
            for b in range(nbins):
                group = by_bin.get(b, [])
                start = first + b * self.bin
                lo, hi = max(float(start), lo_all), min(float(start + self.bin), hi_all)
                covered = hi - lo
                self.seconds.append(lo - self.t0)
                # a rate over the part of the bin inside the run; a sliver under a quarter second is too noisy
                rate_ok = covered >= min(0.25, self.bin)
                self.passed.append(sum(_num(r.get("pass")) for r in group) / covered if rate_ok else math.nan)
                self.failed.append(sum(_num(r.get("fail")) for r in group) / covered if rate_ok else math.nan)
                us = [r["users"] for r in group if _finite_number(r.get("users"))]
                self.users.append(max(us) if us else math.nan)
                for name in self.q:
                    self.q[name].append(_weighted([(r.get(name), _num(r.get("pass")) + _num(r.get("fail")))
                                                   for r in group]) * 1000)
            self.seconds.append(max(hi, lo) - self.t0)   # the right edge of the last step
        self.has_latency = any(math.isfinite(v) for vs in self.q.values() for v in vs)
        user_values = {r["users"] for r in rows if _finite_number(r.get("users"))}
        self.users_vary = len(user_values) > 1

        # the window's histogram as contiguous stairs (gaps between non-empty buckets at zero)
        self.histogram: list[tuple[float, float, float]] = [
            (float(b[0]) * 1000, float(b[1]) * 1000, float(b[2])) for b in (result.get("window_histogram") or [])
            if isinstance(b, list | tuple) and len(b) >= 3 and all(_finite_number(x) for x in b[:3])
            and 0 < b[0] < b[1] and b[2] > 0]
        self.histogram.sort()
        self.marks = [(label, stats[key] * 1000) for label, key in
                      (("mean", "window_mean_latency"), ("p50", "window_latency_p50"), ("p99", "window_latency_p99"))
                      if _finite_number(stats.get(key)) and stats[key] > 0]

        bb = result.get("by_batch")
        self.batch_rows = [r for r in bb if isinstance(r, dict) and "batch_size" in r] \
            if isinstance(bb, list) and len(bb) > 1 else []
        self.users_exact = False
        exact = result.get("by_users")
        if isinstance(exact, list) and len(exact) > 1:   # from the merged per-second histograms
            self.users_rows = [(r["users"], r["pass_batch_rate"], r["fail_batch_rate"],
                                _num(r.get("latency_p99")) * 1000) for r in exact]
            self.users_exact = True
        else:   # an older result: approximated from the timeline's rows
            self.users_rows = self._by_users(rows) if self.users_vary else []

    def _by_users(self, rows: list[dict]) -> list[tuple[float, float, float, float]]:
        """(users, pass req/s, fail req/s, request-weighted mean of the per-second p99 in ms) per user count.

        A second's rate counts only the part of it inside the run (the first and last seconds are partial)."""
        groups: dict[float, list[dict]] = {}
        for r in rows:
            if _finite_number(r.get("users")):
                groups.setdefault(r["users"], []).append(r)
        out = []
        for users in sorted(groups):
            group = groups[users]
            covered = 0.0
            for r in group:
                lo, hi = max(float(r["t"]), self.t0), float(r["t"]) + 1
                if self.stop is not None:
                    hi = min(hi, self.stop)
                covered += max(hi - lo, 0.0)
            covered = covered or float(len(group))
            p99 = _weighted([(r.get("p99"), _num(r.get("pass")) + _num(r.get("fail"))) for r in group]) * 1000
            out.append((users, sum(_num(r.get("pass")) for r in group) / covered,
                        sum(_num(r.get("fail")) for r in group) / covered, p99))
        return out


def _num(value: object) -> float:
    return float(value) if _finite_number(value) else 0.0  # type: ignore[arg-type]


def _weighted(pairs: Sequence[tuple[object, float]]) -> float:
    """The mean of the finite values weighted by request count (NaN when there is none)."""
    good = [(float(v), w) for v, w in pairs if _finite_number(v)]  # type: ignore[arg-type]
    if not good:
        return math.nan
    total = sum(w for _v, w in good)
    if total <= 0:
        return sum(v for v, _w in good) / len(good)
    return sum(v * w for v, w in good) / total


def _shade_phases(ax: Any, data: _PlotData) -> None:
    if data.warmup > 0:
        ax.axvspan(0, data.warmup, color=_COLORS["warmup"], alpha=0.25, lw=0, label="warmup")
    if data.window_end is not None and data.stop is not None and data.stop - data.t0 > data.window_end:
        ax.axvspan(data.window_end, data.stop - data.t0, color=_COLORS["warmup"], alpha=0.12, lw=0,
                   label="after the window")


def _steps(values: list[float]) -> list[float]:
    """A per-interval series with its last value repeated, for drawstyle steps-post over the interval edges."""
    return values + values[-1:]


def _plot_throughput(fig: Any, data: _PlotData) -> None:
    ax = fig.subplots()
    _shade_phases(ax, data)
    ax.plot(data.seconds, _steps(data.passed), drawstyle="steps-post", color=_COLORS["pass"], lw=1.4,
            label="pass req/s")
    if any(v > 0 for v in data.failed):
        ax.plot(data.seconds, _steps(data.failed), drawstyle="steps-post", color=_COLORS["fail"], lw=1.4,
                label="fail req/s")
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    ax.set_xlim(data.seconds[0], data.seconds[-1])
    handles, labels = ax.get_legend_handles_labels()
    if data.users_vary:
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        ax2.plot(data.seconds, _steps(data.users), drawstyle="steps-post", color=_COLORS["users"], lw=1.2,
                 ls="--", label="users")
        ax2.set_ylabel("users")
        ax2.set_ylim(bottom=0)
        ax2.yaxis.get_major_locator().set_params(integer=True)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="lower center", ncols=len(labels), bbox_to_anchor=(0.5, 1.0))


def _plot_latency(fig: Any, data: _PlotData) -> None:
    ax = fig.subplots()
    _shade_phases(ax, data)
    for name in ("p50", "p90", "p99"):
        ax.plot(data.seconds, _steps(data.q[name]), drawstyle="steps-post", color=_COLORS[name], lw=1.3,
                label=f"{name}")
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("latency, ms")
    ax.set_ylim(bottom=0)
    ax.set_xlim(data.seconds[0], data.seconds[-1])
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="lower center", ncols=len(labels), bbox_to_anchor=(0.5, 1.0))


#: the most bars the histogram draws; finer buckets are merged into log-spaced bins for legibility
MAX_HISTOGRAM_BINS = 90


def _display_histogram(buckets: list[tuple[float, float, float]]) -> tuple[list[float], list[float], float]:
    """(edges, counts, bin width in %) of stairs over the buckets; bins merge when there are too many buckets.

    The result's buckets are about 1% wide; over a wide latency range they are merged into log-spaced bins
    (each bucket counted in the bin holding its geometric middle), so the total count is kept."""
    lo, hi = buckets[0][0], max(b[1] for b in buckets)
    widths = sorted(math.log(b[1] / b[0]) for b in buckets)
    step = widths[len(widths) // 2]                      # the buckets' usual (log) width
    n = max(1, math.ceil(math.log(hi / lo) / step))
    if n > MAX_HISTOGRAM_BINS:
        step = math.log(hi / lo) / MAX_HISTOGRAM_BINS
        counts = [0.0] * MAX_HISTOGRAM_BINS
        for low, high, count in buckets:
            mid = math.log(math.sqrt(low * high) / lo)
            counts[min(MAX_HISTOGRAM_BINS - 1, int(mid / step))] += count
        edges = [lo * math.exp(step * i) for i in range(MAX_HISTOGRAM_BINS)] + [hi]
        return edges, counts, (math.exp(step) - 1) * 100
    edges, counts = [], []
    for low, high, count in buckets:
        if edges and low > edges[-1]:
            counts.append(0.0)           # an empty stretch between non-empty buckets
            edges.append(low)
        elif edges and low < edges[-1]:  # overlapping buckets would not be stairs: start after the last edge
            low = edges[-1]
            if high <= low:
                counts[-1] += count
                continue
        if not edges:
            edges.append(low)
        counts.append(count)
        edges.append(high)
    return edges, counts, (math.exp(step) - 1) * 100


def _plot_histogram(fig: Any, data: _PlotData) -> None:
    import matplotlib.ticker as mticker
    ax = fig.subplots()
    edges, counts, width = _display_histogram(data.histogram)
    ax.stairs(counts, edges, fill=True, color=_COLORS["bars"], alpha=0.85, label="requests per bin")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mticker.FuncFormatter(lambda v, _p: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    styles = {"mean": ":", "p50": "--", "p99": "-."}
    for label, value in data.marks:
        ax.axvline(value, color="#333", ls=styles[label], lw=1.1, label=f"{label} {value:.3f} ms")
    ax.set_xlabel(f"latency, ms (log scale; bins about {width:.2g}% wide)")
    ax.set_ylabel("requests")
    ax.set_ylim(bottom=0)
    ax.set_xlim(edges[0] / 1.15, edges[-1] * 1.15)
    ax.legend(loc="upper right")


def _plot_breakdown(fig: Any, data: _PlotData) -> None:
    nrows = bool(data.batch_rows) + bool(data.users_rows)
    fig.set_size_inches(11, 3.4 * nrows)
    axes = fig.subplots(nrows, 2, squeeze=False)
    row = 0
    if data.batch_rows:
        _batch_axes(axes[row][0], axes[row][1], data.batch_rows)
        row += 1
    if data.users_rows:
        _users_axes(axes[row][0], axes[row][1], data.users_rows, data.users_exact)


def _batch_axes(ax_rate: Any, ax_lat: Any, rows: list[dict]) -> None:
    labels = [str(r.get("batch_size")) for r in rows]
    x = list(range(len(rows)))
    rates = [_num(r.get("brutto_frame_rate")) for r in rows]
    bars = ax_rate.bar(x, rates, color=_COLORS["bars"], width=0.6)
    ax_rate.bar_label(bars, fmt="%.1f", fontsize=9, padding=2)
    ax_rate.set_xticks(x, labels)
    ax_rate.set_xlabel("batch size")
    ax_rate.set_ylabel("frames / s (window)")
    ax_rate.set_title("throughput per batch size")
    ax_rate.margins(y=0.15)
    width = 0.26
    for i, (key, name) in enumerate((("mean_latency", "mean"), ("latency_p50", "p50"), ("latency_p99", "p99"))):
        vals = [_num(r.get(key)) * 1000 for r in rows]
        ax_lat.bar([v + (i - 1) * width for v in x], vals, width=width, color=_COLORS[name], label=name)
    ax_lat.set_xticks(x, labels)
    ax_lat.set_xlabel("batch size")
    ax_lat.set_ylabel("latency, ms (window)")
    ax_lat.set_title("latency per batch size")
    ax_lat.legend(loc="upper left")
    ax_lat.margins(y=0.15)


def _users_axes(ax_rate: Any, ax_lat: Any, rows: list[tuple[float, float, float, float]], exact: bool) -> None:
    users = [r[0] for r in rows]
    ax_rate.plot(users, [r[1] for r in rows], marker="o", color=_COLORS["pass"], label="pass req/s")
    if any(r[2] for r in rows):
        ax_rate.plot(users, [r[2] for r in rows], marker="o", color=_COLORS["fail"], label="fail req/s")
    ax_rate.set_xlabel("users")
    ax_rate.set_ylabel("requests / s")
    ax_rate.set_title("throughput per user count (whole run)")
    ax_rate.set_ylim(bottom=0)
    ax_rate.legend(loc="lower right")
    ax_rate.xaxis.get_major_locator().set_params(integer=True)
    ax_lat.plot(users, [r[3] for r in rows], marker="o", color=_COLORS["p99"], label="p99")
    ax_lat.set_xlabel("users")
    ax_lat.set_ylabel("p99 latency, ms")
    ax_lat.set_title("p99 per user count" + ("" if exact else " (mean of per-second p99)"))
    ax_lat.set_ylim(bottom=0)
    ax_lat.xaxis.get_major_locator().set_params(integer=True)
