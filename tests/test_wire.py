"""The shared wire layer: dtype table and tensor encodings, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from ovms_wire.dtypes import DTYPES, NUMERIC_PRECISIONS, DTypeError, by_name, by_numpy, by_tf
from ovms_wire.protos.tfs import tensor_pb2
from ovms_wire.tensors import (
    TensorError,
    fill_kfs_contents,
    from_kfs_contents,
    from_raw,
    from_tensor_proto,
    serialize_bytes_elements,
    to_raw,
    to_tensor_proto,
)


def sample(precision: str, shape=(2, 3)) -> np.ndarray:
    dt = by_name(precision).numpy
    if dt.kind == "f":
        return (np.arange(np.prod(shape)).reshape(shape) * 1.5 - 2).astype(dt)
    info, n = np.iinfo(dt), int(np.prod(shape))
    step = (int(info.max) - int(info.min)) // (n - 1)   # exact integers, both extremes included
    vals = [int(info.min) + i * step for i in range(n - 1)] + [int(info.max)]
    return np.array(vals, dtype=dt).reshape(shape)


def test_table_names_every_precision_on_every_api():
    assert set(NUMERIC_PRECISIONS) <= {d.name for d in DTYPES}
    assert by_name("FP16").tf_name == "DT_HALF" and by_name("FP64").tf_name == "DT_DOUBLE"
    assert by_name("DT_FLOAT").name == "FP32" and by_name("fp32").name == "FP32"
    # the original client's wrong TF names still resolve to the right types
    assert by_name("DT_FLOAT16").name == "FP16" and by_name("DT_FLOAT64").name == "FP64"
    assert by_tf(by_name("UINT64").tf_enum).name == "UINT64"
    assert by_numpy(np.dtype(np.uint16)).name == "UINT16" and by_numpy(np.dtype(object)).name == "BYTES"
    with pytest.raises(DTypeError, match="unknown precision 'FP8'"):
        by_name("FP8")


@pytest.mark.parametrize("precision", NUMERIC_PRECISIONS)
def test_tensor_proto_round_trip_content_and_typed(precision):
    arr = sample(precision)
    tp = to_tensor_proto(arr)
    assert tp.tensor_content and [d.size for d in tp.tensor_shape.dim] == [2, 3]
    np.testing.assert_array_equal(from_tensor_proto(tp), arr)
    # the same tensor in the typed *_val field, as TF's make_tensor_proto writes small tensors
    dt = by_name(precision)
    typed = tensor_pb2.TensorProto(dtype=dt.tf_enum)
    typed.tensor_shape.CopyFrom(tp.tensor_shape)
    values = arr.view(np.uint16).reshape(-1).tolist() if precision == "FP16" else arr.reshape(-1).tolist()
    getattr(typed, dt.tfs_field).extend(values)
    decoded = from_tensor_proto(typed)
    assert decoded.dtype == dt.numpy
    np.testing.assert_array_equal(decoded, arr)


def test_tensor_proto_bytes_and_errors():
    tp = to_tensor_proto([b"a", "b\u00e9"])
    assert tp.dtype == by_name("BYTES").tf_enum and list(tp.string_val) == [b"a", "b\u00e9".encode()]
    assert from_tensor_proto(tp).tolist() == [b"a", "b\u00e9".encode()]
    bad = to_tensor_proto(np.zeros((2, 2), np.float32))
    bad.tensor_content = bad.tensor_content[:-1]
    with pytest.raises(TensorError, match="needs 16 bytes"):
        from_tensor_proto(bad)
    one = tensor_pb2.TensorProto(dtype=by_name("INT32").tf_enum, int_val=[7])
    one.tensor_shape.dim.add(size=3)
    assert from_tensor_proto(one).tolist() == [7, 7, 7]   # TF fills a tensor from a single value


@pytest.mark.parametrize("precision", NUMERIC_PRECISIONS)
def test_kfs_raw_and_typed_round_trip(precision):
    arr = sample(precision)
    np.testing.assert_array_equal(from_raw(to_raw(arr, precision), precision, [2, 3]), arr)
    if by_name(precision).kfs_field is None:
        with pytest.raises(TensorError, match="raw"):
            fill_kfs_contents(service_pb2.InferTensorContents(), arr, precision)
        return
    contents = service_pb2.InferTensorContents()
    fill_kfs_contents(contents, arr, precision)
    np.testing.assert_array_equal(from_kfs_contents(contents, precision, [2, 3]), arr)


def test_kfs_bytes_serialization():
    raw = serialize_bytes_elements(np.array([b"ab", b"", "c"], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x01\x00\x00\x00c"
    assert from_raw(raw, "BYTES", [3]).tolist() == [b"ab", b"", b"c"]
    with pytest.raises(TensorError, match="truncated"):
        from_raw(raw[:-1], "BYTES", [3])
    with pytest.raises(TensorError, match="needs 2 BYTES"):
        from_raw(raw, "BYTES", [2])
    with pytest.raises(TensorError, match="needs 24 bytes"):
        from_raw(b"\x00" * 20, "FP32", [2, 3])
