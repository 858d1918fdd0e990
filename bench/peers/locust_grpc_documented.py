"""Peer: Locust + grpcio under gevent, the documented way (a generated stub, a request message).

The stub serializes the request message at every call and parses every reply, as Locust's gRPC
example does. Run by bench/clients.py (which sets BENCH_API, BENCH_MODEL, BENCH_INPUT, BENCH_SHAPE):

    BENCH_API=kfs BENCH_MODEL=dynamic BENCH_INPUT=x BENCH_SHAPE="1 4" \
        locust -f bench/peers/locust_grpc_documented.py --host 127.0.0.1:9000 --headless -u 8 -t 8s --json
"""

from grpc_peer import GrpcUser, bench_request, stub_class
from locust import task

METHOD, REQUEST, _RESPONSE = bench_request()
CALL = METHOD.rsplit("/", 1)[1]   # ModelInfer or Predict


class DocumentedGrpcUser(GrpcUser):
    stub_class = stub_class()

    @task
    def infer(self):
        getattr(self.stub, CALL)(REQUEST, timeout=30)
