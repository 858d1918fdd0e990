"""TensorFlow Serving REST API (``/v1/models/...``), as OVMS, TF Serving and KServe's v1 serve it."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import numpy as np

from ovms_users.errors import OptionError, ServerError
from ovms_users.http import HttpStatusError, HttpTarget
from ovms_users.protocols.base import Encoded, Inputs
from ovms_users.protocols.rest_json import tensor_json
from ovms_wire.dtypes import DTypeError, by_name
from ovms_wire.spec import ModelSpec, TensorSpec

__all__ = ["TfsRest", "spec_from_metadata_json"]

FORMATS = ("columnar", "row")


def _get(d: Mapping, *keys: str):
    """The first of several spellings (OVMS writes camelCase, TF Serving snake_case)."""
    for key in keys:
        if key in d:
            return d[key]
    raise KeyError(keys[0])


def spec_from_metadata_json(name: str, version: int, doc: Mapping) -> ModelSpec:
    try:
        sig = _get(_get(doc["metadata"]["signature_def"], "signatureDef", "signature_def"), "serving_default")
        served = int(_get(doc, "modelSpec", "model_spec").get("version") or version or 0)

        def specs(tensors: Mapping) -> tuple[TensorSpec, ...]:
            out = []
            for key in sorted(tensors):
                info = tensors[key]
                shape_doc = _get(info, "tensorShape", "tensor_shape")
                dims = tuple(int(d.get("size", -1)) for d in shape_doc.get("dim", []))
                out.append(TensorSpec(key, by_name(info["dtype"]), dims))
            return tuple(out)

        return ModelSpec(name, served, specs(sig.get("inputs", {})), specs(sig.get("outputs", {})))
    except (KeyError, TypeError, ValueError, AttributeError, DTypeError) as exc:
        raise ServerError(f"model {name}: the metadata reply is not TF Serving's format ({exc!r})") from None


class TfsRest:
    name = "tfs-rest"
    request_type = "TFS REST"
    transport = "http"

    def __init__(self, rest_format: str = "columnar"):
        if rest_format not in FORMATS:
            raise OptionError("--rest_format", f"unknown format {rest_format!r}; use columnar or row")
        self.format = rest_format

    @staticmethod
    def _model_path(model: str, version: int | None) -> str:
        return f"/v1/models/{model}" + (f"/versions/{version}" if version else "")

    def fetch_spec(self, client: HttpTarget, model: str, version: int | None, timeout: float) -> ModelSpec:
        status = client.json("GET", self._model_path(model, version), timeout=timeout)
        if isinstance(status, dict) and "model_version_status" in status:
            ready = sorted(int(s["version"]) for s in status["model_version_status"] if s.get("state") == "AVAILABLE")
            if not ready:
                raise ServerError(f"model {model} has no AVAILABLE version: {status['model_version_status']}")
            chosen = version or ready[-1]
        elif isinstance(status, dict) and "ready" in status:     # KServe's v1 protocol
            if not status["ready"]:
                raise ServerError(f"model {model} is not ready")
            chosen = version or 0
        else:
            raise ServerError(f"model {model}: the status reply is not TF Serving's format: {str(status)[:200]}")
        try:
            doc = client.json("GET", self._model_path(model, chosen) + "/metadata", timeout=timeout)
        except HttpStatusError as exc:
            if exc.status in (404, 405, 501):   # no metadata endpoint (KServe v1): inputs come from --shape
                return ModelSpec(model, chosen, (), ())
            raise
        return spec_from_metadata_json(model, chosen, doc)

    def path(self, spec: ModelSpec) -> str:
        return self._model_path(spec.name, spec.version) + ":predict"

    def encode(self, spec: ModelSpec, inputs: Inputs, stateful: bool = False) -> Encoded:
        names = list(inputs)
        unnamed = len(names) == 1 and not stateful
        if self.format == "columnar":
            if unnamed:
                return Encoded(b'{"inputs": ' + tensor_json(inputs[names[0]][1]).encode(), b"}")
            fields = ", ".join(f"{json.dumps(n)}: {tensor_json(inputs[n][1])}" for n in names)
            return Encoded(b'{"inputs": {' + fields.encode(), b"}}")
        if unnamed:   # row format, one input: the instances are the input's rows
            return Encoded(b'{"instances": ' + tensor_json(inputs[names[0]][1]).encode(), b"}")
        batch = len(next(iter(inputs.values()))[1])
        if stateful and batch != 1:
            raise OptionError("--rest_format", "a stateful request in the row format holds one instance: use --bs 1, "
                                               "or --rest_format columnar")
        rows = ["{" + ", ".join(f"{json.dumps(n)}: {tensor_json(inputs[n][1][i])}" for n in names)
                for i in range(batch)]
        # the fragment goes into the last instance (the only one in a stateful request)
        return Encoded(b'{"instances": [' + "}, ".join(rows).encode(), b"}]}")

    def base_fragment(self) -> bytes:
        return b""

    def sequence_fragment(self, sequence_id: int, start: bool, end: bool) -> bytes:
        control = 1 if start else 2 if end else 0
        if self.format == "columnar":
            return f', "sequence_id": [{sequence_id}], "sequence_control_input": [{control}]'.encode()
        return f', "sequence_id": {sequence_id}, "sequence_control_input": {control}'.encode()

    def request(self, encoded: Encoded, fragment: bytes) -> tuple[bytes, dict[str, str]]:
        return encoded.head + fragment + encoded.tail, {"Content-Type": "application/json"}

    def decode(self, reply: bytes, headers: Mapping[str, str] | None = None,
               spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
        try:
            doc = json.loads(reply)
            if "predictions" in doc:
                preds = doc["predictions"]
                if preds and isinstance(preds[0], dict):
                    out = {k: [p[k] for p in preds] for k in preds[0]}
                else:
                    out = {(spec.outputs[0].name if spec and len(spec.outputs) == 1 else "output"): preds}
            else:
                outs = doc["outputs"]
                out = outs if isinstance(outs, dict) else {
                    (spec.outputs[0].name if spec and len(spec.outputs) == 1 else "output"): outs}
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ServerError(f"malformed predict reply: {exc!r}") from None
        dtypes = {o.name: o.dtype.numpy for o in spec.outputs} if spec else {}
        return {k: _array(v, dtypes.get(k)) for k, v in out.items()}


def _array(value: object, dtype: np.dtype | None = None) -> np.ndarray:
    """JSON values as an array: bytes for strings and b64 objects, else numbers in ``dtype`` (exact for
    64-bit integers, which numpy would otherwise guess as float64)."""
    def walk(v: object) -> object:
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict) and "b64" in v:
            return base64.b64decode(v["b64"])
        if isinstance(v, str):
            return v.encode()
        return v
    walked = walk(value)
    arr = np.array(walked, dtype=object)
    if arr.size and all(isinstance(x, bytes) for x in arr.reshape(-1)):
        return arr
    return np.array(walked, dtype=dtype)
