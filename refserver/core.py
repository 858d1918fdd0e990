"""What every frontend shares: model lookup, validation, latency and faults, sequences, counters.

Frontends (TFS and KServe, gRPC and REST) only decode requests into numpy arrays and encode the
results; everything a request goes through on the server happens here, once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from ovms_wire.dtypes import DType
from refserver.config import ServedVersion, ServerConfig
from refserver.errors import ServingError
from refserver.models import ModelVersion, TensorSpec, validate_input

__all__ = ["SequenceControl", "Sequence", "Server", "InferResult", "API_TFS", "API_KFS", "GRPC", "REST"]

API_TFS, API_KFS = "TensorFlowServing", "KServe"
GRPC, REST = "gRPC", "REST"

# Sequence control values of OVMS's `sequence_control_input`.
NO_CONTROL, SEQUENCE_START, SEQUENCE_END = 0, 1, 2


@dataclass(frozen=True)
class SequenceControl:
    """What a request says about its sequence, whichever way the API carries it."""
    sequence_id: int = 0
    start: bool = False
    end: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.sequence_id < 2 ** 64:
            raise ServingError.invalid(f"Sequence id {self.sequence_id} is outside the UINT64 range")


@dataclass
class Sequence:
    state: dict = field(default_factory=dict)
    last_used: float = 0.0
    ending: bool = False


class Sequences:
    """Per model version: OVMS's stateful semantics."""

    def __init__(self, max_sequences: int, timeout_s: float):
        self.live: dict[int, Sequence] = {}
        self.max_sequences = max_sequences
        self.timeout_s = timeout_s
        self._ids = itertools.count(1 << 40)   # server-chosen ids, far from client-chosen ones

    def acquire(self, ctl: SequenceControl) -> tuple[int, Sequence]:
        now = time.monotonic()
        if ctl.start:
            self._expire(now)
            seq_id = ctl.sequence_id
            if seq_id == 0:
                seq_id = next(i for i in self._ids if i not in self.live)
            elif seq_id in self.live:
                raise ServingError(grpc.StatusCode.ALREADY_EXISTS,
                                   f"Sequence with provided ID already exists: {seq_id}")
            if len(self.live) >= self.max_sequences:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Max sequence number has been reached")
            seq = self.live[seq_id] = Sequence()
        else:
            seq_id = ctl.sequence_id
            if seq_id == 0:
                raise ServingError.invalid("Sequence ID has not been provided in request inputs")
            found = self.live.get(seq_id)
            if found is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Sequence with provided ID does not exist: {seq_id}")
            if found.ending:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "Sequence last request is being processed and it's not available anymore")
            seq = found
        seq.last_used = now
        if ctl.end:
            seq.ending = True
        return seq_id, seq

    def release(self, seq_id: int, seq: Sequence) -> None:
        """After a request of the sequence: an ending sequence is gone (whether its last request succeeded)."""
        if seq.ending:
            self.live.pop(seq_id, None)

    def _expire(self, now: float) -> None:
        stale = [k for k, s in self.live.items() if now - s.last_used > self.timeout_s and not s.ending]
        for k in stale:
            del self.live[k]


@dataclass
class InferResult:
    model: ModelVersion
    outputs: dict[str, np.ndarray]
    specs: tuple[TensorSpec, ...]
    sequence_id: int | None = None


class Server:
    """The model repository and the request pipeline behind every frontend."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.counters: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self.sequences: dict[tuple[str, int], Sequences] = {}
        for name, versions in config.models.items():
            for v, served in versions.items():
                if served.model.stateful:
                    p = served.model.params
                    self.sequences[(name, v)] = Sequences(int(p.get("max_sequences", 500)),
                                                          float(p.get("sequence_timeout_s", 120)))
        self.started = time.time()

    # ---------------------------------------------------------------------------- lookup
    def resolve(self, name: str, version: int | None) -> ServedVersion:
        versions = self.config.models.get(name)
        if versions is None:
            raise ServingError.model_missing(name)
        if not version:   # 0 or None: the latest, as OVMS's default version policy
            return versions[max(versions)]
        served = versions.get(int(version))
        if served is None:
            raise ServingError.version_missing(name, int(version))
        return served

    def model_names(self) -> list[str]:
        return sorted(self.config.models)

    def versions(self, name: str) -> list[int]:
        if name not in self.config.models:
            raise ServingError.model_missing(name)
        return sorted(self.config.models[name])

    # -------------------------------------------------------------------------- counters
    def count(self, ok: bool, api: str, interface: str, method: str, name: str, version: int | None) -> None:
        """Count one request; ``version=None`` for OVMS's model-level series (status and readiness calls)."""
        metric = "ovms_requests_success" if ok else "ovms_requests_fail"
        self.counters[(metric, api, interface, method, name, "" if version is None else str(version))] += 1

    def prometheus_text(self) -> str:
        lines = []
        for metric, help_text in (("ovms_requests_success", "Number of successful requests to a model or a DAG."),
                                  ("ovms_requests_fail", "Number of failed requests to a model or a DAG.")):
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} counter")
            for key in sorted(k for k in self.counters if k[0] == metric):
                _, api, interface, method, name, version = key
                version_label = f',version="{version}"' if version else ""
                lines.append(f'{metric}{{api="{api}",interface="{interface}",method="{method}",name="{name}"'
                             f'{version_label}}} {self.counters[key]}')
        return "\n".join(lines) + "\n"

    # --------------------------------------------------------------------------- requests
    def describe(self, api: str, interface: str, method: str, name: str, version: int | None,
                 per_version: bool = True) -> ServedVersion:
        """Resolve a model for a metadata, status or readiness call, counting it as OVMS does: metadata per
        version, status and readiness per model (no version label)."""
        served = self.resolve(name, version)
        self.count(True, api, interface, method, name, served.model.version if per_version else None)
        return served

    async def infer(self, api: str, interface: str, method: str, name: str, version: int | None,
                    inputs: Mapping[str, tuple[DType, np.ndarray]], sequence: SequenceControl | None = None,
                    output_filter: Iterable[str] = ()) -> InferResult:
        served = self.resolve(name, version)
        model = served.model
        try:
            result = await self._infer(served, inputs, sequence, tuple(output_filter))
        except ServingError:
            self.count(False, api, interface, method, name, model.version)
            raise
        self.count(True, api, interface, method, name, model.version)
        return result

    async def _infer(self, served: ServedVersion, inputs: Mapping[str, tuple[DType, np.ndarray]],
                     sequence: SequenceControl | None, output_filter: tuple[str, ...]) -> InferResult:
        model = served.model
        arrays = self._validate(model, inputs)
        specs = model.outputs
        if output_filter:
            known = {s.name: s for s in model.outputs}
            missing = [n for n in output_filter if n not in known]
            if missing:
                raise ServingError.invalid(f"Invalid output name - no output named {missing[0]!r} in model "
                                           f"{model.name}")
            specs = tuple(known[n] for n in output_filter)
        seq_id: int | None = None
        seq: Sequence | None = None
        seqs = self.sequences.get((model.name, model.version))
        if seqs is not None:
            if sequence is None:
                raise ServingError.invalid("Sequence ID has not been provided in request inputs")
            seq_id, seq = seqs.acquire(sequence)
        elif sequence is not None and (sequence.sequence_id or sequence.start or sequence.end):
            raise ServingError.invalid(f"Model {model.name} is not stateful; remove the sequence inputs")
        try:
            await self._delay(served)
            if served.faults.rate and self.rng.random() < served.faults.rate:
                raise ServingError(served.faults.code, served.faults.message)
            outputs = model.compute(arrays, None if seq is None else seq.state)
        finally:
            if seqs is not None and seq is not None and seq_id is not None:
                seqs.release(seq_id, seq)
        return InferResult(model, {s.name: outputs[s.name] for s in specs}, specs, seq_id)

    def _validate(self, model: ModelVersion, inputs: Mapping[str, tuple[DType, np.ndarray]]) -> dict[str, np.ndarray]:
        for spec in model.inputs:
            if spec.name not in inputs:
                raise ServingError.invalid(f"Missing input with specific name - Required input: {spec.name}")
        arrays = {}
        for name, (wire, arr) in inputs.items():
            spec = model.input_spec(name)
            if spec is None:
                raise ServingError.invalid(f"Unexpected input name - {name} is not an input of model {model.name}")
            arrays[name] = validate_input(model, spec, wire, arr)
        return arrays

    async def _delay(self, served: ServedVersion) -> None:
        lat = served.latency
        if lat.is_zero:
            return
        wait = lat.stall_wait_s(time.time()) + lat.sample_s(self.rng)
        if wait > 0:
            await asyncio.sleep(wait)
