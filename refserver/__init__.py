"""A reference model server speaking the TFS and KServe v2 APIs over gRPC and REST, as OVMS does."""

__version__ = "0.1.0"
