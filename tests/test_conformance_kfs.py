"""Conformance of the reference server's KServe v2 API (gRPC and REST).

Checked with clients nobody here wrote: ``tritonclient`` (gRPC and HTTP), plain ``requests`` for
the REST error bodies, and raw gRPC stubs over tritonclient's own ``service_pb2`` with tensors
written by hand in this file (typed ``contents``), so that a bug shared by the suite's own encoders
and the server's decoders cannot hide. Expected results are recomputed here with numpy and Pillow.

Transports, as test ids: ``grpc`` (tritonclient gRPC, raw_input_contents), ``http`` (tritonclient
HTTP with binary tensor data both ways) and ``json`` (tritonclient HTTP with JSON data both ways).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from refserver.config import default_config
from tests.conftest import scrape_counter

TIMEOUT = 10.0
TRANSPORTS = ["grpc", "http", "json"]
HTTP_OF = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409}

# The models as configured: {name: {version: model entry}}, versions merged with their overrides.
CONFIG: dict[str, dict[int, dict]] = {}
for _entry in default_config()["models"]:
    _versions = _entry.get("versions", [1])
    _overrides = {int(v): (o or {}) for v, o in _versions.items()} if isinstance(_versions, dict) else \
        {int(v): {} for v in _versions}
    CONFIG[_entry["name"]] = {v: {**_entry, **o} for v, o in sorted(_overrides.items())}
OUTPUT_NAMES = {name: [o["name"] for o in max(vs.items())[1]["outputs"]] for name, vs in CONFIG.items()}

# precision -> numpy dtype, and the typed InferTensorContents field (from grpc_service.proto; FP16 has none)
PRECISIONS: dict[str, tuple[type, str | None]] = {
    "FP16": (np.float16, None),
    "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"),
    "INT8": (np.int8, "int_contents"),
    "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"),
    "INT64": (np.int64, "int64_contents"),
    "UINT8": (np.uint8, "uint_contents"),
    "UINT16": (np.uint16, "uint_contents"),
    "UINT32": (np.uint32, "uint_contents"),
    "UINT64": (np.uint64, "uint64_contents"),
}
TYPED_PRECISIONS = [p for p, (_, f) in PRECISIONS.items() if f]


def precision_input(precision: str) -> np.ndarray:
    """A [2, 8] tensor of ``precision``: integer extremes (so x+1 wraps around) or exactly representable floats."""
    dt = np.dtype(PRECISIONS[precision][0])
    if dt.kind == "f":
        return (np.arange(-8, 8) / 4).astype(dt).reshape(2, 8)
    info = np.iinfo(dt)
    first = [info.min, info.min + 1, 0, 1, 42, info.max // 2, info.max - 1, info.max]
    rng = np.random.default_rng(len(precision))
    second = rng.integers(info.min, info.max, size=8, dtype=dt, endpoint=True)
    return np.array([first, second], dtype=dt)


def classifier_expected(x: np.ndarray, seed: int = 7, classes: int = 1000) -> np.ndarray:
    """The documented classifier: global average pool over H and W, a seeded linear layer, softmax."""
    pooled = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1).mean(axis=2)
    logits = pooled @ np.random.default_rng(seed).standard_normal((x.shape[1], classes))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def image_bytes(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def pillow_pixels(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as img:
        return np.asarray(img.convert("RGB"))


def random_pixels(seed: int, height: int = 32, width: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def bytes_array(values: list[bytes]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def as_bytes(arr: np.ndarray) -> list[bytes]:
    """A BYTES output as Python bytes (tritonclient gives str for JSON data and bytes for binary data)."""
    return [v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)]


# -------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def grpc_client(refserver) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(refserver.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(refserver) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(refserver.rest_address, network_timeout=TIMEOUT)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(refserver) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(refserver.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@dataclass
class Kfs:
    """One transport to the server through tritonclient."""
    transport: str
    client: grpcclient.InferenceServerClient | httpclient.InferenceServerClient

    @property
    def grpc(self) -> bool:
        return self.transport == "grpc"


@pytest.fixture(params=TRANSPORTS)
def kfs(request, grpc_client, http_client) -> Kfs:
    return Kfs(request.param, grpc_client if request.param == "grpc" else http_client)


@pytest.fixture(params=["grpc", "http"])
def api(request, grpc_client, http_client) -> Kfs:
    """The two APIs, gRPC and REST (tensors as binary data): for calls without tensors, or tensors that JSON
    cannot carry (JPEG/PNG bytes)."""
    return Kfs(request.param, grpc_client if request.param == "grpc" else http_client)


# ------------------------------------------------------------------------------------ inference

@dataclass
class Reply:
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    id: str
    parameters: dict = field(default_factory=dict)


def infer(kfs: Kfs, model: str, inputs: dict[str, np.ndarray], version: str = "", outputs: list[str] | None = None,
          request_id: str = "", **kwargs) -> Reply:
    """One ModelInfer through tritonclient; checks the reply's encoding matches what was asked for."""
    mod = grpcclient if kfs.grpc else httpclient
    binary = kfs.transport != "json"
    infer_inputs = []
    for name, arr in inputs.items():
        tensor = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        if kfs.grpc:
            tensor.set_data_from_numpy(arr)
        else:
            tensor.set_data_from_numpy(arr, binary_data=binary)
        infer_inputs.append(tensor)
    names = outputs if outputs is not None else OUTPUT_NAMES.get(model, [])
    if kfs.grpc:
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        result = kfs.client.infer(model, infer_inputs, model_version=version, outputs=requested,
                                  request_id=request_id, client_timeout=TIMEOUT, **kwargs)
        resp = result.get_response()
        assert len(resp.raw_output_contents) == len(resp.outputs)
        params = {k: param_value(v) for k, v in resp.parameters.items()}
        meta = (resp.model_name, resp.model_version, resp.id, params)
    else:
        requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names] \
            if (outputs or not binary) else None
        result = kfs.client.infer(model, infer_inputs, model_version=version, outputs=requested,
                                  request_id=request_id, **kwargs)
        resp = result.get_response()
        for out in resp["outputs"]:   # binary data where asked for, JSON data otherwise
            assert ("data" in out) != binary, out
            assert ("binary_data_size" in out.get("parameters", {})) == binary, out
        meta = (resp["model_name"], resp["model_version"], resp.get("id", ""), resp.get("parameters", {}))
    return Reply({n: result.as_numpy(n) for n in names}, *meta)


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    inputs: dict[str, np.ndarray]
    expected: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    version: str = ""
    served: str = "1"
    rtol: float = 0.0


_rng = np.random.default_rng(2024)
_f32 = lambda *shape: _rng.standard_normal(shape).astype(np.float32)
INFER_CASES = [
    Case("dummy", "dummy", {"b": np.arange(10, dtype=np.float32).reshape(1, 10) / 4},
         lambda i: {"a": i["b"] + 1}),
    Case("two_inputs", "two_inputs", {"x": _f32(3, 4), "y": _f32(3, 4)},
         lambda i: {"sum": i["x"] + i["y"], "diff": i["x"] - i["y"]}, rtol=1e-6),
    Case("dynamic_3x5", "dynamic", {"x": np.arange(15, dtype=np.float32).reshape(3, 5) / 8},
         lambda i: {"y": i["x"] + 1}),
    Case("dynamic_1x1", "dynamic", {"x": np.array([[-2.5]], dtype=np.float32)}, lambda i: {"y": i["x"] + 1}),
    Case("versioned_v1", "versioned", {"x": np.arange(8, dtype=np.float32).reshape(2, 4)},
         lambda i: {"y": i["x"] + 1}, version="1", served="1"),
    Case("versioned_v2", "versioned", {"x": np.arange(8, dtype=np.float32).reshape(1, 8)},
         lambda i: {"y": i["x"] + 2}, version="2", served="2"),
    Case("versioned_default", "versioned", {"x": np.arange(16, dtype=np.float32).reshape(2, 8)},
         lambda i: {"y": i["x"] + 2}, served="2"),
    Case("resnet", "resnet", {"0": _rng.random((1, 3, 224, 224), dtype=np.float32)},
         lambda i: {"1463": classifier_expected(i["0"])}, rtol=1e-5),
    Case("resnet_dyn_batch2", "resnet_dyn", {"0": _rng.random((2, 3, 224, 224), dtype=np.float32) * 4},
         lambda i: {"1463": classifier_expected(i["0"])}, rtol=1e-5),
]


@pytest.mark.parametrize("case", INFER_CASES, ids=lambda c: c.id)
def test_infer_results(kfs, case):
    reply = infer(kfs, case.model, case.inputs, version=case.version, request_id=f"req-{case.id}")
    assert (reply.model_name, reply.model_version, reply.id) == (case.model, case.served, f"req-{case.id}")
    expected = case.expected(case.inputs)
    assert set(reply.outputs) == set(expected)
    for name, want in expected.items():
        got = reply.outputs[name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=1e-7 if case.rtol else 0, err_msg=name)
    if case.model.startswith("resnet"):
        np.testing.assert_allclose(reply.outputs["1463"].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision(kfs, precision):
    x = precision_input(precision)
    reply = infer(kfs, f"add_{precision.lower()}", {"x": x})
    y = reply.outputs["y"]
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x + x.dtype.type(1))   # numpy wraps integers around, as the model does
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        assert y[0, -1] == info.min and y[0, 0] == info.min + 1   # max + 1 wraps to min, e.g. INT8 127 -> -128


def test_output_filter(kfs):
    """Asking for one output of two answers only that output."""
    x, y = _f32(2, 4), _f32(2, 4)
    reply = infer(kfs, "two_inputs", {"x": x, "y": y}, outputs=["diff"])
    assert list(reply.outputs) == ["diff"]
    np.testing.assert_allclose(reply.outputs["diff"], x - y, rtol=1e-6)


@pytest.mark.parametrize("values", [[b"hello", b"World 42", b""], ["h\u00e9llo \u2713".encode()]],
                         ids=["ascii", "utf8"])
def test_bytes_string_model(kfs, values):
    reply = infer(kfs, "string", {"text": bytes_array(values)})
    assert reply.outputs["length"].dtype == np.int64
    np.testing.assert_array_equal(reply.outputs["length"], [len(v) for v in values])
    assert reply.outputs["upper"].shape == (len(values),)
    assert as_bytes(reply.outputs["upper"]) == [v.upper() for v in values]


# ---------------------------------------------------------------------------------- binary images

@pytest.mark.parametrize("formats", [["PNG"], ["JPEG"], ["PNG", "JPEG", "PNG"]], ids="+".join)
def test_binary_images(api, formats):
    pixels = [random_pixels(seed) for seed in range(len(formats))]
    blobs = [image_bytes(p, fmt) for p, fmt in zip(pixels, formats, strict=True)]
    decoded = [p if fmt == "PNG" else pillow_pixels(b) for p, fmt, b in zip(pixels, formats, blobs, strict=True)]
    reply = infer(api, "image", {"image": bytes_array(blobs)})
    want = np.stack(decoded).astype(np.float64).mean(axis=(1, 2))
    mean = reply.outputs["mean"]
    assert mean.dtype == np.float32 and mean.shape == (len(formats), 3)
    np.testing.assert_allclose(mean, want, rtol=1e-6)
    if "JPEG" in formats:   # JPEG is lossy: the server decodes like Pillow, not to the source pixels
        assert not np.array_equal(decoded[formats.index("JPEG")], pixels[formats.index("JPEG")])


def test_image_models_take_numeric_and_any_size(kfs):
    pixels = random_pixels(5)
    reply = infer(kfs, "image", {"image": pixels[None]})
    np.testing.assert_allclose(reply.outputs["mean"], pixels[None].mean(axis=(1, 2)), rtol=1e-6)
    small = random_pixels(6, height=10, width=20)
    if kfs.transport != "json":   # JPEG/PNG blobs are not UTF-8 text, so they cannot travel as JSON strings
        reply = infer(kfs, "image_any", {"image": bytes_array([image_bytes(small, "PNG")])})
        np.testing.assert_allclose(reply.outputs["mean"], small[None].mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("blob, text", [
    (b"this is not an image", "Image"),
    (image_bytes(random_pixels(3, height=30, width=40), "PNG"), "Invalid input shape"),
    (image_bytes(random_pixels(3, height=48, width=32), "JPEG"), "Invalid input shape"),
], ids=["not_an_image", "png_wrong_size", "jpeg_transposed_size"])
def test_binary_image_errors(api, blob, text):
    with pytest.raises(InferenceServerException) as info:
        infer(api, "image", {"image": bytes_array([blob])})
    assert_status(api, info.value, "INVALID_ARGUMENT", text)


# -------------------------------------------------------------------------------------- errors

def assert_status(kfs: Kfs, exc: InferenceServerException, code: str, text: str) -> None:
    want = f"StatusCode.{code}" if kfs.grpc else str(HTTP_OF[code])
    assert exc.status() == want, exc
    assert text in exc.message(), exc


@dataclass(frozen=True)
class ErrorCase:
    id: str
    model: str
    inputs: dict[str, np.ndarray]
    code: str
    text: str
    version: str = ""
    outputs: list[str] | None = None


_b = np.ones((1, 10), dtype=np.float32)
ERROR_CASES = [
    ErrorCase("unknown_model", "no_such_model", {"b": _b}, "NOT_FOUND", "Model with requested name is not found"),
    ErrorCase("unknown_version", "dummy", {"b": _b}, "NOT_FOUND", "Model with requested version is not found",
              version="3"),
    ErrorCase("unknown_version_of_versioned", "versioned", {"x": _f32(1, 8)}, "NOT_FOUND",
              "Model with requested version is not found", version="5"),
    ErrorCase("wrong_dtype", "dummy", {"b": np.ones((1, 10), dtype=np.int32)}, "INVALID_ARGUMENT",
              "Invalid input precision"),
    ErrorCase("wrong_dtype_fp64", "add_fp32", {"x": np.ones((1, 8), dtype=np.float64)}, "INVALID_ARGUMENT",
              "Invalid input precision"),
    ErrorCase("wrong_shape", "dummy", {"b": _f32(1, 5)}, "INVALID_ARGUMENT", "Invalid input shape"),
    ErrorCase("wrong_batch", "dummy", {"b": _f32(2, 10)}, "INVALID_ARGUMENT", "batch size"),
    ErrorCase("wrong_rank", "dynamic", {"x": _f32(6)}, "INVALID_ARGUMENT", "Invalid number of shape dimensions"),
    ErrorCase("v1_shape_on_latest", "versioned", {"x": _f32(1, 4)}, "INVALID_ARGUMENT", "Invalid input shape"),
    ErrorCase("missing_input", "two_inputs", {"x": _f32(1, 4)}, "INVALID_ARGUMENT", "Missing input"),
    ErrorCase("unexpected_input", "dummy", {"b": _b, "c": _b}, "INVALID_ARGUMENT", "Unexpected input"),
    ErrorCase("inputs_differ_in_batch", "two_inputs", {"x": _f32(1, 4), "y": _f32(2, 4)}, "INVALID_ARGUMENT",
              "Invalid input shape"),
    ErrorCase("unknown_output", "dummy", {"b": _b}, "INVALID_ARGUMENT", "no_such_output",
              outputs=["no_such_output"]),
    ErrorCase("string_for_numeric", "dummy", {"b": bytes_array([b"1"] * 10).reshape(1, 10)}, "INVALID_ARGUMENT",
              "Invalid input precision"),
    ErrorCase("numeric_for_string", "string", {"text": np.array([1, 2], dtype=np.int64)}, "INVALID_ARGUMENT",
              "Invalid input precision"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.id)
def test_infer_errors_tritonclient(api, case):
    with pytest.raises(InferenceServerException) as info:
        infer(api, case.model, case.inputs, version=case.version, outputs=case.outputs)
    assert_status(api, info.value, case.code, case.text)


def rest_infer_url(rest_url: str, model: str, version: str = "") -> str:
    return f"{rest_url}/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def json_tensor(name: str, arr: np.ndarray) -> dict:
    data = as_bytes(arr) if arr.dtype == object else arr.reshape(-1).tolist()
    if arr.dtype == object:
        data = [v.decode() for v in data]
    return {"name": name, "datatype": np_to_triton_dtype(arr.dtype), "shape": list(arr.shape), "data": data}


def assert_rest_error(resp: requests.Response, status: int, text: str = "") -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert text in body["error"]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.id)
def test_infer_errors_rest_json(refserver, case):
    body: dict = {"inputs": [json_tensor(n, a) for n, a in case.inputs.items()]}
    if case.outputs:
        body["outputs"] = [{"name": n} for n in case.outputs]
    resp = requests.post(rest_infer_url(refserver.rest_url, case.model, case.version), json=body, timeout=TIMEOUT)
    assert_rest_error(resp, HTTP_OF[case.code], case.text)


_GOOD_HEADER = json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10],
                                       "parameters": {"binary_data_size": 40}}]}).encode()
_HLEN = "Inference-Header-Content-Length"
_B_JSON = {"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [0.5] * 10}


def _doc(**body) -> bytes:
    return json.dumps(body).encode()


# name -> (model, body, headers): each answered 400 with a JSON {"error": ...} body
REST_MALFORMED: dict[str, tuple[str, bytes, dict]] = {
    "malformed_json": ("dummy", b'{"inputs": [', {}),
    "json_not_an_object": ("dummy", b"[1, 2, 3]", {}),
    "no_inputs": ("dummy", _doc(outputs=[]), {}),
    "inputs_not_a_list": ("dummy", _doc(inputs={"b": 1}), {}),
    "input_without_datatype": ("dummy", _doc(inputs=[{"name": "b", "shape": [1, 10], "data": [0] * 10}]), {}),
    "unknown_datatype": ("dummy", _doc(inputs=[{**_B_JSON, "datatype": "FP99"}]), {}),
    "data_count_mismatch": ("dummy", _doc(inputs=[{**_B_JSON, "data": [1, 2]}]), {}),
    "null_in_data": ("dummy", _doc(inputs=[{**_B_JSON, "data": [None] * 10}]), {}),
    "numbers_for_bytes": ("string", _doc(inputs=[{"name": "text", "datatype": "BYTES", "shape": [2], "data": [1, 2]}]),
                          {}),
    "fraction_for_int8": ("add_int8", _doc(inputs=[{"name": "x", "datatype": "INT8", "shape": [1, 8],
                                                    "data": [1.5] * 8}]), {}),
    "duplicate_input": ("dummy", _doc(inputs=[_B_JSON, _B_JSON]), {}),
    "output_without_name": ("dummy", _doc(inputs=[_B_JSON], outputs=[{"nam": "a"}]), {}),
    "outputs_not_a_list": ("dummy", _doc(inputs=[_B_JSON], outputs="a"), {}),
    "parameters_not_an_object": ("dummy", _doc(inputs=[_B_JSON], parameters=[1]), {}),
    "tensor_parameters_not_an_object": ("dummy", _doc(inputs=[{**_B_JSON, "parameters": "binary"}]), {}),
    "header_length_beyond_body": ("dummy", _GOOD_HEADER + bytes(40), {_HLEN: "100000"}),
    "header_length_not_a_number": ("dummy", _GOOD_HEADER + bytes(40), {_HLEN: "abc"}),
    "header_length_cuts_json": ("dummy", _GOOD_HEADER + bytes(40), {_HLEN: "10"}),
    "binary_data_beyond_body": ("dummy", _GOOD_HEADER + bytes(20), {_HLEN: str(len(_GOOD_HEADER))}),
    "binary_without_header_length": ("dummy", _GOOD_HEADER + bytes(40), {}),
}


@pytest.mark.parametrize("name", REST_MALFORMED)
def test_rest_malformed_requests(refserver, name):
    model, body, headers = REST_MALFORMED[name]
    resp = requests.post(rest_infer_url(refserver.rest_url, model), data=body,
                         headers={"Content-Type": "application/octet-stream", **headers}, timeout=TIMEOUT)
    assert_rest_error(resp, 400)


def test_rest_binary_request_by_hand(refserver):
    """The same binary body with a correct Inference-Header-Content-Length succeeds (control for the cases above)."""
    b = np.arange(10, dtype="<f4")
    resp = requests.post(rest_infer_url(refserver.rest_url, "dummy"), data=_GOOD_HEADER + b.tobytes(),
                         headers={"Inference-Header-Content-Length": str(len(_GOOD_HEADER))}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    out = resp.json()["outputs"]   # no binary output was asked for: JSON data
    assert out == [{"name": "a", "datatype": "FP32", "shape": [1, 10], "data": (b + 1).tolist()}]


@pytest.mark.parametrize("path, status, text", [
    ("/v2/models/no_such_model", 404, "Model with requested name is not found"),
    ("/v2/models/no_such_model/ready", 404, "Model with requested name is not found"),
    ("/v2/models/dummy/versions/9", 404, "Model with requested version is not found"),
    ("/v2/models/dummy/versions/9/ready", 404, "Model with requested version is not found"),
])
def test_rest_metadata_errors(refserver, path, status, text):
    assert_rest_error(requests.get(refserver.rest_url + path, timeout=TIMEOUT), status, text)


Tensor = tuple[str, str, list[int]] | tuple[str, str, list[int], dict[str, list]]


def kfs_request(model: str, *tensors: Tensor, raw: tuple[bytes, ...] = (),
                params: dict[str, tuple[str, object]] | None = None) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest by hand: tensors as (name, datatype, shape[, {contents field: values}]), raw input
    contents, and parameters as {name: (InferParameter field, value)}."""
    req = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=list(raw))
    for name, datatype, shape, *contents in tensors:
        tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
        for contents_field, values in (contents[0] if contents else {}).items():
            getattr(tensor.contents, contents_field).extend(values)
    for name, (param_field, value) in (params or {}).items():
        setattr(req.parameters[name], param_field, value)
    return req


def param_value(param: service_pb2.InferParameter) -> object:
    return getattr(param, param.WhichOneof("parameter_choice"))


_B10 = ("b", "FP32", [1, 10])
GRPC_MALFORMED = {
    "raw_count_mismatch": kfs_request("two_inputs", ("x", "FP32", [1, 4]), ("y", "FP32", [1, 4]), raw=(bytes(16),)),
    "raw_size_mismatch": kfs_request("dummy", _B10, raw=(bytes(39),)),
    "contents_count_mismatch": kfs_request("dummy", (*_B10, {"fp32_contents": [1.0] * 9})),
    "contents_in_wrong_field": kfs_request("dummy", (*_B10, {"int_contents": [1] * 10})),
    "fp16_has_no_contents_field": kfs_request("add_fp16", ("x", "FP16", [1, 8], {"fp32_contents": [1.0] * 8})),
    "unknown_datatype": kfs_request("dummy", ("b", "FP99", [1, 10]), raw=(bytes(40),)),
    "int8_contents_out_of_range": kfs_request("add_int8", ("x", "INT8", [1, 8], {"int_contents": [200] * 8})),
    "bytes_raw_truncated": kfs_request("string", ("text", "BYTES", [1]), raw=(b"\x05\x00\x00\x00ab",)),
    "uint8_contents_out_of_range": kfs_request("add_uint8", ("x", "UINT8", [1, 8], {"uint_contents": [300] * 8})),
    "raw_and_contents": kfs_request("dummy", (*_B10, {"fp32_contents": [1.0] * 10}), raw=(bytes(40),)),
    "duplicate_input": kfs_request("dummy", (*_B10, {"fp32_contents": [1.0] * 10}),
                                   (*_B10, {"fp32_contents": [2.0] * 10})),
    "sequence_id_negative": kfs_request("stateful", ("x", "FP32", [1, 4], {"fp32_contents": [1.0] * 4}),
                                        params={"sequence_id": ("int64_param", -7_700_001),
                                                "sequence_start": ("bool_param", True)}),
    "sequence_id_above_uint64": kfs_request("stateful", ("x", "FP32", [1, 4], {"fp32_contents": [1.0] * 4}),
                                            params={"sequence_id": ("string_param", str(2**64 + 7_700_002)),
                                                    "sequence_start": ("bool_param", True)}),
    "sequence_start_not_bool": kfs_request("stateful", ("x", "FP32", [1, 4], {"fp32_contents": [1.0] * 4}),
                                           params={"sequence_id": ("int64_param", 7_600_000),
                                                   "sequence_start": ("string_param", "yes")}),
}


@pytest.mark.parametrize("name", GRPC_MALFORMED)
def test_grpc_malformed_requests(stub, name):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(GRPC_MALFORMED[name], timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


# ------------------------------------------------------------------------- typed contents (gRPC)

@pytest.mark.parametrize("precision", TYPED_PRECISIONS)
def test_grpc_typed_contents(stub, precision):
    dtype, contents_field = PRECISIONS[precision]
    x = precision_input(precision)
    req = kfs_request(f"add_{precision.lower()}", ("x", precision, [2, 8], {contents_field: x.reshape(-1).tolist()}))
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert (resp.model_name, resp.model_version) == (f"add_{precision.lower()}", "1")
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", precision, [2, 8])
    assert not out.HasField("contents") and len(resp.raw_output_contents) == 1   # replies travel raw
    y = np.frombuffer(resp.raw_output_contents[0], dtype=np.dtype(dtype).newbyteorder("<")).reshape(2, 8)
    np.testing.assert_array_equal(y, x + x.dtype.type(1))


def test_grpc_typed_contents_two_inputs_and_bytes(stub):
    x, y = _f32(2, 4), _f32(2, 4)
    req = kfs_request("two_inputs", ("x", "FP32", [2, 4], {"fp32_contents": x.reshape(-1).tolist()}),
                      ("y", "FP32", [2, 4], {"fp32_contents": y.reshape(-1).tolist()}))
    req.outputs.add(name="sum")
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert [o.name for o in resp.outputs] == ["sum"]
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 4), x + y)

    words = [b"abc", b"", b"Mixed Case 9"]
    req = kfs_request("string", ("text", "BYTES", [3], {"bytes_contents": words}))
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    outs = {o.name: (o, raw) for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)}
    assert outs["length"][0].datatype == "INT64" and list(outs["length"][0].shape) == [3]
    assert np.frombuffer(outs["length"][1], "<i8").tolist() == [3, 0, 12]
    raw, upper = outs["upper"][1], []
    while raw:   # KServe raw BYTES: a 4-byte little-endian length before each element
        (n,) = struct.unpack_from("<I", raw)
        upper.append(raw[4:4 + n])
        raw = raw[4 + n:]
    assert upper == [w.upper() for w in words]


# ------------------------------------------------------------------------------------- sequences

_seq_ids = iter(range(7_000_001, 8_000_000))


def seq(kfs: Kfs, seq_id: int, values: list[float], start: bool = False, end: bool = False) -> Reply:
    return infer(kfs, "stateful", {"x": np.array([values], dtype=np.float32)}, sequence_id=seq_id,
                 sequence_start=start, sequence_end=end)


def test_sequence_running_totals(kfs):
    seq_id = next(_seq_ids)
    steps = [[1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], [-1, 0, 1, 2], [10, 20, 30, 40]]
    total = np.zeros((1, 4))
    for i, values in enumerate(steps):
        reply = seq(kfs, seq_id, values, start=i == 0, end=i == len(steps) - 1)
        total = total + values
        np.testing.assert_array_equal(reply.outputs["total"], total.astype(np.float32))
        assert reply.parameters.get("sequence_id") == seq_id
    with pytest.raises(InferenceServerException) as info:   # a request after the end
        seq(kfs, seq_id, [1, 1, 1, 1])
    assert_status(kfs, info.value, "NOT_FOUND", str(seq_id))


def test_sequences_are_independent(kfs):
    a, b = next(_seq_ids), next(_seq_ids)
    seq(kfs, a, [1, 1, 1, 1], start=True)
    seq(kfs, b, [100, 100, 100, 100], start=True)
    np.testing.assert_array_equal(seq(kfs, a, [1, 2, 3, 4], end=True).outputs["total"], [[2, 3, 4, 5]])
    np.testing.assert_array_equal(seq(kfs, b, [1, 2, 3, 4], end=True).outputs["total"], [[101, 102, 103, 104]])


def test_sequence_start_and_end_in_one_request(kfs):
    seq_id = next(_seq_ids)
    np.testing.assert_array_equal(seq(kfs, seq_id, [4, 3, 2, 1], start=True, end=True).outputs["total"],
                                  [[4, 3, 2, 1]])
    with pytest.raises(InferenceServerException) as info:
        seq(kfs, seq_id, [1, 1, 1, 1], end=True)
    assert_status(kfs, info.value, "NOT_FOUND", "Sequence with provided ID does not exist")


def test_sequence_errors(kfs):
    unknown = next(_seq_ids)
    with pytest.raises(InferenceServerException) as info:
        seq(kfs, unknown, [1, 1, 1, 1])
    assert_status(kfs, info.value, "NOT_FOUND", "Sequence with provided ID does not exist")

    seq_id = next(_seq_ids)
    seq(kfs, seq_id, [1, 2, 3, 4], start=True)
    with pytest.raises(InferenceServerException) as info:
        seq(kfs, seq_id, [9, 9, 9, 9], start=True)
    assert_status(kfs, info.value, "ALREADY_EXISTS", "Sequence with provided ID already exists")
    # the refused second start left the running sequence untouched
    np.testing.assert_array_equal(seq(kfs, seq_id, [1, 1, 1, 1], end=True).outputs["total"], [[2, 3, 4, 5]])

    with pytest.raises(InferenceServerException) as info:
        infer(kfs, "stateful", {"x": np.ones((1, 4), dtype=np.float32)})
    assert_status(kfs, info.value, "INVALID_ARGUMENT", "Sequence ID has not been provided")


def test_sequence_request_with_invalid_input_keeps_the_sequence(kfs):
    seq_id = next(_seq_ids)
    seq(kfs, seq_id, [1, 1, 1, 1], start=True)
    with pytest.raises(InferenceServerException) as info:
        infer(kfs, "stateful", {"x": np.ones((1, 5), dtype=np.float32)}, sequence_id=seq_id)
    assert_status(kfs, info.value, "INVALID_ARGUMENT", "Invalid input shape")
    np.testing.assert_array_equal(seq(kfs, seq_id, [1, 1, 1, 1], end=True).outputs["total"], [[2, 2, 2, 2]])


def test_sequence_start_without_id_gets_server_chosen_id(refserver, stub):
    """OVMS's rule: a start request with no (or a zero) sequence id gets an id chosen by the server, in the reply."""
    url = rest_infer_url(refserver.rest_url, "stateful")
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    resp = requests.post(url, json={"inputs": [x], "parameters": {"sequence_start": True}}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    rest_id = resp.json()["parameters"]["sequence_id"]
    assert isinstance(rest_id, int) and rest_id > 0

    req = kfs_request("stateful", ("x", "FP32", [1, 4], {"fp32_contents": [10] * 4}),
                      params={"sequence_start": ("bool_param", True)})
    grpc_id = param_value(stub.ModelInfer(req, timeout=TIMEOUT).parameters["sequence_id"])
    assert isinstance(grpc_id, int) and grpc_id > 0 and grpc_id != rest_id

    resp = requests.post(url, json={"inputs": [x], "parameters": {"sequence_id": rest_id, "sequence_end": True}},
                         timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    req = kfs_request("stateful", ("x", "FP32", [1, 4], {"fp32_contents": [1, 2, 3, 4]}),
                      params={"sequence_id": ("uint64_param", grpc_id), "sequence_end": ("bool_param", True)})
    resp = stub.ModelInfer(req, timeout=TIMEOUT)
    assert np.frombuffer(resp.raw_output_contents[0], "<f4").tolist() == [11, 12, 13, 14]


@pytest.mark.parametrize("parameters, text", [
    ({"sequence_id": -5, "sequence_start": True}, "sequence_id"),
    ({"sequence_id": "abc", "sequence_start": True}, "sequence_id"),
    ({"sequence_id": 2**64 + 5, "sequence_start": True}, "sequence_id"),   # sequence ids are UINT64
    ({"sequence_id": 7_500_000, "sequence_start": "yes"}, "sequence_start"),
], ids=["negative_id", "text_id", "id_above_uint64", "start_not_bool"])
def test_rest_sequence_parameter_errors(refserver, parameters, text):
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    resp = requests.post(rest_infer_url(refserver.rest_url, "stateful"), json={"inputs": [x], "parameters": parameters},
                         timeout=TIMEOUT)
    assert_rest_error(resp, 400, text)


# ------------------------------------------------------------------------ server and model metadata

def test_server_health_and_metadata(api):
    assert api.client.is_server_live() is True
    assert api.client.is_server_ready() is True
    meta = api.client.get_server_metadata(**({"as_json": True} if api.grpc else {}))
    assert meta["name"] == "ovms-refserver"
    assert isinstance(meta["version"], str) and meta["version"]
    assert {"binary_tensor_data", "model_repository", "sequence"} <= set(meta["extensions"])


def test_rest_health_endpoints(refserver):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert requests.get(refserver.rest_url + path, timeout=TIMEOUT).status_code == 200
    assert requests.get(refserver.rest_url + "/v2", timeout=TIMEOUT).json()["name"] == "ovms-refserver"


@pytest.mark.parametrize("model, version", [(m, "") for m in CONFIG] + [("versioned", "1"), ("versioned", "2")])
def test_model_ready(api, model, version):
    assert api.client.is_model_ready(model, version) is True


@pytest.mark.parametrize("model, version", [("no_such_model", ""), ("dummy", "2"), ("versioned", "3")])
def test_model_not_ready(api, model, version):
    if api.grpc:   # KServe gRPC: an error status; REST: a 4xx status, which tritonclient answers as False
        with pytest.raises(InferenceServerException) as info:
            api.client.is_model_ready(model, version)
        assert info.value.status() == "StatusCode.NOT_FOUND"
    else:
        assert api.client.is_model_ready(model, version) is False


def test_repository_index(api):
    if api.grpc:
        index = api.client.get_model_repository_index(as_json=True)["models"]
    else:
        index = api.client.get_model_repository_index()
    listed = sorted((m["name"], m["version"]) for m in index)
    assert listed == sorted((name, str(v)) for name, vs in CONFIG.items() for v in vs)
    assert {m["state"] for m in index} == {"READY"}
    assert [v for n, v in listed if n == "versioned"] == ["1", "2"]


def _metadata(api: Kfs, model: str, version: str = "") -> dict:
    if not api.grpc:
        return api.client.get_model_metadata(model, version)
    resp = api.client.get_model_metadata(model, version)   # the protobuf itself: shapes as int64, not strings
    tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]
    return {"name": resp.name, "versions": list(resp.versions), "platform": resp.platform,
            "inputs": tensors(resp.inputs), "outputs": tensors(resp.outputs)}


def _expected_metadata(model: str, version: int) -> dict:
    entry = CONFIG[model][version]
    tensors = lambda ts: [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in ts]
    return {"name": model, "versions": [str(v) for v in CONFIG[model]], "platform": "OpenVINO",
            "inputs": tensors(entry["inputs"]), "outputs": tensors(entry["outputs"])}


@pytest.mark.parametrize("model", CONFIG)
def test_model_metadata(api, model):
    assert _metadata(api, model) == _expected_metadata(model, max(CONFIG[model]))


@pytest.mark.parametrize("version, width", [("1", 4), ("2", 8), ("", 8)], ids=["v1", "v2", "default"])
def test_versioned_metadata(api, version, width):
    meta = _metadata(api, "versioned", version)
    assert meta == _expected_metadata("versioned", int(version or 2))
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"][0]["shape"] == meta["outputs"][0]["shape"] == [-1, width]


@pytest.mark.parametrize("model, version, text", [
    ("no_such_model", "", "Model with requested name is not found"),
    ("versioned", "3", "Model with requested version is not found"),
])
def test_model_metadata_errors(api, model, version, text):
    with pytest.raises(InferenceServerException) as info:
        api.client.get_model_metadata(model, version)
    assert_status(api, info.value, "NOT_FOUND", text)


# ------------------------------------------------------------------------------------------ TLS

def tls_grpc_client(srv, certs: Path, client_cert: bool = True, **kwargs) -> grpcclient.InferenceServerClient:
    extra = {"private_key": str(certs / "client.key"), "certificate_chain": str(certs / "client.pem")} \
        if client_cert else {}
    return grpcclient.InferenceServerClient(srv.grpc_address, ssl=True, root_certificates=str(certs / "ca.pem"),
                                            **extra, **kwargs)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_tls_mutual_auth_succeeds(tls_refserver, certs_dir, transport):
    if transport == "grpc":
        client = tls_grpc_client(tls_refserver, certs_dir)
    else:
        client = httpclient.InferenceServerClient(
            tls_refserver.rest_address, ssl=True, network_timeout=TIMEOUT,
            ssl_options={"keyfile": str(certs_dir / "client.key"), "certfile": str(certs_dir / "client.pem"),
                         "ca_certs": str(certs_dir / "ca.pem")})
    try:
        kfs = Kfs(transport, client)
        assert client.is_server_live() is True
        assert client.is_model_ready("dummy") is True
        b = np.arange(10, dtype=np.float32).reshape(1, 10)
        np.testing.assert_array_equal(infer(kfs, "dummy", {"b": b}).outputs["a"], b + 1)
    finally:
        client.close()


def assert_refused(client: grpcclient.InferenceServerClient) -> None:
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=TIMEOUT)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


def test_tls_grpc_refuses_client_without_certificate(tls_refserver, certs_dir):
    assert_refused(tls_grpc_client(tls_refserver, certs_dir, client_cert=False))


def test_tls_rest_refuses_client_without_certificate(tls_refserver, certs_dir):
    assert tls_refserver.rest_url.startswith("https://")
    url = tls_refserver.rest_url + "/v2/health/live"
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url, verify=str(certs_dir / "ca.pem"), timeout=TIMEOUT)
    # the same request with the client certificate is served
    resp = requests.get(url, verify=str(certs_dir / "ca.pem"), timeout=TIMEOUT,
                        cert=(str(certs_dir / "client.pem"), str(certs_dir / "client.key")))
    assert resp.status_code == 200


def test_tls_refuses_plaintext_clients(tls_refserver):
    assert_refused(grpcclient.InferenceServerClient(tls_refserver.grpc_address))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{tls_refserver.rest_address}/v2/health/live", timeout=TIMEOUT)


# -------------------------------------------------------------------------------------- metrics

def test_metrics_count_infer_calls(refserver, api):
    """N good calls raise ovms_requests_success by N, M refused ones ovms_requests_fail by M, on this interface
    only."""
    interface, other = ("gRPC", "REST") if api.grpc else ("REST", "gRPC")
    labels = {"api": "KServe", "method": "ModelInfer", "name": "add_int32", "version": "1"}

    def scrape() -> list[float]:
        text = requests.get(refserver.rest_url + "/metrics", timeout=TIMEOUT).text
        return [scrape_counter(text, metric, interface=iface, **labels)
                for metric in ("ovms_requests_success", "ovms_requests_fail") for iface in (interface, other)]

    before = scrape()
    for i in range(5):
        infer(api, "add_int32", {"x": np.full((1, 8), i, dtype=np.int32)})
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            infer(api, "add_int32", {"x": np.zeros((1, 4), dtype=np.int32)})   # wrong shape
    after = scrape()
    # (success here, success on the other interface, fail here, fail on the other interface)
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 0, 3, 0]
