"""What every wire protocol module provides: metadata, request encoding, sequence signalling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ovms_wire.dtypes import DType
from ovms_wire.spec import ModelSpec

__all__ = ["Inputs", "WireProtocol"]

#: One request's tensors: input name -> (wire dtype, array). BYTES arrays are object arrays of bytes.
Inputs = Mapping[str, tuple[DType, np.ndarray]]


class WireProtocol(Protocol):
    name: str            # "tfs", "kfs"
    request_type: str    # as shown in Locust's statistics: "TFS gRPC", "KFS gRPC"
    infer_path: str      # the gRPC method (or REST path template)

    def fetch_spec(self, channel: object, model: str, version: int | None, timeout: float) -> ModelSpec:
        """One attempt at the model's metadata; raises grpc.RpcError or ServerError."""

    def encode(self, spec: ModelSpec, inputs: Inputs) -> bytes:
        """The whole request, serialized once before the test."""

    def sequence_suffix(self, sequence_id: int, start: bool, end: bool) -> bytes:
        """Bytes appended to a request to put it in a sequence (protobuf merges concatenated messages)."""

    def decode(self, reply: bytes) -> dict[str, np.ndarray]:
        """A reply's outputs (for checks outside the hot path)."""
