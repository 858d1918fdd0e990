"""One workload per load process: model metadata, the dataset as ready-to-send bytes, sequence ids, failures.

The first user of a process builds it (metadata over the chosen API, then the dataset, each entry
serialized once); the others wait for it. Every later request only picks bytes and sends them.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import ssl
import time
import urllib.error
from dataclasses import dataclass, replace

import grpc
from gevent.lock import Semaphore

from ovms_users.dataset import Entry, build_dataset, plan_inputs
from ovms_users.errors import OptionError, OvmsUserError, ServerError
from ovms_users.http import HttpStatusError, HttpTarget, ssl_context
from ovms_users.options import BenchOptions, parse_host
from ovms_users.protocols import Encoded, WireProtocol, make_protocol
from ovms_users.transport import make_channel, wants_tls
from ovms_wire.dtypes import DTYPES, DTypeError, by_name
from ovms_wire.spec import ModelSpec, TensorSpec

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


def _served_hint(api: str, target: str, tls: bool, opts: BenchOptions, version_missing: bool) -> str:
    """`` (it serves ...)``: what the server lists, asked once with a short timeout; empty if it cannot say."""
    from ovms_users.listing import list_models  # listing imports this module

    host = base_url(target, tls) if api.endswith("-rest") else ("grpcs://" if tls else "") + target
    quick = replace(opts, api=api, metadata_timeout=min(3.0, opts.metadata_timeout))
    try:
        served = list_models(quick, host)
    except Exception:   # noqa: BLE001 - only a hint: the error it decorates is the message
        return ""
    if version_missing:
        versions = sorted({m.version for m in served if m.name == opts.model_name and m.version},
                          key=lambda v: (len(v), v))
        if not versions:
            return ""
        return f" (it serves {opts.model_name} version{'s' if len(versions) > 1 else ''} {', '.join(versions)})"
    names = sorted({m.name for m in served})
    if not names:
        return ""
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} models)" if len(names) > 8 else "")
    return f" (it serves {shown})"


def _not_served(where: str, why: str, api: str, target: str, tls: bool, opts: BenchOptions,
                extra: str = "") -> ServerError:
    version_missing = bool(opts.model_version) and "version" in why.lower()
    option = "--model_version" if version_missing else "--model_name"
    hint = _served_hint(api, target, tls, opts, version_missing)
    return ServerError(f"{where} does not serve {_what(opts)} ({why}); check {option}{extra}{hint}")


def _explain(exc: grpc.RpcError, target: str, opts: BenchOptions, api: str = "", tls: bool = False) -> ServerError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return _not_served(target, details, api or opts.api, target, tls, opts)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ServerError(f"{target} does not speak the {opts.api.upper()} gRPC API ({details}); check --api and "
                           "--host (is this the gRPC port?)")
    return ServerError(f"{target} refused the metadata request for {_what(opts)}: {code.name}: {details}")


def fetch_spec(protocol: WireProtocol, target: str, tls: bool, opts: BenchOptions) -> ModelSpec:
    """The model's metadata, retried while the server is unreachable, for at most --metadata_timeout."""
    try:
        if protocol.transport == "http":
            return _fetch_http(protocol, target, tls, opts)
        return _fetch_grpc(protocol, target, tls, opts)
    except ServerError as exc:
        unknown = exc.__context__
        if not isinstance(unknown, DTypeError):
            raise
        raise ServerError(f"{target}: {_what(opts)} has a tensor of datatype {unknown.precision or '?'}, which the "
                          f"suite cannot send (it sends {', '.join(d.name for d in DTYPES)}); benchmark another "
                          "model (--model_name)") from None


def _fetch_grpc(protocol: WireProtocol, target: str, tls: bool, opts: BenchOptions) -> ModelSpec:
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
                    raise _explain(exc, target, opts, protocol.name, tls) from None
                details = exc.details() or ""
                if "http1.x server" in details or "Failed parsing HTTP/2" in details:
                    raise ServerError(f"{target} answers HTTP/1, not gRPC; check --host (give the gRPC port) and "
                                      "--api") from None
                if any(w in details.lower() for w in ("ssl", "handshake", "certificate", "tls")):
                    raise ServerError(f"TLS with {target} failed ({details}); check --certs_dir, --ssl_ca, "
                                      "--ssl_cert, --ssl_key and the host name") from None
                _wait_or_give_up(deadline, target, opts, f"{exc.code().name}: {details}", announced)
                announced = True
    finally:
        channel.close()


def _wait_or_give_up(deadline: float, target: str, opts: BenchOptions, why: str, announced: bool) -> None:
    if time.monotonic() + 0.5 > deadline:
        raise ServerError(f"no answer from {target} for {_what(opts)} within --metadata_timeout "
                          f"{opts.metadata_timeout:g} s ({why}); check --host and that the server runs")
    if not announced:
        log.warning("waiting for %s (%s); retrying for up to %g s", target, why, opts.metadata_timeout)
    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def base_url(target: str, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{target}"


def _fetch_http(protocol: WireProtocol, target: str, tls: bool, opts: BenchOptions) -> ModelSpec:
    client = HttpTarget(base_url(target, tls), ssl_context(opts) if tls else None, options=opts)   # --header too
    deadline = time.monotonic() + opts.metadata_timeout
    announced = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            return protocol.fetch_spec(client, opts.model_name, opts.model_version,
                                       timeout=max(0.05, min(remaining, 10.0)))
        except HttpStatusError as exc:
            if exc.status == 404 and exc.message.lstrip().startswith("<"):   # a web page, not a JSON error
                raise ServerError(f"{client.base_url} is not a model server's REST API: it answered the metadata "
                                  f"request with HTTP 404 and a web page ({exc.message[:60]!r}); check --host "
                                  "(give the REST port) and --api") from None
            if exc.status == 404:
                raise _not_served(client.base_url, f"HTTP 404: {exc.message}", protocol.name, target, tls, opts,
                                  " and --api") from None
            if exc.status < 500:
                raise ServerError(f"{client.base_url} refused the metadata request for {_what(opts)} "
                                  f"(HTTP {exc.status}: {exc.message}); check --api and --host") from None
            why = f"HTTP {exc.status}: {exc.message}"
        except ssl.SSLError as exc:
            raise ServerError(f"TLS with {target} failed ({exc.reason or exc}); check --certs_dir, --ssl_ca, "
                              "--ssl_cert, --ssl_key and the host name") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise ServerError(f"TLS with {target} failed ({reason.reason or reason}); check --certs_dir, "
                                  "--ssl_ca, --ssl_cert, --ssl_key and the host name") from None
            why = str(reason)
        except (OSError, ValueError, http.client.HTTPException) as exc:   # connection reset, timeouts, cut replies
            why = f"{type(exc).__name__}: {exc}"
        _wait_or_give_up(deadline, target, opts, why, announced)
        announced = True


def spec_from_shapes(spec: ModelSpec, opts: BenchOptions) -> ModelSpec:
    """For a server that gives no metadata (KServe's v1 API): inputs named by --shape, as FP32."""
    shapes = dict(opts.shape.per_input)
    if not shapes and opts.shape.default:
        shapes = {"input": opts.shape.default}
    if not shapes:
        raise OptionError("--shape", f"the server gives no metadata for model {spec.name}; describe its inputs with "
                                     "--shape 'NAME: D0 D1 ...' (values are sent as FP32 numbers)")
    fp32 = by_name("FP32")
    return ModelSpec(spec.name, spec.version, tuple(TensorSpec(n, fp32, s) for n, s in shapes.items()), ())


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
    """Everything a load process needs to send: the protocol, the target, and every request encoded once."""
    options: BenchOptions
    protocol: WireProtocol
    target: str
    tls: bool
    spec: ModelSpec
    entries: list[Entry]
    encoded: list[Encoded]
    requests: list[tuple[bytes, dict[str, str]]]   # outside sequences: (body, headers), ready to send
    batch: list[int]
    path: str
    name: str
    sequence_ids: SequenceIds
    failures: int = 0
    stop_requested: bool = False
    active_users: int = 0    # users still sending their --steps_number requests

    @property
    def server_info(self) -> dict:
        """What the server says it is (KServe's server metadata; the TFS API has none), and where it is."""
        info = getattr(self.protocol, "server_info", None) or {"name": None}
        return {**info, "address": self.target, "api": self.protocol.name, "tls": self.tls}

    @property
    def bodies(self) -> list[bytes]:
        return [body for body, _ in self.requests]

    @classmethod
    def build(cls, opts: BenchOptions, host: str | None, worker_index: int = 0, limit: int | None = None,
              api: str | None = None) -> Workload:
        started = time.monotonic()
        api = api or opts.api
        protocol = make_protocol(api, opts)
        target, scheme_tls = parse_host(host, api)
        tls = wants_tls(opts, scheme_tls)
        spec = fetch_spec(protocol, target, tls, opts)
        if not spec.inputs:
            spec = spec_from_shapes(spec, opts)
        plans = plan_inputs(spec, opts)
        entries = build_dataset(spec, opts, plans, limit=limit)
        encoded = [protocol.encode(spec, e.inputs, stateful=opts.stateful) for e in entries]
        base = protocol.base_fragment()
        requests = [protocol.request(e, base) for e in encoded]
        took = time.monotonic() - started
        log.info("%s: %s, %d requests of batch sizes %s ready in %.2f s", protocol.request_type,
                 ", ".join(s.describe() for s in spec.inputs), len(requests),
                 sorted({e.batch_size for e in entries}), took)
        return cls(opts, protocol, target, tls, spec, entries, encoded, requests, [e.batch_size for e in entries],
                   protocol.path(spec), f"{spec.name}:{spec.version}" if spec.version else spec.name,
                   SequenceIds(opts.stateful_id, opts.stateful_hop, worker_index))


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

    @property
    def current(self) -> Workload | None:
        return self._workload

    def reset_run(self) -> None:
        if self._workload is not None:
            self._workload.failures = 0
            self._workload.stop_requested = False
            self._workload.active_users = 0


CACHE = WorkloadCache()
