"""gRPC frontends: TensorFlow Serving's PredictionService and ModelService, and KServe v2."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from google.protobuf import any_pb2
from tritonclient.grpc import service_pb2 as kfs

from ovms_wire.dtypes import DTypeError, by_name, by_tf
from ovms_wire.protos.tfs import meta_graph_pb2
from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.tensors import TensorError, from_kfs_contents, from_raw, from_tensor_proto, to_raw, to_tensor_proto
from refserver import __version__
from refserver.core import API_KFS, API_TFS, GRPC, NO_CONTROL, SEQUENCE_END, SEQUENCE_START, SequenceControl, Server
from refserver.errors import ServingError
from refserver.models import ModelVersion, TensorSpec

__all__ = ["generic_handlers", "parse_version_string", "SERVER_NAME", "EXTENSIONS", "signature_def_map"]

log = logging.getLogger("refserver")

SERVER_NAME = "ovms-refserver"
EXTENSIONS = ["binary_tensor_data", "model_repository", "sequence"]
SIGNATURE = "serving_default"
SEQ_ID_INPUT, SEQ_CONTROL_INPUT = "sequence_id", "sequence_control_input"


def parse_version_string(text: str) -> int | None:
    if not text:
        return None
    try:
        version = int(text)
    except ValueError:
        raise ServingError.invalid(f"Invalid model version {text!r}: versions are positive integers") from None
    if version < 0:
        raise ServingError.invalid(f"Invalid model version {text!r}: versions are positive integers")
    return version


def _shape_proto(spec: TensorSpec, info: meta_graph_pb2.TensorInfo) -> None:
    for d in spec.shape:
        info.tensor_shape.dim.add(size=d)


def signature_def_map(model: ModelVersion) -> tfs.SignatureDefMap:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for specs, target in ((model.inputs, sig.inputs), (model.outputs, sig.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name = spec.name
            info.dtype = spec.dtype.tf_enum
            _shape_proto(spec, info)
    sdm = tfs.SignatureDefMap()
    sdm.signature_def[SIGNATURE].CopyFrom(sig)
    return sdm


def _scalar(arr: np.ndarray, what: str) -> int:
    if arr.size != 1:
        raise ServingError.invalid(f"{what} must hold exactly one value, got {arr.size}")
    return int(arr.reshape(-1)[0])


def sequence_from_inputs(inputs: dict, tf_names: bool) -> SequenceControl:
    """OVMS's special inputs ``sequence_id`` (UINT64) and ``sequence_control_input`` (UINT32), decoded (JSON
    and KServe carry no TensorProto field to check); pops them from ``inputs``."""
    seq_id = control = 0
    if SEQ_ID_INPUT in inputs:
        wire, arr = inputs.pop(SEQ_ID_INPUT)
        if wire.name != "UINT64":
            raise ServingError.invalid("Could not find sequence id in expected tensor proto field uint64_val"
                                       if tf_names else "Sequence id must be a UINT64 tensor")
        seq_id = _scalar(arr, SEQ_ID_INPUT)
    if SEQ_CONTROL_INPUT in inputs:
        wire, arr = inputs.pop(SEQ_CONTROL_INPUT)
        if wire.name != "UINT32":
            raise ServingError.invalid("Could not find sequence control input in expected tensor proto field "
                                       "uint32_val" if tf_names else "Sequence control input must be a UINT32 tensor")
        control = _scalar(arr, SEQ_CONTROL_INPUT)
    return _control(seq_id, control)


def _tfs_scalar(tp, field: str, dtype: str, message: str) -> int:
    values = getattr(tp, field)
    if tp.dtype != by_name(dtype).tf_enum or len(values) != 1 or [d.size for d in tp.tensor_shape.dim] != [1]:
        raise ServingError.invalid(message)
    return int(values[0])


def tfs_sequence_control(inputs) -> SequenceControl:
    """OVMS reads the sequence inputs of a TensorProto only from ``uint64_val``/``uint32_val``, shape [1]."""
    seq_id = control = 0
    if SEQ_ID_INPUT in inputs:
        seq_id = _tfs_scalar(inputs[SEQ_ID_INPUT], "uint64_val", "UINT64",
                             "Could not find sequence id in expected tensor proto field uint64_val")
    if SEQ_CONTROL_INPUT in inputs:
        control = _tfs_scalar(inputs[SEQ_CONTROL_INPUT], "uint32_val", "UINT32",
                              "Could not find sequence control input in expected tensor proto field uint32_val")
    return _control(seq_id, control)


def _control(seq_id: int, control: int) -> SequenceControl:
    if control not in (NO_CONTROL, SEQUENCE_START, SEQUENCE_END):
        raise ServingError.invalid(f"Unexpected value of sequence control input: {control}")
    return SequenceControl(seq_id, control == SEQUENCE_START, control == SEQUENCE_END)


# --------------------------------------------------------------------------- TFS gRPC

class TfsGrpc:
    def __init__(self, server: Server):
        self.server = server

    async def predict(self, request: tfs.PredictRequest, context: grpc.aio.ServicerContext) -> tfs.PredictResponse:
        spec = request.model_spec
        if spec.WhichOneof("version_choice") == "version_label":
            raise ServingError.invalid("version_label is not supported; set model_spec.version")
        version = spec.version.value if spec.HasField("version") else None
        model = self.server.resolve(spec.name, version).model
        sequence = tfs_sequence_control(request.inputs) if model.stateful else None
        inputs = {}
        for name, tp in request.inputs.items():
            if sequence is not None and name in (SEQ_ID_INPUT, SEQ_CONTROL_INPUT):
                continue
            try:
                inputs[name] = (by_tf(tp.dtype), from_tensor_proto(tp))
            except (TensorError, DTypeError) as exc:
                raise ServingError.invalid(f"Invalid content size of tensor proto - input {name}: {exc}") from None
        result = await self.server.infer(API_TFS, GRPC, "Predict", spec.name, model.version, inputs, sequence,
                                         request.output_filter)
        response = tfs.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = result.model.version
        response.model_spec.signature_name = SIGNATURE
        for ospec in result.specs:
            response.outputs[ospec.name].CopyFrom(to_tensor_proto(result.outputs[ospec.name], ospec.dtype.name))
        if result.sequence_id is not None:   # as OVMS writes it: uint64_val, shape [1]
            out = response.outputs[SEQ_ID_INPUT]
            out.dtype = by_name("UINT64").tf_enum
            out.tensor_shape.dim.add(size=1)
            out.uint64_val.append(result.sequence_id)
        return response

    async def get_model_metadata(self, request: tfs.GetModelMetadataRequest,
                                 context: grpc.aio.ServicerContext) -> tfs.GetModelMetadataResponse:
        if "signature_def" not in request.metadata_field:
            raise ServingError.invalid("Metadata field signature_def not requested: add \"signature_def\" to "
                                       "metadata_field")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        model = self.server.describe(API_TFS, GRPC, "GetModelMetadata", spec.name, version).model
        response = tfs.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = SIGNATURE
        packed = any_pb2.Any()
        packed.Pack(signature_def_map(model))
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    async def get_model_status(self, request: tfs.GetModelStatusRequest,
                               context: grpc.aio.ServicerContext) -> tfs.GetModelStatusResponse:
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        self.server.describe(API_TFS, GRPC, "GetModelStatus", spec.name, version, per_version=False)
        versions = [version] if version else self.server.versions(spec.name)
        response = tfs.GetModelStatusResponse()
        for v in versions:
            response.model_version_status.add(version=v, state=tfs.ModelVersionStatus.AVAILABLE,
                                              status=tfs.StatusProto(error_code=0, error_message="OK"))
        return response


# ------------------------------------------------------------------------- KServe gRPC

def _param_int(p: kfs.InferParameter) -> int:
    which = p.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(p, which))
    if which == "string_param" and p.string_param.isdigit():
        return int(p.string_param)   # SequenceControl checks the UINT64 range
    raise ServingError.invalid("Sequence id parameter must be an integer (int64_param or uint64_param)")


def _param_bool(p: kfs.InferParameter, name: str) -> bool:
    if p.WhichOneof("parameter_choice") != "bool_param":
        raise ServingError.invalid(f"Parameter {name} must be a bool_param")
    return p.bool_param


def sequence_from_parameters(params) -> SequenceControl | None:
    if not any(k in params for k in ("sequence_id", "sequence_start", "sequence_end")):
        return None
    seq_id = _param_int(params["sequence_id"]) if "sequence_id" in params else 0
    start = _param_bool(params["sequence_start"], "sequence_start") if "sequence_start" in params else False
    end = _param_bool(params["sequence_end"], "sequence_end") if "sequence_end" in params else False
    return SequenceControl(seq_id, start, end)


class KfsGrpc:
    def __init__(self, server: Server):
        self.server = server

    async def server_live(self, request, context):
        return kfs.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return kfs.ServerReadyResponse(ready=True)

    async def server_metadata(self, request, context):
        return kfs.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def model_ready(self, request: kfs.ModelReadyRequest, context):
        self.server.describe(API_KFS, GRPC, "ModelReady", request.name, parse_version_string(request.version),
                             per_version=False)
        return kfs.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: kfs.ModelMetadataRequest, context):
        model = self.server.describe(API_KFS, GRPC, "ModelMetadata", request.name,
                                     parse_version_string(request.version)).model
        response = kfs.ModelMetadataResponse(name=model.name, platform="OpenVINO",
                                             versions=[str(v) for v in self.server.versions(model.name)])
        for specs, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.dtype.name, shape=list(spec.shape))
        return response

    async def repository_index(self, request, context):
        response = kfs.RepositoryIndexResponse()
        for name in self.server.model_names():
            for v in self.server.versions(name):
                response.models.add(name=name, version=str(v), state="READY")
        return response

    async def model_infer(self, request: kfs.ModelInferRequest, context) -> kfs.ModelInferResponse:
        version = parse_version_string(request.model_version)
        model = self.server.resolve(request.model_name, version).model
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise ServingError.invalid(f"Invalid number of raw_input_contents: {len(raw)} for "
                                       f"{len(request.inputs)} inputs")
        inputs = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.name in inputs:
                raise ServingError.invalid(f"Duplicate input name {tensor.name!r} in the request")
            try:
                dtype = by_name(tensor.datatype)
                shape = list(tensor.shape)
                if raw:
                    if tensor.HasField("contents"):
                        raise ServingError.invalid(f"Input {tensor.name} has both contents and raw_input_contents")
                    arr = from_raw(raw[i], dtype.name, shape)
                else:
                    arr = from_kfs_contents(tensor.contents, dtype.name, shape)
            except (TensorError, DTypeError) as exc:
                raise ServingError.invalid(f"Invalid content size of tensor - input {tensor.name}: {exc}") from None
            inputs[tensor.name] = (dtype, arr)
        sequence = sequence_from_parameters(request.parameters)
        if model.stateful and (SEQ_ID_INPUT in inputs or SEQ_CONTROL_INPUT in inputs):
            sequence = sequence_from_inputs(inputs, tf_names=False)
        result = await self.server.infer(API_KFS, GRPC, "ModelInfer", request.model_name, model.version, inputs,
                                         sequence, [o.name for o in request.outputs])
        response = kfs.ModelInferResponse(model_name=request.model_name, model_version=str(result.model.version),
                                          id=request.id)
        for ospec in result.specs:
            value = result.outputs[ospec.name]
            response.outputs.add(name=ospec.name, datatype=ospec.dtype.name, shape=list(value.shape))
            response.raw_output_contents.append(to_raw(value, ospec.dtype.name))
        if result.sequence_id is not None:
            param = response.parameters["sequence_id"]
            if result.sequence_id < 2 ** 63:
                param.int64_param = result.sequence_id
            else:
                param.uint64_param = result.sequence_id
        return response


# ------------------------------------------------------------------------------- wiring

Handler = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


def _unary(fn: Handler, request_cls: type, response_cls: type) -> grpc.RpcMethodHandler:
    async def handler(request, context: grpc.aio.ServicerContext):
        try:
            return await fn(request, context)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        except Exception as exc:   # a server bug must still answer, with its cause
            log.exception("internal error")
            await context.abort(grpc.StatusCode.INTERNAL, f"Internal server error: {exc}")

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=request_cls.FromString,
                                               response_serializer=response_cls.SerializeToString)


def generic_handlers(server: Server) -> list[grpc.GenericRpcHandler]:
    t, k = TfsGrpc(server), KfsGrpc(server)
    return [
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": _unary(t.predict, tfs.PredictRequest, tfs.PredictResponse),
            "GetModelMetadata": _unary(t.get_model_metadata, tfs.GetModelMetadataRequest,
                                       tfs.GetModelMetadataResponse),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": _unary(t.get_model_status, tfs.GetModelStatusRequest, tfs.GetModelStatusResponse),
        }),
        grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ServerLive": _unary(k.server_live, kfs.ServerLiveRequest, kfs.ServerLiveResponse),
            "ServerReady": _unary(k.server_ready, kfs.ServerReadyRequest, kfs.ServerReadyResponse),
            "ServerMetadata": _unary(k.server_metadata, kfs.ServerMetadataRequest, kfs.ServerMetadataResponse),
            "ModelReady": _unary(k.model_ready, kfs.ModelReadyRequest, kfs.ModelReadyResponse),
            "ModelMetadata": _unary(k.model_metadata, kfs.ModelMetadataRequest, kfs.ModelMetadataResponse),
            "ModelInfer": _unary(k.model_infer, kfs.ModelInferRequest, kfs.ModelInferResponse),
            "RepositoryIndex": _unary(k.repository_index, kfs.RepositoryIndexRequest, kfs.RepositoryIndexResponse),
        }),
    ]
