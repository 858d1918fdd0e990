"""What the two Locust gRPC peers share: Locust's documented gRPC user, and the request to send.

Locust documents gRPC load (docs "Testing other systems/protocols", examples/grpc/grpc_user.py) as:
grpcio made cooperative with ``grpc.experimental.gevent.init_gevent()``, a channel wrapped in an
interceptor that fires Locust's ``request`` event for each call, and a generated stub. The example
uses the ``grpc_interceptor`` package's ``ClientInterceptor``; this is the same interceptor on grpcio's
own ``UnaryUnaryClientInterceptor`` (no extra package). The request comes from the environment
(set by bench/clients.py): BENCH_API (kfs or tfs), BENCH_MODEL, BENCH_INPUT, BENCH_SHAPE ("1 4").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant
from locust.exception import LocustError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))          # bench/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))   # the checkout

from plain_grpc_client import request_message  # noqa: E402

# patch grpc so that it uses gevent instead of asyncio
grpc_gevent.init_gevent()


def bench_request():
    """(method path, request message, response class) from BENCH_* variables."""
    api = os.environ.get("BENCH_API", "kfs")
    shape = [int(d) for d in os.environ.get("BENCH_SHAPE", "1 4").split()]
    method, message = request_message(api, os.environ.get("BENCH_MODEL", "dynamic"),
                                      os.environ.get("BENCH_INPUT", "x"), shape)
    if api == "kfs":
        from tritonclient.grpc import service_pb2 as kfs

        return method, message, kfs.ModelInferResponse
    from ovms_wire.protos.tfs import serving_apis_pb2 as tfs

    return method, message, tfs.PredictResponse


def stub_class():
    """The generated stub of the API, as the documented user takes it (``stub_class``)."""
    if os.environ.get("BENCH_API", "kfs") == "kfs":
        from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub

        return GRPCInferenceServiceStub
    from ovms_wire.protos.tfs.serving_apis_pb2_grpc import PredictionServiceStub

    return PredictionServiceStub


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Fires Locust's ``request`` event for each call (Locust's example, on grpcio's own interceptor class)."""

    def __init__(self, environment):
        self.env = environment

    def intercept_unary_unary(self, continuation, call_details, request: Any):
        response = None
        exception = None
        start_perf_counter = time.perf_counter()
        response_length = 0
        try:
            response = continuation(call_details, request)
            result = response.result()
            response_length = len(result) if isinstance(result, bytes) else result.ByteSize()
        except grpc.RpcError as e:
            exception = e
        self.env.events.request.fire(
            request_type="grpc",
            name=call_details.method,
            response_time=(time.perf_counter() - start_perf_counter) * 1000,
            response_length=response_length,
            response=response,
            context=None,
            exception=exception,
        )
        return response


class GrpcUser(User):
    """Locust's documented GrpcUser: a channel per user, intercepted, and a stub on it."""

    abstract = True
    stub_class = None
    wait_time = constant(0)

    def __init__(self, environment):
        super().__init__(environment)
        for attr_value, attr_name in ((self.host, "host"), (self.stub_class, "stub_class")):
            if attr_value is None:
                raise LocustError(f"You must specify the {attr_name}.")
        self._channel = grpc.insecure_channel(self.host)
        interceptor = LocustInterceptor(environment=environment)
        self._channel = grpc.intercept_channel(self._channel, interceptor)
        self.stub = self.stub_class(self._channel)
