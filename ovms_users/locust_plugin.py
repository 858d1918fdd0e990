"""Import this in a locustfile: gRPC under gevent, the OVMS options, and the listeners that check them.

    from ovms_users import locust_plugin  # noqa: F401  (first, before anything creates a gRPC object)
"""

from __future__ import annotations

import datetime
import logging
import signal
import sys

import gevent
import greenlet
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()   # before any channel exists: every gRPC call then yields to other users

from locust import events  # noqa: E402
from locust import runners as locust_runners  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from ovms_users import webauth  # noqa: E402, F401  (web UI login, secrets out of the page, TLS warning)
from ovms_users.errors import OvmsUserError  # noqa: E402
from ovms_users.options import BenchOptions, add_arguments  # noqa: E402
from ovms_users.users import register_messages  # noqa: E402
from ovms_users.workload import CACHE, Workload  # noqa: E402

__all__: list[str] = []

#: seconds users get to finish their request in flight at stop, unless --stop-timeout says otherwise
DEFAULT_STOP_TIMEOUT = 10.0


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kw) -> None:
    add_arguments(parser)
    parser.add_argument("--plain_log", action="store_true", default=False, include_in_web_ui=False,
                        help="log the suite's lines as the OVMS client did (the text only, on stderr), not in "
                             "Locust's log format")
    parser.add_argument("--report_interval", default="", include_in_web_ui=False, env_var="LOCUST_REPORT_INTERVAL",
                        help="seconds between a worker's reports to the master (Locust's 3 s by default; the OVMS "
                             "client's --sync_interval): how fresh the master's live numbers are")
    parser.add_argument("--print_time", action="store_true", default=False, include_in_web_ui=False,
                        help="prefix the suite's log lines with the time, [HH:MM:SS.ffffff] (the OVMS client's "
                             "--print_time)")


class _TimeFormatter(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        super().__init__("%(message)s")
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.with_time:
            return datetime.datetime.fromtimestamp(record.created).strftime("[%H:%M:%S.%f] ") + text
        return text


def _setup_plain_log(parsed) -> None:
    """--plain_log / --print_time: the suite's loggers write their text (optionally timed) to stderr themselves."""
    if parsed is None or not (getattr(parsed, "plain_log", False) or getattr(parsed, "print_time", False)):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TimeFormatter(bool(getattr(parsed, "print_time", False))))
    for name in ("ovms_users", "metrics_ext"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def _install_sigint_handler() -> None:
    """Ctrl-C (SIGINT) stops the run through Locust's own KeyboardInterrupt path, raised in the main greenlet.

    Left to Python, the KeyboardInterrupt lands in whichever greenlet runs when the signal arrives,
    often a user in the middle of a gRPC call under gevent; that can leave gRPC's poller wedged and
    the shutdown hanging after the summary. Here the signal is taken by the gevent hub and the
    exception is thrown into the main greenlet only, which is where Locust waits for it. A second
    Ctrl-C while the results are being written is reported and ignored; SIGKILL still forces.
    """
    main, hub = greenlet.getcurrent(), gevent.get_hub()
    if main is hub or main.parent is not None:      # not the main greenlet: leave the default alone
        return
    state = {"stopping": False}

    def on_sigint() -> None:
        if state["stopping"]:
            sys.stderr.write("ovms: already stopping; the results are being written (SIGKILL forces)\n")
            return
        state["stopping"] = True
        hub.loop.run_callback(main.throw, KeyboardInterrupt)

    gevent.signal_handler(signal.SIGINT, on_sigint)


def _set_report_interval(parsed) -> None:
    """--report_interval: how often this process, as a worker, sends its report (read by Locust at each report)."""
    text = str(getattr(parsed, "report_interval", "") or "").strip()
    if not text:
        return
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 600:
        sys.stderr.write(f"ovms: error: --report_interval: {text!r}: give seconds between 0.05 and 600\n")
        sys.exit(2)
    locust_runners.WORKER_REPORT_INTERVAL = value


@events.init.add_listener
def _check_before_load(environment, **_kw) -> None:
    """Headless and --autostart runs fail fast, before any load: one line and exit code 2."""
    register_messages(environment)
    _install_sigint_handler()
    _setup_plain_log(environment.parsed_options)
    _set_report_interval(environment.parsed_options)
    parsed, runner = environment.parsed_options, environment.runner
    if parsed is not None and not isinstance(runner, WorkerRunner) and not environment.stop_timeout:
        # let users finish the request in flight when the test stops, so no request is cut off uncounted
        environment.stop_timeout = DEFAULT_STOP_TIMEOUT
    if parsed is None or isinstance(runner, WorkerRunner) or not (parsed.headless or parsed.autostart):
        return
    try:
        opts = BenchOptions.parse(parsed)
        if isinstance(runner, MasterRunner):
            workload = Workload.build(opts, environment.host, limit=1)   # the workers build their own datasets
        else:
            workload = Workload.build(opts, environment.host)
            CACHE.seed(opts, environment.host, workload)
        # for result exporters (metrics_ext reads it): what the server says it is
        environment.ovms_server = workload.server_info
    except OvmsUserError as exc:
        sys.stderr.write(f"ovms: error: {exc}\n")
        sys.stderr.flush()
        sys.exit(2)


@events.test_start.add_listener
def _new_run(environment, **_kw) -> None:
    CACHE.reset_run()
    runner, parsed = environment.runner, environment.parsed_options
    if parsed is not None and not isinstance(runner, WorkerRunner):
        # the test's user count, for each process's share of an open-loop rate (--arrival_rate, --max_throughput):
        # custom options travel to the workers
        parsed.ovms_users_total = getattr(runner, "target_user_count", None) or getattr(parsed, "num_users", 1)
