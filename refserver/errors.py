"""Serving errors with OVMS's messages, and their status on each interface."""

from __future__ import annotations

import grpc

__all__ = ["ServingError", "HTTP_STATUS", "http_status"]

#: gRPC status -> HTTP status, as OVMS maps them on its REST interfaces.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_code(name: str) -> grpc.StatusCode:
    """A gRPC status code from its name (``"UNAVAILABLE"``), for config files."""
    try:
        code = grpc.StatusCode[name.strip().upper()]
    except KeyError:
        known = ", ".join(c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK)
        raise ValueError(f"unknown gRPC status {name!r}; use one of {known}") from None
    if code is grpc.StatusCode.OK:
        raise ValueError("a fault cannot have status OK")
    return code


class ServingError(Exception):
    """A request the server refuses, with the status it answers on every interface."""

    def __init__(self, code: grpc.StatusCode, message: str, http: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http = http if http is not None else http_status(code)

    # OVMS's messages, one constructor each, so every frontend words an error the same way.
    @classmethod
    def model_missing(cls, name: str) -> ServingError:
        return cls(grpc.StatusCode.NOT_FOUND, f"Model with requested name is not found: {name}")

    @classmethod
    def version_missing(cls, name: str, version: int) -> ServingError:
        return cls(grpc.StatusCode.NOT_FOUND, f"Model with requested version is not found: {name} version {version}")

    @classmethod
    def invalid(cls, message: str) -> ServingError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)
