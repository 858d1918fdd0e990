"""Models of the reference server: tensor specs, input validation, and the computations.

Each model version has a *kind* (a computation), its input and output specs, and its own
latency and fault settings. Computations are real (numpy), so a client can check a reply.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ovms_wire.dtypes import DType
from ovms_wire.spec import TensorSpec
from refserver.errors import ServingError

__all__ = ["TensorSpec", "ModelVersion", "KINDS", "validate_input", "decode_images"]

Arrays = dict[str, np.ndarray]


@dataclass
class ModelVersion:
    name: str
    version: int
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    params: dict = field(default_factory=dict)
    stateful: bool = False
    image_inputs: bool = False   # numeric NHWC inputs that also accept JPEG/PNG bytes

    def input_spec(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def compute(self, inputs: Arrays, state: dict | None) -> Arrays:
        return KINDS[self.kind].compute(self, inputs, state)


# ------------------------------------------------------------------------------ validation

def decode_images(blobs: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """JPEG/PNG bytes -> NHWC array of the spec's dtype; fixed H and W must match exactly."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for blob in blobs.reshape(-1):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                if img.format not in ("JPEG", "PNG"):
                    raise ServingError.invalid(f"Image parsing failed: {img.format} is not JPEG or PNG")
                channels = spec.shape[-1]
                mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "RGB")
                arr = np.asarray(img.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ServingError.invalid("Image parsing failed: data is not a JPEG or PNG image") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        h, w = spec.shape[-3], spec.shape[-2]
        if (h != -1 and arr.shape[0] != h) or (w != -1 and arr.shape[1] != w):
            raise ServingError.invalid(f"Invalid input shape - Expected: {spec.shape_str()}; "
                                       f"Actual: image of height {arr.shape[0]} and width {arr.shape[1]}")
        images.append(arr)
    if not images:
        raise ServingError.invalid("Invalid input shape - no images in the batch")
    if len({a.shape for a in images}) > 1:
        raise ServingError.invalid("Invalid input shape - images in one batch differ in size")
    return np.stack(images).astype(spec.dtype.numpy)


def validate_input(model: ModelVersion, spec: TensorSpec, wire: DType, arr: np.ndarray) -> np.ndarray:
    """Check one decoded input against its spec; returns the array the model computes on."""
    if wire.is_bytes and not spec.dtype.is_bytes and model.image_inputs and len(spec.shape) == 4:
        if arr.ndim != 1:
            raise ServingError.invalid(f"Invalid input shape - binary input {spec.name} must have shape [N]")
        arr = decode_images(arr, spec)
        wire = spec.dtype
    if wire.name != spec.dtype.name:
        raise ServingError.invalid(f"Invalid input precision - Expected: {spec.dtype.ovms}; Actual: {wire.ovms}")
    actual = "(" + ",".join(str(d) for d in arr.shape) + ")"
    if arr.ndim != len(spec.shape):
        raise ServingError.invalid(f"Invalid number of shape dimensions - Expected: {spec.shape_str()}; "
                                   f"Actual: {actual}")
    fits = [want in (-1, got) for want, got in zip(spec.shape, arr.shape, strict=True)]
    if not all(fits):
        if not fits[0] and all(fits[1:]):
            raise ServingError.invalid(f"Invalid input batch size - Expected: {spec.shape[0]}; "
                                       f"Actual: {arr.shape[0]}")
        raise ServingError.invalid(f"Invalid input shape - Expected: {spec.shape_str()}; Actual: {actual}")
    return arr


# ---------------------------------------------------------------------------- computations

@dataclass(frozen=True)
class Kind:
    compute: Callable[[ModelVersion, Arrays, dict | None], Arrays]
    check: Callable[[ModelVersion], None]


def _require(ok: bool, model: ModelVersion, what: str) -> None:
    if not ok:
        raise ValueError(f"model {model.name!r} version {model.version} (kind {model.kind}): {what}")


def _cast(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    # Integer outputs wrap around like C casts (what a real engine's output does on overflow).
    if spec.dtype.is_bytes:
        return value
    return np.asarray(value).astype(spec.dtype.numpy, casting="unsafe")


def _add(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    addend = model.params.get("addend", 1)
    out = {}
    for ispec, ospec in zip(model.inputs, model.outputs, strict=True):
        x = inputs[ispec.name]
        y = x.astype(np.float64) + addend if x.dtype.kind == "f" else x.astype(np.int64) + int(addend)
        if x.dtype == np.uint64:   # stay exact above 2**63
            y = x + np.uint64(int(addend))
        out[ospec.name] = _cast(y, ospec)
    return out


def _check_add(model: ModelVersion) -> None:
    _require(len(model.inputs) == len(model.outputs), model, "needs as many outputs as inputs")
    _require(all(not s.dtype.is_bytes for s in model.inputs), model, "inputs must be numeric")


def _sum_diff(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    x, y = (inputs[s.name].astype(np.float64) for s in model.inputs)
    if x.shape != y.shape:
        raise ServingError.invalid(f"Invalid input shape - inputs must have the same shape, got {list(x.shape)} "
                                   f"and {list(y.shape)}")
    out_sum, out_diff = model.outputs
    return {out_sum.name: _cast(x + y, out_sum), out_diff.name: _cast(x - y, out_diff)}


def _check_sum_diff(model: ModelVersion) -> None:
    _require(len(model.inputs) == 2 and len(model.outputs) == 2, model, "needs two inputs and two outputs")


def classifier_weights(channels: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((channels, classes))


def _classifier(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    x = inputs[model.inputs[0].name].astype(np.float64)           # N, C, H, W
    pooled = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)  # global average pool
    ospec = model.outputs[0]
    w = classifier_weights(x.shape[1], ospec.shape[-1], int(model.params.get("seed", 0)))
    logits = pooled @ w
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return {ospec.name: _cast(probs, ospec)}


def _check_classifier(model: ModelVersion) -> None:
    _require(len(model.inputs) == 1 and len(model.inputs[0].shape) == 4, model, "needs one NCHW input")
    _require(model.inputs[0].shape[1] != -1, model, "needs a fixed channel dimension")
    _require(len(model.outputs) == 1 and model.outputs[0].shape[-1] > 0, model, "needs one [N, classes] output")


def _image(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    x = inputs[model.inputs[0].name].astype(np.float64)          # N, H, W, C
    ospec = model.outputs[0]
    return {ospec.name: _cast(x.mean(axis=(1, 2)), ospec)}


def _check_image(model: ModelVersion) -> None:
    _require(len(model.inputs) == 1 and len(model.inputs[0].shape) == 4, model, "needs one NHWC input")
    _require(model.inputs[0].shape[-1] in (1, 3, 4), model, "needs 1, 3 or 4 channels")
    _require(len(model.outputs) == 1, model, "needs one [N, C] output")


def _string(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    x = inputs[model.inputs[0].name]
    lengths = np.array([len(v) for v in x.reshape(-1)], dtype=np.int64).reshape(x.shape)
    upper = np.empty(x.shape, dtype=object)
    upper.reshape(-1)[:] = [bytes(v).upper() for v in x.reshape(-1)]
    return {model.outputs[0].name: _cast(lengths, model.outputs[0]), model.outputs[1].name: upper}


def _check_string(model: ModelVersion) -> None:
    _require(len(model.inputs) == 1 and model.inputs[0].dtype.is_bytes, model, "needs one BYTES input")
    _require(len(model.outputs) == 2 and model.outputs[1].dtype.is_bytes, model,
             "needs outputs [lengths (numeric), upper (BYTES)]")


def _accumulate(model: ModelVersion, inputs: Arrays, state: dict | None) -> Arrays:
    assert state is not None  # the server always passes the sequence state to stateful models
    x = inputs[model.inputs[0].name].astype(np.float64)
    total = state.get("total")
    total = x.copy() if total is None or total.shape != x.shape else total + x
    state["total"] = total
    return {model.outputs[0].name: _cast(total, model.outputs[0])}


def _check_accumulate(model: ModelVersion) -> None:
    _require(model.stateful, model, "must be stateful")
    _require(len(model.inputs) == 1 and len(model.outputs) == 1, model, "needs one input and one output")


KINDS: dict[str, Kind] = {
    "add": Kind(_add, _check_add),
    "sum_diff": Kind(_sum_diff, _check_sum_diff),
    "classifier": Kind(_classifier, _check_classifier),
    "image": Kind(_image, _check_image),
    "string": Kind(_string, _check_string),
    "accumulate": Kind(_accumulate, _check_accumulate),
}
