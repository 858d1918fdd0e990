"""``ovms-refserver``: run the reference model server."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
from aiohttp import web

from refserver import __version__
from refserver.config import ConfigError, ServerConfig, load_config
from refserver.core import Server
from refserver.grpc_api import generic_handlers
from refserver.rest_api import make_app
from refserver.tls import CertsError, ServerCerts, generate_certs, load_server_certs

__all__ = ["main", "build_parser", "describe_models"]

log = logging.getLogger("refserver")
GRPC_MAX_MESSAGE = 1 << 30


class StartError(RuntimeError):
    """The server could not start; the message says what to change."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535; 0 picks a free port)")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovms-refserver",
        description="Reference model server: the TFS and KServe v2 APIs on one gRPC port and one HTTP port, as "
                    "OpenVINO Model Server serves them.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=_port, default=9000, help="gRPC port (default 9000; 0 picks a free port)")
    p.add_argument("--rest-port", type=_port, default=8000, help="HTTP port (default 8000; 0 picks a free port)")
    p.add_argument("--config", metavar="FILE", help="models as JSON (default: the built-in models)")
    p.add_argument("--certs-dir", metavar="DIR",
                   help="serve mutual TLS on both ports with DIR/ca.pem, server.pem, server.key")
    p.add_argument("--ready-file", metavar="FILE",
                   help="write {host, grpc_port, rest_port, pid, tls} as JSON here once both ports listen")
    p.add_argument("--gen-certs", metavar="DIR",
                   help="write a test CA, server and client certificates into DIR and exit")
    p.add_argument("--quiet", action="store_true", help="print only the ready line")
    p.add_argument("--version", action="version", version=f"ovms-refserver {__version__}")
    return p


def describe_models(config: ServerConfig) -> str:
    """A table of what the server serves, for people."""
    rows = [("MODEL", "VERSIONS", "INPUTS", "OUTPUTS")]
    for name, versions in sorted(config.models.items()):
        latest = versions[max(versions)].model
        fmt = lambda specs: ", ".join(f"{s.name} {s.dtype.name}{list(s.shape)}" for s in specs)  # noqa: E731
        flags = " (stateful)" if latest.stateful else ""
        rows.append((name + flags, ",".join(str(v) for v in sorted(versions)), fmt(latest.inputs), fmt(latest.outputs)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StartError(f"cannot listen on {host}:{port} for {what} ({reason}); choose another "
                         f"--{what.lower()}-port (0 picks a free one)") from None
    return sock


def _bind_http(host: str, port: int) -> socket.socket:
    sock = _bind(host, port, "REST")
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace, config: ServerConfig, certs: ServerCerts | None) -> None:
    server = Server(config)
    grpc_server = grpc.aio.server(options=[("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                                           ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                                           ("grpc.so_reuseport", 0)])
    grpc_server.add_generic_rpc_handlers(generic_handlers(server))
    if args.grpc_port:   # ask the OS first: gRPC's own bind failure only logs to stderr
        _bind(args.host, args.grpc_port, "gRPC").close()
    address = f"[{args.host}]:{args.grpc_port}" if ":" in args.host else f"{args.host}:{args.grpc_port}"
    try:
        grpc_port = (grpc_server.add_secure_port(address, certs.grpc_credentials()) if certs
                     else grpc_server.add_insecure_port(address))
    except RuntimeError:
        grpc_port = 0
    if not grpc_port:
        raise StartError(f"cannot listen on {args.host}:{args.grpc_port} for gRPC (in use or not a local address); "
                         "choose another --grpc-port (0 picks a free one)")
    sock = _bind_http(args.host, args.rest_port)
    rest_port = sock.getsockname()[1]
    runner = web.AppRunner(make_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=certs.ssl_context() if certs else None).start()
    await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if not args.quiet:
        print(describe_models(config), flush=True)
    scheme = "https" if certs else "http"
    print(f"ovms-refserver {__version__} ready: gRPC {args.host}:{grpc_port} REST {scheme}://{args.host}:{rest_port}"
          f"{' (mutual TLS)' if certs else ''}", flush=True)
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"host": args.host, "grpc_port": grpc_port, "rest_port": rest_port,
                                   "pid": os.getpid(), "tls": certs is not None}))
        tmp.replace(args.ready_file)
    await stop.wait()
    await grpc_server.stop(grace=1.0)
    await runner.cleanup()
    print("ovms-refserver stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.gen_certs:
            folder = generate_certs(args.gen_certs)
            print(f"wrote ca.pem, server.pem, server.key, client.pem, client.key to {folder}")
            return 0
        config = load_config(args.config)
        certs = load_server_certs(args.certs_dir) if args.certs_dir else None
        asyncio.run(serve(args, config, certs))
    except (ConfigError, CertsError, StartError) as exc:
        print(f"ovms-refserver: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
