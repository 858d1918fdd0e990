"""Conformance of the reference server's TensorFlow Serving API (gRPC and REST, OVMS flavour).

Checked with clients nobody here wrote: ``ovmsclient`` (OVMS's own Python client, gRPC and HTTP),
plain ``requests``, and raw gRPC stubs over the TFS protos with tensors encoded by hand in this
file (not with ``ovms_wire``'s encoders, so a bug shared by our encoder and the server's decoder
cannot hide). Replies are decoded with ``ovmsclient``'s ``make_ndarray``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import ovmsclient
import pytest
import requests
from ovmsclient.tfs_compat.grpc.tensors import make_ndarray
from PIL import Image

from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.protos.tfs import serving_apis_pb2_grpc as tfs_grpc
from ovms_wire.protos.tfs import tensor_pb2, types_pb2
from refserver.config import default_config
from tests.conftest import scrape_counter

TIMEOUT = 10.0

# precision -> (numpy dtype, TF DataType name, TensorProto typed field), written out from tensor.proto
PRECISIONS: dict[str, tuple[type, str, str]] = {
    "FP16": (np.float16, "DT_HALF", "half_val"),
    "FP32": (np.float32, "DT_FLOAT", "float_val"),
    "FP64": (np.float64, "DT_DOUBLE", "double_val"),
    "INT8": (np.int8, "DT_INT8", "int_val"),
    "INT16": (np.int16, "DT_INT16", "int_val"),
    "INT32": (np.int32, "DT_INT32", "int_val"),
    "INT64": (np.int64, "DT_INT64", "int64_val"),
    "UINT8": (np.uint8, "DT_UINT8", "int_val"),
    "UINT16": (np.uint16, "DT_UINT16", "int_val"),
    "UINT32": (np.uint32, "DT_UINT32", "uint32_val"),
    "UINT64": (np.uint64, "DT_UINT64", "uint64_val"),
}
INTEGER_PRECISIONS = [p for p, (dt, _, _) in PRECISIONS.items() if np.dtype(dt).kind in "iu"]

# gRPC status -> HTTP status, as OVMS's REST frontend answers them
HTTP_OF = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 412}

NOT_FOUND_MODEL = "Model with requested name is not found"
NOT_FOUND_VERSION = "Model with requested version is not found"


# ------------------------------------------------------------------------------ tensors by hand

def dt_enum(name: str) -> int:
    return types_pb2.DataType.Value(name)


def set_shape(tp: tensor_pb2.TensorProto, shape) -> None:
    for d in shape:
        tp.tensor_shape.dim.add(size=int(d))


def tensor(arr: np.ndarray, tf_dtype: str | None = None) -> tensor_pb2.TensorProto:
    """A numeric tensor in ``tensor_content`` (little-endian bytes), like TF's make_tensor_proto."""
    arr = np.ascontiguousarray(arr)
    if tf_dtype is None:
        tf_dtype = next(tf for dt, tf, _ in PRECISIONS.values() if np.dtype(dt) == arr.dtype)
    tp = tensor_pb2.TensorProto(dtype=dt_enum(tf_dtype), tensor_content=arr.astype(arr.dtype.newbyteorder("<"))
                                .tobytes())
    set_shape(tp, arr.shape)
    return tp


def typed_tensor(arr: np.ndarray, precision: str) -> tensor_pb2.TensorProto:
    """The same tensor in its typed ``*_val`` field (FP16 as the uint16 bit patterns in half_val)."""
    dt, tf_name, field = PRECISIONS[precision]
    arr = np.asarray(arr, dtype=dt)
    values = arr.view(np.uint16) if precision == "FP16" else arr
    tp = tensor_pb2.TensorProto(dtype=dt_enum(tf_name))
    getattr(tp, field).extend(values.reshape(-1).tolist())
    set_shape(tp, arr.shape)
    return tp


def string_tensor(values: list[bytes], shape: list[int] | None = None) -> tensor_pb2.TensorProto:
    tp = tensor_pb2.TensorProto(dtype=dt_enum("DT_STRING"), string_val=values)
    set_shape(tp, shape or [len(values)])
    return tp


def scalar_tensor(value: int, tf_dtype: str, field: str) -> tensor_pb2.TensorProto:
    """A [1]-shaped tensor with one value in a typed field: how OVMS's sequence inputs travel."""
    tp = tensor_pb2.TensorProto(dtype=dt_enum(tf_dtype))
    getattr(tp, field).append(value)
    tp.tensor_shape.dim.add(size=1)
    return tp


def predict_request(model: str, inputs: dict[str, tensor_pb2.TensorProto],
                    version: int | None = None) -> tfs.PredictRequest:
    req = tfs.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    for name, tp in inputs.items():
        req.inputs[name].CopyFrom(tp)
    return req


def decode(resp: tfs.PredictResponse) -> dict[str, np.ndarray]:
    return {name: make_ndarray(tp) for name, tp in resp.outputs.items()}


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def sample(precision: str, json_safe: bool = False) -> np.ndarray:
    """[2, 8] values; integers include both extremes with the maximum last, so x + 1 wraps around there.

    ``json_safe`` keeps 64-bit integers within +-2**62, which a JSON client that parses numbers into
    numpy (ovmsclient's HTTP client) reads back exactly.
    """
    dt = np.dtype(PRECISIONS[precision][0])
    if dt.kind == "f":
        return (np.arange(16).reshape(2, 8) * 0.75 - 5).astype(dt)
    info = np.iinfo(dt)
    lo, hi = int(info.min), int(info.max)
    if json_safe:
        lo, hi = max(lo, -2 ** 62), min(hi, 2 ** 62)
    row0 = [lo, lo + 1, 0, 1, 2, 3, hi - 1, hi]
    return np.array([row0, [i * 3 for i in range(8)]], dtype=dt)


def plus_one(x: np.ndarray) -> np.ndarray:
    return x + x.dtype.type(1)   # numpy array arithmetic wraps around like C


# -------------------------------------------------------------------------------------- images

def image_bytes(fmt: str, width: int = 48, height: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float64)[None, :, None]
    arr = (ramp + rng.integers(0, 56, (height, width, 3))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def pillow_mean(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


PNG = image_bytes("PNG", seed=1)
JPEG = image_bytes("JPEG", seed=2)
BIG_PNG = image_bytes("PNG", width=64, height=64, seed=3)
IMAGES = {"png": PNG, "jpeg": JPEG, "big_png": BIG_PNG}


def b64(blob: bytes) -> dict:
    return {"b64": base64.b64encode(blob).decode()}


# -------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tfs_api(refserver) -> Iterator[SimpleNamespace]:
    """Raw TFS gRPC stubs and a requests session on the shared reference server."""
    channel = grpc.insecure_channel(refserver.grpc_address)
    session = requests.Session()
    try:
        yield SimpleNamespace(pred=tfs_grpc.PredictionServiceStub(channel), models=tfs_grpc.ModelServiceStub(channel),
                              http=session, url=refserver.rest_url)
    finally:
        session.close()
        channel.close()


@pytest.fixture(scope="module", params=["grpc", "http"])
def ovms(request, refserver) -> Iterator[object]:
    """ovmsclient's gRPC and HTTP clients."""
    if request.param == "grpc":
        client = ovmsclient.make_grpc_client(refserver.grpc_address)
        yield client
        client.channel.close()
    else:
        client = ovmsclient.make_http_client(refserver.rest_address)
        yield client
        client.session.close()


def rest_post(api: SimpleNamespace, path: str, body: object) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return api.http.post(f"{api.url}/v1/models/{path}", data=data, timeout=TIMEOUT)


def rest_ok(resp: requests.Response) -> dict:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def rest_error(resp: requests.Response, status: int, fragment: str = "") -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert fragment in body["error"]
    return body["error"]


ONES = np.ones((1, 10), np.float32)


# ================================================================== 1. ovmsclient, gRPC and HTTP

@pytest.mark.parametrize("version, expected", [(0, [1, 2]), (1, [1]), (2, [2])])
def test_ovmsclient_model_status(ovms, version, expected):
    status = ovms.get_model_status("versioned", model_version=version)
    assert sorted(status) == expected
    for v in expected:
        assert status[v] == {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}


METADATA = [
    ("dummy", 0, 1, {"b": ("DT_FLOAT", [1, 10])}, {"a": ("DT_FLOAT", [1, 10])}),
    ("resnet", 0, 1, {"0": ("DT_FLOAT", [1, 3, 224, 224])}, {"1463": ("DT_FLOAT", [1, 1000])}),
    ("dynamic", 0, 1, {"x": ("DT_FLOAT", [-1, -1])}, {"y": ("DT_FLOAT", [-1, -1])}),
    ("two_inputs", 0, 1, {"x": ("DT_FLOAT", [-1, 4]), "y": ("DT_FLOAT", [-1, 4])},
     {"sum": ("DT_FLOAT", [-1, 4]), "diff": ("DT_FLOAT", [-1, 4])}),
    ("versioned", 0, 2, {"x": ("DT_FLOAT", [-1, 8])}, {"y": ("DT_FLOAT", [-1, 8])}),
    ("versioned", 1, 1, {"x": ("DT_FLOAT", [-1, 4])}, {"y": ("DT_FLOAT", [-1, 4])}),
    ("image", 0, 1, {"image": ("DT_UINT8", [-1, 32, 48, 3])}, {"mean": ("DT_FLOAT", [-1, 3])}),
    ("string", 0, 1, {"text": ("DT_STRING", [-1])}, {"length": ("DT_INT64", [-1]), "upper": ("DT_STRING", [-1])}),
    ("stateful", 0, 1, {"x": ("DT_FLOAT", [1, 4])}, {"total": ("DT_FLOAT", [1, 4])}),
] + [(f"add_{p.lower()}", 0, 1, {"x": (tf, [-1, 8])}, {"y": (tf, [-1, 8])}) for p, (_, tf, _) in PRECISIONS.items()]


@pytest.mark.parametrize("model, version, served, inputs, outputs", METADATA,
                         ids=[f"{m[0]}-v{m[1]}" for m in METADATA])
def test_ovmsclient_model_metadata(ovms, model, version, served, inputs, outputs):
    meta = ovms.get_model_metadata(model, model_version=version)
    assert meta["model_version"] == served
    assert meta["inputs"] == {k: {"dtype": d, "shape": s} for k, (d, s) in inputs.items()}
    assert meta["outputs"] == {k: {"dtype": d, "shape": s} for k, (d, s) in outputs.items()}


def test_ovmsclient_predict_dummy_and_two_inputs(ovms):
    x = np.arange(10, dtype=np.float32).reshape(1, 10) / 4
    np.testing.assert_array_equal(ovms.predict({"b": x}, "dummy"), x + 1)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, np.float32)
    out = ovms.predict({"x": a, "y": b}, "two_inputs")
    assert isinstance(out, dict) and sorted(out) == ["diff", "sum"]
    np.testing.assert_allclose(out["sum"], a + b)
    np.testing.assert_allclose(out["diff"], a - b)


@pytest.mark.parametrize("version, width, addend", [(1, 4, 1), (2, 8, 2), (0, 8, 2)], ids=["v1", "v2", "default"])
def test_ovmsclient_predict_versioned(ovms, version, width, addend):
    x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
    np.testing.assert_array_equal(ovms.predict({"x": x}, "versioned", model_version=version), x + addend)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ovmsclient_predict_every_precision(ovms, precision):
    # ovmsclient sends numpy arrays of all 11 precisions (tensor_content on gRPC, JSON lists on HTTP)
    x = sample(precision, json_safe=isinstance(ovms, ovmsclient.tfs_compat.http.serving_client.HttpClient))
    out = np.asarray(ovms.predict({"x": x}, f"add_{precision.lower()}"))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.astype(x.dtype), plus_one(x))


def test_ovmsclient_predict_image_bytes(ovms):
    # a bytes value goes out as DT_STRING string_val on gRPC and as [{"b64": ...}] on HTTP
    out = np.asarray(ovms.predict({"image": PNG}, "image"))
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out[0], pillow_mean(PNG), rtol=1e-5)


def test_ovmsclient_predict_strings(ovms):
    out = ovms.predict({"text": np.array(["abc", "Hello, World"])}, "string")
    assert sorted(out) == ["length", "upper"]
    assert np.asarray(out["length"]).tolist() == [3, 12]
    upper = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(out["upper"]).tolist()]
    assert upper == ["ABC", "HELLO, WORLD"]


OVMS_ERRORS = {
    "predict-unknown-model": (lambda c: c.predict({"b": ONES}, "no_such_model"), "ModelNotFoundError"),
    "predict-unknown-version": (lambda c: c.predict({"b": ONES}, "dummy", model_version=9), "ModelNotFoundError"),
    "predict-wrong-shape": (lambda c: c.predict({"b": np.ones((1, 5), np.float32)}, "dummy"), "InvalidInputError"),
    "predict-wrong-batch": (lambda c: c.predict({"b": np.ones((3, 10), np.float32)}, "dummy"), "InvalidInputError"),
    "predict-strings-to-fp32": (lambda c: c.predict({"b": np.full((1, 10), "a")}, "dummy"), "InvalidInputError"),
    "predict-missing-input": (lambda c: c.predict({"x": np.ones((1, 4), np.float32)}, "two_inputs"),
                              "InvalidInputError"),
    "predict-not-an-image": (lambda c: c.predict({"image": b"not an image"}, "image"), "InvalidInputError"),
    "metadata-unknown-model": (lambda c: c.get_model_metadata("no_such_model"), "ModelNotFoundError"),
    "metadata-unknown-version": (lambda c: c.get_model_metadata("versioned", model_version=3), "ModelNotFoundError"),
    "status-unknown-model": (lambda c: c.get_model_status("no_such_model"), "ModelNotFoundError"),
    "status-unknown-version": (lambda c: c.get_model_status("versioned", model_version=3), "ModelNotFoundError"),
}


@pytest.mark.parametrize("case", OVMS_ERRORS)
def test_ovmsclient_raises_its_exception_classes(ovms, case):
    call, exc_name = OVMS_ERRORS[case]
    with pytest.raises(getattr(ovmsclient, exc_name)) as info:
        call(ovms)
    if exc_name == "ModelNotFoundError":
        assert "not found" in str(info.value)


# ================================================== 1b. all 11 precisions over raw TFS gRPC and REST

@pytest.mark.parametrize("encoding", ["tensor_content", "typed"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_grpc_every_precision(tfs_api, precision, encoding):
    x = sample(precision)
    tp = tensor(x) if encoding == "tensor_content" else typed_tensor(x, precision)
    resp = tfs_api.pred.Predict(predict_request(f"add_{precision.lower()}", {"x": tp}), timeout=TIMEOUT)
    assert resp.model_spec.name == f"add_{precision.lower()}" and resp.model_spec.version.value == 1
    y = resp.outputs["y"]
    assert y.dtype == dt_enum(PRECISIONS[precision][1])
    assert [d.size for d in y.tensor_shape.dim] == [2, 8]
    out = make_ndarray(y)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, plus_one(x))


@pytest.mark.parametrize("precision", INTEGER_PRECISIONS)
def test_integer_wraparound(tfs_api, precision):
    dt = np.dtype(PRECISIONS[precision][0])
    info = np.iinfo(dt)
    x = np.full((1, 8), info.max, dtype=dt)
    resp = tfs_api.pred.Predict(predict_request(f"add_{precision.lower()}", {"x": typed_tensor(x, precision)}),
                                timeout=TIMEOUT)
    assert make_ndarray(resp.outputs["y"]).tolist() == [[int(info.min)] * 8]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rest_every_precision(tfs_api, precision):
    x = sample(precision)
    body = rest_ok(rest_post(tfs_api, f"add_{precision.lower()}:predict", {"inputs": {"x": x.tolist()}}))
    np.testing.assert_array_equal(np.array(body["outputs"], dtype=x.dtype), plus_one(x))


# ======================================================================== 1c. raw gRPC metadata/status

def test_grpc_metadata_signature_def_map(tfs_api):
    req = tfs.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "two_inputs"
    resp = tfs_api.pred.GetModelMetadata(req, timeout=TIMEOUT)
    assert resp.model_spec.name == "two_inputs" and resp.model_spec.version.value == 1
    packed = resp.metadata["signature_def"]
    assert packed.type_url.endswith("tensorflow.serving.SignatureDefMap")
    sdm = tfs.SignatureDefMap()
    assert packed.Unpack(sdm)
    sig = sdm.signature_def["serving_default"]
    assert sorted(sig.inputs) == ["x", "y"] and sorted(sig.outputs) == ["diff", "sum"]
    assert sig.inputs["x"].dtype == dt_enum("DT_FLOAT")
    assert [d.size for d in sig.inputs["x"].tensor_shape.dim] == [-1, 4]


def test_grpc_model_status_without_version_lists_all(tfs_api):
    resp = tfs_api.models.GetModelStatus(tfs.GetModelStatusRequest(model_spec=tfs.ModelSpec(name="versioned")),
                                         timeout=TIMEOUT)
    assert sorted(s.version for s in resp.model_version_status) == [1, 2]
    for s in resp.model_version_status:
        assert s.state == tfs.ModelVersionStatus.AVAILABLE and s.status.error_code == 0


# ============================================================================ 2. binary images, gRPC

@pytest.mark.parametrize("model, names", [("image", ["png"]), ("image", ["jpeg"]), ("image", ["png", "jpeg"]),
                                          ("image_any", ["big_png"])])
def test_grpc_binary_images(tfs_api, model, names):
    blobs = [IMAGES[n] for n in names]
    resp = tfs_api.pred.Predict(predict_request(model, {"image": string_tensor(blobs)}), timeout=TIMEOUT)
    mean = resp.outputs["mean"]
    assert mean.dtype == dt_enum("DT_FLOAT")
    out = make_ndarray(mean)
    assert out.shape == (len(blobs), 3)
    np.testing.assert_allclose(out, np.stack([pillow_mean(b) for b in blobs]), rtol=1e-5)


def test_grpc_image_model_takes_numeric_uint8_too(tfs_api):
    x = np.random.default_rng(5).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    resp = tfs_api.pred.Predict(predict_request("image", {"image": tensor(x)}), timeout=TIMEOUT)
    np.testing.assert_allclose(make_ndarray(resp.outputs["mean"]), x.mean(axis=(1, 2)), rtol=1e-5)


def test_grpc_resnet_classifier(tfs_api):
    x = np.random.default_rng(6).random((1, 3, 224, 224), dtype=np.float32)
    resp = tfs_api.pred.Predict(predict_request("resnet", {"0": tensor(x)}), timeout=TIMEOUT)
    probs = make_ndarray(resp.outputs["1463"])
    assert probs.shape == (1, 1000) and probs.dtype == np.float32
    assert (probs >= 0).all() and abs(float(probs.sum()) - 1) < 1e-3


@pytest.mark.parametrize("blobs", [[b"definitely not an image"], [BIG_PNG], [PNG, BIG_PNG], [PNG[:40]]],
                         ids=["not-an-image", "wrong-size", "one-wrong-size", "truncated"])
def test_grpc_binary_images_rejected(tfs_api, blobs):
    err = rpc_error(lambda: tfs_api.pred.Predict(predict_request("image", {"image": string_tensor(blobs)}),
                                                 timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()


# =================================================================================== 3. strings

def test_grpc_string_model(tfs_api):
    texts = [b"abc", b"Hello, World", b"", b"\xff\x00binary"]
    resp = tfs_api.pred.Predict(predict_request("string", {"text": string_tensor(texts)}), timeout=TIMEOUT)
    assert resp.outputs["length"].dtype == dt_enum("DT_INT64")
    assert resp.outputs["upper"].dtype == dt_enum("DT_STRING")
    assert make_ndarray(resp.outputs["length"]).tolist() == [len(t) for t in texts]
    assert list(resp.outputs["upper"].string_val) == [t.upper() for t in texts]


def test_rest_string_model(tfs_api):
    rows = rest_ok(rest_post(tfs_api, "string:predict", {"instances": ["abc", "Hello"]}))
    assert rows == {"predictions": [{"length": 3, "upper": "ABC"}, {"length": 5, "upper": "HELLO"}]}
    cols = rest_ok(rest_post(tfs_api, "string:predict", {"inputs": {"text": ["xy", b64(b"q z")]}}))
    assert cols == {"outputs": {"length": [2, 3], "upper": ["XY", "Q Z"]}}


# ==================================================================================== 4. TFS REST

REST_PREDICT = [
    ("row-single-output", "dummy:predict", {"instances": [[float(i) for i in range(10)]]},
     {"predictions": [[float(i + 1) for i in range(10)]]}),
    ("columnar-single-output", "dummy:predict", {"inputs": [[0.5] * 10]}, {"outputs": [[1.5] * 10]}),
    ("columnar-named-single", "dummy:predict", {"inputs": {"b": [[0.5] * 10]}}, {"outputs": [[1.5] * 10]}),
    ("row-named-multi-output", "two_inputs:predict",
     {"instances": [{"x": [1, 2, 3, 4], "y": [1, 1, 1, 1]}, {"x": [0, 0, 0, 0], "y": [2, 2, 2, 2]}]},
     {"predictions": [{"sum": [2, 3, 4, 5], "diff": [0, 1, 2, 3]}, {"sum": [2, 2, 2, 2], "diff": [-2, -2, -2, -2]}]}),
    ("columnar-multi-output", "two_inputs:predict", {"inputs": {"x": [[1, 2, 3, 4]], "y": [[4, 3, 2, 1]]}},
     {"outputs": {"sum": [[5, 5, 5, 5]], "diff": [[-3, -1, 1, 3]]}}),
    ("signature-name", "dummy:predict", {"signature_name": "serving_default", "instances": [[1.0] * 10]},
     {"predictions": [[2.0] * 10]}),
    ("dynamic-shape", "dynamic:predict", {"inputs": {"x": [[1, 2, 3], [4, 5, 6]]}},
     {"outputs": [[2, 3, 4], [5, 6, 7]]}),
    ("version-1", "versioned/versions/1:predict", {"instances": [[1, 2, 3, 4]]}, {"predictions": [[2, 3, 4, 5]]}),
    ("version-2", "versioned/versions/2:predict", {"instances": [[0] * 8]}, {"predictions": [[2] * 8]}),
    ("version-default", "versioned:predict", {"inputs": [[0] * 8]}, {"outputs": [[2] * 8]}),
]


@pytest.mark.parametrize("path, body, expected", [c[1:] for c in REST_PREDICT], ids=[c[0] for c in REST_PREDICT])
def test_rest_predict_formats(tfs_api, path, body, expected):
    assert rest_ok(rest_post(tfs_api, path, body)) == expected


@pytest.mark.parametrize("body_of", [
    lambda blobs: {"instances": [b64(b) for b in blobs]},
    lambda blobs: {"instances": [{"image": b64(b)} for b in blobs]},
    lambda blobs: {"inputs": {"image": [b64(b) for b in blobs]}},
    lambda blobs: {"inputs": [b64(b) for b in blobs]},
], ids=["row", "row-named", "columnar-named", "columnar"])
def test_rest_b64_images(tfs_api, body_of):
    blobs = [PNG, JPEG]
    body = rest_ok(rest_post(tfs_api, "image:predict", body_of(blobs)))
    result = body.get("predictions", body.get("outputs"))
    np.testing.assert_allclose(np.array(result), np.stack([pillow_mean(b) for b in blobs]), rtol=1e-5)


@pytest.mark.parametrize("blob", [b"not an image", BIG_PNG], ids=["not-an-image", "wrong-size"])
def test_rest_b64_images_rejected(tfs_api, blob):
    rest_error(rest_post(tfs_api, "image:predict", {"instances": [b64(blob)]}), 400)


@pytest.mark.parametrize("path, model, version, inp, out", [
    ("dummy/metadata", "dummy", "1", ("b", "DT_FLOAT", ["1", "10"]), ("a", "DT_FLOAT", ["1", "10"])),
    ("versioned/metadata", "versioned", "2", ("x", "DT_FLOAT", ["-1", "8"]), ("y", "DT_FLOAT", ["-1", "8"])),
    ("versioned/versions/1/metadata", "versioned", "1", ("x", "DT_FLOAT", ["-1", "4"]), ("y", "DT_FLOAT", ["-1", "4"])),
    ("image/metadata", "image", "1", ("image", "DT_UINT8", ["-1", "32", "48", "3"]), ("mean", "DT_FLOAT", ["-1", "3"])),
])
def test_rest_metadata_json(tfs_api, path, model, version, inp, out):
    doc = rest_ok(tfs_api.http.get(f"{tfs_api.url}/v1/models/{path}", timeout=TIMEOUT))
    assert doc["modelSpec"]["name"] == model and doc["modelSpec"]["version"] == version
    sdm = doc["metadata"]["signature_def"]
    assert sdm["@type"].endswith("tensorflow.serving.SignatureDefMap")
    sig = sdm["signatureDef"]["serving_default"]
    for side, (name, dtype, dims) in (("inputs", inp), ("outputs", out)):
        assert list(sig[side]) == [name]
        info = sig[side][name]
        assert info["dtype"] == dtype and info["name"] == name
        assert [d["size"] for d in info["tensorShape"]["dim"]] == dims


@pytest.mark.parametrize("path, versions", [("versioned", ["1", "2"]), ("versioned/versions/1", ["1"]),
                                            ("dummy", ["1"])])
def test_rest_status_json(tfs_api, path, versions):
    doc = rest_ok(tfs_api.http.get(f"{tfs_api.url}/v1/models/{path}", timeout=TIMEOUT))
    assert list(doc) == ["model_version_status"]
    assert sorted(doc["model_version_status"], key=lambda s: s["version"]) == [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}} for v in versions]


def test_rest_config_lists_every_model(tfs_api):
    doc = rest_ok(tfs_api.http.get(f"{tfs_api.url}/v1/config", timeout=TIMEOUT))
    served = {m["name"]: m.get("versions", [1]) for m in default_config()["models"]}
    assert set(doc) == set(served)
    for name, versions in served.items():
        statuses = doc[name]["model_version_status"]
        assert sorted(s["version"] for s in statuses) == sorted(str(v) for v in versions), name
        assert all(s["state"] == "AVAILABLE" and s["status"]["error_code"] == "OK" for s in statuses)
    assert sorted(s["version"] for s in doc["versioned"]["model_version_status"]) == ["1", "2"]


# ========================================================================= 5. stateful sequences

NONE, START, END = 0, 1, 2
_seq_ids = itertools.count(random.randrange(1 << 30, 1 << 38))   # below the server's own ids (from 2**40)


class Rejected(Exception):
    def __init__(self, status: str | int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class GrpcSequences:
    """Requests to model ``stateful`` over TFS gRPC, with OVMS's special inputs in uint64_val/uint32_val."""
    api = "grpc"

    def __init__(self, api: SimpleNamespace):
        self.stub = api.pred

    def request(self, x, seq_id, control, bad=None) -> tfs.PredictRequest:
        inputs = {"x": tensor(np.asarray(x, np.float32))}
        if seq_id is not None:
            inputs["sequence_id"] = (scalar_tensor(seq_id, "DT_INT64", "int64_val") if bad == "id"
                                     else scalar_tensor(seq_id, "DT_UINT64", "uint64_val"))
        if control is not None:
            inputs["sequence_control_input"] = (scalar_tensor(control, "DT_UINT64", "uint64_val") if bad == "control"
                                                else scalar_tensor(control, "DT_UINT32", "uint32_val"))
        return predict_request("stateful", inputs)

    def send(self, x, seq_id=None, control=None, bad=None) -> tuple[np.ndarray, int]:
        try:
            resp = self.stub.Predict(self.request(x, seq_id, control, bad), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            raise Rejected(exc.code().name, exc.details()) from None
        out = decode(resp)
        assert sorted(out) == ["sequence_id", "total"]
        assert out["sequence_id"].shape == (1,)
        return out["total"], int(out["sequence_id"][0])


class RestSequences:
    """The same over TFS REST, columnar format."""
    api = "rest"

    def __init__(self, api: SimpleNamespace):
        self.tfs_api = api

    def send(self, x, seq_id=None, control=None, bad=None) -> tuple[np.ndarray, int]:
        inputs: dict = {"x": np.asarray(x, np.float32).tolist()}
        if seq_id is not None:
            inputs["sequence_id"] = [str(seq_id)] if bad == "id" else [seq_id]
        if control is not None:
            inputs["sequence_control_input"] = [str(control)] if bad == "control" else [control]
        resp = rest_post(self.tfs_api, "stateful:predict", {"inputs": inputs})
        if resp.status_code != 200:
            raise Rejected(resp.status_code, rest_error(resp, resp.status_code))
        out = resp.json()["outputs"]
        assert sorted(out) == ["sequence_id", "total"]
        assert isinstance(out["sequence_id"], list) and len(out["sequence_id"]) == 1
        return np.array(out["total"], np.float32), out["sequence_id"][0]


@pytest.fixture(params=["grpc", "rest"])
def seq(request, tfs_api) -> GrpcSequences | RestSequences:
    return GrpcSequences(tfs_api) if request.param == "grpc" else RestSequences(tfs_api)


def expect_rejected(seq, code: str, call: Callable[[], object]) -> Rejected:
    with pytest.raises(Rejected) as info:
        call()
    assert info.value.status == (code if seq.api == "grpc" else HTTP_OF[code]), info.value
    return info.value


X1, X2, X3 = (np.array([[1, 2, 3, 4]], np.float32) * k for k in (1.0, 0.5, -2.0))


def test_sequence_running_totals(seq):
    sid = next(_seq_ids)
    total, got = seq.send(X1, sid, START)
    assert got == sid
    np.testing.assert_array_equal(total, X1)
    total, got = seq.send(X2, sid, NONE)
    assert got == sid
    np.testing.assert_array_equal(total, X1 + X2)
    total, got = seq.send(X3, sid)                   # no control input at all means "none"
    np.testing.assert_array_equal(total, X1 + X2 + X3)
    total, got = seq.send(X1, sid, END)
    assert got == sid
    np.testing.assert_array_equal(total, X1 + X2 + X3 + X1)
    err = expect_rejected(seq, "NOT_FOUND", lambda: seq.send(X1, sid, NONE))   # the sequence is gone
    assert "Sequence with provided ID does not exist" in err.message


def test_sequences_are_independent(seq):
    a, b = next(_seq_ids), next(_seq_ids)
    seq.send(X1, a, START)
    seq.send(X2, b, START)
    np.testing.assert_array_equal(seq.send(X1, a, END)[0], X1 + X1)
    np.testing.assert_array_equal(seq.send(X3, b, END)[0], X2 + X3)


@pytest.mark.parametrize("start_id", [0, None], ids=["id-0", "no-id"])
def test_sequence_start_gets_server_chosen_id(seq, start_id):
    total, sid = seq.send(X1, start_id, START)
    assert isinstance(sid, int) and sid > 0
    np.testing.assert_array_equal(total, X1)
    total, got = seq.send(X2, sid, END)
    assert got == sid
    np.testing.assert_array_equal(total, X1 + X2)


# name: (controls sent first with a fresh id, then the failing request's kwargs, expected code, message fragment)
SEQUENCE_ERRORS = {
    "unknown-sequence": ([], {"control": NONE}, "NOT_FOUND", "does not exist"),
    "end-unknown-sequence": ([], {"control": END}, "NOT_FOUND", "does not exist"),
    "second-start": ([START], {"control": START}, "ALREADY_EXISTS", "already exists"),
    "after-end": ([START, END], {"control": NONE}, "NOT_FOUND", "does not exist"),
    "no-sequence-id": ([START], {"control": NONE, "seq_id": None}, "INVALID_ARGUMENT", "Sequence ID"),
    "sequence-id-0": ([START], {"control": NONE, "seq_id": 0}, "INVALID_ARGUMENT", "Sequence ID"),
    "end-without-id": ([START], {"control": END, "seq_id": None}, "INVALID_ARGUMENT", "Sequence ID"),
    "no-special-inputs": ([], {"control": None, "seq_id": None}, "INVALID_ARGUMENT", "Sequence ID"),
    "control-7": ([START], {"control": 7}, "INVALID_ARGUMENT", "sequence control input"),
    "id-wrong-dtype": ([START], {"control": NONE, "bad": "id"}, "INVALID_ARGUMENT", ""),
    "control-wrong-dtype": ([START], {"control": NONE, "bad": "control"}, "INVALID_ARGUMENT", ""),
}


@pytest.mark.parametrize("case", SEQUENCE_ERRORS)
def test_sequence_errors(seq, case):
    controls, failing, code, fragment = SEQUENCE_ERRORS[case]
    sid = next(_seq_ids)
    for control in controls:
        seq.send(X1, sid, control)
    kwargs = {"seq_id": sid, **failing}
    try:
        err = expect_rejected(seq, code, lambda: seq.send(X1, **kwargs))
        assert fragment.lower() in err.message.lower()
    finally:
        if controls and controls[-1] != END:
            seq.send(X1, sid, END)   # leave no live sequence behind on the shared server


def test_sequence_id_full_uint64_range(seq):
    sid = (1 << 64) - next(_seq_ids)     # above 2**63: needs uint64 end to end
    total, got = seq.send(X1, sid, START)
    assert got == sid
    total, got = seq.send(X2, sid, END)
    assert got == sid
    np.testing.assert_array_equal(total, X1 + X2)


def _content_tensor(value: int, tf_dtype: str, np_dtype: type) -> tensor_pb2.TensorProto:
    return tensor(np.array([value], np_dtype), tf_dtype)


def _reshaped(tp: tensor_pb2.TensorProto, shape: list[int]) -> tensor_pb2.TensorProto:
    del tp.tensor_shape.dim[:]
    set_shape(tp, shape)
    return tp


# OVMS (StatefulModelInstance::extractSequenceId/extractSequenceControlInput) reads the special inputs only from
# uint64_val / uint32_val and requires the shape [1]; anything else is INVALID_ARGUMENT.
SPECIAL_INPUT_FORMS = {
    "id-in-tensor-content": ("sequence_id", lambda v: _content_tensor(v, "DT_UINT64", np.uint64)),
    "control-in-tensor-content": ("sequence_control_input", lambda v: _content_tensor(1, "DT_UINT32", np.uint32)),
    "id-shape-1x1": ("sequence_id", lambda v: _reshaped(scalar_tensor(v, "DT_UINT64", "uint64_val"), [1, 1])),
    "id-without-shape": ("sequence_id", lambda v: _reshaped(scalar_tensor(v, "DT_UINT64", "uint64_val"), [])),
    "id-two-values": ("sequence_id", lambda v: _reshaped(tensor_pb2.TensorProto(
        dtype=dt_enum("DT_UINT64"), uint64_val=[v, v]), [2])),
}


@pytest.mark.parametrize("case", SPECIAL_INPUT_FORMS)
def test_grpc_sequence_inputs_only_in_typed_fields(tfs_api, case):
    name, make = SPECIAL_INPUT_FORMS[case]
    sid = next(_seq_ids)
    inputs = {"x": tensor(X1), "sequence_id": scalar_tensor(sid, "DT_UINT64", "uint64_val"),
              "sequence_control_input": scalar_tensor(START, "DT_UINT32", "uint32_val")}
    inputs[name] = make(sid)
    try:
        err = rpc_error(lambda: tfs_api.pred.Predict(predict_request("stateful", inputs), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    finally:
        try:   # if the server did start the sequence, end it
            GrpcSequences(tfs_api).send(X1, sid, END)
        except Rejected:
            pass


def test_grpc_sequence_id_reply_is_in_uint64_val(tfs_api):
    # OVMS writes the reply's sequence_id with add_uint64_val, and its documented client reads
    # response.outputs['sequence_id'].uint64_val[0]; tensor_content would make that an IndexError.
    sid = next(_seq_ids)
    seqs = GrpcSequences(tfs_api)
    try:
        resp = tfs_api.pred.Predict(seqs.request(X1, sid, START), timeout=TIMEOUT)
        reply = resp.outputs["sequence_id"]
        assert reply.dtype == dt_enum("DT_UINT64") and [d.size for d in reply.tensor_shape.dim] == [1]
        assert list(reply.uint64_val) == [sid], (
            f"sequence_id reply not in uint64_val (tensor_content={reply.tensor_content!r})")
    finally:
        seqs.send(X1, sid, END)


# ============================================================================== 6. error cases

def wrong_length_content() -> tensor_pb2.TensorProto:
    tp = tensor(ONES)
    tp.tensor_content = tp.tensor_content[:-1]
    return tp


def too_few_float_vals() -> tensor_pb2.TensorProto:
    tp = typed_tensor(ONES, "FP32")
    del tp.float_val[3:]
    return tp


# name: (model, version, inputs, expected code, message fragment)
GRPC_PREDICT_ERRORS = {
    "unknown-model": ("no_such_model", None, {"b": tensor(ONES)}, "NOT_FOUND", NOT_FOUND_MODEL),
    "unknown-version": ("dummy", 7, {"b": tensor(ONES)}, "NOT_FOUND", NOT_FOUND_VERSION),
    "unknown-version-of-versioned": ("versioned", 3, {"x": tensor(np.ones((1, 4), np.float32))}, "NOT_FOUND",
                                     NOT_FOUND_VERSION),
    "wrong-dtype-fp64": ("dummy", None, {"b": tensor(ONES.astype(np.float64))}, "INVALID_ARGUMENT",
                         "Invalid input precision"),
    "wrong-dtype-int32": ("dummy", None, {"b": tensor(ONES.astype(np.int32))}, "INVALID_ARGUMENT",
                          "Invalid input precision"),
    "wrong-dtype-string": ("dummy", None, {"b": string_tensor([b"x"] * 10, [1, 10])}, "INVALID_ARGUMENT",
                           "Invalid input precision"),
    "numeric-to-string-model": ("string", None, {"text": tensor(np.ones(3, np.float32))}, "INVALID_ARGUMENT",
                                "Invalid input precision"),
    "wrong-shape": ("dummy", None, {"b": tensor(np.ones((1, 5), np.float32))}, "INVALID_ARGUMENT",
                    "Invalid input shape"),
    "wrong-batch": ("dummy", None, {"b": tensor(np.ones((2, 10), np.float32))}, "INVALID_ARGUMENT", "batch size"),
    "wrong-rank": ("dummy", None, {"b": tensor(np.ones(10, np.float32))}, "INVALID_ARGUMENT", "shape"),
    "v1-gets-v2-shape": ("versioned", 1, {"x": tensor(np.ones((1, 8), np.float32))}, "INVALID_ARGUMENT",
                         "Invalid input shape"),
    "missing-input": ("two_inputs", None, {"x": tensor(np.ones((1, 4), np.float32))}, "INVALID_ARGUMENT",
                      "Missing input"),
    "wrong-input-name": ("dummy", None, {"c": tensor(ONES)}, "INVALID_ARGUMENT", ""),
    "unexpected-extra-input": ("dummy", None, {"b": tensor(ONES), "extra": tensor(ONES)}, "INVALID_ARGUMENT", ""),
    "tensor-content-wrong-length": ("dummy", None, {"b": wrong_length_content()}, "INVALID_ARGUMENT",
                                    "Invalid content size"),
    "typed-values-wrong-count": ("dummy", None, {"b": too_few_float_vals()}, "INVALID_ARGUMENT", ""),
}


@pytest.mark.parametrize("case", GRPC_PREDICT_ERRORS)
def test_grpc_predict_errors(tfs_api, case):
    model, version, inputs, code, fragment = GRPC_PREDICT_ERRORS[case]
    err = rpc_error(lambda: tfs_api.pred.Predict(predict_request(model, inputs, version), timeout=TIMEOUT))
    assert err.code().name == code, err.details()
    assert fragment in err.details()


def _metadata_request(name: str, version: int | None = None, fields=("signature_def",)):
    req = tfs.GetModelMetadataRequest(metadata_field=list(fields))
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    return req


def _status_request(name: str, version: int | None = None):
    req = tfs.GetModelStatusRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    return req


GRPC_OTHER_ERRORS = {
    "metadata-unknown-model": (lambda a: a.pred.GetModelMetadata(_metadata_request("nope"), timeout=TIMEOUT),
                               "NOT_FOUND", NOT_FOUND_MODEL),
    "metadata-unknown-version": (lambda a: a.pred.GetModelMetadata(_metadata_request("dummy", 5), timeout=TIMEOUT),
                                 "NOT_FOUND", NOT_FOUND_VERSION),
    "metadata-no-signature-def": (lambda a: a.pred.GetModelMetadata(_metadata_request("dummy", fields=()),
                                                                    timeout=TIMEOUT), "INVALID_ARGUMENT", ""),
    "metadata-other-field-only": (lambda a: a.pred.GetModelMetadata(_metadata_request("dummy", fields=["x"]),
                                                                    timeout=TIMEOUT), "INVALID_ARGUMENT", ""),
    "status-unknown-model": (lambda a: a.models.GetModelStatus(_status_request("nope"), timeout=TIMEOUT),
                             "NOT_FOUND", NOT_FOUND_MODEL),
    "status-unknown-version": (lambda a: a.models.GetModelStatus(_status_request("versioned", 3), timeout=TIMEOUT),
                               "NOT_FOUND", NOT_FOUND_VERSION),
}


@pytest.mark.parametrize("case", GRPC_OTHER_ERRORS)
def test_grpc_metadata_and_status_errors(tfs_api, case):
    call, code, fragment = GRPC_OTHER_ERRORS[case]
    err = rpc_error(lambda: call(tfs_api))
    assert err.code().name == code, err.details()
    assert fragment in err.details()


# name: (path, body (object -> JSON, str -> sent as is), HTTP status, message fragment)
REST_PREDICT_ERRORS = {
    "unknown-model": ("no_such_model:predict", {"instances": [[1.0] * 10]}, 404, NOT_FOUND_MODEL),
    "unknown-version": ("dummy/versions/7:predict", {"instances": [[1.0] * 10]}, 404, NOT_FOUND_VERSION),
    "unknown-version-of-versioned": ("versioned/versions/3:predict", {"instances": [[1.0] * 4]}, 404,
                                     NOT_FOUND_VERSION),
    "malformed-json": ("dummy:predict", '{"instances": [[1.0, 2.0', 400, ""),
    "not-json": ("dummy:predict", "instances=1", 400, ""),
    "json-not-an-object": ("dummy:predict", "[[1.0]]", 400, ""),
    "neither-instances-nor-inputs": ("dummy:predict", {"signature_name": "serving_default"}, 400, ""),
    "both-instances-and-inputs": ("dummy:predict", {"instances": [[1.0] * 10], "inputs": [[1.0] * 10]}, 400, ""),
    "empty-instances": ("dummy:predict", {"instances": []}, 400, ""),
    "wrong-shape": ("dummy:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400, "Invalid input shape"),
    "wrong-batch": ("dummy:predict", {"instances": [[1.0] * 10, [2.0] * 10]}, 400, "batch size"),
    "ragged": ("dynamic:predict", {"inputs": [[1.0, 2.0], [3.0]]}, 400, ""),
    "strings-to-fp32": ("dummy:predict", {"inputs": [["a"] * 10]}, 400, "Invalid input precision"),
    "missing-input": ("two_inputs:predict", {"inputs": {"x": [[1, 2, 3, 4]]}}, 400, "Missing input"),
    "unnamed-input-of-two": ("two_inputs:predict", {"inputs": [[1, 2, 3, 4]]}, 400, ""),
    "unexpected-input": ("dummy:predict", {"inputs": {"b": [[1.0] * 10], "zzz": [[1.0] * 10]}}, 400, ""),
    "b64-to-numeric-model": ("dummy:predict", {"instances": [b64(PNG)]}, 400, "Invalid input precision"),
    "numbers-to-string-model": ("string:predict", {"instances": [1, 2]}, 400, ""),
    "bad-base64": ("image:predict", {"instances": [{"b64": "!!not base64!!"}]}, 400, ""),
    # JSON null and booleans are not numbers: TFS and OVMS (rapidjson IsNumber) both answer 400
    "null-in-fp32": ("dummy:predict", {"inputs": [[None] * 10]}, 400, ""),
    "bool-in-fp32": ("dummy:predict", {"inputs": [[True] * 10]}, 400, ""),
    "bool-in-int8": ("add_int8:predict", {"inputs": {"x": [[False] * 8]}}, 400, ""),
    "instances-differ-in-names": ("two_inputs:predict",
                                  {"instances": [{"x": [1] * 4, "y": [1] * 4}, {"x": [1] * 4}]}, 400, ""),
}


@pytest.mark.parametrize("case", REST_PREDICT_ERRORS)
def test_rest_predict_errors(tfs_api, case):
    path, body, status, fragment = REST_PREDICT_ERRORS[case]
    rest_error(rest_post(tfs_api, path, body), status, fragment)


@pytest.mark.parametrize("path, fragment", [
    ("no_such_model", NOT_FOUND_MODEL), ("no_such_model/metadata", NOT_FOUND_MODEL),
    ("dummy/versions/4", NOT_FOUND_VERSION), ("versioned/versions/3/metadata", NOT_FOUND_VERSION),
])
def test_rest_get_errors(tfs_api, path, fragment):
    rest_error(tfs_api.http.get(f"{tfs_api.url}/v1/models/{path}", timeout=TIMEOUT), 404, fragment)


# ======================================================================================= 7. TLS

def _read(certs_dir: Path, name: str) -> bytes:
    return (certs_dir / name).read_bytes()


def test_tls_ovmsclient_grpc(tls_refserver, certs_dir):
    client = ovmsclient.make_grpc_client(tls_refserver.grpc_address, tls_config={
        "client_key_path": str(certs_dir / "client.key"),
        "client_cert_path": str(certs_dir / "client.pem"),
        "server_cert_path": str(certs_dir / "ca.pem"),
    })
    try:
        assert client.get_model_status("dummy")[1]["state"] == "AVAILABLE"
        assert client.get_model_metadata("dummy")["inputs"]["b"]["shape"] == [1, 10]
        np.testing.assert_array_equal(client.predict({"b": ONES}, "dummy"), ONES + 1)
    finally:
        client.channel.close()


@pytest.mark.parametrize("root, with_client_cert, works", [
    ("ca.pem", True, True),
    ("server.pem", True, True),    # the OVMS benchmark client's convention: trust server.pem, present client.pem
    ("ca.pem", False, False),
    (None, False, False),          # plaintext to the TLS port
], ids=["ca-root", "server-pem-root", "no-client-cert", "plaintext"])
def test_tls_grpc_channels(tls_refserver, certs_dir, root, with_client_cert, works):
    if root is None:
        channel = grpc.insecure_channel(tls_refserver.grpc_address)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(certs_dir, root),
            private_key=_read(certs_dir, "client.key") if with_client_cert else None,
            certificate_chain=_read(certs_dir, "client.pem") if with_client_cert else None)
        channel = grpc.secure_channel(tls_refserver.grpc_address, creds)
    try:
        stub = tfs_grpc.PredictionServiceStub(channel)
        call = lambda: stub.Predict(predict_request("dummy", {"b": tensor(ONES)}), timeout=5)
        if works:
            np.testing.assert_array_equal(make_ndarray(call().outputs["a"]), ONES + 1)
        else:
            assert rpc_error(call).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()


def test_tls_rest_with_client_cert(tls_refserver, certs_dir):
    url = f"https://{tls_refserver.rest_address}"
    # per request, not on the session: REQUESTS_CA_BUNDLE in the environment would override session.verify
    tls = {"cert": (str(certs_dir / "client.pem"), str(certs_dir / "client.key")), "verify": str(certs_dir / "ca.pem"),
           "timeout": TIMEOUT}
    with requests.Session() as s:
        status = s.get(f"{url}/v1/models/dummy", **tls)
        assert status.status_code == 200 and status.json()["model_version_status"][0]["state"] == "AVAILABLE"
        pred = s.post(f"{url}/v1/models/dummy:predict", json={"instances": [[1.0] * 10]}, **tls)
        assert pred.status_code == 200 and pred.json() == {"predictions": [[2.0] * 10]}


@pytest.mark.parametrize("scheme, verify", [("https", True), ("http", False)], ids=["no-client-cert", "plaintext"])
def test_tls_rest_refused(tls_refserver, certs_dir, scheme, verify):
    with requests.Session() as s, pytest.raises(requests.exceptions.ConnectionError):
        s.get(f"{scheme}://{tls_refserver.rest_address}/v1/models/dummy",
              verify=str(certs_dir / "ca.pem") if verify else False, timeout=TIMEOUT)


# =================================================================================== 8. /metrics

def _metrics(api: SimpleNamespace) -> str:
    resp = api.http.get(f"{api.url}/metrics", timeout=TIMEOUT)
    assert resp.status_code == 200
    return resp.text


def _grpc_predict(api, ok):
    b = ONES if ok else np.ones((1, 3), np.float32)
    try:
        api.pred.Predict(predict_request("dummy", {"b": tensor(b)}), timeout=TIMEOUT)
    except grpc.RpcError as exc:
        assert not ok and exc.code() == grpc.StatusCode.INVALID_ARGUMENT


def _rest_predict(api, ok):
    resp = rest_post(api, "dummy:predict", {"instances": [[1.0] * (10 if ok else 3)]})
    assert resp.status_code == (200 if ok else 400)


METRIC_CALLS = {
    ("gRPC", "Predict"): _grpc_predict,
    ("gRPC", "GetModelMetadata"): lambda api, ok: api.pred.GetModelMetadata(_metadata_request("dummy"),
                                                                            timeout=TIMEOUT),
    ("gRPC", "GetModelStatus"): lambda api, ok: api.models.GetModelStatus(_status_request("dummy"), timeout=TIMEOUT),
    ("REST", "Predict"): _rest_predict,
    ("REST", "GetModelMetadata"): lambda api, ok: rest_ok(api.http.get(f"{api.url}/v1/models/dummy/metadata",
                                                                       timeout=TIMEOUT)),
    ("REST", "GetModelStatus"): lambda api, ok: rest_ok(api.http.get(f"{api.url}/v1/models/dummy", timeout=TIMEOUT)),
}
METRIC_CASES = [(iface, method, True) for iface, method in METRIC_CALLS] + [
    ("gRPC", "Predict", False), ("REST", "Predict", False)]


def series(text: str, metric: str, **labels: str) -> float | None:
    """The sample whose label set is exactly ``labels`` (None if there is none)."""
    want = {k: f'"{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            label_text, value = line[len(metric) + 1:].rsplit("} ", 1)
            if dict(part.split("=", 1) for part in label_text.split(",")) == want:
                return float(value)
    return None


@pytest.mark.parametrize("interface, method, ok", METRIC_CASES,
                         ids=[f"{i}-{m}-{'success' if ok else 'fail'}" for i, m, ok in METRIC_CASES])
def test_metrics_count_requests(tfs_api, interface, method, ok):
    n = 3
    labels = {"api": "TensorFlowServing", "interface": interface, "method": method, "name": "dummy"}
    if method != "GetModelStatus":   # OVMS's GetModelStatus series carry no version label (it names no version)
        labels["version"] = "1"
    counted, other = ("ovms_requests_success", "ovms_requests_fail")[::1 if ok else -1]
    before = _metrics(tfs_api)
    for _ in range(n):
        METRIC_CALLS[(interface, method)](tfs_api, ok)
    after = _metrics(tfs_api)
    assert series(after, counted, **labels) is not None, f"no {counted} series with exactly the labels {labels}"
    assert series(after, counted, **labels) - (series(before, counted, **labels) or 0) == n
    assert scrape_counter(after, other, **labels) == scrape_counter(before, other, **labels)
