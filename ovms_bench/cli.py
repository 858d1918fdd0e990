"""``ovms-bench``: the suite's command line.

Subcommands (``demo``, ``list``, ``sweep``, ``compare``, ``db-load``) come first; anything else is the
OVMS benchmark client's own command line (``ovms_bench.client``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from ovms_bench.compare import add_compare_parser
from ovms_bench.sweep import add_sweep_parser
from ovms_users.errors import OvmsUserError
from ovms_users.listing import describe_model, format_listing, list_models
from ovms_users.options import BenchOptions, add_arguments
from refserver.launcher import RefServer, RefServerError

__all__ = ["main"]


def served_models(rest_url: str, timeout: float = 10.0) -> list[dict]:
    """Every model version the server lists, with its metadata, read over the KServe v2 REST API."""
    req = urllib.request.Request(f"{rest_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        index = json.load(resp)
    out = []
    for entry in index:
        with urllib.request.urlopen(f"{rest_url}/v2/models/{entry['name']}/versions/{entry['version']}",
                                    timeout=timeout) as resp:
            out.append({**json.load(resp), "version": entry["version"], "state": entry["state"]})
    return out


LOCUSTFILE = Path(__file__).resolve().parent.parent / "ovms_users" / "locustfile.py"


def run_benchmark(host: str, api: str, model: str, users: int, seconds: int, extra: list[str]) -> int:
    """One headless Locust run in its own process; its summary goes to stdout."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless", "-u", str(users),
           "-r", str(users), "-t", f"{seconds}s", "--only-summary", "--api", api, "--model_name", model,
           "--result_file", f"ovms-result-demo-{api}-{model}.json", *extra]
    print(f"\n$ locust -f ovms_users/locustfile.py --host {host} --headless -u {users} -t {seconds}s --api {api} "
          f"--model_name {model} {' '.join(extra)}".rstrip(), flush=True)
    # Locust writes its summary to stderr; a demo shows it on stdout
    return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.STDOUT).returncode


def demo(args: argparse.Namespace) -> int:
    print("starting the reference server on free loopback ports ...", flush=True)
    worst = 0
    try:
        with RefServer() as srv:
            print(f"reference server up: gRPC {srv.grpc_address}, REST {srv.rest_url}", flush=True)
            models = served_models(srv.rest_url)
            print(f"it serves {len(models)} model versions: {', '.join(sorted({m['name'] for m in models}))}")
            for api, model, extra in (("tfs", "dummy", []), ("kfs", "dummy", []),
                                      ("kfs", "resnet_dyn", ["--bs", "1 4"])):
                worst = max(worst, run_benchmark(srv.grpc_address, api, model, args.users, args.duration, extra))
    except RefServerError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 1
    print("\nreference server stopped.")
    return worst


def list_command(args: argparse.Namespace) -> int:
    """The served models with versions and states; with --model_name, that model's inputs and outputs."""
    try:
        opts = BenchOptions.parse(args, require_model=False)
        if opts.tls_no_verify:
            from ovms_users.security import NO_VERIFY_WARNING
            print(NO_VERIFY_WARNING, file=sys.stderr)
        models = list_models(opts, args.host)
        spec = describe_model(opts, args.host) if opts.model_name else None
    except OvmsUserError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_listing(models, spec, args.json))
    return 0


def db_load(args: argparse.Namespace) -> int:
    """Store the document of a MongoDB dump (written when an export failed); print its _id."""
    from metrics_ext.mongo import MongoAlreadyLoaded, MongoExportError, MongoInputError, load_dump

    try:
        ident = load_dump(Path(args.dump), args.db_endpoint or None, args.db_timeout)
    except MongoAlreadyLoaded as exc:       # loading is idempotent: the document is there
        print(f"ovms-bench: {exc}", file=sys.stderr)
        print(exc.inserted_id)
        return 0
    except MongoInputError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 2
    except MongoExportError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 4
    print(ident)
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds between 0 and 3600 (e.g. 5)")
    return value


SUBCOMMANDS = ("demo", "list", "sweep", "compare", "db-load")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:   # the OVMS benchmark client's own command line
        from ovms_bench.client import run_client
        return run_client(argv)
    parser = argparse.ArgumentParser(prog="ovms-bench", description="Benchmark ML model servers on Locust.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="start the reference server and benchmark it over both gRPC APIs")
    d.add_argument("--duration", type=int, default=5, help="seconds per benchmark (default 5)")
    d.add_argument("--users", type=int, default=4, help="concurrent users (default 4)")
    d.set_defaults(func=demo)
    ls = sub.add_parser("list", help="list the served models (and one model's inputs and outputs), on any API")
    ls.add_argument("--host", required=True, help="the server: host:port for gRPC, http(s)://host:port for REST")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_arguments(ls)
    ls.set_defaults(func=list_command, metadata_timeout="10")
    add_sweep_parser(sub)
    add_compare_parser(sub)
    dl = sub.add_parser("db-load", help="store in MongoDB the dump a failed MongoDB export left (*.mongo.json)")
    dl.add_argument("dump", help="the dump file (MongoDB Extended JSON written by the export)")
    dl.add_argument("--db_endpoint", default="", help="mongodb://host:database:collection or a MongoDB URI "
                    "(mongodb://user:pw@host:port/database?collection=NAME); default: the dump's, unless it had "
                    "a password")
    dl.add_argument("--db_timeout", type=_seconds, default=5.0, help="seconds to wait for the server (default 5)")
    dl.set_defaults(func=db_load)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:   # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
