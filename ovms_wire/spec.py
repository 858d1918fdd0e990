"""What a model takes and gives: tensor and model specs, shared by the load users and the server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ovms_wire.dtypes import DType, by_name

__all__ = ["TensorSpec", "ModelSpec"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: DType
    shape: tuple[int, ...]   # -1 for a dynamic dimension

    @classmethod
    def from_config(cls, raw: Mapping) -> TensorSpec:
        shape = tuple(int(d) for d in raw["shape"])
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"tensor {raw['name']!r}: dimensions must be positive or -1, got {list(shape)}")
        return cls(str(raw["name"]), by_name(str(raw.get("datatype") or raw.get("dtype"))), shape)

    def shape_str(self) -> str:
        return "(" + ",".join(str(d) for d in self.shape) + ")"

    @property
    def dynamic(self) -> bool:
        return any(d == -1 for d in self.shape[1:])

    def describe(self) -> str:
        return f"{self.name} {self.dtype.name}{list(self.shape)}"


@dataclass(frozen=True)
class ModelSpec:
    """A served model version as its metadata describes it."""
    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def to_dict(self) -> dict:
        def tensors(specs: tuple[TensorSpec, ...]) -> dict:
            return {s.name: {"dtype": s.dtype.name, "shape": list(s.shape)} for s in specs}
        return {"model_name": self.name, "model_version": self.version, "inputs": tensors(self.inputs),
                "outputs": tensors(self.outputs)}
