"""One module per wire protocol over the shared core in ``ovms_wire``: tfs_grpc, kfs_grpc, tfs_rest, kfs_rest."""

from __future__ import annotations

from ovms_users.options import BenchOptions
from ovms_users.protocols.base import Encoded, WireProtocol
from ovms_users.protocols.kfs_grpc import KfsGrpc
from ovms_users.protocols.kfs_rest import KfsRest
from ovms_users.protocols.tfs_grpc import TfsGrpc
from ovms_users.protocols.tfs_rest import TfsRest

__all__ = ["make_protocol", "TfsGrpc", "KfsGrpc", "TfsRest", "KfsRest", "Encoded", "WireProtocol"]


def make_protocol(api: str, opts: BenchOptions) -> WireProtocol:
    """The protocol for a canonical --api name."""
    if api == "tfs":
        return TfsGrpc()
    if api == "kfs":
        return KfsGrpc()
    if api == "tfs-rest":
        return TfsRest(opts.rest_format)
    if api == "kfs-rest":
        return KfsRest(opts.kfs_data)
    raise ValueError(f"no protocol for --api {api}")
