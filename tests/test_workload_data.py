"""Every data kind on every API and body format, against the real reference server, replies checked.

Workloads are built exactly as the users build them (metadata over the API, dataset, requests
encoded once); each request is then sent as the users send it (gRPC bytes, or an HTTP POST with its
headers) and the reply decoded and compared with what the model computes. The Locust mechanics are
tested in test_users_grpc.py and test_users_rest.py.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from ovms_users import data
from ovms_users.dataset import plan_inputs
from ovms_users.errors import OptionError
from ovms_users.options import BenchOptions
from ovms_users.workload import Workload
from ovms_wire.dtypes import NUMERIC_PRECISIONS

#: every API, and each body format of the REST APIs
APIS = ["tfs", "kfs", "tfs-rest:columnar", "tfs-rest:row", "kfs-rest:binary", "kfs-rest:json"]
GRPC_APIS = ["tfs", "kfs"]


def build(refserver, api: str, **options) -> Workload:
    name, _, fmt = api.partition(":")
    extra = {"rest_format": fmt} if name == "tfs-rest" else {"kfs_data": fmt} if name == "kfs-rest" else {}
    opts = BenchOptions.parse({"api": name, "metadata_timeout": "5", **extra,
                               **{k: str(v) for k, v in options.items()}})
    host = refserver.rest_url if name.endswith("-rest") else refserver.grpc_address
    return Workload.build(opts, host)


def send(workload: Workload, body: bytes, headers: dict) -> dict[str, np.ndarray]:
    """One request as the users send it; the reply decoded."""
    if workload.protocol.transport == "grpc":
        with grpc.insecure_channel(workload.target) as channel:
            return workload.protocol.decode(channel.unary_unary(workload.path)(body, timeout=10))
    resp = requests.post(f"http://{workload.target}{workload.path}", data=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return workload.protocol.decode(resp.content, resp.headers, spec=workload.spec)


def send_all(workload: Workload) -> list[dict[str, np.ndarray]]:
    return [send(workload, body, headers) for body, headers in workload.requests]


def decoded_means(blobs: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
                     for b in blobs])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("precision", NUMERIC_PRECISIONS)
def test_random_data_in_every_precision(refserver, api, precision):
    lo, hi = (-1e30, 1e30) if precision.startswith("FP") else (-1e20, 1e20)   # clipped to each type's range
    w = build(refserver, api, model_name=f"add_{precision.lower()}", bs="1 3", dataset_length=4, seed=5,
              min_value=lo, max_value=hi)
    assert [e.batch_size for e in w.entries] == [1, 3, 1, 3]
    for entry, reply in zip(w.entries, send_all(w), strict=True):
        x = entry.inputs["x"][1]
        assert x.dtype.name == w.spec.inputs[0].dtype.numpy.name and x.shape == (entry.batch_size, 8)
        if precision.startswith("FP"):
            assert np.isfinite(x).all()
            expected = (x.astype(np.float64) + 1).astype(x.dtype)
        else:   # integers: the full range is used, and the model's +1 wraps like C
            assert x.min() < 0 or precision.startswith("U")
            expected = x + np.array(1, dtype=x.dtype)
        got = reply["y"]
        if got.dtype != expected.dtype:   # JSON numbers: exact values, typed by the reader
            got = got.astype(expected.dtype)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("api", GRPC_APIS)
def test_range_is_clipped_not_wrapped(refserver, api):
    w = build(refserver, api, model_name="add_int8", min_value=100, max_value=1000, dataset_length=3, seed=1)
    for entry in w.entries:
        x = entry.inputs["x"][1]
        assert x.min() >= 100 and x.max() <= 127


@pytest.mark.parametrize("api", APIS)
def test_version_is_in_every_request(refserver, api):
    old = build(refserver, api, model_name="versioned", model_version=1)
    assert old.spec.version == 1 and old.spec.inputs[0].shape == (-1, 4)
    (reply,) = send_all(old)
    np.testing.assert_allclose(reply["y"], old.entries[0].inputs["x"][1] + 1, rtol=1e-6)   # v1 adds 1
    latest = build(refserver, api, model_name="versioned")
    assert latest.spec.version == 2
    (reply,) = send_all(latest)
    np.testing.assert_allclose(reply["y"], latest.entries[0].inputs["x"][1] + 2, rtol=1e-6)


@pytest.mark.parametrize("api", APIS)
def test_forced_shapes_batch_sizes_and_dataset_length(refserver, api):
    w = build(refserver, api, model_name="dynamic", shape="x: 1 5", bs="1-2-3", dataset_length=7)
    assert [e.batch_size for e in w.entries] == [1, 2, 3, 1, 2, 3, 1]
    for entry, reply in zip(w.entries, send_all(w), strict=True):
        assert entry.inputs["x"][1].shape == (entry.batch_size, 5)
        np.testing.assert_allclose(reply["y"], entry.inputs["x"][1] + 1, rtol=1e-6)
    # without --bs, the forced shape's first dimension is the batch
    assert [e.batch_size for e in build(refserver, api, model_name="dynamic", shape="4 6").entries] == [4]


@pytest.mark.parametrize("api", APIS)
def test_two_inputs_npy_rows_and_random(refserver, api, tmp_path):
    rows = np.arange(44, dtype=np.float32).reshape(11, 4)
    path = tmp_path / "x.npy"
    np.save(path, rows)
    w = build(refserver, api, model_name="two_inputs", data=f"x:{path} random", bs="2 3")
    # rows are consumed in order; the dataset stops before a batch the file cannot fill (2+3+2+3 of 11 rows)
    assert [e.batch_size for e in w.entries] == [2, 3, 2, 3]
    np.testing.assert_array_equal(np.concatenate([e.inputs["x"][1] for e in w.entries]), rows[:10])
    for entry, reply in zip(w.entries, send_all(w), strict=True):
        x, y = entry.inputs["x"][1], entry.inputs["y"][1]
        np.testing.assert_allclose(reply["sum"], x + y, rtol=1e-6)
        np.testing.assert_allclose(reply["diff"], x - y, rtol=1e-6)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("method", ["png", "png0", "png3-urandom", "png-xrandom", "jpeg", "file-png", "file-jpg"])
def test_image_data(refserver, api, method, tmp_path):
    if method.startswith("file"):
        fmt = "PNG" if method.endswith("png") else "JPEG"
        path = tmp_path / f"picture.{method[-3:]}"
        path.write_bytes(data.encode_image(data.urandom_image(np.random.default_rng(0), 32, 48), fmt))
        method = str(path)
    if api == "kfs-rest:json":   # KServe v2 JSON carries BYTES as text only: images need the binary extension
        with pytest.raises(OptionError, match="--kfs_data: input image holds bytes that are not text"):
            build(refserver, api, model_name="image", data=method)
        return
    w = build(refserver, api, model_name="image", data=method, bs="2", dataset_length=2, seed=3,
              dump_dir=tmp_path / "dump")
    for entry, reply in zip(w.entries, send_all(w), strict=True):
        dtype, blobs = entry.inputs["image"]
        assert dtype.name == "BYTES" and blobs.shape == (2,)
        with Image.open(io.BytesIO(blobs[0])) as img:
            assert img.size == (48, 32)   # width 48, height 32: as the model's [N, 32, 48, 3] says
        np.testing.assert_allclose(reply["mean"], decoded_means(blobs), rtol=1e-5)
    if not method.startswith(str(tmp_path)):
        assert len(list((tmp_path / "dump").iterdir())) == 4


def test_generated_images_are_distinct_and_sized():
    rng = np.random.default_rng(0)
    big = data.urandom_image(rng, 1024, 768, blur=4)
    assert big.shape == (1024, 768, 3) and big.dtype == np.uint8
    assert 100 < big.mean() < 155 and big.std() < 40            # blurred noise is smoother than raw noise
    mosaic = data.xrandom_image(rng, 300, 200, seeds=5)
    assert mosaic.shape == (300, 200, 3) and len(np.unique(mosaic.reshape(-1, 3), axis=0)) <= 5
    a, b = (data.image_blobs(rng, data.parse_method("png"), 2, 16, 16, 3))
    assert a != b


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("source", ["builtin", "txt"])
def test_string_data(refserver, api, source, tmp_path):
    method = "string"
    if source == "txt":
        path = tmp_path / "lines.txt"
        path.write_text("alpha\n\nbeta gamma\nżółw\n")
        method = f"text:{path}"
    w = build(refserver, api, model_name="string", data=method, bs="1 3", seed=2)
    for entry, reply in zip(w.entries, send_all(w), strict=True):
        texts = entry.inputs["text"][1]
        assert texts.shape == (entry.batch_size,)
        if source == "txt":
            assert set(texts.tolist()) <= {b"alpha", b"beta gamma", "żółw".encode()}
        assert reply["length"].tolist() == [len(t) for t in texts]
        assert reply["upper"].tolist() == [t.upper() for t in texts]


@pytest.mark.parametrize("api", GRPC_APIS + ["tfs-rest:row", "kfs-rest:json"])
def test_seed_makes_data_reproducible(refserver, api):
    a = build(refserver, api, model_name="dummy", seed=11, dataset_length=3)
    b = build(refserver, api, model_name="dummy", seed=11, dataset_length=3)
    c = build(refserver, api, model_name="dummy", seed=12, dataset_length=3)
    assert a.bodies == b.bodies and a.bodies != c.bodies


@pytest.mark.parametrize("api", APIS)
def test_sequence_fragment_makes_a_stateful_request(refserver, api):
    w = build(refserver, api, model_name="stateful", stateful_length=3)
    p, x = w.protocol, w.entries[0].inputs["x"][1]
    seq_id = 987_654_321 + APIS.index(api)
    totals = [send(w, *p.request(w.encoded[0], p.sequence_fragment(seq_id, i == 0, i == 2)))["total"]
              for i in range(3)]
    np.testing.assert_allclose(np.asarray(totals[2], dtype=np.float64), 3 * x, rtol=1e-6)
    body, headers = p.request(w.encoded[0], p.sequence_fragment(seq_id, False, False))
    if p.transport == "grpc":   # the sequence has ended: the server refuses it
        with grpc.insecure_channel(w.target) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(w.path)(body, timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    else:
        resp = requests.post(f"http://{w.target}{w.path}", data=body, headers=headers, timeout=5)
        assert resp.status_code == 404


@pytest.mark.parametrize("options, message", [
    ({"model_name": "dummy", "shape": "b: 1 5"}, "--shape: input b of model dummy takes [1, 10]"),
    ({"model_name": "dummy", "shape": "c: 1 5"}, "--shape: 'c' is not an input of model dummy"),
    ({"model_name": "dummy", "data": "string"}, "--data: string data needs a BYTES"),
    ({"model_name": "dummy", "data": "c:random"}, "--data: 'c' is not an input of model dummy"),
    ({"model_name": "dummy", "data": "random png"}, "--data: two defaults"),
    ({"model_name": "dummy", "data": "bogus"}, "--data: unknown data method 'bogus'"),
    ({"model_name": "dynamic"}, "--shape: input x of model dynamic has dynamic dimensions"),
    ({"model_name": "string"}, "--data: input text takes BYTES"),
    ({"model_name": "string", "data": "png"}, "does not say the image size"),
    ({"model_name": "dummy", "data": "/nonexistent/x.npy"}, "--data: cannot read /nonexistent/x.npy"),
    ({"model_name": "image", "data": "/nonexistent/x.jpg"}, "--data: cannot read /nonexistent/x.jpg"),
])
def test_bad_data_options(refserver, options, message):
    opts = BenchOptions.parse({"api": "tfs", **options})
    with pytest.raises(OptionError) as err:
        Workload.build(opts, refserver.grpc_address)
    assert message in str(err.value)


def test_bad_npy_files(refserver, tmp_path):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all")
    wrong_rows = tmp_path / "rows.npy"
    np.save(wrong_rows, np.zeros((4, 3), np.float32))
    texts = tmp_path / "texts.npy"
    np.save(texts, np.full((4, 10), "a"))
    spec = Workload.build(BenchOptions.parse({"model_name": "dummy"}), refserver.grpc_address).spec
    for path, message in ((garbage, "is not a readable .npy array"), (wrong_rows, "rows of shape [3]"),
                          (texts, "holds <U1, which does not convert to FP32")):
        with pytest.raises(OptionError, match=r"--data") as err:
            plan_inputs(spec, BenchOptions.parse({"model_name": "dummy", "data": str(path)}))
        assert message in str(err.value)


@pytest.mark.parametrize("values, message", [
    ({"api": "soap"}, "--api: unknown API 'soap'"),
    ({}, "--model_name: give the model"),
    ({"bs": "1 x"}, "--bs: 'x' is not a whole number"),
    ({"bs": "0"}, "--bs: needs a number >= 1"),
    ({"shape": "1 0 3"}, "--shape: dimension 0 is not allowed"),
    ({"shape": "a: b: 1"}, "--shape: input 'a' has no dimensions"),
    ({"step_timeout": "-1"}, "--step_timeout: needs a number > 0"),
    ({"min_value": "5", "max_value": "1"}, "--min_value: 5.0 is above --max_value 1.0"),
    ({"model_version": "latest"}, "--model_version: 'latest' is not a whole number"),
    ({"stateful_length": "1"}, "--stateful_length: must be at least 2 over the TFS API"),
    ({"xrand": "0"}, "--xrand: needs a number >= 1"),
])
def test_option_errors_name_the_option(values, message):
    with pytest.raises(OptionError) as err:
        BenchOptions.parse({"model_name": "m", **values} if "model_name" not in values and values else values)
    assert message in str(err.value)


def test_sequence_ids_are_unique_blocks():
    from ovms_users.workload import ID_BLOCK, SequenceIds

    seen = set()
    for worker in range(3):
        ids = SequenceIds(first_id=7, hop=5, worker_index=worker)
        for _ in range(4):
            n, base, hop = ids.for_new_user()
            block = {SequenceIds.nth(base, hop, k) for k in range(1000)}
            assert len(block) == 1000 and min(block) >= base and max(block) < base + ID_BLOCK
            assert not block & seen
            seen |= block
    # hop 0: a user keeps its one id
    assert {SequenceIds.nth(7, 0, k) for k in range(5)} == {7}
