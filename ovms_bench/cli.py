"""``ovms-bench``: the suite's command line.

Subcommands come first (``ovms-bench demo``); anything else will be read as the OVMS benchmark
client's own flags once the load side lands.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

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


def _fmt(tensors: list[dict]) -> str:
    return ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in tensors)


def demo(args: argparse.Namespace) -> int:
    print("starting the reference server on free loopback ports ...", flush=True)
    try:
        with RefServer() as srv:
            print(f"reference server up: gRPC {srv.grpc_address}, REST {srv.rest_url}", flush=True)
            models = served_models(srv.rest_url)
            rows = [("MODEL", "VERSION", "STATE", "INPUTS", "OUTPUTS")]
            rows += [(m["name"], m["version"], m["state"], _fmt(m["inputs"]), _fmt(m["outputs"])) for m in models]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=False)) + "  " + r[4])
            print(f"{len(models)} model versions served over TFS gRPC/REST and KServe v2 gRPC/REST.")
    except RefServerError as exc:
        print(f"ovms-bench: error: {exc}", file=sys.stderr)
        return 1
    print("reference server stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ovms-bench", description="Benchmark ML model servers on Locust.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="start the reference server and show what it serves").set_defaults(func=demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:   # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
