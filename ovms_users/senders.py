"""How a user sends one encoded request: its own HTTP/2 gRPC channel or keep-alive HTTP/1.1 connection."""

from __future__ import annotations

from typing import Any

from ovms_users.http import HttpStatusError, error_message, ssl_context
from ovms_users.transport import GrpcStatusError, h2_channel
from ovms_users.workload import Workload
from ovms_wire.http1 import Http1Connection

__all__ = ["GrpcSender", "HttpSender", "SENDERS"]


class GrpcSender:
    """One HTTP/2 connection (ovms_wire.h2grpc), connected on the first request; bytes in, length out."""

    def __init__(self, workload: Workload, user: Any = None):
        opts = workload.options
        self.channel = h2_channel(workload.target, opts, workload.tls,
                                  getattr(user, "connection_timeout", None) or opts.step_timeout)
        self._unary = self.channel.unary
        self.path = workload.path

    def send(self, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, Exception | None]:
        status, length, _ = self._unary(self.path, body, timeout)
        if status.code:
            exc = GrpcStatusError.from_status(status.code, status.message)
            exc.reconnect = self.channel.sock is None   # no connection now: the user backs off before the next
            return length, exc
        return length, None

    def close(self) -> None:
        self.channel.close()


class HttpSender:
    """One keep-alive HTTP/1.1 connection (ovms_wire.http1); a status other than 200 is a failure."""

    def __init__(self, workload: Workload, user: Any = None):
        opts = workload.options
        host, _, port = workload.target.rpartition(":")
        context = ssl_context(opts) if workload.tls else None
        self.conn = Http1Connection(host.strip("[]"), int(port), ssl_context=context,
                                    connect_timeout=getattr(user, "connection_timeout", None) or opts.step_timeout)
        self._post = self.conn.post
        self.path = workload.path
        self.extra = dict(opts.headers)   # --header: on every request
        self._merged: dict[int, tuple[dict, dict]] = {}

    def _with_extra(self, headers: dict[str, str]) -> dict[str, str]:
        """The request's headers plus --header's, one stable dict per request dict (the connection caches the
        request head by the dict)."""
        entry = self._merged.get(id(headers))
        if entry is None or entry[0] is not headers:   # the dict itself is kept, so its id is not reused
            if len(self._merged) > 256:
                self._merged.clear()
            entry = self._merged[id(headers)] = (headers, {**headers, **self.extra})
        return entry[1]

    def send(self, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, Exception | None]:
        if self.extra:
            headers = self._with_extra(headers)
        status, length, data, error = self._post(self.path, headers, body, timeout)
        if status == 200:
            return length, None
        if error is not None:
            exc = HttpStatusError(0, error)
            # no connection now (refused, lost; not a timeout, after which HTTP/1.1 must close it): the user backs off
            exc.reconnect = not self.conn.connected and not error.startswith("timed out")
            return 0, exc
        return length, HttpStatusError(status, error_message(data or b""))

    def close(self) -> None:
        self.conn.close()


SENDERS = {"grpc": GrpcSender, "http": HttpSender}


