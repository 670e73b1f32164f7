"""The real node of hack/cluster/node-up.sh and the images of hack/images.sh, seen from the tests.

`why_no_real_node()` says in one line why this machine cannot run them (the tests skip with that line);
`build_node_and_images()` runs the two build scripts (no-ops once built) before any test's timeout starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from cluster.control_plane import HACK_DIR, REPO_ROOT, ClusterError, LocalControlPlane, default_cache
from cluster.processes import wait_until
from cluster.resources import CHART_DIR, dump

IMAGES_SCRIPT = REPO_ROOT / "hack" / "images.sh"
DEMO_AGENTS_CONTAINERFILE = REPO_ROOT / "tests" / "e2e" / "realnode" / "demo-agents.Containerfile"
DEMO_AGENTS_IMAGE = "localhost/codeforge-agent-demo:test"
REAL_NODE = "real-node-0"
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


def demo_agents_image(info: dict[str, str], timeout: float = 600) -> str:
    """The agent image plus the example demo agents (demo-agents.Containerfile), imported into the node.

    buildah's layer cache makes a rebuild with unchanged inputs a no-op; the archive is rewritten and
    imported only when the image changed (as hack/images.sh does). Returns the image's name.
    """
    env = {**os.environ, **image_env()}
    cache = default_cache() / "images"
    context = cache / "demo-agents-context"
    shutil.rmtree(context, ignore_errors=True)
    examples = REPO_ROOT / "examples"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(examples / "workflows" / "demo_agents.py", _mkdir(context / "examples" / "workflows"))
    shutil.copytree(examples / "sample-project", context / "examples" / "sample-project", ignore=ignore)

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:3])} failed: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        return proc.stdout

    run("buildah", "bud", "--quiet", "--layers", "--runtime", "runc", "--build-arg",
        f"AGENT_IMAGE={info['AGENT_IMAGE']}", "-f", str(DEMO_AGENTS_CONTAINERFILE), "-t", DEMO_AGENTS_IMAGE,
        str(context))  # fmt: skip
    image_id = run("podman", "image", "inspect", "--format", "{{.Id}}", DEMO_AGENTS_IMAGE).strip()
    archive = Path(env["ARCHIVE_DIR"]) / "codeforge-agent-demo.tar"
    stamp = archive.with_suffix(".id")
    if not archive.is_file() or not stamp.is_file() or stamp.read_text().strip() != image_id:
        archive.unlink(missing_ok=True)
        run("podman", "save", "--quiet", "--format", "docker-archive", "-o", str(archive), DEMO_AGENTS_IMAGE)
        stamp.write_text(image_id + "\n")
    run("ctr", "--address", info["CONTAINERD_ADDRESS"], "--namespace", "k8s.io", "images", "import",
        str(archive))  # fmt: skip
    return DEMO_AGENTS_IMAGE


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- helm releases and CodeForge objects on the real node ---------------------------------------------------


@dataclass
class Release:
    name: str
    namespace: str
    cluster: LocalControlPlane

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.cluster.kubectl("--namespace", self.namespace, *args, timeout=timeout, check=check).stdout

    def json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args, "--namespace", self.namespace)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "--namespace", self.namespace, "-f", "-", input=dump(list(docs)))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("get", "pods", "-l", selector)["items"]
        return items

    def diagnose(self) -> str:
        """What a person would look at when something does not come up."""
        return "\n".join(
            self.kubectl(*args, check=False)
            for args in (("get", "pods,jobs,agentpools,workflows", "-o", "wide"), ("get", "events"))
        )


def helm_values(images: dict[str, str], tmp: Path, **redis: Any) -> Path:
    """Values that put every pod of the chart on the real node, with the images built by hack/images.sh."""
    placement = {"nodeSelector": REAL_NODE_LABEL, "tolerations": [REAL_NODE_TOLERATION]}

    def image(ref: str) -> dict[str, str]:
        repository, _, tag = ref.rpartition(":")
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

    values = {
        "operator": {
            "image": image(images["OPERATOR_IMAGE"]),
            "logFormat": "full",
            **placement,
        },
        "redis": {
            "image": image(images["REDIS_IMAGE"]),
            "persistence": {"enabled": False},
            **placement,
            **redis,
        },
        "agent": {"image": image(images["AGENT_IMAGE"])},
    }
    path = tmp / f"values-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(values))
    return path


def install(real_cluster: LocalControlPlane, tmp: Path, prefix: str, **redis: Any) -> Iterator[Release]:
    namespace = f"{prefix}-{uuid.uuid4().hex[:5]}"
    name = "cf"
    release = Release(name, namespace, real_cluster)
    values = helm_values(real_cluster.info, tmp, **redis)
    started = time.monotonic()
    out = real_cluster.helm(
        "install", name, str(CHART_DIR), "--namespace", namespace, "--create-namespace",
        "--values", str(values), "--set", f"operator.watchNamespaces={{{namespace}}}",
        "--wait", "--wait-for-jobs", "--timeout", "240s",
        timeout=300, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.fail(f"helm install failed:\n{out.stdout}{out.stderr}\n{release.diagnose()}", pytrace=False)
    print(f"helm install ({prefix}) took {time.monotonic() - started:.0f}s")
    try:
        yield release
    finally:
        real_cluster.helm(
            "uninstall", name, "--namespace", namespace, "--wait", "--timeout", "120s", check=False
        )
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def agent_pool(name: str, image: str, handler: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "role": name,
            "image": image,
            "imagePullPolicy": "Never",
            "handler": {"kind": handler},
            "nodeSelector": REAL_NODE_LABEL,
            "tolerations": [REAL_NODE_TOLERATION],
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            "terminationGracePeriodSeconds": 60,
            **spec,
        },
    }


def wait_workflow(
    release: Release, name: str, want: str = "Succeeded", timeout: float = 180
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj: dict[str, Any] = release.json("get", "workflow", name)
        phase = obj.get("status", {}).get("phase")
        if phase == "Failed" and want != "Failed":
            raise AssertionError(f"Workflow {name} failed: {obj.get('status')}")
        return obj if phase == want else None

    return wait_until(
        reached, timeout=timeout, interval=1, what=f"Workflow {name} {want}", detail=release.diagnose
    )


def running_on_real_node(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return (
        pod["spec"].get("nodeName") == REAL_NODE
        and bool(statuses)
        and all(s.get("containerID", "").startswith("containerd://") and s.get("ready") for s in statuses)
    )


def wait_pool_ready(release: Release, pool: str, replicas: int, timeout: float = 120) -> list[dict[str, Any]]:
    selector = f"codeforge.ai/pool={pool}"

    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in release.pods(selector) if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == replicas and all(map(running_on_real_node, pods)) else None

    return wait_until(ready, timeout=timeout, interval=1, what=f"{replicas} ready agents of {pool}",
                      detail=release.diagnose)  # fmt: skip


def ready_operators(release: Release, replicas: int = 2) -> list[dict[str, Any]] | None:
    """The operator pods when exactly `replicas` of them run ready on the real node, else None."""
    pods = [
        p
        for p in release.pods("app.kubernetes.io/component=operator")
        if not p["metadata"].get("deletionTimestamp")
    ]
    return pods if len(pods) == replicas and all(map(running_on_real_node, pods)) else None
