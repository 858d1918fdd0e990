"""How a user sends one encoded request: a gRPC channel, or a keep-alive HTTP connection (no Locust import)."""

from __future__ import annotations

from typing import Any

from geventhttpclient import HTTPClient

from ovms_users.http import HttpStatusError, error_message
from ovms_users.transport import GrpcStatusError, h2_channel
from ovms_users.workload import Workload

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
            return length, GrpcStatusError.from_status(status.code, status.message)
        return length, None

    def close(self) -> None:
        self.channel.close()


class HttpSender:
    """One keep-alive HTTP/1.1 connection (geventhttpclient); a status other than 200 is a failure."""

    def __init__(self, workload: Workload, user: Any = None):
        opts = workload.options
        host, _, port = workload.target.rpartition(":")
        ssl_options = {}
        if workload.tls:
            root, cert, key = opts.tls_files
            ssl_options = {k: str(v) for k, v in (("ca_certs", root), ("certfile", cert), ("keyfile", key)) if v}
        self.client = HTTPClient(host.strip("[]"), int(port), ssl=workload.tls, ssl_options=ssl_options or None,
                                 connection_timeout=getattr(user, "connection_timeout", opts.step_timeout),
                                 network_timeout=opts.step_timeout, concurrency=1)
        self.path = workload.path

    def send(self, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, Exception | None]:
        try:
            resp = self.client.request("POST", self.path, body=body, headers=headers)
            data = resp.read()
        except Exception as exc:   # connection refused or reset, timeouts, TLS errors: each a failed request
            return 0, HttpStatusError(0, f"{type(exc).__name__}: {exc}")
        if resp.status_code != 200:
            return len(data), HttpStatusError(resp.status_code, error_message(data))
        return len(data), None

    def close(self) -> None:
        self.client.close()


SENDERS = {"grpc": GrpcSender, "http": HttpSender}


