"""Tensors on the wire: numpy arrays to and from TFS ``TensorProto`` and KServe v2 contents.

Numeric tensors are numpy arrays; BYTES (DT_STRING) tensors are numpy object arrays of ``bytes``.
Decoding checks that the element count matches the shape, so a malformed request gives a clear
:class:`TensorError` instead of a numpy exception.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from ovms_wire.dtypes import by_name, by_numpy, by_tf
from ovms_wire.protos.tfs import tensor_pb2

__all__ = ["TensorError", "as_bytes_array", "to_tensor_proto", "from_tensor_proto", "to_raw", "from_raw",
           "from_kfs_contents", "fill_kfs_contents", "serialize_bytes_elements", "deserialize_bytes_elements"]


class TensorError(ValueError):
    """Tensor data that does not match its declared type or shape."""


def as_bytes_array(values: Sequence[bytes | str] | np.ndarray) -> np.ndarray:
    """An object array of bytes (str elements are UTF-8 encoded), keeping the input's shape."""
    arr = np.asarray(values, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in):
        flat_out[i] = v.encode() if isinstance(v, str) else bytes(v)
    return out


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise TensorError(f"negative dimension in shape {list(shape)}")
        n *= d
    return n


# ----------------------------------------------------------------------------------- TFS

def to_tensor_proto(value: np.ndarray | Sequence[bytes], dtype: str | None = None) -> tensor_pb2.TensorProto:
    """Encode a tensor as TensorFlow does: numeric data in ``tensor_content``, strings in ``string_val``."""
    if isinstance(value, np.ndarray) and value.dtype != object and value.dtype.kind not in "SU":
        dt = by_name(dtype) if dtype else by_numpy(value.dtype)
        if dt.is_bytes:
            raise TensorError("numeric data given for a BYTES tensor")
        arr = np.ascontiguousarray(value, dtype=dt.numpy)
        tp = tensor_pb2.TensorProto(dtype=dt.tf_enum, tensor_content=arr.tobytes())
    else:
        arr = as_bytes_array(value)
        tp = tensor_pb2.TensorProto(dtype=by_name("BYTES").tf_enum)
        tp.string_val.extend(arr.reshape(-1).tolist())
    for d in arr.shape:
        tp.tensor_shape.dim.add(size=d)
    return tp


def from_tensor_proto(tp: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto from either ``tensor_content`` or its typed ``*_val`` field."""
    dt = by_tf(tp.dtype)
    shape = [d.size for d in tp.tensor_shape.dim]
    n = _count(shape)
    if dt.is_bytes:
        vals = list(tp.string_val)
        if len(vals) != n:
            raise TensorError(f"shape {shape} needs {n} strings, got {len(vals)}")
        return as_bytes_array(vals).reshape(shape) if n else np.empty(shape, dtype=object)
    if tp.tensor_content:
        if len(tp.tensor_content) != n * dt.itemsize:
            raise TensorError(f"shape {shape} of {dt.name} needs {n * dt.itemsize} bytes of tensor_content, "
                              f"got {len(tp.tensor_content)}")
        return np.frombuffer(tp.tensor_content, dtype=dt.numpy).reshape(shape)
    vals = getattr(tp, dt.tfs_field)
    if dt.name == "FP16":
        arr = np.asarray(vals, dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(vals, dtype=dt.numpy)
    if arr.size == 1 and n > 1:   # TF's rule: one value fills the whole tensor
        arr = np.full(n, arr[0], dtype=arr.dtype)
    if arr.size != n:
        raise TensorError(f"shape {shape} needs {n} values of {dt.name}, got {arr.size}")
    return arr.reshape(shape)


# ------------------------------------------------------------------------------- KServe v2

def serialize_bytes_elements(arr: np.ndarray) -> bytes:
    """KServe v2 raw BYTES: each element as a 4-byte little-endian length and its bytes."""
    parts = []
    for v in arr.reshape(-1):
        b = v.encode() if isinstance(v, str) else bytes(v)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    out, i, raw = [], 0, memoryview(raw)
    while i < len(raw):
        if i + 4 > len(raw):
            raise TensorError("truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise TensorError("truncated BYTES element")
        out.append(bytes(raw[i:i + n]))
        i += n
    return out


def to_raw(value: np.ndarray, dtype: str) -> bytes:
    dt = by_name(dtype)
    if dt.is_bytes:
        return serialize_bytes_elements(np.asarray(value, dtype=object))
    return np.ascontiguousarray(value, dtype=dt.numpy).tobytes()


def from_raw(raw: bytes | memoryview, dtype: str, shape: Sequence[int]) -> np.ndarray:
    dt = by_name(dtype)
    n = _count(shape)
    if dt.is_bytes:
        vals = deserialize_bytes_elements(raw)
        if len(vals) != n:
            raise TensorError(f"shape {list(shape)} needs {n} BYTES elements, got {len(vals)}")
        out = np.empty(n, dtype=object)
        out[:] = vals
        return out.reshape(shape)
    if len(raw) != n * dt.itemsize:
        raise TensorError(f"shape {list(shape)} of {dt.name} needs {n * dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def from_kfs_contents(contents: object, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode typed ``InferTensorContents``."""
    dt = by_name(dtype)
    if dt.kfs_field is None:
        raise TensorError(f"{dt.name} data must be sent in raw_input_contents")
    vals = list(getattr(contents, dt.kfs_field))
    n = _count(shape)
    if len(vals) != n:
        raise TensorError(f"shape {list(shape)} needs {n} values of {dt.name}, got {len(vals)}")
    if dt.is_bytes:
        out = np.empty(n, dtype=object)
        out[:] = vals
        return out.reshape(shape)
    try:
        return np.asarray(vals, dtype=dt.numpy).reshape(shape)
    except OverflowError:
        raise TensorError(f"values outside the range of {dt.name}") from None


def fill_kfs_contents(contents: object, value: np.ndarray, dtype: str) -> None:
    dt = by_name(dtype)
    if dt.kfs_field is None:
        raise TensorError(f"{dt.name} data can only be sent raw")
    field = getattr(contents, dt.kfs_field)
    flat = np.asarray(value).reshape(-1)
    field.extend(as_bytes_array(flat).tolist() if dt.is_bytes else flat.tolist())
