"""TensorFlow Serving gRPC API (PredictionService, ModelService), as OVMS serves it."""

from __future__ import annotations

import grpc
import numpy as np

from ovms_users.errors import ServerError
from ovms_users.protocols.base import Encoded, GrpcProtocol, Inputs
from ovms_wire.dtypes import DTypeError, by_name, by_tf
from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.spec import ModelSpec, TensorSpec
from ovms_wire.tensors import TensorError, from_tensor_proto, to_tensor_proto

__all__ = ["TfsGrpc"]

SIGNATURE = "serving_default"
AVAILABLE = tfs.ModelVersionStatus.AVAILABLE


def _model_spec(target: tfs.ModelSpec, model: str, version: int | None) -> None:
    target.name = model
    if version:
        target.version.value = version


def spec_from_signature(name: str, version: int, response: tfs.GetModelMetadataResponse) -> ModelSpec:
    """A ModelSpec from GetModelMetadata's SignatureDefMap (``serving_default``)."""
    if "signature_def" not in response.metadata:
        raise ServerError(f"model {name}: the metadata reply has no signature_def; is this a TF Serving API server?")
    sdm = tfs.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(sdm) or SIGNATURE not in sdm.signature_def:
        raise ServerError(f"model {name}: the metadata reply has no '{SIGNATURE}' signature")
    sig = sdm.signature_def[SIGNATURE]

    def specs(infos) -> tuple[TensorSpec, ...]:
        out = []
        for key in sorted(infos):   # protobuf maps have no order; sort for a stable request layout
            info = infos[key]
            try:
                dtype = by_tf(info.dtype)
            except DTypeError as exc:
                raise ServerError(f"model {name}: tensor {key}: {exc}") from None
            out.append(TensorSpec(key, dtype, tuple(int(d.size) for d in info.tensor_shape.dim)))
        return tuple(out)

    return ModelSpec(name, version, specs(sig.inputs), specs(sig.outputs))


class TfsGrpc(GrpcProtocol):
    name = "tfs"
    request_type = "TFS gRPC"
    method = "/tensorflow.serving.PredictionService/Predict"
    metadata_path = "/tensorflow.serving.PredictionService/GetModelMetadata"
    status_path = "/tensorflow.serving.ModelService/GetModelStatus"

    def fetch_spec(self, channel: grpc.Channel, model: str, version: int | None, timeout: float) -> ModelSpec:
        status_req = tfs.GetModelStatusRequest()
        _model_spec(status_req.model_spec, model, version)
        status = channel.unary_unary(self.status_path, request_serializer=tfs.GetModelStatusRequest.SerializeToString,
                                     response_deserializer=tfs.GetModelStatusResponse.FromString)(
            status_req, timeout=timeout)
        ready = sorted(s.version for s in status.model_version_status if s.state == AVAILABLE)
        if not ready:
            states = ", ".join(f"v{s.version} {tfs.ModelVersionStatus.State.Name(s.state)}"
                               for s in status.model_version_status) or "none"
            raise ServerError(f"model {model} has no AVAILABLE version (versions: {states})")
        meta_req = tfs.GetModelMetadataRequest(metadata_field=["signature_def"])
        _model_spec(meta_req.model_spec, model, version or ready[-1])
        meta = channel.unary_unary(self.metadata_path,
                                   request_serializer=tfs.GetModelMetadataRequest.SerializeToString,
                                   response_deserializer=tfs.GetModelMetadataResponse.FromString)(
            meta_req, timeout=timeout)
        served = meta.model_spec.version.value if meta.model_spec.HasField("version") else (version or ready[-1])
        return spec_from_signature(model, int(served), meta)

    def encode(self, spec: ModelSpec, inputs: Inputs, stateful: bool = False) -> Encoded:
        req = tfs.PredictRequest()
        _model_spec(req.model_spec, spec.name, spec.version)   # the original client forgot the version here
        req.model_spec.signature_name = SIGNATURE
        for name, (dtype, arr) in inputs.items():
            req.inputs[name].CopyFrom(to_tensor_proto(arr, dtype.name))
        return Encoded(req.SerializeToString())

    def sequence_fragment(self, sequence_id: int, start: bool, end: bool) -> bytes:
        # OVMS reads these only from uint64_val / uint32_val with shape [1]
        req = tfs.PredictRequest()
        sid = req.inputs["sequence_id"]
        sid.dtype = by_name("UINT64").tf_enum
        sid.tensor_shape.dim.add(size=1)
        sid.uint64_val.append(sequence_id)
        ctl = req.inputs["sequence_control_input"]
        ctl.dtype = by_name("UINT32").tf_enum
        ctl.tensor_shape.dim.add(size=1)
        ctl.uint32_val.append(1 if start else 2 if end else 0)
        return req.SerializeToString()

    def decode(self, reply: bytes, headers: object = None) -> dict[str, np.ndarray]:
        resp = tfs.PredictResponse.FromString(reply)
        try:
            return {k: from_tensor_proto(v) for k, v in resp.outputs.items()}
        except (TensorError, DTypeError) as exc:
            raise ServerError(f"malformed Predict reply: {exc}") from None
