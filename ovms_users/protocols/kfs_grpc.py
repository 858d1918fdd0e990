"""KServe v2 (Open Inference Protocol) gRPC API, as OVMS, Triton, MLServer and KServe serve it."""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kfs

from ovms_users.errors import ServerError
from ovms_users.protocols.base import Encoded, GrpcProtocol, Inputs
from ovms_wire.dtypes import DTypeError, by_name
from ovms_wire.spec import ModelSpec, TensorSpec
from ovms_wire.tensors import TensorError, from_kfs_contents, from_raw, to_raw

__all__ = ["KfsGrpc"]


def _version(text: str, model: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ServerError(f"model {model}: version {text!r} is not a number") from None


class KfsGrpc(GrpcProtocol):
    name = "kfs"
    request_type = "KFS gRPC"
    method = "/inference.GRPCInferenceService/ModelInfer"
    metadata_path = "/inference.GRPCInferenceService/ModelMetadata"
    ready_path = "/inference.GRPCInferenceService/ModelReady"

    server_info: dict | None = None

    def fetch_spec(self, channel: grpc.Channel, model: str, version: int | None, timeout: float) -> ModelSpec:
        try:
            server = channel.unary_unary("/inference.GRPCInferenceService/ServerMetadata",
                                         request_serializer=kfs.ServerMetadataRequest.SerializeToString,
                                         response_deserializer=kfs.ServerMetadataResponse.FromString)(
                kfs.ServerMetadataRequest(), timeout=timeout)
            self.server_info = {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            self.server_info = {"name": None, "error": f"{exc.code().name}: {exc.details()}"}
        meta = channel.unary_unary(self.metadata_path, request_serializer=kfs.ModelMetadataRequest.SerializeToString,
                                   response_deserializer=kfs.ModelMetadataResponse.FromString)(
            kfs.ModelMetadataRequest(name=model, version=str(version or "")), timeout=timeout)
        versions = [_version(v, model) for v in meta.versions]
        if version:
            chosen = version
            if versions and version not in versions:
                raise ServerError(f"model {model} has no version {version} (versions: {versions}); "
                                  "change --model_version")
        elif versions:
            chosen = max(versions)
        else:
            chosen = 0   # servers without versions (MLServer) take the model's default
        ready = channel.unary_unary(self.ready_path, request_serializer=kfs.ModelReadyRequest.SerializeToString,
                                    response_deserializer=kfs.ModelReadyResponse.FromString)(
            kfs.ModelReadyRequest(name=model, version=str(chosen or "")), timeout=timeout)
        if not ready.ready:
            raise ServerError(f"model {model} version {chosen or 'default'} is not ready")

        def specs(tensors) -> tuple[TensorSpec, ...]:
            try:
                return tuple(TensorSpec(t.name, by_name(t.datatype), tuple(int(d) for d in t.shape)) for t in tensors)
            except DTypeError as exc:
                raise ServerError(f"model {model}: {exc}") from None

        return ModelSpec(model, chosen, specs(meta.inputs), specs(meta.outputs))

    def encode(self, spec: ModelSpec, inputs: Inputs, stateful: bool = False) -> Encoded:
        req = kfs.ModelInferRequest(model_name=spec.name, model_version=str(spec.version or ""))
        for name, (dtype, arr) in inputs.items():
            req.inputs.add(name=name, datatype=dtype.name, shape=list(arr.shape))
            req.raw_input_contents.append(to_raw(arr, dtype.name))
        return Encoded(req.SerializeToString())

    def sequence_fragment(self, sequence_id: int, start: bool, end: bool) -> bytes:
        # Triton's and OVMS's sequence parameters; appended bytes merge into the request's parameters map
        req = kfs.ModelInferRequest()
        if sequence_id < 2 ** 63:
            req.parameters["sequence_id"].int64_param = sequence_id
        else:
            req.parameters["sequence_id"].uint64_param = sequence_id
        req.parameters["sequence_start"].bool_param = start
        req.parameters["sequence_end"].bool_param = end
        return req.SerializeToString()

    def decode(self, reply: bytes, headers: object = None) -> dict[str, np.ndarray]:
        resp = kfs.ModelInferResponse.FromString(reply)
        out = {}
        try:
            for i, t in enumerate(resp.outputs):
                shape = list(t.shape)
                out[t.name] = (from_raw(resp.raw_output_contents[i], t.datatype, shape) if resp.raw_output_contents
                               else from_kfs_contents(t.contents, t.datatype, shape))
        except (TensorError, DTypeError, IndexError) as exc:
            raise ServerError(f"malformed ModelInfer reply: {exc}") from None
        return out
