"""One table of tensor element types, shared by the load users and the reference server.

Each row ties together the names a precision has on every API the suite speaks: the KServe v2
name (``FP32``), TensorFlow's ``DataType`` enum (``DT_FLOAT``), numpy's dtype, the typed field of
a TFS ``TensorProto`` and of a KServe ``InferTensorContents``, and OVMS's short precision name as
it appears in OVMS error messages (``FP32``, ``I32``, ``U8``...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovms_wire.protos.tfs import types_pb2

__all__ = ["DType", "DTYPES", "NUMERIC_PRECISIONS", "by_name", "by_tf", "by_numpy", "DTypeError"]


class DTypeError(ValueError):
    """An element type name that no API of the suite knows; ``precision`` is that name as the peer gave it."""

    def __init__(self, message: str, precision: str = ""):
        super().__init__(message)
        self.precision = precision


@dataclass(frozen=True)
class DType:
    name: str                  # KServe v2 datatype, the suite's canonical name
    tf_enum: int               # tensorflow.DataType value
    numpy: np.dtype | None     # None for BYTES (numpy object arrays of bytes are used)
    tfs_field: str             # TensorProto typed field
    kfs_field: str | None      # InferTensorContents field; FP16 has none (raw only)
    ovms: str                  # OVMS's precision name in its messages

    @property
    def tf_name(self) -> str:
        return types_pb2.DataType.Name(self.tf_enum)

    @property
    def is_bytes(self) -> bool:
        return self.numpy is None

    @property
    def itemsize(self) -> int:
        return 0 if self.numpy is None else self.numpy.itemsize


def _d(name: str, tf: str, np_type: object, tfs_field: str, kfs_field: str | None, ovms: str) -> DType:
    return DType(name, types_pb2.DataType.Value(tf), None if np_type is None else np.dtype(np_type).newbyteorder("<"),
                 tfs_field, kfs_field, ovms)


DTYPES: tuple[DType, ...] = (
    _d("FP16", "DT_HALF", np.float16, "half_val", None, "FP16"),
    _d("FP32", "DT_FLOAT", np.float32, "float_val", "fp32_contents", "FP32"),
    _d("FP64", "DT_DOUBLE", np.float64, "double_val", "fp64_contents", "FP64"),
    _d("INT8", "DT_INT8", np.int8, "int_val", "int_contents", "I8"),
    _d("INT16", "DT_INT16", np.int16, "int_val", "int_contents", "I16"),
    _d("INT32", "DT_INT32", np.int32, "int_val", "int_contents", "I32"),
    _d("INT64", "DT_INT64", np.int64, "int64_val", "int64_contents", "I64"),
    _d("UINT8", "DT_UINT8", np.uint8, "int_val", "uint_contents", "U8"),
    _d("UINT16", "DT_UINT16", np.uint16, "int_val", "uint_contents", "U16"),
    _d("UINT32", "DT_UINT32", np.uint32, "uint32_val", "uint_contents", "U32"),
    _d("UINT64", "DT_UINT64", np.uint64, "uint64_val", "uint64_contents", "U64"),
    _d("BOOL", "DT_BOOL", np.bool_, "bool_val", "bool_contents", "BOOL"),
    _d("BYTES", "DT_STRING", None, "string_val", "bytes_contents", "STRING"),
)

#: The 11 numeric precisions the OVMS client documents, in its order.
NUMERIC_PRECISIONS: tuple[str, ...] = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                                       "UINT8", "UINT16", "UINT32", "UINT64")

_BY_NAME = {d.name: d for d in DTYPES}
# Accept TF names and a few common aliases wherever a user types a precision.
_ALIASES = {d.tf_name: d for d in DTYPES}
_ALIASES.update({"STRING": _BY_NAME["BYTES"], "FLOAT": _BY_NAME["FP32"], "FLOAT32": _BY_NAME["FP32"],
                 "FLOAT16": _BY_NAME["FP16"], "HALF": _BY_NAME["FP16"], "FLOAT64": _BY_NAME["FP64"],
                 "DOUBLE": _BY_NAME["FP64"], "DT_FLOAT16": _BY_NAME["FP16"], "DT_FLOAT64": _BY_NAME["FP64"]})
_BY_TF = {d.tf_enum: d for d in DTYPES}
_BY_NUMPY = {d.numpy.str: d for d in DTYPES if d.numpy is not None}


def by_name(name: str) -> DType:
    """Look a precision up by its KServe or TF name (case-insensitive)."""
    key = name.strip().upper()
    found = _BY_NAME.get(key) or _ALIASES.get(key)
    if found is None:
        known = ", ".join(d.name for d in DTYPES)
        raise DTypeError(f"unknown precision {name!r}; use one of {known}", precision=str(name))
    return found


def by_tf(tf_enum: int) -> DType:
    try:
        return _BY_TF[tf_enum]
    except KeyError:
        label = types_pb2.DataType.Name(tf_enum) if tf_enum in types_pb2.DataType.values() else str(tf_enum)
        raise DTypeError(f"unsupported TensorFlow DataType {tf_enum} ({label})", precision=label) from None


def by_numpy(dtype: np.dtype) -> DType:
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return _BY_NAME["BYTES"]
    try:
        return _BY_NUMPY[dt.newbyteorder("<").str]
    except KeyError:
        raise DTypeError(f"unsupported numpy dtype {dt}") from None
