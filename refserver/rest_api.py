"""REST frontends: TensorFlow Serving's REST API (with OVMS's /v1/config), KServe v2 REST, /metrics."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from ovms_wire.dtypes import DType, DTypeError, by_name
from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.tensors import TensorError, from_raw, to_raw
from refserver import __version__
from refserver.core import API_KFS, API_TFS, REST, SequenceControl, Server
from refserver.errors import ServingError
from refserver.grpc_api import (
    EXTENSIONS,
    SEQ_CONTROL_INPUT,
    SEQ_ID_INPUT,
    SERVER_NAME,
    parse_version_string,
    sequence_from_inputs,
    signature_def_map,
)
from refserver.models import ModelVersion

__all__ = ["make_app", "HEADER_LENGTH"]

log = logging.getLogger("refserver")

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
_SEQUENCE_DTYPES = {SEQ_ID_INPUT: by_name("UINT64"), SEQ_CONTROL_INPUT: by_name("UINT32")}


def _error(exc: ServingError) -> web.Response:
    return web.json_response({"error": exc.message}, status=exc.http)


def _json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError.invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise ServingError.invalid("JSON Parse error: the request body must be a JSON object")
    return body


# ---------------------------------------------------------------------- JSON <-> tensors

def _walk_json(value: object, want_bytes: bool, flags: dict, allow_bool: bool = False) -> object:
    if isinstance(value, list):
        return [_walk_json(v, want_bytes, flags, allow_bool) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            flags["binary"] = True
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise ServingError.invalid("Invalid base64 string in a {\"b64\": ...} value") from None
        raise ServingError.invalid("Unexpected JSON object inside a tensor; only {\"b64\": \"...\"} is allowed")
    if value is None or (isinstance(value, bool) and not allow_bool):
        raise ServingError.invalid(f"Invalid input value {json.dumps(value)}: tensor values must be numbers or strings")
    if isinstance(value, str):
        if not want_bytes:
            raise ServingError.invalid("Invalid input precision - a string was given for a numeric input")
        flags["binary"] = True
        return value.encode()
    return value


def json_to_tensor(value: object, dtype: DType, name: str) -> tuple[DType, np.ndarray]:
    """A TFS REST value (nested lists, strings, ``{"b64": ...}``) as (wire dtype, array)."""
    flags: dict = {}
    walked = _walk_json(value, dtype.is_bytes, flags, allow_bool=dtype.name == "BOOL")
    if flags.get("binary") or dtype.is_bytes:
        arr = np.array(walked, dtype=object)
        if arr.size and not all(isinstance(v, bytes) for v in arr.reshape(-1)):
            raise ServingError.invalid(f"Invalid input shape - input {name} mixes strings and numbers or is ragged")
        return by_name("BYTES"), arr
    try:
        arr = np.array(walked, dtype=dtype.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServingError.invalid(f"Invalid input {name}: values do not form a {dtype.name} tensor ({exc})") from None
    return dtype, arr


def _json_value(arr: np.ndarray, name: str) -> object:
    if arr.dtype != object:
        return arr.tolist()
    def enc(v: bytes) -> object:
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(v).decode()}
        try:
            return v.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode()}
    return np.vectorize(enc, otypes=[object])(arr).tolist() if arr.size else arr.tolist()


# --------------------------------------------------------------------------- TFS REST

_TFS_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?:/(?P<meta>metadata)|:(?P<verb>predict))?$")


class TfsRest:
    def __init__(self, server: Server):
        self.server = server

    def _status_json(self, name: str, versions: list[int]) -> dict:
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}}
            for v in versions]}

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({name: self._status_json(name, self.server.versions(name))
                                  for name in self.server.model_names()})

    async def route(self, request: web.Request) -> web.Response:
        match = _TFS_PATH.match(request.match_info["tail"])
        if not match:
            raise web.HTTPNotFound(text=json.dumps({"error": "Malformed URL"}), content_type=JSON_TYPE)
        name, meta, verb = match["name"], match["meta"], match["verb"]
        version = int(match["version"]) if match["version"] else None
        if request.method == "POST" and verb == "predict":
            return await self.predict(request, name, version)
        if request.method == "GET" and meta:
            model = self.server.describe(API_TFS, REST, "GetModelMetadata", name, version).model
            return web.json_response(self.metadata_json(model))
        if request.method == "GET" and not verb:
            self.server.describe(API_TFS, REST, "GetModelStatus", name, version, per_version=False)
            return web.json_response(self._status_json(name, [version] if version else self.server.versions(name)))
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])

    @staticmethod
    def metadata_json(model: ModelVersion) -> dict:
        """What OVMS answers: the protobuf JSON mapping of GetModelMetadataResponse (camelCase fields)."""
        response = tfs.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = "serving_default"
        response.metadata["signature_def"].Pack(signature_def_map(model))
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def _input_tensor(self, model: ModelVersion, name: str, value: object) -> tuple[DType, np.ndarray]:
        seq_dtype = _SEQUENCE_DTYPES.get(name) if model.stateful else None
        if seq_dtype is not None:
            return json_to_tensor(value, seq_dtype, name)
        spec = model.input_spec(name)
        if spec is None:
            raise ServingError.invalid(f"Unexpected input name - {name} is not an input of model {model.name}")
        return json_to_tensor(value, spec.dtype, name)

    def _named(self, model: ModelVersion, value: object) -> dict:
        """Columnar ``inputs`` or one row instance: a dict of named inputs, or the only input's value."""
        if isinstance(value, dict) and not (set(value) == {"b64"}):
            return value
        if len(model.inputs) != 1:
            raise ServingError.invalid(f"Model {model.name} has {len(model.inputs)} inputs: name each input")
        return {model.inputs[0].name: value}

    async def predict(self, request: web.Request, name: str, version: int | None) -> web.Response:
        model = self.server.resolve(name, version).model
        body = _json_body(await request.read())
        if ("instances" in body) == ("inputs" in body):
            raise ServingError.invalid("Missing 'instances' or 'inputs' key in the request body (give exactly one)")
        row = "instances" in body
        if row:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise ServingError.invalid("'instances' must be a non-empty list")
            named = [self._named(model, inst) for inst in instances]
            keys = set(named[0])
            if any(set(n) != keys for n in named):
                raise ServingError.invalid("Every instance must have the same named inputs")
            raw_inputs = {k: [n[k] for n in named] for k in keys}
        else:
            raw_inputs = self._named(model, body["inputs"])
        inputs = {k: self._input_tensor(model, k, v) for k, v in raw_inputs.items()}
        sequence = sequence_from_inputs(inputs, tf_names=True) if model.stateful else None
        result = await self.server.infer(API_TFS, REST, "Predict", name, model.version, inputs, sequence)
        outputs = {s.name: result.outputs[s.name] for s in result.specs}
        if result.sequence_id is not None:
            outputs[SEQ_ID_INPUT] = np.array([result.sequence_id], dtype=np.uint64)
        if row:
            batch = {len(v) for v in outputs.values() if v.ndim}
            if len(batch) != 1:
                raise ServingError.invalid("Outputs differ in batch size; use the columnar 'inputs' format")
            if len(outputs) == 1:
                (oname, value), = outputs.items()
                return web.json_response({"predictions": _json_value(value, oname)})
            n = batch.pop()
            cols = {k: _json_value(v, k) for k, v in outputs.items()}
            return web.json_response({"predictions": [{k: cols[k][i] for k in cols} for i in range(n)]})
        if len(outputs) == 1:
            (oname, value), = outputs.items()
            return web.json_response({"outputs": _json_value(value, oname)})
        return web.json_response({"outputs": {k: _json_value(v, k) for k, v in outputs.items()}})


# ------------------------------------------------------------------------- KServe REST

_KFS_PATH = re.compile(r"^(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<verb>ready|infer))?$")


def _flat_data(data: object) -> list:
    if isinstance(data, list):
        if data and isinstance(data[0], list):
            out: list = []
            for item in data:
                out.extend(_flat_data(item))
            return out
        return data
    return [data]


def _kfs_json_tensor(tensor: dict, dtype: DType, shape: list[int]) -> np.ndarray:
    data = _flat_data(tensor.get("data"))
    count = int(np.prod(shape)) if shape else 1
    if len(data) != count:
        raise ServingError.invalid(f"Invalid input {tensor.get('name')}: shape {shape} needs {count} values, "
                                   f"got {len(data)}")
    if dtype.is_bytes:
        if not all(isinstance(v, str) for v in data):
            raise ServingError.invalid(f"Invalid input {tensor.get('name')}: BYTES data must be strings")
        arr = np.empty(count, dtype=object)
        arr[:] = [v.encode() for v in data]
        return arr.reshape(shape)
    if dtype.name != "BOOL" and any(v is None or isinstance(v, (bool, str, dict, list)) for v in data):
        raise ServingError.invalid(f"Invalid input {tensor.get('name')}: {dtype.name} data must be numbers")
    if dtype.numpy.kind in "iu" and any(isinstance(v, float) and not v.is_integer() for v in data):
        raise ServingError.invalid(f"Invalid input {tensor.get('name')}: {dtype.name} data must be whole numbers")
    try:
        return np.array(data, dtype=dtype.numpy).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServingError.invalid(f"Invalid input {tensor.get('name')}: {exc}") from None


def _kfs_sequence(params: dict) -> SequenceControl | None:
    if not any(k in params for k in ("sequence_id", "sequence_start", "sequence_end")):
        return None
    seq_id = params.get("sequence_id", 0)
    if isinstance(seq_id, str) and seq_id.isdigit():
        seq_id = int(seq_id)
    if not isinstance(seq_id, int) or isinstance(seq_id, bool) or not 0 <= seq_id < 2 ** 64:
        raise ServingError.invalid("Parameter sequence_id must be an integer from 0 to 2**64-1")
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise ServingError.invalid("Parameters sequence_start and sequence_end must be booleans")
    return SequenceControl(seq_id, start, end)


def _object(value: object, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServingError.invalid(f"{what} must be a JSON object")
    return value


class KfsRest:
    def __init__(self, server: Server):
        self.server = server

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def index(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": n, "version": str(v), "state": "READY"}
                                  for n in self.server.model_names() for v in self.server.versions(n)])

    async def route(self, request: web.Request) -> web.Response:
        match = _KFS_PATH.match(request.match_info["tail"])
        if not match:
            raise web.HTTPNotFound(text=json.dumps({"error": "Malformed URL"}), content_type=JSON_TYPE)
        name, verb = match["name"], match["verb"]
        version = parse_version_string(match["version"] or "")
        if request.method == "POST" and verb == "infer":
            return await self.infer(request, name, version)
        if request.method == "GET" and verb == "ready":
            self.server.describe(API_KFS, REST, "ModelReady", name, version, per_version=False)
            return web.Response(status=200)
        if request.method == "GET" and verb is None:
            model = self.server.describe(API_KFS, REST, "ModelMetadata", name, version).model
            return web.json_response({
                "name": model.name, "versions": [str(v) for v in self.server.versions(name)], "platform": "OpenVINO",
                "inputs": [{"name": s.name, "datatype": s.dtype.name, "shape": list(s.shape)} for s in model.inputs],
                "outputs": [{"name": s.name, "datatype": s.dtype.name, "shape": list(s.shape)}
                            for s in model.outputs]})
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])

    async def infer(self, request: web.Request, name: str, version: int | None) -> web.Response:
        model = self.server.resolve(name, version).model
        raw = await request.read()
        header_len = request.headers.get(HEADER_LENGTH)
        if header_len is not None:
            try:
                n = int(header_len)
            except ValueError:
                raise ServingError.invalid(f"{HEADER_LENGTH} must be an integer") from None
            if not 0 <= n <= len(raw):
                raise ServingError.invalid(f"{HEADER_LENGTH} {n} is outside the body of {len(raw)} bytes")
            body, binary = _json_body(raw[:n]), memoryview(raw)[n:]
        else:
            body, binary = _json_body(raw), memoryview(b"")
        tensors = body.get("inputs")
        if not isinstance(tensors, list) or not tensors:
            raise ServingError.invalid("The request needs a non-empty 'inputs' list")
        inputs, offset = {}, 0
        for tensor in tensors:
            if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= set(tensor):
                raise ServingError.invalid("Every input needs 'name', 'shape' and 'datatype'")
            try:
                dtype = by_name(str(tensor["datatype"]))
                shape = [int(d) for d in tensor["shape"]]
                size = _object(tensor.get("parameters"), "an input's parameters").get("binary_data_size")
                if size is not None:
                    if offset + int(size) > len(binary):
                        raise ServingError.invalid(f"Input {tensor['name']}: binary_data_size {size} runs past the "
                                                   "end of the body")
                    arr = from_raw(binary[offset:offset + int(size)], dtype.name, shape)
                    offset += int(size)
                else:
                    arr = _kfs_json_tensor(tensor, dtype, shape)
            except (TensorError, DTypeError, TypeError, ValueError) as exc:
                if isinstance(exc, ServingError):
                    raise
                raise ServingError.invalid(f"Invalid input {tensor.get('name')}: {exc}") from None
            if str(tensor["name"]) in inputs:
                raise ServingError.invalid(f"Duplicate input name {tensor['name']!r} in the request")
            inputs[str(tensor["name"])] = (dtype, arr)
        params = _object(body.get("parameters"), "parameters")
        sequence = _kfs_sequence(params)
        if model.stateful and (SEQ_ID_INPUT in inputs or SEQ_CONTROL_INPUT in inputs):
            sequence = sequence_from_inputs(inputs, tf_names=False)
        requested = body.get("outputs") or []
        if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                      and isinstance(o.get("parameters") or {}, dict)
                                                      for o in requested):
            raise ServingError.invalid("'outputs' must be a list of objects, each with a 'name'")
        result = await self.server.infer(API_KFS, REST, "ModelInfer", name, model.version, inputs, sequence,
                                         [o["name"] for o in requested])
        binary_all = bool(params.get("binary_data_output", False))
        wants_binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", binary_all)) for o in requested}
        out_json, blobs = [], []
        for spec in result.specs:
            value = result.outputs[spec.name]
            entry = {"name": spec.name, "datatype": spec.dtype.name, "shape": list(value.shape)}
            data = None
            if not wants_binary.get(spec.name, binary_all):
                try:
                    data = ([v.decode() for v in value.reshape(-1)] if spec.dtype.is_bytes
                            else value.reshape(-1).tolist())
                except UnicodeDecodeError:
                    data = None   # bytes that are not text can only travel as binary data
            if data is None:
                blob = to_raw(value, spec.dtype.name)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = data
            out_json.append(entry)
        doc: dict = {"model_name": name, "model_version": str(result.model.version), "outputs": out_json}
        if "id" in body:
            doc["id"] = body["id"]
        if result.sequence_id is not None:
            doc["parameters"] = {"sequence_id": result.sequence_id}
        header = json.dumps(doc).encode()
        if not blobs:
            return web.Response(body=header, content_type=JSON_TYPE)
        return web.Response(body=header + b"".join(blobs), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})


# ------------------------------------------------------------------------------- wiring

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == JSON_TYPE:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception as exc:   # a server bug must still answer, with its cause
        log.exception("internal error on %s", request.path)
        return web.json_response({"error": f"Internal server error: {exc}"}, status=500)


def make_app(server: Server) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=1 << 30)
    t, k = TfsRest(server), KfsRest(server)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=server.prometheus_text(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/v1/config", t.config)
    app.router.add_route("*", "/v1/models/{tail:.+}", t.route)
    app.router.add_get("/v2/health/live", k.live)
    app.router.add_get("/v2/health/ready", k.live)
    app.router.add_get("/v2", k.server_metadata)
    app.router.add_post("/v2/repository/index", k.index)
    app.router.add_route("*", "/v2/models/{tail:.+}", k.route)
    app.router.add_get("/metrics", metrics)
    return app
