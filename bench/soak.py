"""The soak run (issue 9): a long headless Locust run of the suite, watched for memory growth, rate drift and
file-descriptor leaks.

    .venv/bin/python bench/soak.py [--duration 1800] [--api kfs] [--processes 2] [--users 8]
                                   [--arrival_rate R] [--out bench/soak.md]

The reference server (built-in model ``dummy``) runs on core 0, the suite (``python -m locust -f
locustfiles/ovms.py --headless ... --processes P``, its master on 127.0.0.1 and a free port) on core 1
(taskset). Every ``--interval`` seconds (10) the harness reads, from /proc, each Locust process (the master
and every worker child) and the server: VmRSS (and RssAnon), open file descriptors, threads, CPU seconds.
The samples go to a CSV next to the report (``--out`` with .csv).

At the end it reads the run's JSON result (``timeline``: completions per second; ``statistics``: totals) and
judges the steady part, after a warm-up (``--warmup``; default the first 10 % of the run, at most 2 min):

- RSS slope per process (least squares over the steady samples, MB/hour, with its standard error);
- open fds at the start of the steady part against the end (and the most seen);
- the request rate per minute: its coefficient of variation, and the last minutes' rate over the first's
  (5 minutes each, or half the steady part when shorter); with ``--arrival_rate`` also achieved vs target;
- failed requests.

It writes the report (``--out``, bench/soak.md) and prints it; exit code 0 when every verdict is met, 1
when one is not, 2 on an error. Everything it starts is stopped at the end, on Ctrl-C or on an error;
the whole run is bounded by ``--duration`` plus a margin. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    CLIENT_CPU,
    ROOT,
    SERVER_CPU,
    BenchError,
    become_subreaper,
    fit_line,
    free_port,
    machine_details,
    pin_self,
    proc_all_children,
    proc_state,
    stop_group,
)

from refserver.launcher import RefServer, RefServerError  # noqa: E402

LOCUSTFILE = ROOT / "locustfiles" / "ovms.py"
MARGIN_S = 150          # start-up (imports, metadata, dataset), the 10 s stop, the result and the HTML report
STOP_TIMEOUT_S = 10
# the limits, and why
RSS_SLOPE_MB_H = 5.0    # 24 h at this slope: < 120 MB more per process, about one more worker's whole size
FD_GROWTH = 2           # a connection, a log file reopened: no steady growth (8 users keep 8 connections)
RATE_CV = 0.05          # minute-to-minute spread of the rate
RATE_RATIO = (0.9, 1.1)  # the last minutes against the first
TARGET_TOLERANCE = 0.01  # open loop: the achieved rate within 1 % of --arrival_rate


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- sampling

@dataclass
class Sampled:
    wall: float
    role: str
    pid: int
    rss_mb: float
    rss_anon_mb: float
    fds: int
    threads: int
    cpu: float


@dataclass
class Sampler:
    """Reads the server and every Locust process (the master and its children) every ``interval`` s."""
    server_pid: int
    locust_pid: int
    multi: bool                                   # --processes: a master and worker children
    rows: list[Sampled] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)

    def role(self, pid: int) -> str:
        if pid not in self.roles:
            if pid == self.server_pid:
                self.roles[pid] = "server"
            elif pid == self.locust_pid:
                self.roles[pid] = "master" if self.multi else "locust"
            else:
                self.roles[pid] = f"worker{sum(r.startswith('worker') for r in self.roles.values()) + 1}"
        return self.roles[pid]

    def sample(self) -> None:
        now = time.time()
        pids = [self.locust_pid, *proc_all_children(self.locust_pid), self.server_pid]
        for pid in pids:
            state = proc_state(pid)
            if state is not None and state.rss_mb >= 1:    # below: still taskset (vforked), before its exec
                self.rows.append(Sampled(now, self.role(pid), pid, state.rss_mb, state.rss_anon_mb, state.fds,
                                         state.threads, state.cpu))

    def write_csv(self, path: Path, t0: float) -> None:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["unix_time", "elapsed_s", "process", "pid", "rss_mb", "rss_anon_mb", "fds", "threads",
                        "cpu_s"])
            for r in self.rows:
                w.writerow([f"{r.wall:.3f}", f"{r.wall - t0:.1f}", r.role, r.pid, f"{r.rss_mb:.2f}",
                            f"{r.rss_anon_mb:.2f}", r.fds, r.threads, f"{r.cpu:.2f}"])


# ---------------------------------------------------------------- the run

@dataclass
class Outcome:
    result: dict
    returncode: int
    sampler: Sampler
    command: list[str]
    started: float                # wall clock, Locust launched
    wall_s: float


def locust_command(args: argparse.Namespace, host: str, tmp: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host, "--api", args.api,
           "--model_name", args.model, "-u", str(args.users), "-r", str(args.users), "-t", f"{args.duration}s",
           "--stop-timeout", str(STOP_TIMEOUT_S), "--result_file", str(tmp / "result.json"),
           "--report_file", str(tmp / "report.html"), "--only-summary", "--skip-log-setup", "--status_line", "off"]
    if args.arrival_rate:
        cmd += ["--arrival_rate", f"{args.arrival_rate:g}"]
    if args.processes:
        port = str(free_port())
        cmd += ["--processes", str(args.processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                "--master-host", "127.0.0.1", "--master-port", port]
    return cmd + args.locust_args


def run(args: argparse.Namespace, tmp: Path) -> Outcome:
    srv = RefServer(cpu=SERVER_CPU)
    locust: subprocess.Popen | None = None
    try:
        try:
            srv.start()
        except RefServerError as exc:
            raise BenchError(str(exc)) from None
        host = srv.grpc_address if args.api in ("tfs", "kfs") else srv.rest_url
        cmd = locust_command(args, host, tmp)
        log(f"soak: server pid {srv.pid} on core {SERVER_CPU}; Locust on core {CLIENT_CPU} for {args.duration} s:")
        log("  " + shlex.join(display(cmd)))
        out = open(tmp / "locust.log", "wb")
        started = time.time()
        locust = subprocess.Popen(["taskset", "-c", str(CLIENT_CPU), *cmd], stdout=out, stderr=subprocess.STDOUT,
                                  cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                                  start_new_session=True)
        out.close()
        sampler = Sampler(srv.pid, locust.pid, bool(args.processes))
        deadline = time.monotonic() + args.duration + MARGIN_S
        next_sample, next_note = time.monotonic(), time.monotonic() + 60
        while locust.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                sampler.sample()
                next_sample += args.interval
            if now >= next_note:
                log(f"  {time.time() - started:5.0f} s: " + ", ".join(
                    f"{r.role} {r.rss_mb:.0f} MB {r.fds} fds" for r in latest(sampler.rows)))
                next_note += 60
            if now > deadline:
                stop_group(locust)
                raise BenchError(f"Locust did not finish within --duration + {MARGIN_S} s; its last output: "
                                 f"{tail(tmp / 'locust.log')}")
            if srv.proc.poll() is not None:
                raise BenchError(f"the reference server exited (code {srv.proc.returncode}): {srv.output()[-600:]}")
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        wall = time.time() - started
        code = locust.returncode
        result_path = tmp / "result.json"
        if code not in (0, 1, 3) or not result_path.exists():
            raise BenchError(f"Locust exited with code {code} and {'a' if result_path.exists() else 'no'} result "
                             f"file: {tail(tmp / 'locust.log')}")
        result = json.loads(result_path.read_text())
        return Outcome(result, code, sampler, cmd, started, wall)
    finally:
        if locust is not None and locust.poll() is None:
            log("soak: stopping Locust ...")
            stop_group(locust)
        elif locust is not None:
            stop_group(locust)        # nothing left to signal: reaps what its group may have left behind
        srv.close()


def latest(rows: list[Sampled]) -> list[Sampled]:
    if not rows:
        return []
    last = rows[-1].wall
    return [r for r in rows if r.wall == last]


def display(cmd: list[str]) -> list[str]:
    """The command as one would type it: relative to the checkout, python as .venv/bin/python."""
    out = []
    for c in cmd:
        if c == sys.executable:
            c = ".venv/bin/python"
        elif c.startswith(str(ROOT) + "/"):
            c = c[len(str(ROOT)) + 1:]
        elif "/soak-" in c and c.startswith(tempfile.gettempdir()):
            c = "TMP/" + Path(c).name
        out.append(c)
    return out


def tail(path: Path, n: int = 800) -> str:
    try:
        text = " ".join(path.read_text(errors="replace").split())
    except OSError:
        return "(none)"
    return text[-n:] or "(none)"


# ---------------------------------------------------------------- analysis

@dataclass
class ProcSummary:
    role: str
    pid: int
    samples: int
    rss_start: float
    rss_end: float
    rss_max: float
    anon_start: float
    anon_end: float
    slope: float                    # MB/h
    slope_se: float | None
    anon_slope: float
    fd_start: int
    fd_end: int
    fd_max: int
    threads_start: int
    threads_end: int
    cpu_pct: float                  # of one core over the steady part


def summarize(rows: list[Sampled], lo: float, hi: float) -> list[ProcSummary]:
    """Each process over the steady samples (lo <= time <= hi); the max RSS and fds over the whole run."""
    out = []
    order = ["master", "locust"]
    roles = sorted({r.role for r in rows}, key=lambda x: (x not in order, x == "server", x))
    for role in roles:
        mine = [r for r in rows if r.role == role]
        steady = [r for r in mine if lo <= r.wall <= hi]
        if len(steady) < 2:
            continue
        hours = [(r.wall - lo) / 3600 for r in steady]
        slope, _a, se = fit_line(hours, [r.rss_mb for r in steady])
        anon_slope, _a, _se = fit_line(hours, [r.rss_anon_mb for r in steady])
        first, last = steady[0], steady[-1]
        span = last.wall - first.wall
        out.append(ProcSummary(role, first.pid, len(steady), first.rss_mb, last.rss_mb, max(r.rss_mb for r in mine),
                               first.rss_anon_mb, last.rss_anon_mb, slope, se, anon_slope, first.fds, last.fds,
                               max(r.fds for r in mine), first.threads, last.threads,
                               100 * (last.cpu - first.cpu) / span if span > 0 else 0.0))
    return out


def minute_rates(timeline: list[dict], start: float, stop: float, period: int = 60) -> list[tuple[float, int, int]]:
    """(start, completions, fails) of each whole ``period`` from ``start`` (a whole second) that ends by ``stop``."""
    per_sec = {int(r["t"]): (int(r.get("pass") or 0), int(r.get("fail") or 0)) for r in timeline}
    out = []
    t = math.ceil(start)
    while t + period <= stop:
        ok = sum(per_sec.get(s, (0, 0))[0] for s in range(t, t + period))
        bad = sum(per_sec.get(s, (0, 0))[1] for s in range(t, t + period))
        out.append((float(t), ok + bad, bad))
        t += period
    return out


@dataclass
class Verdict:
    check: str
    measured: str
    limit: str
    met: bool | None                 # None: not enough data to judge


def analyze(args: argparse.Namespace, oc: Outcome) -> dict:
    res = oc.result
    stats, phases = res["statistics"], res.get("phases") or {}
    t0 = float(phases.get("t0") or oc.started)
    stop = float(phases.get("stop") or (t0 + args.duration))
    load_end = min(stop, t0 + args.duration)          # the users stop after -t: not part of the steady load
    warmup = args.warmup if args.warmup is not None else min(0.1 * args.duration, 120.0)
    lo = t0 + warmup
    procs = summarize(oc.sampler.rows, lo, load_end)
    minutes = minute_rates(res.get("timeline") or [], lo, load_end)
    rates = [n / 60 for _t, n, _f in minutes]
    verdicts: list[Verdict] = []
    steady_h = (load_end - lo) / 3600
    for p in procs:
        se = f" ± {p.slope_se:.1f}" if p.slope_se is not None else ""
        who = f"RSS slope, {p.role}" + (" (the reference server, not the load generator)" if p.role == "server" else "")
        verdicts.append(Verdict(who, f"{p.slope:+.1f}{se} MB/h ({p.rss_start:.1f} -> {p.rss_end:.1f} MB)",
                                f"< {RSS_SLOPE_MB_H:g} MB/h", abs(p.slope) < RSS_SLOPE_MB_H))
    for p in procs:
        verdicts.append(Verdict(f"open fds, {p.role}", f"{p.fd_start} -> {p.fd_end} (max {p.fd_max})",
                                f"end - start <= {FD_GROWTH}", p.fd_end - p.fd_start <= FD_GROWTH))
    cv = statistics.pstdev(rates) / statistics.mean(rates) if len(rates) >= 2 and statistics.mean(rates) else None
    verdicts.append(Verdict(f"rate per minute, coefficient of variation ({len(rates)} minutes)",
                            f"{100 * cv:.2f} %" if cv is not None else "n/a (fewer than 2 whole minutes)",
                            f"< {100 * RATE_CV:g} %", None if cv is None else cv < RATE_CV))
    w = min(5, len(rates) // 2)
    ratio = statistics.mean(rates[-w:]) / statistics.mean(rates[:w]) if w and statistics.mean(rates[:w]) else None
    verdicts.append(Verdict(f"rate, last {w} min / first {w} min",
                            f"{ratio:.3f} ({statistics.mean(rates[-w:]):.0f} / {statistics.mean(rates[:w]):.0f} req/s)"
                            if ratio is not None else "n/a (fewer than 2 whole minutes)",
                            f"{RATE_RATIO[0]:g} - {RATE_RATIO[1]:g}",
                            None if ratio is None else RATE_RATIO[0] <= ratio <= RATE_RATIO[1]))
    fails = int(stats.get("fail_batches") or 0)
    errors = ", ".join(f"{k}: {v}" for k, v in (stats.get("errors_by_status") or {}).items())
    verdicts.append(Verdict("failed requests", f"{fails} of {int(stats.get('total_batches') or 0)}"
                            + (f" ({errors})" if errors else ""), "0", fails == 0))
    if args.arrival_rate:
        mean = statistics.mean(rates) if rates else 0.0
        verdicts.append(Verdict("open loop: steady rate vs --arrival_rate", f"{mean:.1f} / {args.arrival_rate:g} req/s",
                                f"within {100 * TARGET_TOLERANCE:g} %",
                                bool(rates) and abs(mean / args.arrival_rate - 1) <= TARGET_TOLERANCE))
    return {"t0": t0, "stop": stop, "load_end": load_end, "warmup": warmup, "lo": lo, "procs": procs,
            "minutes": minutes, "rates": rates, "verdicts": verdicts, "stats": stats, "steady_h": steady_h}


# ---------------------------------------------------------------- the report

def report(args: argparse.Namespace, oc: Outcome, an: dict, mach: dict, load_end_avg: tuple, csv_path: Path,
           argv: list[str]) -> str:
    stats, procs, rates = an["stats"], an["procs"], an["rates"]
    started = dt.datetime.fromtimestamp(oc.started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mean_rate = statistics.mean(rates) if rates else 0.0
    per_hour = mean_rate * 3600
    bytes_per_req = RSS_SLOPE_MB_H * 1024 * 1024 / per_hour if per_hour else float("nan")
    la0 = "/".join(f"{x:.2f}" for x in mach["loadavg"])
    la1 = "/".join(f"{x:.2f}" for x in load_end_avg)
    loop = (f"open loop, `--arrival_rate {args.arrival_rate:g}` req/s" if args.arrival_rate
            else "closed loop (each user sends its next request when the previous one answered)")
    lines = [
        "# Soak run: memory, file descriptors and rate over a long run (issue 9)",
        "",
        f"Measured {started} by `{' '.join(['.venv/bin/python', 'bench/soak.py', *argv])}` "
        f"(took {oc.wall_s / 60:.1f} min).",
        "",
        f"- Machine: {mach['model']}, {mach['nproc']} cores usable (nproc; {mach['online']} online), "
        f"{mach['mem_gib']:.1f} GiB. Load average (1/5/15 min) at the start {la0}, at the end {la1}: anything "
        "else running shares the cores, and moves the rate.",
        f"- Server: the reference server (`refserver`), model `{args.model}`, on core {SERVER_CPU}; the suite on "
        f"core {CLIENT_CPU} (`taskset`), {args.users} users, "
        + (f"`--processes {args.processes}` (a master and {args.processes} worker processes), " if args.processes
           else "one process, ") + f"API `{args.api}`, {loop}, `-t {args.duration}s`.",
        "- Locust: `" + " ".join(display(oc.command)) + "`" + f" (exit code {oc.returncode}).",
        f"- Samples every {args.interval:g} s from /proc (VmRSS, RssAnon, open fds, threads, CPU) of every process: "
        f"`{csv_path.name}` next to this file. Steady part: from the end of the warm-up "
        f"({an['warmup']:.0f} s: the first 10 % of the run, at most 2 min, unless `--warmup`) to the end of `-t` "
        f"({(an['load_end'] - an['lo']) / 60:.1f} min).",
        "- RSS slope: least squares of VmRSS over the steady samples, in MB per hour, ± its standard error "
        f"(a slope only means something when it is well above its error; a {args.duration / 60:.0f}-minute run "
        "cannot tell small slopes from allocator noise).",
        f"- Why {RSS_SLOPE_MB_H:g} MB/h: a 24 h run would grow a process by under {24 * RSS_SLOPE_MB_H:.0f} MB, "
        "about one more worker's whole size, harmless on this machine; at this run's "
        + (f"{mean_rate:.0f} req/s it is {bytes_per_req:.2f} bytes per request, so anything kept per request "
           "(an event, a latency, a frame) would exceed it many times over." if rates else "rate (none measured)."),
        f"- Rate: completed requests (passed and failed) per whole minute of the steady part, from the result's "
        f"`timeline`; mean {mean_rate:.1f} req/s over {len(rates)} minutes; all the run: "
        f"{int(stats.get('total_batches') or 0)} requests, {int(stats.get('fail_batches') or 0)} failed.",
        "",
        "## Verdicts",
        "",
        "| check | measured | limit | result |",
        "|---|---|---|---|",
    ]
    for v in an["verdicts"]:
        result = "met" if v.met else "**not met**" if v.met is not None else "not judged"
        lines.append(f"| {v.check} | {v.measured} | {v.limit} | {result} |")
    lines += ["", "## Per process (steady part)", "",
              "| process | pid | samples | RSS start / end / max MB | RSS slope MB/h | RssAnon start / end MB "
              "| RssAnon slope MB/h | fds start / end / max | threads start / end | CPU % of a core |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in procs:
        se = f" ± {p.slope_se:.1f}" if p.slope_se is not None else ""
        lines.append(f"| {p.role} | {p.pid} | {p.samples} | {p.rss_start:.1f} / {p.rss_end:.1f} / {p.rss_max:.1f} "
                     f"| {p.slope:+.1f}{se} | {p.anon_start:.1f} / {p.anon_end:.1f} | {p.anon_slope:+.1f} "
                     f"| {p.fd_start} / {p.fd_end} / {p.fd_max} | {p.threads_start} / {p.threads_end} "
                     f"| {p.cpu_pct:.0f} |")
    lines += ["", *period_table(args, oc, an)]
    return "\n".join(lines) + "\n"


def period_table(args: argparse.Namespace, oc: Outcome, an: dict) -> list[str]:
    """Rate and RSS per 5 minutes from the start of the load (per minute for runs under 20 minutes)."""
    period = 300 if args.duration >= 1200 else 60
    t0 = an["t0"]
    chunks = minute_rates(oc.result.get("timeline") or [], t0, an["load_end"] + 1, period)
    roles = [p.role for p in an["procs"]]
    name = f"{period // 60} minutes" if period > 60 else "minute"
    out = [f"## Per {name} from the start of the load", "",
           "RSS: the last sample in the period. The first rows include the warm-up "
           f"(the first {an['warmup']:.0f} s).", "",
           "| from | req/s | failed | " + " | ".join(f"{r} MB" for r in roles) + " |",
           "|---|---|---|" + "---|" * len(roles)]
    for start, n, bad in chunks:
        cells = []
        for role in roles:
            inside = [r for r in oc.sampler.rows if r.role == role and start <= r.wall < start + period]
            cells.append(f"{inside[-1].rss_mb:.1f}" if inside else "-")
        out.append(f"| {(start - t0) / 60:.0f} min | {n / period:.0f} | {bad} | " + " | ".join(cells) + " |")
    return out


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=1800, help="seconds of load (Locust's -t), default 1800")
    ap.add_argument("--api", default="kfs", choices=("tfs", "kfs", "tfs-rest", "kfs-rest"))
    ap.add_argument("--model", default="dummy", help="a built-in model of the reference server (default dummy)")
    ap.add_argument("--processes", type=int, default=2, help="Locust's --processes (0: one process), default 2")
    ap.add_argument("--users", type=int, default=8, help="users (-u and -r), default 8")
    ap.add_argument("--arrival_rate", type=float, default=0.0,
                    help="open-loop load in requests/s (the suite's --arrival_rate); default closed loop")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between /proc samples, default 10")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from the verdicts; default 10 %% of --duration, at most 120")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.md", help="the report (default bench/soak.md)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy the run's files (result JSON, HTML report, Locust's output) into this folder")
    ap.add_argument("locust_args", nargs="*", help="after --: more options for the suite")
    args = ap.parse_args(argv)
    if args.duration < 60 or args.users < 1 or args.processes < 0 or args.interval <= 0:
        ap.error("--duration must be at least 60, --users at least 1, --processes at least 0, --interval > 0")
    mach = machine_details()
    become_subreaper()
    pin_self(SERVER_CPU)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        oc = run(args, tmp)
        an = analyze(args, oc)
        csv_path = args.out.with_suffix(".csv")
        oc.sampler.write_csv(csv_path, an["t0"])
        text = report(args, oc, an, mach, os.getloadavg(), csv_path, argv)
        args.out.write_text(text)
        print(text)
        log(f"soak: wrote {args.out} and {csv_path}")
        return 0 if all(v.met is not False for v in an["verdicts"]) else 1
    except KeyboardInterrupt:
        log("soak: interrupted; everything it started is stopped, no report written")
        return 130
    finally:
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
            log(f"soak: the run's files are in {args.keep}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
