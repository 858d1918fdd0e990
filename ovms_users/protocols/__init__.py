"""One module per wire protocol over the shared core in ``ovms_wire``: tfs_grpc, kfs_grpc (REST next)."""

from ovms_users.protocols.kfs_grpc import KfsGrpc
from ovms_users.protocols.tfs_grpc import TfsGrpc

#: --api name -> protocol class
PROTOCOLS = {"tfs": TfsGrpc, "kfs": KfsGrpc}

__all__ = ["PROTOCOLS", "TfsGrpc", "KfsGrpc"]
