"""gRPC connections, TLS from the OVMS client's files.

The load users send inference over :class:`ovms_wire.h2grpc.H2Channel` (one HTTP/2 connection per user,
made after any fork); the one-off calls before the test (metadata, status, listing) use grpcio channels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    return H2Channel(host.strip("[]"), int(port), ssl_context=context, connect_timeout=connect_timeout,
                     headers=opts.headers)


def wants_tls(opts: BenchOptions, scheme_tls: bool) -> bool:
    return scheme_tls or opts.tls_no_verify or any(p is not None for p in (opts.certs_dir, opts.ssl_ca, opts.ssl_cert,
                                                                            opts.ssl_key))


def _grpc_channel(target: str, opts: BenchOptions, tls: bool) -> grpc.Channel:
    """A channel of its own (own subchannel pool, so its own HTTP/2 connection)."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.use_local_subchannel_pool", 1)]
    if wants_tls(opts, tls):
        return grpc.secure_channel(target, credentials(opts), options=options)
    return grpc.insecure_channel(target, options=options)


class _H2RpcError(grpc.RpcError):
    """A failed call over an H2Channel, shaped as grpcio's errors (``code()``, ``details()``)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class OneOffChannel:
    """The channel of the one-off calls before the test (metadata, status, listing): ``unary_unary`` and ``close``.

    Every call carries the ``--header`` metadata. Over grpcio by default, after one TLS handshake that checks
    the server's certificate in Python (so a refused certificate is one clear line, not grpcio's handshake
    error); with ``--tls_no_verify`` over :class:`H2Channel`, since grpcio cannot skip the check.
    """

    def __init__(self, target: str, opts: BenchOptions, tls: bool):
        self.target, self.opts = target, opts
        self.tls = wants_tls(opts, tls)
        self._metadata = tuple((name.lower(), value) for name, value in opts.headers)
        self._checked = not self.tls or opts.tls_no_verify
        self._h2: H2Channel | None = None
        self._grpc: grpc.Channel | None = None
        if self.tls and opts.tls_no_verify:
            self._h2 = h2_channel(target, opts, True, connect_timeout=min(opts.metadata_timeout, 10.0))
        else:
            self._grpc = _grpc_channel(target, opts, tls)

    def _check(self, timeout: float | None) -> None:
        if not self._checked:
            from ovms_users.security import check_certificate
            host, _, port = self.target.rpartition(":")
            self._checked = check_certificate(host.strip("[]"), int(port), self.opts, alpn=["h2"],
                                              timeout=min(timeout or 5.0, 5.0))

    def unary_unary(self, path: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None, **_kw: Any) -> Callable[..., Any]:
        if self._h2 is not None:
            h2 = self._h2

            def over_h2(request: Any, timeout: float | None = None, **_kw: Any) -> Any:
                body = request_serializer(request) if request_serializer else request
                status, _, reply = h2.unary(path, body, timeout, want_reply=True)
                if status.code:
                    raise _H2RpcError(STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)
                return response_deserializer(reply or b"") if response_deserializer else reply
            return over_h2
        assert self._grpc is not None
        method = self._grpc.unary_unary(path, request_serializer=request_serializer,
                                        response_deserializer=response_deserializer)

        def over_grpcio(request: Any, timeout: float | None = None, metadata: Any = None, **kw: Any) -> Any:
            self._check(timeout)
            extra = tuple(metadata or ()) + self._metadata
            return method(request, timeout=timeout, metadata=extra or None, **kw)
        return over_grpcio

    def close(self) -> None:
        if self._h2 is not None:
            self._h2.close()
        if self._grpc is not None:
            self._grpc.close()


def make_channel(target: str, opts: BenchOptions, tls: bool) -> OneOffChannel:
    """A channel of its own (own HTTP/2 connection) for the one-off calls; see :class:`OneOffChannel`."""
    return OneOffChannel(target, opts, tls)
