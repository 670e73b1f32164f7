"""Workflows sharded over two operator processes (`controller/sharding.py`) on the local control plane, whose
API server has the ShardedListAndWatch feature gate on (hack/cluster/up.sh).

- The API server's shard selector and the operator's own filter split by the same hash: for real uids, the
  server's list of each range is exactly what `Shard.owns` says, the ranges are disjoint and cover all.
- Two shards, each with leader election on its own Lease, one agent: every Workflow runs to Succeeded, its
  run started by its own shard only; the AgentPool is shard 0's alone (shard 1 does not even watch it); no
  finalizer is taken off and put back; deleting the Workflows is held up by no shard.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.metrics import request_counts
from cluster.processes import AgentProcess, OperatorProcess, running_agents, start_together, wait_until
from cluster.resources import (
    apply_docs,
    get_workflow,
    install_crds,
    pool_doc,
    sleep_workflow,
    temporary_namespace,
)
from codeforge.controller.sharding import Shard
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

SHARDS = 2
LEASE = "codeforge-e2e-shard"
WORKFLOWS = [f"wf-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def crds(control_plane: Cluster) -> Cluster:
    install_crds(control_plane)
    wait_until(
        lambda: control_plane.kubectl("get", "workflows", "-A", check=False).returncode == 0,
        timeout=60, what="the Workflow CRD listed",
    )  # fmt: skip
    return control_plane


@pytest.fixture(scope="module")
def namespace(crds: Cluster) -> Iterator[str]:
    with temporary_namespace(crds, "e2e-shards") as name:
        apply_docs(crds, name, pool_doc("sleepy", "sleep"))
        yield name


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-shards")


@pytest.fixture(scope="module")
def agent(namespace: str, redis_server: LocalRedis, log_dir: Path) -> Iterator[AgentProcess]:
    with running_agents(
        f"{namespace}/sleepy", redis_server.url, log_dir, handler="sleep", concurrency="8"
    ) as agents:
        yield agents[0]


@pytest.fixture
def shards(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, log_dir: Path, agent: AgentProcess
) -> Iterator[list[OperatorProcess]]:
    processes = [
        OperatorProcess(
            kubeconfig=control_plane.kubeconfig,
            queue_url=redis_server.url,
            namespaces=[namespace],
            log_path=log_dir / f"shard-{index}.log",
            env={
                **Shard(index=index, count=SHARDS).environment(),
                "CODEFORGE_LEADER_ELECTION": "true",
                "CODEFORGE_LEASE_NAME": LEASE,
                "CODEFORGE_LEASE_NAMESPACE": namespace,
                "POD_ID": f"shard-{index}",
                "CODEFORGE_LOG_FORMAT": "full",
            },
        )
        for index in range(SHARDS)
    ]
    try:
        start_together(processes)
        yield processes
    finally:
        for process in processes:
            process.stop()


def served_uids(cluster: Cluster, namespace: str, shard: Shard, *, watch: bool) -> set[str]:
    """The uids the API server sends for the shard's range: its list, or the initial events of its watch."""
    params = {"shardSelector": shard.selector()} | ({"watch": "true", "timeoutSeconds": "2"} if watch else {})
    path = f"/apis/codeforge.ai/v1alpha1/namespaces/{namespace}/workflows?{urllib.parse.urlencode(params)}"
    out = cluster.kubectl("get", "--raw", path).stdout
    if watch:
        return {json.loads(line)["object"]["metadata"]["uid"] for line in out.splitlines() if line.strip()}
    return {item["metadata"]["uid"] for item in json.loads(out)["items"]}


def test_the_api_server_splits_workflows_by_the_operators_hash(crds: Cluster) -> None:
    """Its list and its watch of each range hold exactly the uids `Shard.owns` gives that range. (For custom
    resources, 1.37 does not echo the selector back in the list's `shardInfo`, as it does for built-in kinds:
    the split itself is the evidence.)"""
    with temporary_namespace(crds, "e2e-shardlist") as namespace:  # no operator watches it
        apply_docs(crds, namespace, *(sleep_workflow(f"w{i}", "none", ["a"], 1) for i in range(40)))
        everything = {
            item["metadata"]["uid"]
            for item in crds.kubectl_json("get", "workflows", "--namespace", namespace)["items"]
        }
        assert len(everything) == 40
        for count in (2, 3):
            seen: set[str] = set()
            for index in range(count):
                shard = Shard(index=index, count=count)
                listed = served_uids(crds, namespace, shard, watch=False)
                assert listed == {uid for uid in everything if shard.owns(uid)}
                assert served_uids(crds, namespace, shard, watch=True) == listed
                assert not listed & seen
                seen |= listed
            assert seen == everything


def runs(process: OperatorProcess, namespace: str, name: str) -> list[str]:
    workflow = re.escape(f"{namespace}/{name}")
    return re.findall(rf"Workflow {workflow} run (starts|resumes)$", process.log(), re.MULTILINE)


def about(process: OperatorProcess, obj: str) -> list[str]:
    """The operator's log lines about an object (Kopf's full format names it as `[namespace/name]`)."""
    return [line for line in process.log().splitlines() if obj in line]


def lease_holder(cluster: Cluster, namespace: str, name: str) -> str:
    result = cluster.kubectl(
        "get", "lease", name, "--namespace", namespace, "-o", "jsonpath={.spec.holderIdentity}", check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def test_each_shard_runs_its_own_workflows_and_shard_0_the_pools(
    control_plane: Cluster, namespace: str, shards: list[OperatorProcess]
) -> None:
    # Each shard leads on its own Lease (a standby of shard 1 would take over shard 1 only).
    for index in range(SHARDS):
        wait_until(
            lambda i=index: lease_holder(control_plane, namespace, f"{LEASE}-{i}").startswith(f"shard-{i}_"),  # type: ignore[misc]
            timeout=30, what=f"shard {index} holding its Lease",
        )  # fmt: skip
    apply_docs(
        control_plane, namespace, *(sleep_workflow(name, "sleepy", ["a", "b"], 0.2) for name in WORKFLOWS)
    )

    def all_succeeded() -> list[dict[str, Any]] | None:
        objs = [get_workflow(control_plane, namespace, name) for name in WORKFLOWS]
        return objs if all(o.get("status", {}).get("phase") == "Succeeded" for o in objs) else None

    objs = wait_until(
        all_succeeded, timeout=120, interval=0.5, what="every Workflow Succeeded",
        detail=lambda: "\n".join(p.tail(30) for p in shards),
    )  # fmt: skip
    owners = {index: 0 for index in range(SHARDS)}
    for obj in objs:
        name, uid = obj["metadata"]["name"], obj["metadata"]["uid"]
        (owner,) = [i for i in range(SHARDS) if Shard(index=i, count=SHARDS).owns(uid)]
        owners[owner] += 1
        assert runs(shards[owner], namespace, name) == ["starts"], shards[owner].tail()
        assert runs(shards[1 - owner], namespace, name) == [], shards[1 - owner].tail()
        assert obj["status"]["progress"] == "2/2"
    # Ten uids, each shard some (a 1-in-512 chance of all on one side would only weaken the test).
    print(f"Workflows per shard: {owners}")

    # Nobody fights over finalizers: a shard that saw another's object with no handler taking it would take
    # the finalizer off, its owner would put it back, a PATCH each time (40 a second, as first written).
    before = request_counts(control_plane.kubectl("get", "--raw", "/metrics").stdout)
    time.sleep(3)
    after = request_counts(control_plane.kubectl("get", "--raw", "/metrics").stdout)
    for kind in ("agentpools", "workflows"):
        key = ("PATCH", kind, "")
        assert after.get(key, 0.0) - before.get(key, 0.0) <= 1, f"PATCH {kind} in 3 s"

    # The pool: shard 0 reconciles it (its status is written), shard 1 never handles it.
    pool = control_plane.kubectl_json("get", "agentpool", "sleepy", "--namespace", namespace)
    assert pool.get("status", {}).get("conditions"), pool.get("status")
    assert not [line for line in shards[1].log().splitlines() if f"[{namespace}/sleepy]" in line], shards[
        1
    ].tail()
    assert [line for line in shards[0].log().splitlines() if f"[{namespace}/sleepy]" in line], shards[
        0
    ].tail()

    # Deleting is held by no shard: only the owner put its finalizer on, and removes it.
    control_plane.kubectl("delete", "workflows", "--all", "--namespace", namespace, "--timeout=60s")
    assert control_plane.kubectl_json("get", "workflows", "--namespace", namespace)["items"] == []
