"""Workspaces through the operator (issue #11): `kubectl apply` a Workflow whose code lives in Git on the
local control plane; the operator resolves the ref, dispatches each step with its checkout to real
`codeforge-agent` processes configured like the AgentPools' pods (each with its own cache directory, the
Secret's credentials as files), publishes the final commit, and the Workflow's status shows the branch, the
commit and the diffstat. The repository is served by `git http-backend` with basic auth."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.processes import AgentProcess, OperatorProcess, has_operator_command, wait_until
from cluster.resources import dump, event_reasons, install_crds, temporary_namespace
from codeforge.testing.redis_server import LocalRedis
from support.git_server import GitServer, git, make_bare_repo

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

TESTS_DIR = Path(__file__).resolve().parents[1]
POOLS = ("writer", "reader")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace-e2e")


@pytest.fixture(scope="module")
def server(log_dir: Path) -> Iterator[GitServer]:
    with GitServer(log_dir / "git") as srv:
        yield srv


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster, server: GitServer) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-ws") as name:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "git-credentials"},
            "stringData": {"username": server.username, "password": server.password},
        }
        pools = [
            {
                "apiVersion": "codeforge.ai/v1alpha1",
                "kind": "AgentPool",
                "metadata": {"name": pool},
                "spec": {
                    "role": pool,
                    "image": "registry.invalid/codeforge/agent:e2e",
                    "handler": {
                        "kind": "command",
                        "settings": {"command": f"{sys.executable} -m support.workspace_steps"},
                    },
                    "workspace": {"credentialsSecret": "git-credentials", "cacheSizeLimit": "1Gi"},
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                },
            }
            for pool in POOLS
        ]
        control_plane.kubectl("apply", "--namespace", name, "-f", "-", input=dump([secret, *pools]))
        yield name


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def made() -> dict[str, Any] | None:
        out = cluster.kubectl("get", "deployment", name, "--namespace", namespace, "-o", "json", check=False)
        found: dict[str, Any] | None = json.loads(out.stdout) if out.returncode == 0 else None
        return found

    return wait_until(made, timeout=60, what=f"Deployment of pool {name}")


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, log_dir: Path
) -> Iterator[OperatorProcess]:
    entrypoint = "codeforge" if has_operator_command() else "kopf"
    with OperatorProcess.for_namespace(
        control_plane, namespace, redis_server.url, log_dir / "operator.log", entrypoint
    ) as process:
        yield process


@pytest.fixture(scope="module")
def agents(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, server: GitServer, log_dir: Path
) -> Iterator[dict[str, AgentProcess]]:
    """One agent per pool with its Deployment's environment; what the kubelet would provide (the cache
    emptyDir, the Secret mounted as files) is a local directory here."""
    credentials = log_dir / "mounted-secret"
    credentials.mkdir()
    (credentials / "username").write_text(server.username)
    (credentials / "password").write_text(server.password)
    started: dict[str, AgentProcess] = {}
    try:
        for pool in POOLS:
            dep = deployment(control_plane, namespace, pool)
            env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
            assert {e["name"] for e in env} >= {"CODEFORGE_WORKSPACE_DIR", "CODEFORGE_GIT_CREDENTIALS_DIR"}
            local = {
                "CODEFORGE_WORKSPACE_DIR": str(log_dir / f"cache-{pool}"),
                "CODEFORGE_GIT_CREDENTIALS_DIR": str(credentials),
                "PYTHONPATH": str(TESTS_DIR),
            }
            agent = AgentProcess.like_pod(dep, f"{pool}-local-0", log_dir / f"agent-{pool}.log", local)
            agent.launch()
            started[pool] = agent
        for agent in started.values():
            agent.wait_started()
        yield started
    finally:
        for agent in started.values():
            agent.stop(grace=10)


def test_a_workflow_works_on_its_repository_through_the_operator(
    control_plane: Cluster,
    namespace: str,
    operator: OperatorProcess,
    agents: dict[str, AgentProcess],
    server: GitServer,
) -> None:
    bare = server.root / "service.git"
    base = make_bare_repo(bare, {"README.md": "service\n"})
    spec = {
        "workspace": {"git": {"url": server.url("service.git"), "ref": "main"}},
        "steps": [
            {
                "name": "write",
                "pool": "writer",
                "input": "{}",
                "params": {"write": {"feature.txt": "the feature\n"}, "commit_message": "add the feature"},
            },
            {"name": "read", "pool": "reader", "input": "{}", "params": {"read": ["feature.txt"]}},
        ],
        "edges": [{"from": "write", "to": "read"}],
    }
    workflow = {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "ws"},
        "spec": spec,
    }
    control_plane.kubectl("apply", "--namespace", namespace, "-f", "-", input=dump([workflow]))

    def finished() -> dict[str, Any] | None:
        obj: dict[str, Any] = control_plane.kubectl_json("get", "workflow", "ws", "--namespace", namespace)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    done = wait_until(
        finished,
        timeout=120,
        what="Workflow ws finished",
        detail=lambda: operator.tail() + "".join(a.tail() for a in agents.values()),
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    branch_head = git("rev-parse", "refs/heads/codeforge/ws", cwd=bare).strip()
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["write"]["commit"] == branch_head != base
    assert steps["read"]["commit"] == branch_head  # reading changed nothing: the commit passed on
    workspace = status["workspace"]
    assert workspace["base"] == base
    assert workspace["commit"] == branch_head
    assert workspace["branch"] == "codeforge/ws"
    assert workspace["diffstat"] == {"files": 1, "insertions": 1, "deletions": 0}
    assert workspace["files"] == ["feature.txt"]
    assert status["result"]["read"]["seen"] == {"feature.txt": "the feature\n"}
    assert status["result"]["read"]["saw"] == branch_head
    assert git("log", "-1", "--format=%s", branch_head, cwd=bare).strip() == "add the feature"
    assert server.password not in str(done)  # credentials never reach the status
    reasons = event_reasons(control_plane, namespace, "Workflow", "ws")
    assert {"WorkspaceResolved", "WorkspacePublished"} <= set(reasons), reasons
