"""The real node of hack/cluster/node-up.sh and the images of hack/images.sh, seen from the tests.

`why_no_real_node()` says in one line why this machine cannot run them (the tests skip with that line);
`build_node_and_images()` runs the two build scripts (no-ops once built) before any test's timeout starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from cluster.control_plane import HACK_DIR, REPO_ROOT, ClusterError, default_cache

IMAGES_SCRIPT = REPO_ROOT / "hack" / "images.sh"
#: The node's taint and label (hack/cluster/node-up.sh): pods that want the real node say so.
REAL_NODE_LABEL = {"codeforge.io/node": "real"}
REAL_NODE_TOLERATION = {
    "key": "codeforge.io/real-node",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


def why_no_real_node() -> str | None:
    """None when this machine can build the images and run a real node, else the reason in one line."""
    if os.environ.get("CODEFORGE_SKIP_REAL_NODE") == "1":
        return "CODEFORGE_SKIP_REAL_NODE=1"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (containerd, debootstrap, network links, iptables); run the suite as root"
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        return "needs Debian's packages (containerd, runc, CNI plugins, buildah) and apt-get is missing"
    node_bin = node_bin_dir()
    built = all((node_bin / b).is_file() for b in ("kubelet", "kube-proxy", "coredns", "pause"))
    if not built and shutil.which("go") is None:
        return "the kubelet is not built and Go is missing to build it (hack/cluster/build.sh --node)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup: containers cannot run here"
    return None


def node_bin_dir() -> Path:
    out = subprocess.run(
        ["bash", str(HACK_DIR / "build.sh"), "--node", "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CODEFORGE_CACHE": str(default_cache())},
    )
    return Path(out.stdout.strip())


def image_env() -> dict[str, str]:
    """hack/images.sh --print-env: image names, the archive directory and the CONTAINERS_* files."""
    out = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), "--print-env"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CODEFORGE_CACHE": str(default_cache())},
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def build_node_and_images(output: IO[str], timeout: float = 3600) -> None:
    """The node's binaries (build.sh --node) and the images (images.sh); each a no-op when current."""
    env = {**os.environ, "CODEFORGE_CACHE": str(default_cache())}
    for argv in (["bash", str(HACK_DIR / "build.sh"), "--node"], ["bash", str(IMAGES_SCRIPT)]):
        proc = subprocess.run(argv, env=env, stdout=output, stderr=output, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv[1:])} failed: exit {proc.returncode} (its output is above)")
