"""Model listing on every API (the OVMS client's ``--list_models``), and one model's inputs and outputs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import grpc
from tritonclient.grpc import service_pb2 as kfs

from ovms_users.errors import ServerError
from ovms_users.http import HttpStatusError, HttpTarget, ssl_context
from ovms_users.options import BenchOptions, parse_host
from ovms_users.protocols import make_protocol
from ovms_users.protocols.tfs_grpc import TfsGrpc
from ovms_users.transport import make_channel, wants_tls
from ovms_users.workload import base_url, fetch_spec
from ovms_wire.protos.tfs import serving_apis_pb2 as tfs
from ovms_wire.spec import ModelSpec

__all__ = ["ServedModel", "list_models", "describe_model", "format_listing"]


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    state: str


def _no_index(api: str, target: str, why: str) -> ServerError:
    return ServerError(f"{target} cannot list its models over --api {api} ({why}); give --model_name to ask about "
                       "one model")


def _http_list(api: str, client: HttpTarget, opts: BenchOptions) -> list[ServedModel]:
    timeout = opts.metadata_timeout
    try:
        if api == "tfs-rest":
            config = client.json("GET", "/v1/config", timeout=timeout)   # OVMS's config status
            return [ServedModel(name, str(s["version"]), s.get("state", "?")) for name, doc in sorted(config.items())
                    for s in doc.get("model_version_status", [])]
        index = client.json("POST", "/v2/repository/index", body={}, timeout=timeout)
        return [ServedModel(m["name"], str(m.get("version") or ""), m.get("state") or "?") for m in index]
    except HttpStatusError as exc:
        if exc.message.lstrip().startswith("<"):   # a web page, not a model server's JSON error
            raise ServerError(f"{client.base_url} is not a model server's REST API: it answered HTTP {exc.status} "
                              f"with a web page ({exc.message[:60]!r}); check --host (give the REST port) and "
                              "--api") from None
        if exc.status not in (404, 405, 501) or not opts.model_name:
            raise _no_index(api, client.base_url, f"HTTP {exc.status}: {exc.message}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ServerError(f"{client.base_url}: the model list is not in the expected format ({exc!r})") from None
    # per-model fallback: the server has no index, but answers about the model it was asked about
    if api == "tfs-rest":
        status = client.json("GET", f"/v1/models/{opts.model_name}", timeout=timeout)
        if "model_version_status" in status:
            return [ServedModel(opts.model_name, str(s["version"]), s.get("state", "?"))
                    for s in status["model_version_status"]]
        return [ServedModel(opts.model_name, "", "READY" if status.get("ready") else "NOT READY")]
    meta = client.json("GET", f"/v2/models/{opts.model_name}", timeout=timeout)
    versions = [str(v) for v in meta.get("versions") or []] or [""]
    states = []
    for v in versions:
        path = f"/v2/models/{opts.model_name}" + (f"/versions/{v}" if v else "") + "/ready"
        states.append(ServedModel(opts.model_name, v, "READY" if client.call("GET", path)[0] == 200 else "NOT READY"))
    return states


def _grpc_list(api: str, target: str, tls: bool, opts: BenchOptions) -> list[ServedModel]:
    channel = make_channel(target, opts, tls)
    timeout = opts.metadata_timeout
    try:
        if api == "kfs":
            try:
                index = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex",
                                            request_serializer=kfs.RepositoryIndexRequest.SerializeToString,
                                            response_deserializer=kfs.RepositoryIndexResponse.FromString)(
                    kfs.RepositoryIndexRequest(), timeout=timeout)
                return [ServedModel(m.name, m.version, m.state or "?") for m in index.models]
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED or not opts.model_name:
                    raise
            spec = make_protocol("kfs", opts).fetch_spec(channel, opts.model_name, opts.model_version, timeout)
            return [ServedModel(spec.name, str(spec.version or ""), "READY")]
        if not opts.model_name:   # TF Serving's gRPC API has no call that lists models
            raise _no_index(api, target, "TF Serving's gRPC API has no model list; OVMS lists them over REST: use "
                                         "--api tfs-rest with the REST port")
        req = tfs.GetModelStatusRequest()
        req.model_spec.name = opts.model_name
        status = channel.unary_unary(TfsGrpc.status_path,
                                     request_serializer=tfs.GetModelStatusRequest.SerializeToString,
                                     response_deserializer=tfs.GetModelStatusResponse.FromString)(req, timeout=timeout)
        return [ServedModel(opts.model_name, str(s.version), tfs.ModelVersionStatus.State.Name(s.state))
                for s in status.model_version_status]
    except grpc.RpcError as exc:
        raise ServerError(f"{target} refused to list models: {exc.code().name}: {exc.details()}; check --host and "
                          "--api") from None
    finally:
        channel.close()


def list_models(opts: BenchOptions, host: str | None) -> list[ServedModel]:
    """Every model version the server serves, with its state (one model's versions where it cannot list)."""
    target, scheme_tls = parse_host(host, opts.api)
    tls = wants_tls(opts, scheme_tls)
    if opts.api.endswith("-rest"):
        client = HttpTarget(base_url(target, tls), ssl_context(opts) if tls else None, timeout=opts.metadata_timeout,
                            options=opts)
        try:
            return _http_list(opts.api, client, opts)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ServerError(f"cannot reach {client.base_url} ({reason}); check --host and that the server runs") \
                from None
    return _grpc_list(opts.api, target, tls, opts)


def describe_model(opts: BenchOptions, host: str | None) -> ModelSpec:
    target, scheme_tls = parse_host(host, opts.api)
    return fetch_spec(make_protocol(opts.api, opts), target, wants_tls(opts, scheme_tls), opts)


def format_listing(models: list[ServedModel], spec: ModelSpec | None, as_json: bool) -> str:
    if as_json:
        doc: dict = {"models": [asdict(m) for m in models]}
        if spec is not None:
            doc["metadata"] = spec.to_dict()
        return json.dumps(doc)
    rows = [("MODEL", "VERSION", "STATE")] + [(m.name, m.version or "-", m.state) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    if spec is not None:
        lines.append("")
        lines.append(f"model {spec.name} version {spec.version or '-'}:")
        for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
            for t in tensors:
                lines.append(f"  {kind:6}  {t.name}  {t.dtype.name}  {list(t.shape)}")
    return "\n".join(lines)
