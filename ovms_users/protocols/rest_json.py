"""Compact, exact JSON for tensors, written once before a test (shared by the REST protocols)."""

from __future__ import annotations

import base64
import json

import numpy as np

__all__ = ["tensor_json", "flat_json", "bytes_json", "utf8_or_none"]


def utf8_or_none(blob: bytes) -> str | None:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        return None


def bytes_json(blob: bytes) -> str:
    """A BYTES element: a JSON string when it is text, else ``{"b64": ...}`` (TFS REST's binary form)."""
    text = utf8_or_none(blob)
    if text is not None:
        return json.dumps(text)
    return '{"b64": "' + base64.b64encode(blob).decode() + '"}'


def _row(values: np.ndarray) -> str:
    if values.dtype == object:
        return ",".join(bytes_json(v) for v in values)
    if values.dtype.kind == "b":
        return ",".join("true" if v else "false" for v in values)
    # numpy's str() of a float is the shortest text that reads back to the same value of that precision
    return ",".join(values.astype(str).tolist())


def tensor_json(arr: np.ndarray) -> str:
    """Nested JSON lists in the array's shape (a scalar for a 0-d array)."""
    if arr.ndim == 0:
        return _row(arr.reshape(1))
    if arr.ndim == 1:
        return "[" + _row(arr) + "]"
    return "[" + ",".join(tensor_json(sub) for sub in arr) + "]"


def flat_json(arr: np.ndarray) -> str:
    """A flat JSON list (KServe v2's ``data``); BYTES elements as strings."""
    return "[" + _row(arr.reshape(-1)) + "]"
