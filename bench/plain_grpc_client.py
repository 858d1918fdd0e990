"""The stand-in for the OVMS benchmark client: a minimal sequential loop of blocking grpcio calls.

One prebuilt request, sent again and again for ``--duration`` seconds with plain synchronous grpcio
(no gevent), one call in flight, as each of the OVMS client's processes did. Prints the number of
completed calls and their mean latency as JSON. Used by bench/clients.py and the Locust peers
(bench/peers/); not part of `make test`.

    python bench/plain_grpc_client.py --target 127.0.0.1:9000 --api kfs --model dummy --shape 1 4 --duration 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ovms_wire.protos.tfs import serving_apis_pb2 as tfs  # noqa: E402
from ovms_wire.tensors import to_tensor_proto  # noqa: E402

KFS_METHOD = "/inference.GRPCInferenceService/ModelInfer"
TFS_METHOD = "/tensorflow.serving.PredictionService/Predict"


def request_message(api: str, model: str, name: str, shape: list[int]):
    """The method path and the request message: one FP32 tensor of ``shape``, fixed random values."""
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    if api == "kfs":
        from tritonclient.grpc import service_pb2 as kfs

        req = kfs.ModelInferRequest(model_name=model)
        req.inputs.add(name=name, datatype="FP32", shape=shape)
        req.raw_input_contents.append(x.tobytes())
        return KFS_METHOD, req
    treq = tfs.PredictRequest()
    treq.model_spec.name = model
    treq.inputs[name].CopyFrom(to_tensor_proto(x))
    return TFS_METHOD, treq


def request(api: str, model: str, name: str, shape: list[int]) -> tuple[str, bytes]:
    """The method path and the serialized request (built once, as the OVMS client pre-built its dataset)."""
    method, message = request_message(api, model, name, shape)
    return method, message.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--api", choices=("tfs", "kfs"), default="kfs")
    ap.add_argument("--model", default="dummy")
    ap.add_argument("--input", default="b")
    ap.add_argument("--shape", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()
    method, body = request(args.api, args.model, args.input, args.shape)
    channel = grpc.insecure_channel(args.target, options=[("grpc.max_send_message_length", 1 << 30),
                                                          ("grpc.max_receive_message_length", 1 << 30)])
    # bytes in, bytes out: the request is serialized once; the reply is not parsed (the OVMS client parsed it)
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    call(body, timeout=30)   # connect and warm up outside the measured loop
    done, latency = 0, 0.0
    end = time.perf_counter() + args.duration
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        call(body, timeout=30)
        latency += time.perf_counter() - t0
        done += 1
    channel.close()
    print(json.dumps({"requests": done, "mean_latency_s": latency / max(done, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
