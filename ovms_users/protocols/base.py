"""What every wire protocol module provides: metadata, request encoding, sequence signalling.

A request is encoded once, before the test, as ``Encoded(head, tail, binary)``. What is sent is
``head + fragment + tail + binary``, where ``fragment`` is the protocol's ``base_fragment()`` or,
for a request in a stateful sequence, ``sequence_fragment(id, start, end)``. For gRPC the fragment
is a serialized message appended to the request (protobuf merges concatenated messages); for REST
it is a piece of JSON spliced in before the document's closing brackets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ovms_wire.dtypes import DType
from ovms_wire.spec import ModelSpec

__all__ = ["Inputs", "Encoded", "WireProtocol"]

#: One request's tensors: input name -> (wire dtype, array). BYTES arrays are object arrays of bytes.
Inputs = Mapping[str, tuple[DType, np.ndarray]]


@dataclass(frozen=True)
class Encoded:
    head: bytes
    tail: bytes = b""
    binary: bytes = b""


class WireProtocol(Protocol):
    name: str            # the --api name: "tfs", "kfs", "tfs-rest", "kfs-rest"
    request_type: str    # as shown in Locust's statistics: "TFS gRPC", "KFS REST", ...
    transport: str       # "grpc" or "http"

    def fetch_spec(self, client: object, model: str, version: int | None, timeout: float) -> ModelSpec:
        """One attempt at the model's metadata; raises the transport's error or ServerError."""

    def path(self, spec: ModelSpec) -> str:
        """The gRPC method or the URL path of an inference request."""

    def encode(self, spec: ModelSpec, inputs: Inputs, stateful: bool = False) -> Encoded:
        """One request, serialized once before the test."""

    def base_fragment(self) -> bytes:
        """The fragment of a request outside any sequence."""

    def sequence_fragment(self, sequence_id: int, start: bool, end: bool) -> bytes:
        """The fragment that puts a request in a sequence."""

    def request(self, encoded: Encoded, fragment: bytes) -> tuple[bytes, dict[str, str]]:
        """The bytes to send and the headers (REST) for an encoded request and a fragment."""

    def decode(self, reply: bytes, headers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """A reply's outputs (for checks outside the hot path)."""


class GrpcProtocol:
    """Shared by the gRPC protocols: the body is one message, the fragment a message appended to it."""

    transport = "grpc"
    method = ""

    def path(self, spec: ModelSpec) -> str:
        return self.method

    def base_fragment(self) -> bytes:
        return b""

    def request(self, encoded: Encoded, fragment: bytes) -> tuple[bytes, dict[str, str]]:
        return encoded.head + fragment, {}
