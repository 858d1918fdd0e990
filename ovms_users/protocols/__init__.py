"""One module per wire protocol: tfs_grpc, kfs_grpc, tfs_rest, kfs_rest."""
