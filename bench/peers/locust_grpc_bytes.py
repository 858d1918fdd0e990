"""Peer: the documented Locust gRPC user, but the request serialized once and bytes sent.

The same interceptor and channel as bench/peers/locust_grpc_documented.py; the call is
``channel.unary_unary(method)`` without serializers, so the prebuilt request bytes go out as they are
and the reply comes back as bytes (not parsed). Run by bench/clients.py.
"""

from grpc_peer import GrpcUser, bench_request
from locust import task

METHOD, REQUEST, _RESPONSE = bench_request()
BODY = REQUEST.SerializeToString()


class BytesStub:
    """In place of a generated stub: the method without serializers, bytes in and out."""

    def __init__(self, channel):
        self.call = channel.unary_unary(METHOD)


class BytesGrpcUser(GrpcUser):
    stub_class = BytesStub

    @task
    def infer(self):
        self.stub.call(BODY, timeout=30)
