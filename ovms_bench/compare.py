"""``ovms-bench compare BASE.json NEW.json``: two result documents side by side, and a CI regression gate.

The rows use the console summary's vocabulary (``metrics_ext.result.summary_rows``): one phase (window or
total), throughput, pass rate, latency in milliseconds, counts and duration, each with base, new, the
absolute delta, the % change and which run is better. Only the standard library is used, so comparing
results needs neither Locust nor a server.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import UTC, datetime

__all__ = ["add_compare_parser", "compare_command", "compare_results", "CompareError"]

#: exit codes: bad input (as argparse), and a regression beyond --max_regression
EXIT_ERROR = 2
EXIT_REGRESSION = 3

#: the quantiles every result reports (``metrics_ext.series.QUANTILES``), as their key and display names
_QUANTILES = (("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("p99_9", "p99.9"))

#: the statistics key, per phase, that must be there for a phase to be comparable at all
_PHASE_KEY = "brutto_frame_rate"
_PREFIX = {"window": "window_", "total": ""}

# (metric, key without the phase prefix, unit, scale from the stored value, direction: +1 higher is better,
#  -1 lower is better, 0 neither); a tuple of keys is their maximum (latency max: pass or fail)
_METRICS: tuple[tuple[str, str | tuple[str, ...], str, float, int], ...] = (
    ("brutto req/s", "brutto_batch_rate", "req/s", 1.0, +1),
    ("brutto frames/s", "brutto_frame_rate", "frames/s", 1.0, +1),
    ("netto req/s", "netto_batch_rate", "req/s", 1.0, +1),
    ("pass rate %", "batch_passrate", "%", 100.0, +1),
    ("latency mean ms", "mean_latency", "ms", 1000.0, -1),
    ("latency stdev ms", "stdev_latency", "ms", 1000.0, -1),
    *((f"latency {shown} ms", f"latency_{key}", "ms", 1000.0, -1) for key, shown in _QUANTILES),
    ("latency max ms", ("pass_max_latency", "fail_max_latency"), "ms", 1000.0, -1),
    ("requests", "total_batches", "", 1.0, 0),
    ("requests failed", "fail_batches", "", 1.0, -1),
    ("frames", "total_frames", "", 1.0, 0),
    ("duration s", "total_duration", "s", 1.0, 0),
)

#: the gate's two criteria: (metric row, what counts as a regression)
_GATE_THROUGHPUT = "brutto frames/s"
_GATE_LATENCY = "latency p99 ms"


class CompareError(Exception):
    """Bad input: the message says what to change; the command prints it as ``ovms-bench: error: ...``."""


# ---------------------------------------------------------------------------------------------- the rows

def _number(value: object) -> float | None:
    """A finite number (ints stay ints: counts), or None for anything else (absent, null, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _value(stats: dict, prefix: str, key: str | tuple[str, ...], scale: float) -> float | None:
    keys = (key,) if isinstance(key, str) else key
    values = [v for v in (_number(stats.get(prefix + k)) for k in keys) if v is not None]
    if not values:
        return None
    return max(values) * scale if scale != 1 else max(values)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _statistics(doc: object, label: str = "result") -> dict:
    if not isinstance(doc, dict) or not isinstance(doc.get("statistics"), dict):
        raise CompareError(f"{label} is not an ovms-bench result (no \"statistics\" object); give a file "
                           "written with --result_file")
    return doc["statistics"]


def _check_phase(stats: dict, phase: str, label: str) -> None:
    if phase not in _PREFIX:
        raise CompareError(f"unknown phase {phase!r}; use --phase window or --phase total")
    key = _PREFIX[phase] + _PHASE_KEY
    if _number(stats.get(key)) is None:
        other = "total" if phase == "window" else "window"
        hint = (f"compare --phase {other} instead" if _number(stats.get(_PREFIX[other] + _PHASE_KEY)) is not None
                else "give a result file written by ovms-bench with --result_file")
        raise CompareError(f"{label} has no {phase} statistics ({key} is missing); {hint}")


def compare_results(a: dict, b: dict, phase: str = "window") -> list[dict]:
    """One row per metric of ``phase`` ("window" or "total"): base ``a`` against new ``b``.

    Each row: ``metric`` (the console summary's name), ``key`` (the statistics key), ``a``, ``b``, ``delta``
    (b - a), ``change_pct`` (delta in % of a), ``better`` ("a", "b" or "=") and ``unit``. Values are in the
    unit shown (latency in ms, pass rate in %). A key a result lacks gives None for its value and for
    everything computed from it; a base of 0 gives ``change_pct`` None (0 when both are 0). Counts and
    duration have no better run: their ``better`` is "=" when equal, None otherwise.
    Raises :class:`CompareError` when a document is not a result or lacks the phase.
    """
    sa, sb = _statistics(a, "base"), _statistics(b, "new")
    _check_phase(sa, phase, "base")
    _check_phase(sb, phase, "new")
    prefix = _PREFIX[phase]
    rows = []
    for metric, key, unit, scale, direction in _METRICS:
        va, vb = _value(sa, prefix, key, scale), _value(sb, prefix, key, scale)
        shown_key = prefix + key if isinstance(key, str) else "max(" + ", ".join(prefix + k for k in key) + ")"
        delta = change = better = None
        if va is not None and vb is not None:
            delta = vb - va
            if _same(va, vb):
                delta, better = (0 if isinstance(delta, int) else 0.0), "="
                change = 0.0
            else:
                change = delta / va * 100.0 if va != 0 else None
                if direction:
                    better = "b" if (vb > va) == (direction > 0) else "a"
        rows.append({"metric": metric, "key": shown_key, "a": va, "b": vb, "delta": delta, "change_pct": change,
                     "better": better, "unit": unit})
    return rows


# ------------------------------------------------------------------------------------- runs and warnings

def _options(doc: dict) -> dict:
    params = doc.get("parameters")
    options = params.get("options") if isinstance(params, dict) else None
    return options if isinstance(options, dict) else {}


def _batch_sizes(doc: dict) -> str | None:
    bs = _options(doc).get("bs")
    if isinstance(bs, (list, tuple)):
        bs = " ".join(str(x) for x in bs)
    sizes = re.findall(r"\d+", str(bs)) if bs not in (None, "") else []
    if not sizes and isinstance(doc.get("by_batch"), list):
        sizes = [str(r["batch_size"]) for r in doc["by_batch"] if isinstance(r, dict) and "batch_size" in r]
    return "-".join(str(int(s)) for s in sizes) or None


def _server(doc: dict) -> str | None:
    params = doc.get("parameters")
    server = params.get("server") if isinstance(params, dict) else None
    if not isinstance(server, dict) or not server.get("name"):
        return None
    return " ".join(str(server[k]) for k in ("name", "version") if server.get(k))


def run_info(doc: dict) -> dict:
    """What a run was: model, api, host, users, batch sizes, server, start (UTC) and duration (None if unknown)."""
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    options = _options(doc)
    server = params.get("server") if isinstance(params.get("server"), dict) else {}
    phases = doc.get("phases") if isinstance(doc.get("phases"), dict) else {}
    stats = doc.get("statistics") if isinstance(doc.get("statistics"), dict) else {}
    t0 = _number(phases.get("t0"))
    duration = _number(stats.get("total_duration"))
    if duration is None and t0 is not None and _number(phases.get("stop")) is not None:
        duration = phases["stop"] - t0
    version = options.get("model_version")
    model = options.get("model_name") or None
    if model and version not in (None, "", 0, "0"):
        model = f"{model}:{version}"
    return {"model": model, "api": options.get("api") or server.get("api") or None,
            "host": params.get("host") or options.get("host") or None,
            "users": params.get("users", options.get("num_users")), "batch_sizes": _batch_sizes(doc),
            "server": _server(doc),
            "date": datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t0 is not None else None,
            "duration": duration}


def run_warnings(a: dict, b: dict) -> list[str]:
    """One line per property in which the two runs differ (model, api, batch sizes, users, server)."""
    ia, ib = run_info(a), run_info(b)
    lines = []
    for key, name in (("model", "model"), ("api", "api"), ("batch_sizes", "batch sizes"), ("users", "users"),
                      ("server", "server")):
        if ia[key] != ib[key]:
            lines.append(f"the runs differ in {name}: {_text(ia[key])} (base) vs {_text(ib[key])} (new)")
    return lines


def _text(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def _describe(info: dict) -> str:
    duration = f"{info['duration']:.2f} s" if info["duration"] is not None else "-"
    return (f"model {_text(info['model'])}, api {_text(info['api'])}, host {_text(info['host'])}, "
            f"users {_text(info['users'])}, batch sizes {_text(info['batch_sizes'])}, "
            f"server {_text(info['server'])}, {_text(info['date'])}, duration {duration}")


# ------------------------------------------------------------------------------------------ the table

_DIGITS = {"req/s": 1, "frames/s": 1, "%": 2, "ms": 3, "s": 2, "": 0}


def _fmt(value: float | None, unit: str, sign: bool = False) -> str:
    if value is None:
        return "-"
    digits = _DIGITS.get(unit, 3)
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _verdict(row: dict) -> str:
    return {"a": "worse", "b": "better", "=": "same"}.get(row["better"], "")


def format_table(rows: list[dict]) -> str:
    """The rows as a text table: metric, base, new, delta, change and better/worse (for the new run)."""
    lines = [("", "base", "new", "delta", "change", "")]
    for r in rows:
        change = "-" if r["change_pct"] is None else f"{r['change_pct']:+.2f}%"
        lines.append((r["metric"], _fmt(r["a"], r["unit"]), _fmt(r["b"], r["unit"]),
                      _fmt(r["delta"], r["unit"], sign=True), change, _verdict(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    return "\n".join(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]:>{widths[3]}}  "
                     f"{c[4]:>{widths[4]}}  {c[5]}".rstrip() for c in lines)


# ------------------------------------------------------------------------------------------- the gate

def regressions(rows: list[dict], max_pct: float) -> list[str]:
    """The gate over window rows: throughput (brutto frames/s) down, or p99 latency up, by more than max_pct %.

    Raises :class:`CompareError` when either value is missing (a gate must not pass by default).
    """
    found = []
    by_metric = {r["metric"]: r for r in rows}
    for metric, direction in ((_GATE_THROUGHPUT, +1), (_GATE_LATENCY, -1)):
        row = by_metric[metric]
        if row["a"] is None or row["b"] is None:
            which = "base" if row["a"] is None else "new"
            raise CompareError(f"--max_regression needs {row['key']}, which the {which} result lacks; "
                               "drop --max_regression or re-run with this version")
        a, b = row["a"], row["b"]
        limit = a * (1 - max_pct / 100.0) if direction > 0 else a * (1 + max_pct / 100.0)
        if (b < limit if direction > 0 else b > limit) and not _same(a, b):
            change = "-" if row["change_pct"] is None else f"{row['change_pct']:+.2f}%"
            word = "fell" if direction > 0 else "rose"
            found.append(f"{row['key']} {word} by more than {max_pct:g}%: {_fmt(a, row['unit'])} -> "
                         f"{_fmt(b, row['unit'])} {row['unit']} ({change})")
    return found


# ------------------------------------------------------------------------------------ the command line

def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (give a percentage, e.g. 5)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage of 0 or more (e.g. 5)")
    return value


def add_compare_parser(subparsers) -> None:
    """Add the ``compare`` subcommand to an ``add_subparsers()`` object (its func is :func:`compare_command`)."""
    p = subparsers.add_parser(
        "compare", help="compare two JSON results (--result_file): throughput, pass rate, latency",
        description="Compare two result files written with --result_file: throughput, pass rate, latency, "
                    "counts and duration of one phase, with the change from BASE to NEW. Exit code 3 when "
                    "--max_regression is exceeded, 2 on bad input.")
    p.add_argument("base", metavar="BASE.json", help="the reference result")
    p.add_argument("new", metavar="NEW.json", help="the result to judge against it")
    p.add_argument("--phase", choices=("window", "total"), default="window",
                   help="the measurement window (after warm-up; default) or the whole run")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--max_regression", type=_percent, default=None, metavar="PCT",
                   help="exit with code 3 when the window brutto frame rate fell, or the window p99 latency "
                        "rose, by more than PCT percent (a CI gate)")
    p.set_defaults(func=compare_command)


def _load(path: str, label: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise CompareError(f"cannot read the {label} result {path}: {exc.strerror or exc}; "
                           "give the path of a file written with --result_file") from None
    except UnicodeDecodeError:
        raise CompareError(f"the {label} result {path} is not JSON (not UTF-8 text); "
                           "give a file written with --result_file") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CompareError(f"the {label} result {path} is not JSON ({exc}); "
                           "give a file written with --result_file") from None
    _statistics(doc, f"the {label} result {path}")
    return doc


def compare_command(args: argparse.Namespace) -> int:
    """Run ``compare``: print the table (or JSON) and return 0, 3 (regression) or 2 (bad input, on stderr)."""
    phase = getattr(args, "phase", "window")
    max_pct = getattr(args, "max_regression", None)
    as_json = getattr(args, "json", False)
    try:
        a, b = _load(args.base, "base"), _load(args.new, "new")
        for doc, label, path in ((a, "base", args.base), (b, "new", args.new)):
            _check_phase(doc["statistics"], phase, f"the {label} result {path}")
            if max_pct is not None and phase != "window":
                _check_phase(doc["statistics"], "window", f"the {label} result {path} (for --max_regression)")
        rows = compare_results(a, b, phase)
        gate = regressions(rows if phase == "window" else compare_results(a, b, "window"), max_pct) \
            if max_pct is not None else []
    except CompareError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    warnings = run_warnings(a, b)
    if as_json:
        print(json.dumps(rows, indent=2))
        for line in warnings:
            print(f"ovms-bench: warning: {line}", file=sys.stderr)
    else:
        for label, path, doc in (("base", args.base, a), ("new", args.new, b)):
            print(f"{label + ':':<5} {path}\n      {_describe(run_info(doc))}")
        for line in warnings:
            print(f"warning: {line}")
        print(f"\n{phase} (better/worse: the new run against the base)")
        print(format_table(rows))
    out = sys.stderr if as_json else sys.stdout
    if gate:
        if not as_json:
            print()
        for line in gate:
            print(f"ovms-bench: regression: {line}", file=out)
        return EXIT_REGRESSION
    if max_pct is not None and not as_json:
        print(f"\nno regression beyond {max_pct:g}% (window brutto frames/s and p99 latency)", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ovms_bench.compare BASE.json NEW.json``: the subcommand on its own."""
    from ovms_bench.cli import main as cli_main

    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
