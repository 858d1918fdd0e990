"""Import this in a locustfile: gRPC under gevent, the OVMS options, and the listeners that check them.

    from ovms_users import locust_plugin  # noqa: F401  (first, before anything creates a gRPC object)
"""

from __future__ import annotations

import sys

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()   # before any channel exists: every gRPC call then yields to other users

from locust import events  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

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


@events.init.add_listener
def _check_before_load(environment, **_kw) -> None:
    """Headless and --autostart runs fail fast, before any load: one line and exit code 2."""
    register_messages(environment)
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
