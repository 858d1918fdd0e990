"""The Locust extension: the OVMS metric set, measured from ``request`` events, merged across processes.

Import it in a locustfile (``from metrics_ext import locust_ext``). It listens to events only and
never imports the load users. Each process records into a Recorder; workers send a cumulative
snapshot with every report and a final one from their ``test_stop``; the master (or the local
runner) merges the snapshots and exports once per test: the JSON result file first, then the
console summary, the OVMS ``JSON-OUTPUT`` line and ``--print_all`` lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent
import locust
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from metrics_ext.mongo import mask_argv, mask_options  # regular expressions only: pymongo is imported by an export
from metrics_ext.output import RESULT_EXIT_CODE, MetricsError, check_outputs, write_atomically
from metrics_ext.result import build_result, format_summary, ovms_statistics
from metrics_ext.series import Phases, Recorder, TimelineSum, WorkerPart
from metrics_ext.webui import install_web_ui

__all__ = ["MetricsExtension", "add_arguments", "EXTENSION"]

log = logging.getLogger("metrics_ext")
PHASES_MESSAGE, FINAL_MESSAGE, REPORT_KEY = "ovms_metrics_phases", "ovms_metrics_final", "ovms_metrics"
SERVER_KEY = "ovms_server"
FINALS_TIMEOUT_S = 5.0
#: seconds a live view of the statistics is reused (several browsers poll every 2 s)
LIVE_CACHE_S = 1.0
#: the OVMS client's version this suite's output corresponds to (its ``client_version`` in MongoDB documents)
CLIENT_VERSION = "2.7"

_ARGS: tuple[tuple[str, Any, str], ...] = (
    ("warmup", "0", "seconds from the start whose requests are warmup, not window"),
    ("window", "", "length in seconds of the measurement window after the warmup (default: to the end)"),
    ("report_warmup", False, "include the warmup_* keys in the result"),
    ("hist_factor", "100", "OVMS histogram scale: bucket = int((hist_factor * latency_s) ** hist_base)"),
    ("hist_base", "1.5", "OVMS histogram exponent"),
    ("quantile_list", "", "quantiles of the window for the qos_* keys, e.g. '0.5 0.9 0.99'"),
    ("result_file", "ovms-result.json", "where the JSON result goes, written first at the end of each test"),
    ("ovms_json", False, "print the OVMS client's JSON-OUTPUT:###<id>###STATISTICS###{...} line"),
    ("print_all", False, "print every result key as '<id>: <key>: <value>', as the OVMS client"),
    ("ovms_id", "worker", "the run's name in JSON-OUTPUT and --print_all lines (the OVMS client's --id)"),
    ("check_fail_ratio", "", "threshold: exit code 3 if the window's failed share of requests is above this (0-1)"),
    ("check_p99_ms", "", "threshold: exit code 3 if the window's p99 latency is above this many milliseconds"),
    ("check_rps", "", "threshold: exit code 3 if the window's brutto requests/s is below this"),
    ("print_summary", False, "print the OVMS client's -ps summary (parameters, durations, batches, window latency "
                              "mean, stdev, p50/p90/p95, total rates)"),
    ("status_line", "auto", "a live one-line status on stderr (elapsed, requests, rate, errors): auto (on a "
                            "terminal only), on, off"),
    ("report_file", "", "also write the self-contained HTML report (plots, summary) here at the end of each test"),
    ("db_endpoint", "", "MongoDB to store the result in at the end: mongodb://host:database:collection (the OVMS "
                        "client's form) or a MongoDB URI mongodb://user:pw@host:port/database?collection=NAME&tls=true"),
    ("db_metadata", "", "key:value items stored with the MongoDB document, space-separated (quote values with "
                        "spaces)"),
    ("db_timeout", "5", "seconds the MongoDB export may wait for the server (connect, select, write)"),
)

#: the OVMS client's short flags that Locust leaves free
_SHORT = {"db_endpoint": "-Y", "db_metadata": "-y"}

#: exit code of a run that broke a --check_* threshold (as locust-plugins' checks)
THRESHOLD_EXIT_CODE = 3
#: exit code of a run whose MongoDB export failed (the JSON result and a loadable dump are on disk)
DB_EXIT_CODE = 4


def add_arguments(parser: Any) -> None:
    locust = hasattr(parser, "args_included_in_web_ui")
    for name, default, help_text in _ARGS:
        kwargs: dict[str, Any] = {"default": default, "help": help_text}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        if locust:
            kwargs.update(env_var=f"LOCUST_{name.upper()}", include_in_web_ui=True)
        flags = [f"--{name}"] + ([_SHORT[name]] if name in _SHORT else [])
        parser.add_argument(*flags, **kwargs)


def _number(opts: Any, name: str, default: float, minimum: float = 0.0) -> float:
    text = str(getattr(opts, name, "") or default).strip()
    try:
        value = float(text)
    except ValueError:
        raise MetricsError(f"--{name}: {text!r} is not a number") from None
    if value != value or value in (math.inf, -math.inf):
        raise MetricsError(f"--{name}: {text!r} is not a finite number")
    if value < minimum:
        raise MetricsError(f"--{name}: needs a number >= {minimum:g}, got {text}")
    return value


def _positive(opts: Any, name: str) -> float | None:
    """A load option's rate (the load side checks it and reports a bad one); None when absent, 0 or bad."""
    try:
        value = float(str(getattr(opts, name, "") or "0").strip())
    except ValueError:
        return None
    return value if 0 < value < math.inf else None


def read_arrivals(opts: Any) -> dict | None:
    """An open-loop run's schedule (ovms_users' ``--arrival_rate`` in requests/s or ``--max_throughput`` in
    frames/s, ``--arrivals``), read by name: None for a closed-loop run."""
    rate, frame_rate = _positive(opts, "arrival_rate"), _positive(opts, "max_throughput")
    if rate is None and frame_rate is None:
        return None
    process = str(getattr(opts, "arrivals", "") or "constant").strip().lower()
    return {"process": process, "rate": rate, "frame_rate": None if rate is not None else frame_rate}


def read_settings(opts: Any) -> dict:
    """The extension's options, checked (values arrive as strings from every source)."""
    window_text = str(getattr(opts, "window", "") or "").strip()
    quantiles_text = str(getattr(opts, "quantile_list", "") or "").replace(",", " ").split()
    try:
        quantiles = [float(q) for q in quantiles_text]
    except ValueError:
        raise MetricsError(f"--quantile_list: {' '.join(quantiles_text)!r} holds something that is not a number") \
            from None
    if any(not 0 < q < 1 for q in quantiles):
        raise MetricsError("--quantile_list: quantiles lie between 0 and 1, e.g. '0.5 0.9 0.99'")
    endpoint = str(getattr(opts, "db_endpoint", "") or "").strip()
    try:
        metadata_items = shlex.split(str(getattr(opts, "db_metadata", "") or ""))
    except ValueError as exc:
        raise MetricsError(f"--db_metadata: {exc}; quote a value with spaces as key:'a value'") from None
    if endpoint or metadata_items:
        from metrics_ext.mongo import MongoExportError, parse_endpoint, parse_metadata
        try:
            if endpoint:
                parse_endpoint(endpoint)
            parse_metadata(metadata_items)
        except MongoExportError as exc:
            raise MetricsError(str(exc)) from None
    return {"warmup": _number(opts, "warmup", 0.0),
            "window": _number(opts, "window", 0.0) if window_text else None,
            "report_warmup": bool(getattr(opts, "report_warmup", False)),
            "hist_factor": _number(opts, "hist_factor", 100.0, 1e-9),
            "hist_base": _number(opts, "hist_base", 1.5, 1e-9),
            "quantile_list": quantiles,
            "result_file": str(getattr(opts, "result_file", "") or ""),
            "ovms_json": bool(getattr(opts, "ovms_json", False)),
            "print_all": bool(getattr(opts, "print_all", False)),
            "ovms_id": str(getattr(opts, "ovms_id", "worker") or "worker"),
            "report_file": str(getattr(opts, "report_file", "") or ""),
            "print_summary": bool(getattr(opts, "print_summary", False)),
            "status_line": _status_mode(opts),
            "db_endpoint": endpoint, "db_metadata": metadata_items,
            "db_timeout": _number(opts, "db_timeout", 5.0, 0.1),
            "checks": {name: _number(opts, name, 0.0) for name in ("check_fail_ratio", "check_p99_ms", "check_rps")
                       if str(getattr(opts, name, "") or "").strip()},
            "arrivals": read_arrivals(opts)}


def _status_mode(opts: Any) -> bool:
    mode = str(getattr(opts, "status_line", "auto") or "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise MetricsError(f"--status_line: {mode!r}: use auto, on or off")
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def print_summary(stats: dict, params: dict) -> str:
    """The OVMS client's -ps block, from the same statistics (its quantiles are the HDR ones: never missing)."""
    opts = params.get("options") or {}

    def ms(key: str) -> str:
        return f"{stats[key] * 1000:.3f} ms"

    window = opts.get("window") or "to the end"
    lines = ["Benchmark Parameters:",
             f"  model: {opts.get('model_name') or '-'}" + (f" (version {opts['model_version']})"
                                                          if opts.get("model_version") else ""),
             f"  shape: {opts.get('shape') or 'from the model'}",
             f"  batch sizes: {opts.get('bs') or 'from the model'}",
             f"  concurrency: {params.get('users')} users in {stats['submetrics']} process(es)",
             f"  duration: {opts.get('run_time') or '-'} s, warmup: {opts.get('warmup') or 0} s, window: {window}",
             "Benchmark Summary:",
             f"  total duration: {stats['total_duration']:.3f} s",
             f"  window duration: {stats['window_total_duration']:.3f} s",
             f"  total batches: {stats['total_batches']}",
             f"  window batches: {stats['window_total_batches']}",
             f"  window mean latency: {ms('window_mean_latency')}",
             f"  window stdev latency: {ms('window_stdev_latency')}",
             f"  window p50 latency: {ms('window_latency_p50')}",
             f"  window p90 latency: {ms('window_latency_p90')}",
             f"  window p95 latency: {ms('window_latency_p95')}",
             f"  brutto frame rate: {stats['brutto_frame_rate']:.2f} frames/s",
             f"  netto frame rate: {stats['netto_frame_rate']:.2f} frames/s",
             f"  brutto batch rate: {stats['brutto_batch_rate']:.2f} batches/s",
             f"  netto batch rate: {stats['netto_batch_rate']:.2f} batches/s"]
    return "\n".join(lines)


def broken_thresholds(stats: dict, checks: dict) -> list[str]:
    """Each --check_* the window's statistics break, in words."""
    broken = []
    total = stats["window_total_batches"]
    if "check_fail_ratio" in checks and total and stats["window_fail_batches"] / total > checks["check_fail_ratio"]:
        broken.append(f"failed share {stats['window_fail_batches'] / total:.4f} > --check_fail_ratio "
                      f"{checks['check_fail_ratio']:g}")
    if "check_p99_ms" in checks and stats["window_latency_p99"] * 1000 > checks["check_p99_ms"]:
        broken.append(f"p99 {stats['window_latency_p99'] * 1000:.3f} ms > --check_p99_ms {checks['check_p99_ms']:g}")
    if "check_rps" in checks and stats["window_brutto_batch_rate"] < checks["check_rps"]:
        broken.append(f"{stats['window_brutto_batch_rate']:.1f} req/s < --check_rps {checks['check_rps']:g}")
    return broken


def _client_identity() -> dict:
    return {"host": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "locust": locust.__version__, "argv": mask_argv(sys.argv[1:])}


class MetricsExtension:
    def __init__(self) -> None:
        self.environment: Any = None
        self.settings: dict = read_settings(None)
        self.recorder: Recorder | None = None
        self.parts: dict[str, WorkerPart] = {}   # worker id -> its latest series and when they came
        self.timeline = TimelineSum()          # the workers' timelines, added up from their drained reports
        self.lost: dict[str, float] = {}       # worker id -> when the master found it missing (wall clock)
        self.finals: set[str] = set()          # the workers whose final snapshot arrived
        self.expected: set[str] = set()
        self.stop_time: float | None = None
        self.peak_users = 0
        self.exported = False
        self.result: dict | None = None
        self.users_at: dict[int, int] = {}     # wall-clock second -> users running (master or local)
        self._waiter: gevent.Greenlet | None = None
        self._sampler: gevent.Greenlet | None = None
        self._live: tuple[float, dict] | None = None   # (monotonic time, statistics) of the last live view
        self._write_failed = False
        self._status: gevent.Greenlet | None = None

    # ------------------------------------------------------------------------------ wiring
    def install(self, environment: Any) -> None:
        self.environment = environment
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            runner.register_message(PHASES_MESSAGE, self._on_phases)
        if isinstance(runner, MasterRunner):
            runner.register_message(FINAL_MESSAGE, self._on_final)

    def _new_recorder(self, phases: Phases) -> Recorder:
        return Recorder(phases, self.settings["hist_factor"], self.settings["hist_base"])

    def on_test_start(self, environment: Any, **_kw: Any) -> None:
        self.settings = read_settings(environment.parsed_options)
        runner = environment.runner
        self.parts.clear()
        self.timeline = TimelineSum()
        self.lost.clear()
        self.finals.clear()
        self._write_failed = False
        self.exported, self.result, self.stop_time, self.peak_users = False, None, None, 0
        self._live = None
        if isinstance(runner, WorkerRunner):
            self.recorder = None   # the master's phases message sets it
            return
        parsed = environment.parsed_options
        if parsed is not None and not (getattr(parsed, "headless", False) or getattr(parsed, "autostart", False)):
            try:   # the web UI's form may have changed the paths since the start-up check
                check_outputs(parsed)
            except MetricsError as exc:
                log.error("ovms: error: %s (the result will go to %s at the end)", exc, tempfile.gettempdir())
        phases = Phases(time.time(), self.settings["warmup"], self.settings["window"])
        self.recorder = self._new_recorder(phases)
        self.users_at = {}
        if self._sampler is not None:
            self._sampler.kill(block=False)
        self._sampler = gevent.spawn(self._sample_users, runner)
        if self.settings["status_line"]:
            self._status = gevent.spawn(self._status_line, phases.t0)
        if isinstance(runner, MasterRunner):
            self.expected = set(runner.clients.keys())
            runner.send_message(PHASES_MESSAGE, {**phases.to_dict(), "settings": self.settings})

    def _status_line(self, t0: float) -> None:
        """Once a second while the test runs: elapsed, requests, rate and errors, on one rewritten stderr line."""
        try:
            while self.stop_time is None:
                gevent.sleep(1.0)
                stats = self.live_statistics()
                if stats is None or self.stop_time is not None:
                    continue
                elapsed = time.time() - t0
                sys.stderr.write(f"\r\x1b[K[ovms] {elapsed:6.0f} s  {stats['total_batches']:>9} requests  "
                                 f"{stats['brutto_batch_rate']:9.1f} req/s  {stats['fail_batches']} errors")
                sys.stderr.flush()
        finally:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _sample_users(self, runner: Any) -> None:
        """The user count once a second while the test runs (the timeline's ``users`` column); on a master,
        also which workers Locust has found missing (no heartbeat), and when."""
        while self.stop_time is None:
            if runner.user_count:   # a master counts workers' users only once they report them
                self.users_at[int(time.time())] = runner.user_count
            if isinstance(runner, MasterRunner):
                self._find_lost(runner)
            gevent.sleep(1.0 - time.time() % 1.0 + 0.01)

    def _find_lost(self, runner: Any) -> None:
        for client in list(runner.clients.values()):
            if client.state == "missing" and client.id not in self.lost and client.id not in self.finals:
                self.lost[client.id] = now = time.time()
                last = self.parts[client.id].reported_at if client.id in self.parts else None
                kept = f"its data up to its last report at {_clock(last)} is kept" if last else "it sent no data"
                log.error("metrics: worker %s lost at %s (no heartbeat); %s", client.id, _clock(now), kept)

    def _on_phases(self, environment: Any, msg: Any, **_kw: Any) -> None:
        self.settings = msg.data["settings"]
        self.recorder = self._new_recorder(Phases.from_dict(msg.data))

    def on_request(self, request_type: str, name: str, response_time: float, response_length: int,
                   exception: Exception | None = None, context: dict | None = None, **_kw: Any) -> None:
        rec = self.recorder
        if rec is None:   # a sample before the phases arrived (should not happen): measure from now
            rec = self.recorder = self._new_recorder(Phases(time.time(), self.settings["warmup"],
                                                            self.settings["window"]))
        if context:
            frames = context.get("frames", 1) or 1
            lag = context.get("schedule_lag_ms")   # an open-loop request: response_time runs from its intended start
        else:
            frames, lag = 1, None
        status = None if exception is None else str(exception).split(":", 1)[0]
        rec.record(exception is None, response_time / 1000.0, frames, time.time(), status,
                   None if lag is None else lag / 1000.0)

    def on_spawning_complete(self, user_count: int, **_kw: Any) -> None:
        self.peak_users = max(self.peak_users, user_count)

    def on_report_to_master(self, client_id: str, data: dict, **_kw: Any) -> None:
        if self.recorder is not None:
            data[REPORT_KEY] = self.recorder.snapshot(drain=True)   # the timeline since the previous report
        server = getattr(self.environment, "ovms_server", None)
        if server:   # what the server said it is, for a master started from the web UI (it fetched nothing)
            data[SERVER_KEY] = server

    def on_worker_report(self, client_id: str, data: dict, **_kw: Any) -> None:
        if REPORT_KEY in data:
            self.parts.setdefault(client_id, WorkerPart()).apply(data[REPORT_KEY], self.timeline)
        if data.get(SERVER_KEY) and not getattr(self.environment, "ovms_server", None):
            self.environment.ovms_server = data[SERVER_KEY]

    def _on_final(self, environment: Any, msg: Any, **_kw: Any) -> None:
        self.parts.setdefault(msg.node_id, WorkerPart()).apply(msg.data, self.timeline)
        self.finals.add(msg.node_id)

    def on_test_stop(self, environment: Any, **_kw: Any) -> None:
        runner = environment.runner
        self.stop_time = time.time()
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None
        if self._status is not None:
            self._status.kill(block=True, timeout=1)
            self._status = None
        if isinstance(runner, WorkerRunner):
            if self.recorder is not None:
                runner.send_message(FINAL_MESSAGE, self.recorder.snapshot(drain=True))
            return
        if not isinstance(runner, MasterRunner) or self._all_finals():
            self.export()
            return
        # headless quit: the workers stop after the master's test_stop; wait for their finals without blocking
        self._waiter = gevent.spawn(self._wait_and_export)

    def _all_finals(self) -> bool:
        return self.expected <= set(self.finals)

    def _wait_and_export(self) -> None:
        deadline = time.monotonic() + FINALS_TIMEOUT_S
        runner = self.environment.runner
        while not self._all_finals() and time.monotonic() < deadline:
            self._find_lost(runner)   # Locust marks a worker missing after a few seconds without a heartbeat
            gevent.sleep(0.05)
        self.export()

    def on_quitting(self, environment: Any, **_kw: Any) -> None:
        if isinstance(environment.runner, WorkerRunner):
            return   # workers only report; the master exports
        if self._waiter is not None:
            self._waiter.join(timeout=FINALS_TIMEOUT_S + 1)
        if not self.exported and self.recorder is not None and self.stop_time is not None:
            self.export()

    def on_reset_stats(self, **_kw: Any) -> None:
        if self.recorder is not None:
            self.recorder = self._new_recorder(Phases(time.time(), self.settings["warmup"], self.settings["window"]))
        self.parts.clear()
        self._live = None

    # ------------------------------------------------------------------------------- export
    def merged(self, series_only: bool = False) -> tuple[Recorder, dict]:
        """The merged recorder, and what it is made of (which worker sent a final, which only a report).

        ``series_only``: the phases' statistics without the timeline and breakdowns, for the live view.
        """
        assert self.recorder is not None
        if not isinstance(self.environment.runner, MasterRunner):
            if series_only:   # read in place: nothing runs between here and the statistics (one greenlet)
                return self.recorder, {"local": "final"}
            return Recorder.merged([self.recorder.snapshot()]), {"local": "final"}
        parts, workers = [], {}
        for client in sorted(self.expected | set(self.parts) | set(self.finals)):
            if client in self.finals:
                parts.append(self.parts[client].snapshot())
                workers[client] = "final"
            elif client in self.parts:
                parts.append(self.parts[client].snapshot())
                state = "missing final: data up to its last report"
                state += f" at {_clock(self.parts[client].reported_at)}"
                if client in self.lost:
                    state += f"; lost at {_clock(self.lost[client])}"
                workers[client] = state
            else:
                workers[client] = "missing: no data received"
        if not parts:
            parts = [self.recorder.snapshot()]
        elif not series_only:   # the workers' timelines, added up as their reports came
            parts[0] = {**parts[0], "timeline": self.timeline.rows()}
        return Recorder.merged(parts, series_only), workers

    def _compose(self, stop_time: float | None, live: bool = False) -> dict:
        """The result document from the merged measurements, the test taken as ending at ``stop_time`` (or now).

        Live (the test still running), the end is the latest completion the merged data holds: workers
        report every few seconds, and rates over a span longer than the data would read low.
        """
        rec, workers = self.merged()
        stop, users = self._stop_of(rec, stop_time, live), self._users()
        options = {k: v for k, v in vars(self.environment.parsed_options or {}).items()
                   if isinstance(v, (str, int, float, bool, type(None), list))}
        options = mask_options(options)   # never a password in a result
        params = {"options": options, "host": self.environment.host, "users": users, "client": _client_identity(),
                  "server": getattr(self.environment, "ovms_server", None)}
        submetrics = self._submetrics(workers)
        result = build_result(rec, stop, users, submetrics, params, self.settings["report_warmup"],
                              self.settings["quantile_list"], workers, self.users_at, self.settings.get("arrivals"))
        result["thresholds"] = {"checks": self.settings["checks"],
                                "broken": broken_thresholds(result["statistics"], self.settings["checks"])}
        return result

    def live_result(self) -> dict | None:
        """The final result once exported; while a test runs, the result as if it stopped now (``live``)."""
        if self.exported and self.result is not None:
            return self.result
        if self.recorder is None or self.environment is None:
            return None
        result = self._compose(self.stop_time, live=True)
        result["live"] = True
        return result

    def live_statistics(self) -> dict | None:
        """The statistics so far (the web UI's tab polls this): the phases only, at most once per LIVE_CACHE_S."""
        if self.exported and self.result is not None:
            return self.result["statistics"]
        if self.recorder is None or self.environment is None:
            return None
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < LIVE_CACHE_S:
            return self._live[1]
        rec, workers = self.merged(series_only=True)
        stats = ovms_statistics(rec, self._stop_of(rec, self.stop_time, live=True), self._users(),
                                self._submetrics(workers), self.settings["report_warmup"],
                                self.settings["quantile_list"], self.settings.get("arrivals"))
        self._live = (now, stats)
        return stats

    @staticmethod
    def _stop_of(rec: Recorder, stop_time: float | None, live: bool) -> float:
        if stop_time is None and live and rec.last_done > rec.phases.t0:
            stop_time = rec.last_done
        # the test's end: when it was stopped, or later if requests in flight then completed after it
        return max(stop_time or time.time(), rec.last_done)

    def _users(self) -> int:
        return max(self.peak_users, getattr(self.environment.runner, "target_user_count", 0) or 0, 1)

    @staticmethod
    def _submetrics(workers: dict) -> int:
        return sum(1 for state in workers.values() if not state.startswith("missing: no data")) or 1

    def export(self) -> dict | None:
        if self.exported or self.recorder is None:
            return self.result
        self.exported = True
        self.result = self._compose(self.stop_time)
        workers = self.result["workers"]
        stats, broken = self.result["statistics"], self.result["thresholds"]["broken"]
        self._write(self.result)   # first: whatever fails after this, the measurements are on disk
        print("\nOVMS metrics (window | total):\n" + format_summary(stats), flush=True)
        missing = [c for c, state in workers.items() if state != "final" and c != "local"]
        if missing:
            log.error("metrics: %d worker(s) sent no final snapshot: %s (see 'workers' in the result)",
                      len(missing), ", ".join(missing))
        for line in broken:
            log.error("threshold broken: %s", line)
        if broken:
            self.environment.process_exit_code = THRESHOLD_EXIT_CODE
        ident = self.settings["ovms_id"]
        if self.settings["ovms_json"]:
            print(f"JSON-OUTPUT:###{ident}###STATISTICS###{json.dumps(stats)}", flush=True)
        if self.settings["print_all"]:
            for key, value in stats.items():
                print(f"{ident}: {key}: {value}")
            sys.stdout.flush()
        if self.settings["print_summary"]:
            print(print_summary(stats, self.result["parameters"]), flush=True)
        self._write_report(self.result)
        self._export_db(self.result)
        if self._write_failed:   # the most telling code: the result is not where it was asked for
            self.environment.process_exit_code = RESULT_EXIT_CODE
        return self.result

    def _write_report(self, result: dict) -> None:
        path = self.settings["report_file"]
        if not path:
            return
        try:
            from metrics_ext.report import write_report
            write_report(result, path)
            log.info("metrics: HTML report written to %s", path)
        except Exception as exc:   # the report is a view: it never costs the result
            log.error("metrics: cannot write the HTML report to %s: %s", path, exc)

    def _export_db(self, result: dict) -> None:
        endpoint = self.settings["db_endpoint"]
        if not endpoint:
            return
        from metrics_ext.mongo import MongoExportError, export
        code = self.environment.process_exit_code
        if code is None:
            runner = self.environment.runner
            code = 1 if (len(runner.errors) or len(runner.exceptions)) else 0
        result_file = self.settings["result_file"] or "ovms-result.json"
        dump = Path(result_file).with_name(Path(result_file).stem + ".mongo.json")
        try:
            ident = export(result, endpoint=endpoint, metadata=self.settings["db_metadata"],
                           options=result["parameters"]["options"], return_code=code, client_version=CLIENT_VERSION,
                           dump_path=dump, timeout_s=self.settings["db_timeout"])
        except MongoExportError as exc:
            log.error("metrics: %s", exc)
            self.environment.process_exit_code = DB_EXIT_CODE
            return
        result["db_id"] = ident
        log.info("metrics: result stored in MongoDB, _id %s", ident)
        if self.settings["ovms_json"]:
            print(f"JSON-OUTPUT:###{self.settings['ovms_id']}###DB-ID###{json.dumps({'_id': ident})}", flush=True)

    def _write(self, result: dict) -> None:
        """The result to --result_file; if that fails (disk full, folder gone), to $TMPDIR, and failing that to
        stdout: a run's measurements are never lost to a write."""
        path = self.settings["result_file"]
        if not path:
            return
        target = Path(path).expanduser()
        text = json.dumps(result, indent=1)
        try:
            write_atomically(target, text)
            log.info("metrics: result written to %s", target)
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
        self._write_failed = True
        fallback = Path(tempfile.gettempdir()) / f"ovms-result-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        try:
            write_atomically(fallback, text)
        except OSError as exc:
            log.error("metrics: cannot write the result to %s (%s) nor to %s (%s); it follows on stdout after "
                      "'OVMS-RESULT:'", target, reason, fallback, exc.strerror or exc)
            print("OVMS-RESULT:" + json.dumps(result), flush=True)
            return
        log.error("metrics: cannot write the result to %s (%s); it was written to %s instead", target, reason,
                  fallback)
        parsed = self.environment.parsed_options
        if getattr(parsed, "json_file", None):   # Locust writes its own statistics after this: beside it
            parsed.json_file = str(fallback.with_suffix(".locust"))


def _clock(t: float) -> str:
    """A wall-clock time as the logs show it: 2026-11-24 23:41:07 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


EXTENSION = MetricsExtension()


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kw: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _install(environment: Any, **_kw: Any) -> None:
    parsed = environment.parsed_options
    if parsed is not None and not isinstance(environment.runner, WorkerRunner):
        try:
            read_settings(parsed)
            check_outputs(parsed)
        except MetricsError as exc:
            if parsed.headless or parsed.autostart:
                sys.stderr.write(f"ovms: error: {exc}\n")
                sys.exit(2)
            log.error("ovms: error: %s", exc)
    EXTENSION.install(environment)
    if not isinstance(environment.runner, WorkerRunner):
        install_web_ui(environment, EXTENSION)
    ev = environment.events
    ev.test_start.add_listener(EXTENSION.on_test_start)
    ev.request.add_listener(EXTENSION.on_request)
    ev.spawning_complete.add_listener(EXTENSION.on_spawning_complete)
    ev.report_to_master.add_listener(EXTENSION.on_report_to_master)
    ev.worker_report.add_listener(EXTENSION.on_worker_report)
    ev.test_stop.add_listener(EXTENSION.on_test_stop)
    ev.quitting.add_listener(EXTENSION.on_quitting)
    ev.reset_stats.add_listener(EXTENSION.on_reset_stats)
