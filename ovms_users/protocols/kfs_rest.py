"""KServe v2 (Open Inference Protocol) REST API, with JSON tensors or the binary-data extension."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np

from ovms_users.errors import OptionError, ServerError
from ovms_users.http import HttpTarget
from ovms_users.protocols.base import Encoded, Inputs
from ovms_users.protocols.rest_json import flat_json, utf8_or_none
from ovms_wire.dtypes import DTypeError, by_name
from ovms_wire.spec import ModelSpec, TensorSpec
from ovms_wire.tensors import TensorError, from_raw, to_raw

__all__ = ["KfsRest", "HEADER_LENGTH", "BINARY_THRESHOLD"]

log = logging.getLogger("ovms_users")
HEADER_LENGTH = "Inference-Header-Content-Length"
MODES = ("auto", "binary", "json")
#: --kfs_data auto sends a request's tensors as binary data from this many bytes on (if the server has the extension)
BINARY_THRESHOLD = 1024


class KfsRest:
    name = "kfs-rest"
    request_type = "KFS REST"
    transport = "http"

    def __init__(self, mode: str = "auto"):
        if mode not in MODES:
            raise OptionError("--kfs_data", f"unknown mode {mode!r}; use auto, binary or json")
        self.mode = mode
        self.server_info: dict | None = None
        self.binary_supported = True   # until the server's metadata says otherwise

    @staticmethod
    def _model_path(model: str, version: int | None) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")

    def fetch_spec(self, client: HttpTarget, model: str, version: int | None, timeout: float) -> ModelSpec:
        status, raw = client.call("GET", "/v2", timeout=timeout)
        try:
            server = json.loads(raw) if status == 200 else {}
            extensions = server.get("extensions")
        except (ValueError, AttributeError):
            server, extensions = {}, None
        self.server_info = {"name": server.get("name"), "version": server.get("version"), "extensions": extensions}
        # a server that lists its extensions without binary_tensor_data (MLServer) gets JSON in auto mode
        self.binary_supported = not isinstance(extensions, list) or "binary_tensor_data" in extensions
        if not self.binary_supported and self.mode == "auto":
            log.info("%s does not list the binary_tensor_data extension: sending JSON tensors", client.base_url)
        meta = client.json("GET", self._model_path(model, version), timeout=timeout)
        if not isinstance(meta, dict) or "inputs" not in meta:
            raise ServerError(f"model {model}: the metadata reply is not KServe v2's format: {str(meta)[:200]}")
        try:
            versions = [int(v) for v in meta.get("versions") or []]
        except (TypeError, ValueError):
            raise ServerError(f"model {model}: versions {meta.get('versions')!r} are not numbers") from None
        if version and versions and version not in versions:
            raise ServerError(f"model {model} has no version {version} (versions: {versions}); change "
                              "--model_version")
        chosen = version or (max(versions) if versions else 0)
        status, _ = client.call("GET", self._model_path(model, chosen) + "/ready", timeout=timeout)
        if status != 200:
            raise ServerError(f"model {model} version {chosen or 'default'} is not ready (HTTP {status})")

        def specs(tensors: list) -> tuple[TensorSpec, ...]:
            try:
                return tuple(TensorSpec(t["name"], by_name(t["datatype"]), tuple(int(d) for d in t["shape"]))
                             for t in tensors)
            except (KeyError, TypeError, ValueError, DTypeError) as exc:
                raise ServerError(f"model {model}: malformed tensor metadata ({exc!r})") from None

        return ModelSpec(model, chosen, specs(meta["inputs"]), specs(meta.get("outputs") or []))

    def path(self, spec: ModelSpec) -> str:
        return self._model_path(spec.name, spec.version) + "/infer"

    def _binary(self, inputs: Inputs) -> bool:
        if self.mode != "auto":
            return self.mode == "binary"
        size = 0
        for dtype, arr in inputs.values():
            if dtype.is_bytes:
                if any(utf8_or_none(v) is None for v in arr.reshape(-1)):
                    return True    # bytes that are not text cannot be JSON strings
                size += sum(len(v) for v in arr.reshape(-1))
            else:
                size += arr.nbytes
        return self.binary_supported and size >= BINARY_THRESHOLD

    def encode(self, spec: ModelSpec, inputs: Inputs, stateful: bool = False) -> Encoded:
        binary = self._binary(inputs)
        parts, blobs = [], []
        for name, (dtype, arr) in inputs.items():
            head = f'{{"name": {json.dumps(name)}, "shape": {json.dumps(list(arr.shape))}, "datatype": "{dtype.name}"'
            if binary:
                blob = to_raw(arr, dtype.name)
                blobs.append(blob)
                parts.append(head + f', "parameters": {{"binary_data_size": {len(blob)}}}}}')
            else:
                if dtype.is_bytes and any(utf8_or_none(v) is None for v in arr.reshape(-1)):
                    raise OptionError("--kfs_data", f"input {name} holds bytes that are not text, which JSON cannot "
                                                    "carry: use --kfs_data binary or auto")
                parts.append(head + f', "data": {flat_json(arr)}}}')
        outputs = ""
        if spec.outputs:   # ask for every output in the same form as the inputs went
            outputs = ', "outputs": [' + ", ".join(
                f'{{"name": {json.dumps(o.name)}, "parameters": {{"binary_data": {"true" if binary else "false"}}}}}'
                for o in spec.outputs) + "]"
        return Encoded(('{"inputs": [' + ", ".join(parts) + "]" + outputs).encode(), b"}", b"".join(blobs))

    def base_fragment(self) -> bytes:
        return b""

    def sequence_fragment(self, sequence_id: int, start: bool, end: bool) -> bytes:
        return (f', "parameters": {{"sequence_id": {sequence_id}, "sequence_start": {"true" if start else "false"}, '
                f'"sequence_end": {"true" if end else "false"}}}').encode()

    def request(self, encoded: Encoded, fragment: bytes) -> tuple[bytes, dict[str, str]]:
        doc = encoded.head + fragment + encoded.tail
        if not encoded.binary:
            return doc, {"Content-Type": "application/json"}
        return doc + encoded.binary, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(doc))}

    def decode(self, reply: bytes, headers: Mapping[str, str] | None = None,
               spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        n = int(lowered.get(HEADER_LENGTH.lower(), len(reply)))
        try:
            doc = json.loads(reply[:n])
            out, offset, raw = {}, 0, memoryview(reply)[n:]
            for t in doc["outputs"]:
                dtype, shape = t["datatype"], [int(d) for d in t["shape"]]
                size = (t.get("parameters") or {}).get("binary_data_size")
                if size is not None:
                    out[t["name"]] = from_raw(raw[offset:offset + size], dtype, shape)
                    offset += size
                elif by_name(dtype).is_bytes:
                    arr = np.empty(len(t["data"]), dtype=object)
                    arr[:] = [v.encode() for v in t["data"]]
                    out[t["name"]] = arr.reshape(shape)
                else:
                    out[t["name"]] = np.array(t["data"], dtype=by_name(dtype).numpy).reshape(shape)
        except (ValueError, KeyError, TypeError, TensorError, DTypeError) as exc:
            raise ServerError(f"malformed infer reply: {exc!r}") from None
        return out
