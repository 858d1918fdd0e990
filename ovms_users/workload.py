"""One workload per load process: model metadata, the dataset as ready-to-send bytes, sequence ids, failures.

The first user of a process builds it (metadata over the chosen API, then the dataset, each entry
serialized once); the others wait for it. Every later request only picks bytes and sends them.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from gevent.lock import Semaphore

from ovms_users.dataset import Entry, build_dataset, plan_inputs
from ovms_users.errors import OvmsUserError, ServerError
from ovms_users.options import BenchOptions, parse_host
from ovms_users.protocols import PROTOCOLS
from ovms_users.protocols.base import WireProtocol
from ovms_users.transport import make_channel
from ovms_wire.spec import ModelSpec

__all__ = ["Workload", "fetch_spec", "SequenceIds", "ID_BLOCK"]

log = logging.getLogger("ovms_users")

#: Every user owns a block of this many sequence ids (see SequenceIds).
ID_BLOCK = 1 << 24
USERS_PER_PROCESS = 1 << 16
_FATAL_CODES = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.FAILED_PRECONDITION}


def _what(opts: BenchOptions) -> str:
    return f"model {opts.model_name}" + (f" version {opts.model_version}" if opts.model_version else "")


def _explain(exc: grpc.RpcError, target: str, opts: BenchOptions) -> ServerError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        option = "--model_version" if "version" in details.lower() and opts.model_version else "--model_name"
        return ServerError(f"{target} does not serve {_what(opts)} ({details}); check {option}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ServerError(f"{target} does not speak the {opts.api.upper()} gRPC API ({details}); check --api and "
                           "--host (is this the gRPC port?)")
    return ServerError(f"{target} refused the metadata request for {_what(opts)}: {code.name}: {details}")


def fetch_spec(protocol: WireProtocol, target: str, tls: bool, opts: BenchOptions) -> ModelSpec:
    """The model's metadata, retried while the server is unreachable, for at most --metadata_timeout."""
    deadline = time.monotonic() + opts.metadata_timeout
    channel = make_channel(target, opts, tls)
    announced = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                return protocol.fetch_spec(channel, opts.model_name, opts.model_version,
                                           timeout=max(0.05, min(remaining, 10.0)))
            except grpc.RpcError as exc:
                if exc.code() in _FATAL_CODES:
                    raise _explain(exc, target, opts) from None
                details = exc.details() or ""
                if "http1.x server" in details or "Failed parsing HTTP/2" in details:
                    raise ServerError(f"{target} answers HTTP/1, not gRPC; check --host (give the gRPC port) and "
                                      "--api") from None
                if any(w in details.lower() for w in ("ssl", "handshake", "certificate", "tls")):
                    raise ServerError(f"TLS with {target} failed ({details}); check --certs_dir, --ssl_ca, "
                                      "--ssl_cert, --ssl_key and the host name") from None
                if time.monotonic() + 0.5 > deadline:
                    raise ServerError(f"no answer from {target} for {_what(opts)} within --metadata_timeout "
                                      f"{opts.metadata_timeout:g} s ({exc.code().name}: {details}); check --host and "
                                      "that the server runs") from None
                if not announced:
                    log.warning("waiting for %s (%s); retrying for up to %g s", target, exc.code().name,
                                opts.metadata_timeout)
                    announced = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        channel.close()


class SequenceIds:
    """Unique sequence ids across users, processes and distributed workers.

    User slot ``s = worker_index * 65536 + n`` (``n`` counts the users a process has started) owns the
    ids ``stateful_id + s * 2**24 + j`` for ``0 <= j < 2**24``; its ``k``-th sequence uses
    ``j = (k * stateful_hop) mod 2**24``, so with the default hop 0 every user reuses its own id.
    """

    def __init__(self, first_id: int, hop: int, worker_index: int):
        self.first_id, self.hop, self.worker_index = first_id, hop, worker_index
        self._local = itertools.count()

    def for_new_user(self) -> tuple[int, int, int]:
        """(local user number, base id, hop) of a new user's block."""
        n = next(self._local) % USERS_PER_PROCESS
        slot = self.worker_index * USERS_PER_PROCESS + n
        return n, self.first_id + slot * ID_BLOCK, self.hop

    @staticmethod
    def nth(base: int, hop: int, k: int) -> int:
        return base + (k * hop) % ID_BLOCK


@dataclass
class Workload:
    options: BenchOptions
    protocol: WireProtocol
    target: str
    tls: bool
    spec: ModelSpec
    entries: list[Entry]
    bodies: list[bytes]
    batch: list[int]
    name: str
    sequence_ids: SequenceIds
    failures: int = 0
    stop_requested: bool = False
    built_in_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, opts: BenchOptions, host: str | None, worker_index: int = 0, limit: int | None = None,
              api: str | None = None) -> Workload:
        started = time.monotonic()
        api = api or opts.api
        protocol = PROTOCOLS[api]()
        target, tls = parse_host(host, api)
        spec = fetch_spec(protocol, target, tls, opts)
        plans = plan_inputs(spec, opts)
        entries = build_dataset(spec, opts, plans, limit=limit)
        bodies = [protocol.encode(spec, e.inputs) for e in entries]
        took = time.monotonic() - started
        log.info("%s: %s, %d requests of batch sizes %s ready in %.2f s", protocol.request_type,
                 ", ".join(s.describe() for s in spec.inputs), len(bodies), sorted({e.batch_size for e in entries}),
                 took)
        return cls(opts, protocol, target, tls, spec, entries, bodies, [e.batch_size for e in entries],
                   f"{spec.name}:{spec.version}" if spec.version else spec.name,
                   SequenceIds(opts.stateful_id, opts.stateful_hop, worker_index), built_in_s=took)


class WorkloadCache:
    """Per process: builds the workload once per (options, host, api) and hands it to every user."""

    def __init__(self) -> None:
        self._lock = Semaphore()
        self._key: str | None = None
        self._workload: Workload | None = None
        self._error: OvmsUserError | None = None

    def get(self, opts: BenchOptions, host: str | None, worker_index: int, api: str | None = None) -> Workload:
        key = repr((opts, host, api))
        with self._lock:
            if key != self._key:
                self._key, self._workload, self._error = key, None, None
                try:
                    self._workload = Workload.build(opts, host, worker_index, api=api)
                except OvmsUserError as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._workload is not None
            return self._workload

    def seed(self, opts: BenchOptions, host: str | None, workload: Workload, api: str | None = None) -> None:
        with self._lock:
            self._key, self._workload, self._error = repr((opts, host, api)), workload, None

    def reset_run(self) -> None:
        if self._workload is not None:
            self._workload.failures = 0
            self._workload.stop_requested = False


CACHE = WorkloadCache()
