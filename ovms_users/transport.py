"""gRPC connections, TLS from the OVMS client's files.

The load users send inference over :class:`ovms_wire.h2grpc.H2Channel` (one HTTP/2 connection per user,
made after any fork); the one-off calls before the test (metadata, status, listing) use grpcio channels.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ovms_users.errors import OptionError
from ovms_users.http import ssl_context
from ovms_users.options import BenchOptions
from ovms_wire.h2grpc import H2Channel

__all__ = ["make_channel", "h2_channel", "GrpcStatusError", "MAX_MESSAGE", "STATUS_CODES"]

#: gRPC's status codes by number, as grpcio names them
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}

MAX_MESSAGE = 1 << 30   # as the OVMS client: 1 GiB each way


class GrpcStatusError(Exception):
    """A failed RPC as the request event reports it: ``UNAVAILABLE: failed to connect ...``."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_status(cls, code: int, details: str) -> GrpcStatusError:
        return cls(STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN), details)

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> GrpcStatusError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


def _read(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OptionError(option, f"cannot read {path}: {exc.strerror}") from None


def credentials(opts: BenchOptions) -> grpc.ChannelCredentials:
    root_path, cert_path, key_path = opts.tls_files
    opt = "--certs_dir" if opts.certs_dir else "--ssl_ca/--ssl_cert/--ssl_key"
    root = _read(root_path, "--ssl_ca" if opts.ssl_ca else opt)
    cert = _read(cert_path, "--ssl_cert" if opts.ssl_cert else opt)
    key = _read(key_path, "--ssl_key" if opts.ssl_key else opt)
    if (cert is None) != (key is None):
        raise OptionError("--ssl_cert/--ssl_key", "give both the client certificate and its key, or neither")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def h2_channel(target: str, opts: BenchOptions, tls: bool, connect_timeout: float) -> H2Channel:
    """A user's own HTTP/2 connection to ``host:port`` (``[v6]:port``), TLS as for grpcio's channels."""
    context = None
    if wants_tls(opts, tls):
        context = ssl_context(opts)   # the REST users' context, offering HTTP/2
        context.set_alpn_protocols(["h2"])
    host, _, port = target.rpartition(":")
    return H2Channel(host.strip("[]"), int(port), ssl_context=context, connect_timeout=connect_timeout)


def wants_tls(opts: BenchOptions, scheme_tls: bool) -> bool:
    return scheme_tls or any(p is not None for p in (opts.certs_dir, opts.ssl_ca, opts.ssl_cert, opts.ssl_key))


def make_channel(target: str, opts: BenchOptions, tls: bool) -> grpc.Channel:
    """A channel of its own (own subchannel pool, so its own HTTP/2 connection)."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.use_local_subchannel_pool", 1)]
    if wants_tls(opts, tls):
        return grpc.secure_channel(target, credentials(opts), options=options)
    return grpc.insecure_channel(target, options=options)
