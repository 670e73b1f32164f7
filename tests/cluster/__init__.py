"""Kubernetes clusters for the e2e tests: the local control plane of hack/cluster/, or an existing one."""

from cluster.control_plane import (
    HACK_DIR,
    Cluster,
    ClusterError,
    ExistingCluster,
    LocalControlPlane,
    bin_dir_for,
    binaries_built,
    build_binaries,
    pinned_versions,
)

__all__ = [
    "HACK_DIR",
    "Cluster",
    "ClusterError",
    "ExistingCluster",
    "LocalControlPlane",
    "bin_dir_for",
    "binaries_built",
    "build_binaries",
    "pinned_versions",
]
