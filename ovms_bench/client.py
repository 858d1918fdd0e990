"""``ovms-bench -a HOST -p PORT -m MODEL ...``: the OVMS benchmark client's command line, run on Locust.

Every option of the original client 2.7 keeps its short and long name and its meaning; values are
typed and checked here, at parse time (the original converted strings deep inside the run). The
options become one Locust command line (the suite's locustfile, its users and its metrics), which
replaces this process, so the exit code, the signals and the output are Locust's and the suite's.

Fixed on the way (see README.md, "From the OVMS client"): ``-t`` and ``-n`` together end at whichever
comes first for the whole test, not per worker; ``-c`` is concurrent users, not forked processes
(``--processes`` spreads them over cores); TFS requests carry ``-v``; ``--max_throughput`` paces to a
schedule; ``-ps`` never crashes; ``--stateful_hop`` works; sub-second ``--step_timeout`` works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import sys
import tempfile
from pathlib import Path

__all__ = ["build_parser", "locust_command", "run_client", "CLIENT_VERSION"]

#: what the original's --internal_version printed; its Mongo documents' client_version
CLIENT_VERSION = "2.7"
LOCUSTFILE = Path(__file__).resolve().parent.parent / "ovms_users" / "locustfile.py"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``ovms-bench: error: ...``) and exit code 2, as argparse users expect."""

    def error(self, message: str) -> None:   # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            what: str = "") -> object:
    def convert(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text!r}: needs {what or ('> ' if low_open else '>= ') + f'{low:g}'}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r}: needs {what or f'<= {high:g}'}")
        return value
    convert.__name__ = kind.__name__
    return convert


def _batch_sizes(text: str) -> list[int]:
    """One -b item: a size, or the original's dash list (1-2-4)."""
    out = []
    for part in text.split("-"):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: batch sizes are positive integers, e.g. -b 1 2 4 or "
                                             "-b 1-2-4") from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: batch sizes are positive integers")
        out.append(size)
    return out


def _quantile(text: str) -> float:
    value = _number(float)(text)
    if not 0 < value < 1:   # type: ignore[operator]
        raise argparse.ArgumentTypeError(f"{text!r}: quantiles lie between 0 and 1, e.g. 0.5 0.9 0.99")
    return value   # type: ignore[return-value]


def _port(text: str) -> int:
    return _number(int, 1, 65535, what="a port number between 1 and 65535")(text)   # type: ignore[return-value]


_POS_INT = _number(int, 1)
_NONNEG_INT = _number(int, 0)
_POS_FLOAT = _number(float, 0, low_open=True)
_NONNEG_FLOAT = _number(float, 0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ovms-bench", allow_abbrev=False,
                description="Benchmark a model server with the OVMS benchmark client's options, on Locust. "
                            "Subcommands: demo, list, sweep, compare, db-load (ovms-bench SUBCOMMAND --help).",
                epilog="The original client's options keep their names and meanings; see README.md, "
                       "'From the OVMS client', for the bugs fixed.")
    o = p.add_argument_group("the OVMS benchmark client's options")
    o.add_argument("-i", "--id", default="worker", help="name of the run in output lines (default: worker)")
    o.add_argument("-c", "--concurrency", type=_POS_INT, default=1, help="concurrent users (default 1)")
    o.add_argument("-a", "--server_address", help="server host name or address (required)")
    o.add_argument("-p", "--grpc_port", type=_port, help="gRPC port (TFS and KFS APIs)")
    o.add_argument("-r", "--rest_port", type=_port, help="HTTP port (REST API, and --list_models)")
    o.add_argument("-l", "--list_models", action="store_true", help="list the served models (with -m: that "
                                                                     "model's inputs and outputs) and exit")
    o.add_argument("-b", "--bs", nargs="*", type=_batch_sizes, help="batch sizes, e.g. -b 1 2 4 or -b 1-2-4")
    o.add_argument("-s", "--shape", nargs="*", help="forced shapes: D0 D1 ... for every input, or NAME: D0 D1 ...")
    o.add_argument("-d", "--data", nargs="*", help="data methods: random, png, pngN, png-xrandom, jpeg, string, "
                                                    "NAME:METHOD, or a .npy/.png/.jpg/.txt file")
    o.add_argument("-j", "--json", action="store_true", help="print JSON-OUTPUT:###ID###TAG###{...} lines")
    o.add_argument("-m", "--model_name", help="model name")
    o.add_argument("-k", "--dataset_length", type=_POS_INT, help="distinct requests built before the test")
    o.add_argument("-v", "--model_version", type=_POS_INT, help="model version (default: the latest served)")
    o.add_argument("-n", "--steps_number", type=_NONNEG_INT, help="requests per user (0: no limit)")
    o.add_argument("-t", "--duration", type=_POS_FLOAT, help="seconds of load (whole seconds, rounded up)")
    o.add_argument("-u", "--warmup", type=_NONNEG_FLOAT, default=0.0, help="seconds of warmup (default 0)")
    o.add_argument("-w", "--window", type=_POS_FLOAT, help="seconds of measurement window after the warmup")
    o.add_argument("--report_warmup", action="store_true", help="also report the warmup_* keys")
    o.add_argument("-e", "--error_limit", type=_NONNEG_INT, help="stop after more than this many failures")
    o.add_argument("-x", "--error_exposition", type=_NONNEG_INT, help="print the first N failures (0: all)")
    o.add_argument("--max_throughput", type=_POS_FLOAT,
                   help="open-loop load: frames/s for the whole test, started on one schedule the users share "
                        "(whether or not earlier requests finished); latency from each request's intended start")
    o.add_argument("--min_value", type=_number(float), help="lowest random value (default 0)")
    o.add_argument("--max_value", type=_number(float), help="highest random value (default 255)")
    o.add_argument("--xrand", type=_POS_INT, help="seed points per png-xrandom image (default 8)")
    o.add_argument("--dump_png", action="store_true", help="also save every generated image as /tmp/xcli-*.png")
    o.add_argument("--step_timeout", type=_POS_FLOAT, help="seconds per request (fractions allowed; default 30)")
    o.add_argument("--metadata_timeout", type=_POS_FLOAT, help="seconds to retry model metadata (default 45)")
    o.add_argument("-Y", "--db_endpoint", help="MongoDB: mongodb://host:database:collection or a MongoDB URI")
    o.add_argument("-y", "--db_metadata", nargs="*", help="key:value items stored with the MongoDB document")
    o.add_argument("--print_all", action="store_true", help="print every result key as 'ID: key: value'")
    o.add_argument("-ps", "--print_summary", action="store_true", help="print the parameters and a summary")
    o.add_argument("--print_time", action="store_true", help="prefix log lines with [HH:MM:SS.ffffff]")
    o.add_argument("--certs_dir", help="mutual TLS: DIR/server.pem (trusted root), client.pem, client.key")
    o.add_argument("-q", "--stateful_length", type=_NONNEG_INT, help="requests per stateful sequence (0: off)")
    o.add_argument("--stateful_id", type=_POS_INT, help="first sequence id (default 1)")
    o.add_argument("--stateful_hop", type=_NONNEG_INT, help="id increment between a user's sequences")
    o.add_argument("--sync_interval", type=_number(float, 0.05, 600, what="seconds between 0.05 and 600"),
                   help="seconds between the load processes' reports to the master (default 3): how fresh the "
                        "live numbers are")
    o.add_argument("--quantile_list", nargs="*", type=_quantile, help="window quantiles for the qos_* keys")
    o.add_argument("--hist_factor", type=_POS_FLOAT, help="OVMS histogram scale (default 100)")
    o.add_argument("--hist_base", type=_POS_FLOAT, help="OVMS histogram exponent (default 1.5)")
    o.add_argument("--internal_version", action="store_true", help=f"print {CLIENT_VERSION} and exit")
    o.add_argument("--unbuffered", action="store_true", help="flush every output line at once")
    o.add_argument("--api", type=str.upper, choices=("TFS", "KFS", "REST", "KFS-REST"), default="TFS",
                   help="TFS (TF Serving gRPC, default), KFS (KServe v2 gRPC), REST (TFS REST), KFS-REST")
    x = p.add_argument_group("beyond the original")
    x.add_argument("--processes", type=_number(int, -1), help="spread the users over this many load processes "
                                                               "(-1: one per core)")
    x.add_argument("--master", action="store_true", help="be the master of a distributed run (wait for workers)")
    x.add_argument("--expect_workers", type=_POS_INT, default=1, help="with --master: workers to wait for")
    x.add_argument("--master_bind", default="127.0.0.1:5557", help="with --master: address:port to listen on "
                                                                    "(default 127.0.0.1:5557)")
    x.add_argument("--worker", metavar="MASTER", help="be a worker of the master at host:port")
    x.add_argument("--web", metavar="HOST:PORT", nargs="?", const="127.0.0.1:8089",
                   help="open Locust's web UI instead of running headless (default 127.0.0.1:8089)")
    x.add_argument("--result_file", default="ovms-result.json", help="the JSON result (default ovms-result.json)")
    x.add_argument("--report_file", help="also write the self-contained HTML report here")
    x.add_argument("--status_line", choices=("auto", "on", "off"), default="auto",
                   help="live one-line status on stderr (auto: on a terminal only)")
    x.add_argument("--seed", type=_NONNEG_INT, help="seed of the generated data (and of Poisson arrivals)")
    x.add_argument("--arrival_rate", type=_POS_FLOAT,
                   help="open-loop load in requests/s for the whole test (instead of --max_throughput's frames/s)")
    x.add_argument("--arrivals", choices=("constant", "poisson"),
                   help="open loop: constant spacing (default) or Poisson arrivals")
    x.add_argument("--check_fail_ratio", type=_number(float, 0, 1), help="exit code 3 above this failed share")
    x.add_argument("--check_p99_ms", type=_POS_FLOAT, help="exit code 3 above this window p99 (ms)")
    x.add_argument("--check_rps", type=_POS_FLOAT, help="exit code 3 below this window req/s")
    x.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                   help="a request header on every request (REST) and gRPC call (metadata), e.g. 'Authorization: "
                        "Bearer TOKEN'; repeatable; its value is never printed or stored")
    x.add_argument("--tls_no_verify", action="store_true",
                   help="TLS without checking the server's certificate and host name (warned at start)")
    x.add_argument("--web_credentials", metavar="USER:PASSWORD",
                   help="with --web: the web UI asks for this user and password (Locust's --web-login)")
    x.add_argument("--locust", nargs=argparse.REMAINDER, default=[], help="everything after it goes to Locust")
    return p


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """What argparse cannot say alone: required and conflicting options, with what to change."""
    if a.master and a.worker:
        p.error("--master and --worker exclude each other")
    from ovms_users.errors import OptionError
    from ovms_users.security import parse_credentials, parse_headers
    try:
        parse_headers(a.header)
        if a.web_credentials is not None:
            parse_credentials(a.web_credentials)
    except OptionError as exc:
        p.error(str(exc))
    if a.web_credentials is not None and not a.web:
        p.error("--web_credentials protects the web UI: give --web too (or drop --web_credentials)")
    if a.worker:
        return   # a worker takes everything else from its master
    if not a.server_address:
        p.error("give the server: -a/--server_address HOST")
    rest = a.api in ("REST", "KFS-REST")
    if a.list_models:
        if not (a.rest_port or a.grpc_port):
            p.error("--list_models needs -r/--rest_port (or -p/--grpc_port)")
        return
    if not a.model_name:
        p.error("give the model: -m/--model_name NAME (ovms-bench -a HOST -r PORT -l lists the served ones)")
    if rest and not a.rest_port:
        p.error(f"--api {a.api} sends over HTTP: give -r/--rest_port")
    if not rest and not a.grpc_port:
        p.error(f"--api {a.api} sends over gRPC: give -p/--grpc_port")
    if a.steps_number is None and a.duration is None and not a.web:
        p.error("give -t/--duration SECONDS or -n/--steps_number N (or both: whichever ends first)")
    if a.min_value is not None and a.max_value is not None and a.min_value > a.max_value:
        p.error(f"--min_value {a.min_value:g} is above --max_value {a.max_value:g}")
    if a.arrival_rate and a.max_throughput:
        p.error("--arrival_rate (requests/s) and --max_throughput (frames/s) both set the open-loop rate: give one")
    if a.arrivals == "poisson" and not (a.arrival_rate or a.max_throughput):
        p.error("--arrivals poisson needs a rate: --arrival_rate R or --max_throughput F")
    if a.processes and (a.master or a.worker):
        p.error("--processes runs its own master and workers: drop --master/--worker, or --processes")
    if a.stateful_length and a.stateful_length < 2 and a.api == "TFS":
        p.error("-q/--stateful_length must be at least 2 over TFS (its control input says start or end)")


def _host(a: argparse.Namespace) -> str:
    if a.api in ("REST", "KFS-REST"):
        scheme = "https" if a.certs_dir or a.tls_no_verify else "http"
        return f"{scheme}://{a.server_address}:{a.rest_port}"
    return f"{a.server_address}:{a.grpc_port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _suite_options(a: argparse.Namespace) -> list[str]:
    """The original's options as the suite's Locust options (one value string each)."""
    api = {"TFS": "tfs", "KFS": "kfs", "REST": "tfs-rest", "KFS-REST": "kfs-rest"}[a.api]
    out = ["--api", api, "--ovms_id", a.id, "--plain_log"]
    pairs = {"model_name": a.model_name, "model_version": a.model_version, "dataset_length": a.dataset_length,
             "steps_number": a.steps_number, "error_limit": a.error_limit, "error_exposition": a.error_exposition,
             "max_throughput": a.max_throughput, "min_value": a.min_value, "max_value": a.max_value,
             "xrand": a.xrand, "step_timeout": a.step_timeout, "metadata_timeout": a.metadata_timeout,
             "certs_dir": a.certs_dir, "stateful_length": a.stateful_length, "stateful_id": a.stateful_id,
             "stateful_hop": a.stateful_hop, "hist_factor": a.hist_factor, "hist_base": a.hist_base,
             "db_endpoint": a.db_endpoint, "result_file": a.result_file, "report_file": a.report_file,
             "seed": a.seed, "check_fail_ratio": a.check_fail_ratio, "check_p99_ms": a.check_p99_ms,
             "check_rps": a.check_rps, "status_line": a.status_line, "report_interval": a.sync_interval,
             "warmup": a.warmup or None, "window": a.window, "arrival_rate": a.arrival_rate,
             "arrivals": a.arrivals}
    for name, value in pairs.items():
        if value is not None:
            out += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
    if a.bs:
        out += ["--bs", " ".join(str(size) for item in a.bs for size in item)]
    if a.shape:
        out += ["--shape", " ".join(a.shape)]
    if a.data:
        out += ["--data", " ".join(a.data)]
    if a.quantile_list:
        out += ["--quantile_list", " ".join(f"{q:g}" for q in a.quantile_list)]
    if a.db_metadata:
        out += ["--db_metadata", " ".join(shlex.quote(item) for item in a.db_metadata)]
    if a.dump_png:
        out += ["--dump_dir", tempfile.gettempdir()]   # the original wrote /tmp/xcli-*.png; $TMPDIR steers it
    for flag in ("report_warmup", "print_all", "print_summary", "print_time", "tls_no_verify"):
        if getattr(a, flag):
            out.append(f"--{flag}")
    if a.json:
        out.append("--ovms_json")
    return out


def locust_command(a: argparse.Namespace) -> list[str]:
    """The Locust command line that runs what the original's options ask for."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--skip-log-setup"]
    if a.worker:
        host, _, port = a.worker.rpartition(":")
        interval = ["--report_interval", f"{a.sync_interval:g}"] if a.sync_interval else []
        return cmd + ["--worker", "--master-host", host or "127.0.0.1", "--master-port", port or "5557", *interval,
                      *a.locust]
    cmd += ["--host", _host(a)]
    if a.web:
        web_host, _, web_port = a.web.rpartition(":")
        cmd += ["--web-host", web_host or "127.0.0.1", "--web-port", web_port or "8089", "-u", str(a.concurrency),
                "-r", str(a.concurrency)]
        if a.web_credentials is not None:
            cmd.append("--web-login")   # the credentials go in the environment (secret_env), not the command line
    else:
        cmd += ["--headless", "-u", str(a.concurrency), "-r", str(a.concurrency), "--only-summary"]
        # Locust's own table goes to a file beside the result, not to the console: the output is the client's
        stem = str(Path(a.result_file).with_suffix("")) if a.result_file else "ovms-result"
        cmd += ["--json-file", stem + ".locust"]
    if a.duration is not None:
        cmd += ["-t", f"{math.ceil(a.duration)}s"]
    if a.processes:
        port = str(_free_port())   # Locust's --processes master would listen on *:5557; keep it on loopback
        cmd += ["--processes", str(a.processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                "--master-host", "127.0.0.1", "--master-port", port]
    if a.master:
        bind_host, _, bind_port = a.master_bind.rpartition(":")
        cmd += ["--master", "--master-bind-host", bind_host or "127.0.0.1", "--master-bind-port", bind_port or "5557",
                "--expect-workers", str(a.expect_workers)]
    return cmd + _suite_options(a) + list(a.locust)


def _list_models(a: argparse.Namespace) -> int:
    """-l: the served models (and with -m, the model's inputs and outputs), as the original, over any API."""
    import json

    from ovms_users.errors import OvmsUserError
    from ovms_users.listing import describe_model, format_listing, list_models
    from ovms_users.options import BenchOptions

    rest = a.rest_port is not None
    listing_api = {"TFS": "tfs-rest", "REST": "tfs-rest", "KFS": "kfs-rest", "KFS-REST": "kfs-rest"}[a.api]
    host = f"{'https' if a.certs_dir or a.tls_no_verify else 'http'}://{a.server_address}:{a.rest_port}" if rest \
        else f"{a.server_address}:{a.grpc_port}"
    api = listing_api if rest else {"TFS": "tfs", "REST": "tfs", "KFS": "kfs", "KFS-REST": "kfs"}[a.api]
    values = {"api": api, "model_name": a.model_name or "", "model_version": a.model_version or "",
              "certs_dir": a.certs_dir or "", "metadata_timeout": str(a.metadata_timeout or 10),
              "header": a.header, "tls_no_verify": a.tls_no_verify}
    if a.tls_no_verify:
        from ovms_users.security import NO_VERIFY_WARNING
        print(NO_VERIFY_WARNING, file=sys.stderr)
    try:
        opts = BenchOptions.parse(values, require_model=False)
        models = list_models(opts, host)
        spec = None
        if a.model_name:
            meta_host = host
            if a.grpc_port and a.api in ("TFS", "KFS"):   # metadata over gRPC, as the original
                meta_host = f"{a.server_address}:{a.grpc_port}"
                opts = BenchOptions.parse({**values, "api": a.api.lower()}, require_model=False)
            spec = describe_model(opts, meta_host)
    except OvmsUserError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 2
    if a.json:
        # the server's answer as the original printed it: OVMS's /v1/config for TFS, the repository index for KFS
        status: dict | list
        if a.api in ("TFS", "REST"):
            status = {}
            for m in models:
                status.setdefault(m.name, {"model_version_status": []})["model_version_status"].append(
                    {"version": str(m.version), "state": m.state,
                     "status": {"error_code": "OK", "error_message": "OK"}})
        else:
            status = [{"name": m.name, "version": str(m.version), "state": m.state} for m in models]
        print(f"JSON-OUTPUT:###{a.id}###STATUS###{json.dumps(status)}")
        if spec is not None:
            tf_names = a.api in ("TFS", "REST")   # the original's TFS metadata said DT_FLOAT, KServe's FP32

            def tensors(specs: tuple) -> dict:
                return {t.name: {"dtype": t.dtype.tf_name if tf_names else t.dtype.name, "shape": list(t.shape)}
                        for t in specs}

            meta = {"model_name": spec.name, "model_version": spec.version, "inputs": tensors(spec.inputs),
                    "outputs": tensors(spec.outputs)}
            print(f"JSON-OUTPUT:###{a.id}###METADATA###{json.dumps(meta)}")
    else:
        print(format_listing(models, spec, False))
    return 0


def child_env() -> dict[str, str]:
    """The environment of a Locust process run for ovms-bench: this checkout's packages importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(LOCUSTFILE.parent.parent),
                                                                       os.environ.get("PYTHONPATH")]))}


def secret_env(a: argparse.Namespace) -> dict[str, str]:
    """--header and --web_credentials for the Locust process, in its environment: never on a command line."""
    env = {}
    if a.header:
        env["LOCUST_HEADER"] = json.dumps(a.header)   # configargparse reads a JSON list as repeated --header
    if a.web_credentials is not None:
        env["LOCUST_WEB_CREDENTIALS"] = a.web_credentials
    return env


def run_client(argv: list[str]) -> int:
    """The original client's command line: parse, check, and run (this process becomes Locust)."""
    p = build_parser()
    if not argv:
        p.print_usage(sys.stderr)
        print("ovms-bench: error: give the server and the model, e.g. ovms-bench -a HOST -p 9000 -m MODEL -t 30 "
              "(or a subcommand: demo, list, sweep, compare, db-load)", file=sys.stderr)
        return 2
    a = p.parse_args(argv)
    if a.internal_version:
        print(CLIENT_VERSION)
        return 0
    _check(p, a)
    if a.unbuffered:
        sys.stdout.reconfigure(line_buffering=True)   # type: ignore[union-attr]
    if a.list_models:
        return _list_models(a)
    cmd = locust_command(a)
    env = {**child_env(), **secret_env(a)}
    if a.unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)   # Locust's exit code and signals are the client's
    return 0   # not reached
