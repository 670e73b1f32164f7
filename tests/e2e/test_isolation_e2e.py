"""Isolation end to end (README, "Multi-tenancy") on the local control plane: the operator (a local `kopf run`
process with CODEFORGE_AGENT_REDIS_ACL on) and a real redis-server.

- an AgentPool gets a Secret with a random password, owned by the pool, and a Redis ACL user of its own; the
  Deployment mounts that Secret and names that user, never the operator's credentials;
- a real `codeforge-agent`, configured like the pods (the Secret's password as its mounted file), runs a
  Workflow's step as that user; deleting the pool removes the user from Redis, and recreating it rotates the
  password;
- a Workflow naming another namespace's pool is Invalid (naming the step and the pool) unless that pool lists
  the Workflow's namespace in spec.access.namespaces.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster import Cluster
from cluster.processes import AgentProcess, OperatorProcess, wait_until
from cluster.resources import CHART_DIR, dump, install_crds, temporary_namespace
from codeforge.redis.acl import user_name
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def namespaces(control_plane: Cluster) -> Iterator[tuple[str, str]]:
    """(team-a, team-b): team-b owns the pools; team-a is granted one of them."""
    install_crds(control_plane)
    with (
        temporary_namespace(control_plane, "e2e-team-a") as team_a,
        temporary_namespace(control_plane, "e2e-team-b") as team_b,
    ):
        yield team_a, team_b


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    namespaces: tuple[str, str],
    redis_server: LocalRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    with OperatorProcess(
        kubeconfig=control_plane.kubeconfig,
        queue_url=redis_server.url,
        namespaces=list(namespaces),
        log_path=tmp_path_factory.mktemp("isolation") / "operator.log",
        env={"CODEFORGE_AGENT_REDIS_ACL": "true"},
    ) as process:
        yield process


def pool(name: str, access: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "role": name,
        "image": "registry.invalid/codeforge/agent:e2e",
        "handler": {"kind": "echo"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
    }
    if access is not None:
        spec["access"] = {"namespaces": access}
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": spec,
    }


def workflow(name: str, pool_ref: str) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"input": {"n": 1}, "steps": [{"name": "ask", "pool": pool_ref}]},
    }


def apply(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=dump(list(docs)))


def get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "--namespace", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_secret(cluster: Cluster, namespace: str, name: str, operator: OperatorProcess) -> dict[str, Any]:
    return wait_until(
        lambda: get(cluster, "secret", namespace, f"{name}-agent-redis"),
        timeout=60,
        what=f"Secret of pool {name}",
        detail=operator.tail,
    )


def password_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["password"]).decode()


def acl_users(redis: LocalRedis) -> list[str]:
    return redis.cli("ACL", "USERS").split()


def wait_phase(
    cluster: Cluster, namespace: str, name: str, want: str, operator: OperatorProcess
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = get(cluster, "workflow", namespace, name) or {}
        return obj if obj.get("status", {}).get("phase") == want else None

    return wait_until(
        reached,
        timeout=90,
        interval=0.3,
        what=f"Workflow {name} {want}",
        detail=lambda: (
            f"{(get(cluster, 'workflow', namespace, name) or {}).get('status')}\n{operator.tail()}"
        ),
    )


def test_a_pool_gets_its_own_redis_user_and_secret_and_its_agent_works_as_that_user(
    control_plane: Cluster,
    namespaces: tuple[str, str],
    operator: OperatorProcess,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    team_a, team_b = namespaces
    apply(control_plane, team_b, pool("research", access=[team_a]))
    secret = wait_secret(control_plane, team_b, "research", operator)
    owner = secret["metadata"]["ownerReferences"][0]
    live_pool = get(control_plane, "agentpool", team_b, "research")
    assert live_pool is not None
    assert (owner["kind"], owner["uid"]) == ("AgentPool", live_pool["metadata"]["uid"])
    user = user_name(f"{team_b}/research")
    wait_until(lambda: user in acl_users(redis_server), timeout=30, what="ACL user", detail=operator.tail)
    password = password_of(secret)
    assert redis_server.cli("ACL", "GETUSER", user).count("~cf:{" + f"{team_b}/research" + "}:*") == 1

    deployment = wait_until(
        lambda: get(control_plane, "deployment", team_b, "research"), timeout=60, what="Deployment"
    )
    template = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in template["volumes"]}
    assert volumes["redis-identity"]["secret"]["secretName"] == "research-agent-redis"
    env = {e["name"]: e.get("value") for e in template["containers"][0]["env"]}
    assert env["CODEFORGE_REDIS_USERNAME"] == user
    assert "CODEFORGE_REDIS_PASSWORD" not in env

    # A Workflow of team-a runs on team-b's pool, which grants it access; the agent is the pool's user.
    (tmp_path / "password").write_text(password)
    agent = AgentProcess.like_pod(
        deployment,
        "research-pod-1",
        tmp_path / "agent.log",
        extra_env={"CODEFORGE_REDIS_PASSWORD_FILE": str(tmp_path / "password")},
    )
    agent.start()
    try:
        apply(control_plane, team_a, workflow("granted", f"{team_b}/research"))
        wait_phase(control_plane, team_a, "granted", "Succeeded", operator)
    finally:
        agent.stop()
    assert "NOPERM" not in agent.log()

    # Deleting the pool removes its Redis user (finalizer) and its Secret (owner reference); recreating it
    # gives a new password.
    control_plane.kubectl("delete", "agentpool", "research", "--namespace", team_b, "--wait=true")
    wait_until(lambda: user not in acl_users(redis_server), timeout=30, what="ACL user removed")
    wait_until(
        lambda: get(control_plane, "secret", team_b, "research-agent-redis") is None,
        timeout=60,
        what="Secret garbage-collected",
    )
    apply(control_plane, team_b, pool("research", access=[team_a]))
    rotated = wait_secret(control_plane, team_b, "research", operator)
    assert password_of(rotated) != password
    wait_until(lambda: user in acl_users(redis_server), timeout=30, what="ACL user again")
    old = redis.Redis(port=redis_server.port, username=user, password=password)
    with pytest.raises(redis.AuthenticationError):
        old.ping()
    old.close()


def test_a_workflow_naming_a_pool_of_another_namespace_is_invalid_unless_granted(
    control_plane: Cluster, namespaces: tuple[str, str], operator: OperatorProcess, redis_server: LocalRedis
) -> None:
    team_a, team_b = namespaces
    apply(control_plane, team_b, pool("private"))
    wait_secret(control_plane, team_b, "private", operator)
    before = redis_server.cli("--scan", "--pattern", "cf:{" + f"{team_b}/private" + "}:*")
    name = f"sneaky-{uuid.uuid4().hex[:4]}"
    apply(control_plane, team_a, workflow(name, f"{team_b}/private"))
    obj = wait_phase(control_plane, team_a, name, "Failed", operator)
    invalid = next(c for c in obj["status"]["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True"
    assert "spec.steps[0].pool" in invalid["message"]
    assert "'ask'" in invalid["message"]
    assert f"{team_b}/private" in invalid["message"]
    assert "spec.access.namespaces" in invalid["message"]
    # Nothing reached team-b's queue.
    assert redis_server.cli("--scan", "--pattern", "cf:{" + f"{team_b}/private" + "}:t:*") == ""
    assert before == redis_server.cli("--scan", "--pattern", "cf:{" + f"{team_b}/private" + "}:*")
    # A pool that does not exist in another namespace is refused the same way (nothing is told about it).
    apply(control_plane, team_a, workflow("ghost", f"{team_b}/nonexistent"))
    ghost = wait_phase(control_plane, team_a, "ghost", "Failed", operator)
    assert any("does not grant" in c["message"] for c in ghost["status"]["conditions"])


def test_tenant_rbac_reads_secrets_of_its_own_namespace_only(
    control_plane: Cluster, namespaces: tuple[str, str]
) -> None:
    """The chart's tenant RBAC, applied to the API server (which enforces RBAC): team-a's group reads and
    writes its own namespace's Secrets and Workflows, and nothing of team-b's or cluster-wide."""
    team_a, team_b = namespaces
    group = f"devs-{team_a}"
    rendered = control_plane.helm(
        "template", "codeforge", str(CHART_DIR), "--namespace", "codeforge",
        "--show-only", "templates/tenant-rbac.yaml",
        "--set", f"tenants.namespaces[0].namespace={team_a}",
        "--set", "tenants.namespaces[0].subjects[0].kind=Group",
        "--set", f"tenants.namespaces[0].subjects[0].name={group}",
        "--set", "tenants.namespaces[0].subjects[0].apiGroup=rbac.authorization.k8s.io",
    ).stdout  # fmt: skip
    control_plane.kubectl("apply", "-f", "-", input=rendered)

    def can(verb: str, resource: str, *where: str) -> bool:
        out = control_plane.kubectl(
            "auth", "can-i", verb, resource, *where, "--as=alice", f"--as-group={group}", check=False
        )
        return out.stdout.strip() == "yes"

    assert can("get", "secrets", "--namespace", team_a)
    assert can("list", "secrets", "--namespace", team_a)
    assert can("create", "workflows.codeforge.ai", "--namespace", team_a)
    assert can("create", "agentpools.codeforge.ai", "--namespace", team_a)
    assert not can("get", "secrets", "--namespace", team_b)
    assert not can("list", "secrets", "--all-namespaces")
    assert not can("get", "secrets", "--namespace", "codeforge")  # the operator's admin Redis password
    assert not can("create", "workflows.codeforge.ai", "--namespace", team_b)
    assert not can("patch", "agentpools.codeforge.ai", "--namespace", team_b)  # cannot grant itself access
    assert not can("create", "rolebindings", "--namespace", team_a)
