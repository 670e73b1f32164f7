"""Start and stop the local Kubernetes control plane (hack/cluster/*.sh), or talk to an existing cluster.

`LocalControlPlane` is a thin wrapper over the scripts that `make cluster-up` / `make cluster-down` run, so a
developer's cluster and the test suite's are the same thing: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods become Running and Ready) on 127.0.0.1, built once from the Go
module proxy and cached under ~/.cache/codeforge/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack" / "cluster"
VERSIONS_FILE = HACK_DIR / "versions.env"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")


class ClusterError(RuntimeError):
    """A cluster script or client command failed; the message carries its output."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (comments and blank lines skipped), as versions.env and cluster.env are written."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ClusterError(f"{path}: not a KEY=value line: {raw!r}")
        values[key.strip()] = value.strip()
    return values


def pinned_versions() -> dict[str, str]:
    """The versions pinned in hack/cluster/versions.env (KUBERNETES_VERSION, ETCD_VERSION, ...)."""
    return read_env_file(VERSIONS_FILE)


def default_cache() -> Path:
    return Path(os.environ.get("CODEFORGE_CACHE", str(Path.home() / ".cache" / "codeforge")))


def _run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,  # noqa: A002 - the name subprocess uses
    timeout: float | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            [str(a) for a in argv],
            env=dict(env) if env is not None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"timed out after {timeout}s: {' '.join(map(str, argv))}") from exc
    if check and result.returncode != 0:
        raise ClusterError(
            f"exit {result.returncode}: {' '.join(map(str, argv))}\n{result.stdout}{result.stderr}".rstrip()
        )
    return result


class Cluster:
    """A Kubernetes API server reachable through a kubeconfig, with the kubectl and helm to drive it."""

    def __init__(self, kubeconfig: Path, kubectl: Path, helm: Path | None) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = kubectl
        self.helm_path = helm

    @property
    def is_local(self) -> bool:
        return False

    def env(self) -> dict[str, str]:
        """The current environment with KUBECONFIG set and this cluster's tools first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.kubectl_path.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 - the name subprocess uses
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises ClusterError on a non-zero exit when check is true."""
        argv: list[str | Path] = [self.kubectl_path, "--kubeconfig", self.kubeconfig, *args]
        return _run(argv, input=input, timeout=timeout, check=check)

    def kubectl_json(self, *args: str, timeout: float = 120) -> Any:
        """Run `kubectl ... -o json` and parse its output."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def helm(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.helm_path is None:
            raise ClusterError("no helm binary: run hack/cluster/build.sh or put helm on PATH")
        return _run([self.helm_path, "--kubeconfig", self.kubeconfig, *args], timeout=timeout, check=check)

    def server_version(self) -> str:
        """The API server's gitVersion, e.g. v1.37.2."""
        version: str = self.kubectl_json("version")["serverVersion"]["gitVersion"]
        return version


class ExistingCluster(Cluster):
    """A cluster someone else runs (kind, a cloud cluster), named by KUBECONFIG; never started or stopped."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExistingCluster:
        env = os.environ if environ is None else environ
        kubeconfig = env.get("KUBECONFIG", "")
        if not kubeconfig:
            raise ClusterError("an existing cluster needs KUBECONFIG to name its kubeconfig")
        first = Path(kubeconfig.split(os.pathsep)[0]).expanduser()
        if not first.is_file():
            raise ClusterError(f"KUBECONFIG names {first}, which is not a file")
        # Prefer the pinned tools when they are built; otherwise whatever is on PATH.
        bin_dir = bin_dir_for(default_cache())
        kubectl = bin_dir / "kubectl" if (bin_dir / "kubectl").is_file() else _which("kubectl")
        if kubectl is None:
            raise ClusterError("kubectl is neither built (hack/cluster/build.sh) nor on PATH")
        helm = bin_dir / "helm" if (bin_dir / "helm").is_file() else _which("helm")
        return cls(first, kubectl, helm)


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def bin_dir_for(cache: Path) -> Path:
    """Where build.sh puts the binaries of the pinned versions."""
    v = pinned_versions()
    name = "-".join(
        (
            f"k8s-{v['KUBERNETES_VERSION']}",
            f"etcd-{v['ETCD_VERSION']}",
            f"kwok-{v['KWOK_VERSION']}",
            f"helm-{v['HELM_VERSION']}",
        )
    )
    return cache / name / "bin"


def binaries_built(cache: Path | None = None) -> bool:
    """Whether build.sh has built all binaries of the pinned versions (it checks more precisely: stamps)."""
    bin_dir = bin_dir_for(cache or default_cache())
    return all((bin_dir / b).is_file() for b in BINARIES)


def build_binaries(cache: Path | None = None, output: IO[str] | None = None, timeout: float = 7200) -> None:
    """Run build.sh (a no-op once built); its progress goes to `output` (default: shown on error only)."""
    env = dict(os.environ)
    env["CODEFORGE_CACHE"] = str(cache or default_cache())
    argv = ["bash", str(HACK_DIR / "build.sh")]
    if output is None:
        _run(argv, env=env, timeout=timeout)
        return
    try:
        proc = subprocess.run(argv, env=env, stdout=output, stderr=output, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"hack/cluster/build.sh did not finish within {timeout}s") from exc
    if proc.returncode != 0:
        raise ClusterError(f"hack/cluster/build.sh failed: exit {proc.returncode} (its output is above)")


class LocalControlPlane(Cluster):
    """The control plane of hack/cluster/up.sh in a private state directory.

    >>> with LocalControlPlane(nodes=3) as plane:
    ...     plane.kubectl("get", "nodes")
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        nodes: int = 3,
        cache: Path | None = None,
        real_node: bool = False,
    ) -> None:
        self.cache = cache or default_cache()
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="codeforge-control-plane-"))
        self.nodes = nodes
        #: Also join the real node of hack/cluster/node-up.sh (root only; see tests/e2e/realnode/).
        self.real_node = real_node
        self.bin_dir = bin_dir_for(self.cache)
        self.info: dict[str, str] = {}
        self._running = False
        super().__init__(self.state_dir / "admin.kubeconfig", self.bin_dir / "kubectl", self.bin_dir / "helm")

    @property
    def is_local(self) -> bool:
        return True

    def is_built(self) -> bool:
        return binaries_built(self.cache)

    def _script_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CODEFORGE_CACHE"] = str(self.cache)
        env["CODEFORGE_CLUSTER_DIR"] = str(self.state_dir)
        env["CODEFORGE_KWOK_NODES"] = str(self.nodes)
        env["CODEFORGE_REAL_NODE"] = "1" if self.real_node else "0"
        return env

    def build(self, output: IO[str] | None = None, timeout: float = 7200) -> None:
        build_binaries(self.cache, output=output, timeout=timeout)

    def start(self, timeout: float = 180) -> Self:
        """Run up.sh: certificates, etcd, API server, controllers, scheduler, kwok and the fake nodes."""
        _run(["bash", HACK_DIR / "up.sh"], env=self._script_env(), timeout=timeout)
        self._running = True
        self.info = read_env_file(self.state_dir / "cluster.env")
        self.kubeconfig = Path(self.info["KUBECONFIG"])
        return self

    def stop(self, timeout: float = 60) -> None:
        """Run down.sh: stop every process up.sh started and delete the state directory."""
        _run(["bash", HACK_DIR / "down.sh"], env=self._script_env(), timeout=timeout)
        self._running = False
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        """The component logs (etcd, kube-apiserver, ...) while the control plane runs: name -> text."""
        log_dir = self.state_dir / "logs"
        return {p.stem: p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log"))}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
