"""The reference server's model configuration: JSON file or the built-in default.

Format (every key but ``name``, ``kind``, ``inputs`` and ``outputs`` optional)::

    {"seed": 0,
     "models": [
       {"name": "dummy", "kind": "add", "versions": [1],
        "inputs":  [{"name": "b", "datatype": "FP32", "shape": [1, 10]}],
        "outputs": [{"name": "a", "datatype": "FP32", "shape": [1, 10]}],
        "params": {"addend": 1},
        "latency": {"distribution": "uniform", "min_ms": 2, "max_ms": 8,
                    "stall": {"every_s": 2, "duration_ms": 200}},
        "faults": {"rate": 0.05, "code": "UNAVAILABLE", "message": "injected fault"}}]}

``versions`` is a list of version numbers, or an object mapping each version to overrides of any
of the model's keys (so two versions can differ in shape, params, latency or faults).
Latency distributions (milliseconds): ``fixed`` (ms), ``uniform`` (min_ms, max_ms), ``normal``
(mean_ms, stdev_ms; clipped at 0), ``lognormal`` (median_ms, sigma), ``exponential`` (mean_ms),
``mixture`` (components: [{weight, ...a distribution...}]). ``stall`` makes every request that
arrives within the first ``duration_ms`` of each ``every_s`` period wait until the stall ends.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ovms_wire.dtypes import NUMERIC_PRECISIONS
from refserver.errors import status_code
from refserver.models import KINDS, ModelVersion, TensorSpec

__all__ = ["ConfigError", "LatencySpec", "FaultSpec", "ServedVersion", "ServerConfig", "load_config",
           "default_config"]


class ConfigError(ValueError):
    """A configuration file the server cannot use; the message names the key to fix."""


DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal", "exponential", "mixture")


@dataclass(frozen=True)
class LatencySpec:
    distribution: str = "fixed"
    params: Mapping[str, Any] = field(default_factory=dict)
    stall_every_s: float = 0.0
    stall_ms: float = 0.0

    @classmethod
    def parse(cls, raw: Mapping | None, where: str) -> LatencySpec:
        if not raw:
            return cls()
        raw = dict(_mapping(raw, where))
        stall = _mapping(raw.pop("stall", None) or {}, f"{where}.stall")
        dist = raw.pop("distribution", "fixed")
        _check_distribution(dist, raw, where)
        every = _number(stall.get("every_s", 0), f"{where}.stall.every_s")
        dur = _number(stall.get("duration_ms", 0), f"{where}.stall.duration_ms")
        if stall and (every <= 0 or dur <= 0 or dur >= every * 1000):
            raise ConfigError(f"{where}.stall: needs every_s > 0 and 0 < duration_ms < every_s*1000")
        return cls(dist, raw, every, dur)

    def sample_s(self, rng: random.Random) -> float:
        return max(0.0, _sample_ms(self.distribution, self.params, rng)) / 1000.0

    def stall_wait_s(self, now: float) -> float:
        """How long a request arriving at wall time ``now`` waits for the current stall to end."""
        if not self.stall_every_s:
            return 0.0
        phase = now % self.stall_every_s
        return max(0.0, self.stall_ms / 1000.0 - phase)

    @property
    def is_zero(self) -> bool:
        return self.distribution == "fixed" and not self.params.get("ms") and not self.stall_every_s


def _mapping(raw: Any, where: str) -> Mapping:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: needs an object ({{...}}), got {raw!r}")
    return raw


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: needs a number, got {value!r}")
    return float(value)


def _check_tensors(tensors: Any, where: str) -> None:
    """Each tensor an object with a string name, a datatype and a list of whole-number dimensions."""
    if not isinstance(tensors, list):
        raise ConfigError(f"{where}: needs a list of tensors, got {tensors!r}")
    for i, t in enumerate(tensors):
        at = f"{where}[{i}]"
        _mapping(t, at)
        for key in ("name", "datatype", "shape"):
            if key not in t and not (key == "datatype" and "dtype" in t):
                raise ConfigError(f"{at}: missing key {key!r}")
        if not isinstance(t["name"], str) or not t["name"]:
            raise ConfigError(f"{at}.name: needs a non-empty string, got {t['name']!r}")
        if not isinstance(t.get("datatype", t.get("dtype")), str):
            raise ConfigError(f"{at}.datatype: needs a precision name such as FP32, got "
                              f"{t.get('datatype', t.get('dtype'))!r}")
        shape = t["shape"]
        if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
            raise ConfigError(f"{at}.shape: needs a list of whole numbers (-1 for a dynamic dimension), got {shape!r}")


_REQUIRED = {"fixed": ("ms",), "uniform": ("min_ms", "max_ms"), "normal": ("mean_ms", "stdev_ms"),
             "lognormal": ("median_ms", "sigma"), "exponential": ("mean_ms",), "mixture": ("components",)}


def _check_distribution(dist: str, params: Mapping, where: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")
    for key in _REQUIRED[dist]:
        if key not in params:
            raise ConfigError(f"{where}: distribution {dist} needs {', '.join(_REQUIRED[dist])}")
    if dist == "mixture":
        comps = params["components"]
        if not isinstance(comps, list) or not comps:
            raise ConfigError(f"{where}.components: a non-empty list is needed")
        for i, comp in enumerate(comps):
            comp = dict(_mapping(comp, f"{where}.components[{i}]"))
            if _number(comp.pop("weight", 0), f"{where}.components[{i}].weight") <= 0:
                raise ConfigError(f"{where}.components[{i}]: needs a weight > 0")
            _check_distribution(comp.pop("distribution", "fixed"), comp, f"{where}.components[{i}]")
    else:
        for key in _REQUIRED[dist]:
            value = params[key]
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ConfigError(f"{where}.{key}: needs a number >= 0, got {value!r}")
        if dist == "uniform" and params["min_ms"] > params["max_ms"]:
            raise ConfigError(f"{where}: min_ms is above max_ms")


def _sample_ms(dist: str, p: Mapping, rng: random.Random) -> float:
    if dist == "fixed":
        return float(p.get("ms", 0))
    if dist == "uniform":
        return rng.uniform(p["min_ms"], p["max_ms"])
    if dist == "normal":
        return rng.gauss(p["mean_ms"], p["stdev_ms"])
    if dist == "lognormal":
        return p["median_ms"] * math.exp(rng.gauss(0.0, p["sigma"]))
    if dist == "exponential":
        return rng.expovariate(1.0 / p["mean_ms"]) if p["mean_ms"] > 0 else 0.0
    comps = p["components"]
    total = sum(float(c["weight"]) for c in comps)
    pick = rng.uniform(0, total)
    for comp in comps:
        pick -= float(comp["weight"])
        if pick <= 0:
            break
    inner = {k: v for k, v in comp.items() if k not in ("weight", "distribution")}
    return _sample_ms(comp.get("distribution", "fixed"), inner, rng)


@dataclass(frozen=True)
class FaultSpec:
    rate: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "injected fault"

    @classmethod
    def parse(cls, raw: Mapping | None, where: str) -> FaultSpec:
        if not raw:
            return cls()
        raw = _mapping(raw, where)
        rate = raw.get("rate", 0.0)
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigError(f"{where}.rate: needs a number from 0 to 1, got {rate!r}")
        try:
            code = status_code(str(raw.get("code", "UNAVAILABLE")))
        except ValueError as exc:
            raise ConfigError(f"{where}.code: {exc}") from None
        return cls(float(rate), code, str(raw.get("message", "injected fault")))


@dataclass
class ServedVersion:
    model: ModelVersion
    latency: LatencySpec
    faults: FaultSpec


@dataclass
class ServerConfig:
    models: dict[str, dict[int, ServedVersion]]
    seed: int | None = None


_MODEL_KEYS = {"name", "kind", "versions", "inputs", "outputs", "params", "stateful", "image_inputs", "latency",
               "faults"}


def _parse_version(base: Mapping, version: int, where: str) -> ServedVersion:
    kind = base.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"{where}.kind: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    for key in ("inputs", "outputs"):
        _check_tensors(base.get(key), f"{where}.{key}")
    if base.get("params") is not None:
        _mapping(base["params"], f"{where}.params")
    try:
        inputs = tuple(TensorSpec.from_config(t) for t in base["inputs"])
        outputs = tuple(TensorSpec.from_config(t) for t in base["outputs"])
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc.args[0]!r} in a model or tensor") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.inputs: duplicate input names")
    model = ModelVersion(name=str(base["name"]), version=version, kind=kind, inputs=inputs, outputs=outputs,
                         params=dict(base.get("params") or {}), stateful=bool(base.get("stateful", False)),
                         image_inputs=bool(base.get("image_inputs", False)))
    try:
        KINDS[kind].check(model)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ServedVersion(model, LatencySpec.parse(base.get("latency"), f"{where}.latency"),
                         FaultSpec.parse(base.get("faults"), f"{where}.faults"))


def parse_config(raw: Mapping) -> ServerConfig:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), list) or not raw["models"]:
        raise ConfigError("config: needs a non-empty list under \"models\"")
    models: dict[str, dict[int, ServedVersion]] = {}
    for i, entry in enumerate(raw["models"]):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ConfigError(f"{where}: every model needs a \"name\"")
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known keys are {sorted(_MODEL_KEYS)}")
        name = str(entry["name"])
        if name in models:
            raise ConfigError(f"{where}: model {name!r} is defined twice")
        versions = entry.get("versions", [1])
        overrides: dict[int, Mapping] = {}
        try:
            if isinstance(versions, Mapping):
                overrides = {int(v): (o or {}) for v, o in versions.items()}
            else:
                overrides = {int(v): {} for v in versions}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.versions: versions must be positive integers") from None
        if not overrides or min(overrides) < 1:
            raise ConfigError(f"{where}.versions: versions must be positive integers")
        base = {k: v for k, v in entry.items() if k != "versions"}
        for v in overrides:
            _mapping(overrides[v], f"{where}.versions.{v}")
        models[name] = {}
        for v in sorted(overrides):
            at = f"{where} ({name} v{v})"
            try:
                models[name][v] = _parse_version({**base, **overrides[v]}, v, at)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:   # anything the checks above missed
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{at}: {type(exc).__name__}: {exc}") from None
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed: needs a whole number >= 0, got {seed!r}")
    return ServerConfig(models, seed)


def load_config(path: str | Path | None) -> ServerConfig:
    if path is None:
        return parse_config(default_config())
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_config(raw)


def _t(name: str, dtype: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": dtype, "shape": shape}


def default_config() -> dict:
    """The built-in models: OVMS-like names, every precision, images, strings, sequences, versions."""
    models: list[dict] = [
        {"name": "dummy", "kind": "add", "inputs": [_t("b", "FP32", [1, 10])],
         "outputs": [_t("a", "FP32", [1, 10])], "params": {"addend": 1}},
        {"name": "resnet", "kind": "classifier", "inputs": [_t("0", "FP32", [1, 3, 224, 224])],
         "outputs": [_t("1463", "FP32", [1, 1000])], "params": {"seed": 7}},
        {"name": "resnet_dyn", "kind": "classifier", "inputs": [_t("0", "FP32", [-1, 3, 224, 224])],
         "outputs": [_t("1463", "FP32", [-1, 1000])], "params": {"seed": 7}},
        {"name": "dynamic", "kind": "add", "inputs": [_t("x", "FP32", [-1, -1])],
         "outputs": [_t("y", "FP32", [-1, -1])], "params": {"addend": 1}},
        {"name": "two_inputs", "kind": "sum_diff", "inputs": [_t("x", "FP32", [-1, 4]), _t("y", "FP32", [-1, 4])],
         "outputs": [_t("sum", "FP32", [-1, 4]), _t("diff", "FP32", [-1, 4])]},
        {"name": "image", "kind": "image", "image_inputs": True, "inputs": [_t("image", "UINT8", [-1, 32, 48, 3])],
         "outputs": [_t("mean", "FP32", [-1, 3])]},
        {"name": "image_any", "kind": "image", "image_inputs": True,
         "inputs": [_t("image", "UINT8", [-1, -1, -1, 3])], "outputs": [_t("mean", "FP32", [-1, 3])]},
        {"name": "string", "kind": "string", "inputs": [_t("text", "BYTES", [-1])],
         "outputs": [_t("length", "INT64", [-1]), _t("upper", "BYTES", [-1])]},
        {"name": "stateful", "kind": "accumulate", "stateful": True, "inputs": [_t("x", "FP32", [1, 4])],
         "outputs": [_t("total", "FP32", [1, 4])], "params": {"max_sequences": 500, "sequence_timeout_s": 120}},
        {"name": "versioned", "kind": "add",
         "inputs": [_t("x", "FP32", [-1, 4])], "outputs": [_t("y", "FP32", [-1, 4])],
         "versions": {"1": {"params": {"addend": 1}},
                      "2": {"params": {"addend": 2}, "inputs": [_t("x", "FP32", [-1, 8])],
                            "outputs": [_t("y", "FP32", [-1, 8])]}}},
    ]
    for p in NUMERIC_PRECISIONS:
        models.append({"name": f"add_{p.lower()}", "kind": "add", "inputs": [_t("x", p, [-1, 8])],
                       "outputs": [_t("y", p, [-1, 8])], "params": {"addend": 1}})
    return {"models": models}
