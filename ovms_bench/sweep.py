"""``ovms-bench sweep --levels 1 2 4 8 -- <the client's options>``: a concurrency sweep and its knee.

Each level is a full run of the client's options with ``-c LEVEL`` (one Locust process after another,
each with its own JSON result); the table shows the window's throughput and latency per level. The
knee is the last level whose next level still added at least ``--knee_gain`` of throughput (as
perf_analyzer's concurrency range shows where more concurrency stops paying); with
``--p99_limit_ms``, the highest level whose window p99 stays under the limit is named too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ovms_bench.client import _check, build_parser, child_env, locust_command

__all__ = ["add_sweep_parser", "sweep_command", "find_knee"]


def add_sweep_parser(subparsers) -> None:
    sp = subparsers.add_parser(
        "sweep", help="run the client's options at several concurrency levels and report the knee",
        description="Run the OVMS client's options once per concurrency level (-c), one after another, and "
                    "print throughput and latency per level with the knee. Example: ovms-bench sweep --levels "
                    "1 2 4 8 -- -a HOST -p 9000 -m resnet -t 20 -u 5")
    sp.add_argument("--levels", nargs="+", type=int, required=True, help="concurrency levels (users), ascending")
    sp.add_argument("--knee_gain", type=float, default=0.10,
                    help="a level is past the knee when it adds less than this share of throughput (default 0.10)")
    sp.add_argument("--p99_limit_ms", type=float, help="also name the highest level whose window p99 is under this")
    sp.add_argument("--out_dir", default="sweep", help="folder for each level's result and log (default sweep/)")
    sp.add_argument("--json", action="store_true", help="print the table as JSON")
    sp.add_argument("client", nargs=argparse.REMAINDER, help="-- then the OVMS client's options (without -c)")
    sp.set_defaults(func=sweep_command)


def find_knee(rows: list[dict], gain: float) -> int | None:
    """The last level after which the next one still adds ``gain`` of throughput; None without two levels."""
    ok = [r for r in rows if r.get("rate") is not None]
    if len(ok) < 2:
        return None
    for here, there in zip(ok, ok[1:], strict=False):
        if here["rate"] <= 0 or (there["rate"] - here["rate"]) / here["rate"] < gain:
            return here["users"]
    return ok[-1]["users"]


def _row(level: int, result_file: Path, code: int) -> dict:
    row: dict = {"users": level, "exit_code": code, "result_file": str(result_file)}
    try:
        s = json.loads(result_file.read_text())["statistics"]
    except (OSError, ValueError, KeyError):
        return {**row, "rate": None}
    return {**row, "rate": s["window_brutto_batch_rate"], "frame_rate": s["window_brutto_frame_rate"],
            "p50_ms": s["window_latency_p50"] * 1000, "p99_ms": s["window_latency_p99"] * 1000,
            "mean_ms": s["window_mean_latency"] * 1000, "fail": s["window_fail_batches"],
            "requests": s["window_total_batches"]}


def _table(rows: list[dict]) -> str:
    head = f"{'users':>6}  {'req/s':>9}  {'frames/s':>9}  {'mean ms':>8}  {'p50 ms':>8}  {'p99 ms':>8}  " \
           f"{'requests':>9}  {'failed':>7}"
    lines = [head]
    for r in rows:
        if r.get("rate") is None:
            lines.append(f"{r['users']:>6}  no result (exit code {r['exit_code']}; see {r['result_file']})")
            continue
        lines.append(f"{r['users']:>6}  {r['rate']:9.1f}  {r['frame_rate']:9.1f}  {r['mean_ms']:8.3f}  "
                     f"{r['p50_ms']:8.3f}  {r['p99_ms']:8.3f}  {r['requests']:>9}  {r['fail']:>7}")
    return "\n".join(lines)


def sweep_command(args: argparse.Namespace) -> int:
    client_args = [x for x in args.client if x != "--"] if args.client[:1] == ["--"] else list(args.client)
    levels = args.levels
    if any(level < 1 for level in levels) or levels != sorted(set(levels)):
        print("ovms-bench: error: --levels takes distinct positive user counts in ascending order, e.g. 1 2 4 8",
              file=sys.stderr)
        return 2
    if not 0 < args.knee_gain < 10:
        print("ovms-bench: error: --knee_gain is a share of throughput, e.g. 0.1 for 10 %", file=sys.stderr)
        return 2
    parser = build_parser()
    parser.prog = "ovms-bench sweep --"
    a = parser.parse_args(client_args)
    if any(x in ("-c", "--concurrency") for x in client_args):
        parser.error("the sweep sets -c itself from --levels: drop -c")
    if a.list_models or a.web or a.worker or a.master:
        parser.error("a sweep runs headless load: drop -l, --web, --master and --worker")
    _check(parser, a)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = child_env()
    rows = []
    for level in levels:
        a.concurrency, a.result_file, a.status_line = level, str(out / f"users-{level}.json"), "off"
        log = out / f"users-{level}.log"
        print(f"[sweep] {len(rows) + 1}/{len(levels)}: {level} users ...", end="", file=sys.stderr, flush=True)
        started = time.monotonic()
        with open(log, "w") as fh:
            code = subprocess.run(locust_command(a), stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        row = _row(level, Path(a.result_file), code)
        rows.append(row)
        note = "" if row.get("rate") is None else f" {row['rate']:.1f} req/s, p99 {row['p99_ms']:.2f} ms"
        print(f" done in {time.monotonic() - started:.0f} s{note} (log {log})", file=sys.stderr, flush=True)
    knee = find_knee(rows, args.knee_gain)
    within = [r["users"] for r in rows if r.get("rate") is not None and args.p99_limit_ms is not None
              and r["p99_ms"] <= args.p99_limit_ms]
    summary = {"levels": rows, "knee_users": knee, "knee_gain": args.knee_gain,
               "p99_limit_ms": args.p99_limit_ms, "best_under_p99_limit": max(within) if within else None}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary))
    else:
        print(_table(rows))
        if knee is None:
            print("knee: needs at least two levels with results")
        else:
            print(f"knee: {knee} users (the next level adds less than {args.knee_gain:.0%} throughput"
                  + (")" if knee != rows[-1]["users"] else "; not reached within these levels)"))
        if args.p99_limit_ms is not None:
            best = summary["best_under_p99_limit"]
            print(f"highest level with window p99 <= {args.p99_limit_ms:g} ms: "
                  + (f"{best} users" if best else "none"))
    failed = [r for r in rows if r.get("rate") is None]
    return 1 if failed else max((r["exit_code"] for r in rows), default=0)
