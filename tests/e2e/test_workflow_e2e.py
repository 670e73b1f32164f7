"""Workflows end to end: `kubectl apply` a Workflow on the local control plane; the operator (a local
`kopf run -m codeforge.controller` process) runs its LangGraph graph, dispatching steps to real
`codeforge-agent` processes through a real redis-server; `kubectl get workflows` shows its progress.

Also: an invalid Workflow is marked Invalid, suspend and resume, deleting a Workflow cancels its tasks and
removes its checkpoints, and an operator killed with SIGKILL mid-run resumes it without running a step twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cluster import Cluster
from cluster.processes import AgentProcess, OperatorProcess, has_operator_command, running_agents, wait_until
from cluster.resources import (
    EXAMPLES_DIR,
    documents,
    dump,
    event_reasons,
    install_crds,
    pool_doc,
    table,
    temporary_namespace,
    wait_workflow,
)
from cluster.resources import apply_docs as apply
from cluster.resources import get_workflow as get
from cluster.resources import workflow_doc as workflow
from codeforge.api.task import TaskState
from codeforge.orchestrator import task_id
from codeforge.queue import TaskQueue
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

#: Pools of this module and their agents' handlers. `sleepy` steps take a while (payload `seconds`), so a
#: run can be watched, suspended and interrupted; nobody serves `idle`, so its tasks stay queued.
POOLS = {"echo": "echo", "sleepy": "sleep"}
CHECKPOINT_PREFIX = "cf:cp"


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-wf") as name:
        # The pools the steps name, as a user declares them (the operator gives each one a Deployment).
        pools = [pool_doc(pool, handler) for pool, handler in [*POOLS.items(), ("idle", "echo")]]
        control_plane.kubectl("apply", "--namespace", name, "-f", "-", input=dump(pools))
        yield name


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workflow-e2e")


@pytest.fixture(scope="module")
def agents(namespace: str, redis_server: LocalRedis, log_dir: Path) -> Iterator[dict[str, AgentProcess]]:
    """One real agent per pool, started before the operator so they outlive its restarts."""
    with (
        running_agents(
            f"{namespace}/echo", redis_server.url, log_dir, handler="echo", concurrency="4"
        ) as echo,
        running_agents(
            f"{namespace}/sleepy", redis_server.url, log_dir, handler="sleep", concurrency="4"
        ) as sleepy,
    ):
        yield {"echo": echo[0], "sleepy": sleepy[0]}


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    namespace: str,
    redis_server: LocalRedis,
    log_dir: Path,
    agents: dict[str, AgentProcess],
) -> Iterator[OperatorProcess]:
    # `codeforge operator` here, `kopf run` (the image's entrypoint) in the AgentPool tests: both are covered.
    entrypoint = "codeforge" if has_operator_command() else "kopf"
    with OperatorProcess.for_namespace(
        control_plane, namespace, redis_server.url, log_dir / "operator.log", entrypoint
    ) as process:
        yield process


def chain(pool: str, *names: str, **params: Any) -> dict[str, Any]:
    """A spec of sequential steps on one pool."""
    return {
        "input": {"n": 1},
        "steps": [{"name": n, "pool": pool, "params": dict(params)} for n in names],
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(names)],
    }


def phase(cluster: Cluster, namespace: str, name: str) -> str:
    return str(get(cluster, namespace, name).get("status", {}).get("phase", ""))


def row(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    (found,) = table(cluster, "workflows", name, "--namespace", namespace)
    return found


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def wait_phase(
    cluster: Cluster, namespace: str, name: str, want: str, operator: OperatorProcess, timeout: float = 60
) -> dict[str, Any]:
    def reached(obj: dict[str, Any]) -> bool:
        return bool(obj.get("status", {}).get("phase") == want)

    return wait_workflow(cluster, namespace, name, reached, f" {want}", timeout=timeout, tail=operator.tail)


def progress_in(cluster: Cluster, namespace: str, name: str, *want: str) -> dict[str, Any] | None:
    obj = get(cluster, namespace, name)
    return obj if obj.get("status", {}).get("progress") in want else None


def claims(agent: AgentProcess, uid: str) -> list[str]:
    """The task ids of this Workflow the agent claimed, from its log."""
    return re.findall(rf"claimed .*?task_id=({re.escape(uid)}/\S+)", agent.log())


async def checkpoint_keys(url: str, uid: str) -> list[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return [
            key.decode() async for key in client.scan_iter(match=f"{CHECKPOINT_PREFIX}*{uid}*", count=1000)
        ]
    finally:
        await client.aclose()


def test_example_and_a_watched_workflow_run_to_succeeded(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, agents: dict[str, AgentProcess]
) -> None:
    # The hello-world example as shipped: its Workflow and its `echo` AgentPool (served by the echo agent).
    apply(control_plane, namespace, *documents(EXAMPLES_DIR / "workflows" / "hello-world.yaml"))

    # Three steps of 1 s each: `kubectl get workflows` is polled while it runs, as a user would watch it.
    apply(control_plane, namespace, workflow("watched", chain("sleepy", "plan", "build", "check", seconds=1)))
    seen: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = row(control_plane, namespace, "watched")
        snapshot = (current["PHASE"], current["PROGRESS"], current["STEP"])
        if not seen or seen[-1] != snapshot:
            seen.append(snapshot)
        if current["PHASE"] in ("Succeeded", "Failed"):
            break
        time.sleep(0.2)
    assert seen[-1] == ("Succeeded", "3/3", ""), seen
    assert ("Running", "1/3", "build") in seen or ("Running", "2/3", "check") in seen, seen
    assert list(current) == ["NAME", "PHASE", "PROGRESS", "STEP", "AGE", "MESSAGE"]

    status = get(control_plane, namespace, "watched")["status"]
    assert [(s["name"], s["phase"], s["attempts"]) for s in status["steps"]] == [
        ("plan", "Succeeded", 1), ("build", "Succeeded", 1), ("check", "Succeeded", 1),
    ]  # fmt: skip
    assert status["startTime"]
    assert status["completionTime"]

    done = wait_phase(control_plane, namespace, "hello-world", "Succeeded", operator)
    assert done["status"]["progress"] == "1/1"
    assert done["status"]["result"]["hello"]["input"] == "hello, world"  # the echo agent's answer
    uid = done["metadata"]["uid"]
    assert len(claims(agents["echo"], uid)) == 1

    # The Workflow's end is an Event; a step's routine start and success are not (status.steps has them;
    # CODEFORGE_WORKFLOW_STEP_EVENTS would post them): Kopf posts Events in the background, so wait for it.
    name = "watched"
    deadline = time.monotonic() + 30
    while "WorkflowSucceeded" not in (reasons := event_reasons(control_plane, namespace, "Workflow", name)):
        assert time.monotonic() < deadline, reasons
        time.sleep(0.5)
    assert "StepStarted" not in reasons, reasons
    assert "StepSucceeded" not in reasons, reasons


def test_fan_out_example_runs_on_agents_configured_like_its_pods(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, log_dir: Path
) -> None:
    """examples/workflows/fan-out.yaml as shipped: its AgentPools get Deployments from the operator, and one
    local agent per pool runs with the environment of that Deployment's pods (handler, concurrency, queue)."""
    docs = documents(EXAMPLES_DIR / "workflows" / "fan-out.yaml")
    apply(control_plane, namespace, *docs)
    pools = [d["metadata"]["name"] for d in docs if d["kind"] == "AgentPool"]
    deployments = {pool: wait_for_deployment(control_plane, namespace, pool, operator) for pool in pools}
    # In the agent image demo_agents would be baked in; here it is put on the agents' path.
    path = {
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES_DIR / "workflows"), os.environ.get("PYTHONPATH", "")])
    }
    agents = [
        AgentProcess.like_pod(dep, f"{pool}-local-0", log_dir / f"fan-out-{pool}.log", path)
        for pool, dep in deployments.items()
    ]
    try:
        for agent in agents:
            agent.launch()
        for agent in agents:
            agent.wait_started()
        assert {a.env["CODEFORGE_HANDLER"] for a in agents} == {"python", "sleep"}
        done = wait_phase(control_plane, namespace, "fan-out", "Succeeded", operator, timeout=90)
    finally:
        for agent in agents:
            agent.stop(grace=10)
    steps = {s["name"]: s for s in done["status"]["steps"]}
    assert list(steps) == ["scan", "count", "summarize", "fastest-mirror"]
    assert all(s["phase"] == "Succeeded" for s in steps.values()), steps
    assert steps["count"]["parts"] > 1  # one task per file of the sample project
    assert steps["fastest-mirror"]["parts"] == 3
    assert done["status"]["progress"] == "4/4"


def wait_for_deployment(
    cluster: Cluster, namespace: str, name: str, operator: OperatorProcess
) -> dict[str, Any]:
    def made() -> dict[str, Any] | None:
        out = cluster.kubectl("get", "deployment", name, "--namespace", namespace, "-o", "json", check=False)
        found: dict[str, Any] | None = json.loads(out.stdout) if out.returncode == 0 else None
        return found

    return wait_until(made, timeout=60, what=f"Deployment of pool {name}", detail=operator.tail)


def test_an_invalid_workflow_is_marked_invalid(
    control_plane: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    bad = chain("echo", "one", "two")
    bad["edges"] = [{"from": "one", "to": "nowhere"}]
    apply(control_plane, namespace, workflow("bad", bad))
    obj = wait_phase(control_plane, namespace, "bad", "Failed", operator)
    invalid = condition(obj, "Invalid")
    assert invalid is not None, obj
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")
    assert "spec.edges[0].to" in invalid["message"]
    assert "nowhere" in invalid["message"]
    shown = row(control_plane, namespace, "bad")
    assert shown["PHASE"] == "Failed", shown
    assert "nowhere" in shown["MESSAGE"], shown

    # The operator carries on: fixing the spec runs the Workflow.
    control_plane.kubectl(
        "patch", "workflow", "bad", "--namespace", namespace, "--type=merge",
        "-p", '{"spec": {"edges": [{"from": "one", "to": "two"}]}}',
    )  # fmt: skip
    fixed = wait_phase(control_plane, namespace, "bad", "Succeeded", operator)
    assert (condition(fixed, "Invalid") or {}).get("status") != "True"


async def test_suspend_and_resume(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue
) -> None:
    apply(control_plane, namespace, workflow("paused", {**chain("echo", "first", "second"), "suspend": True}))
    obj = wait_phase(control_plane, namespace, "paused", "Suspended", operator)
    uid = obj["metadata"]["uid"]
    await asyncio.sleep(2)  # long enough for a wrongly dispatched task to show up
    assert await queue.get(f"{namespace}/echo", task_id(uid, "first", 1, 0, 0)) is None
    assert phase(control_plane, namespace, "paused") == "Suspended"
    assert row(control_plane, namespace, "paused")["PHASE"] == "Suspended"

    control_plane.kubectl(
        "patch",
        "workflow",
        "paused",
        "--namespace",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false}}',
    )
    done = wait_phase(control_plane, namespace, "paused", "Succeeded", operator)
    assert done["status"]["progress"] == "2/2"


async def test_deleting_a_workflow_cancels_its_tasks(
    control_plane: Cluster,
    namespace: str,
    operator: OperatorProcess,
    queue: TaskQueue,
    redis_server: LocalRedis,
) -> None:
    # Nobody serves the `idle` pool: the first step's task stays queued until the Workflow is deleted.
    apply(control_plane, namespace, workflow("doomed", chain("idle", "wait", "never")))
    obj = wait_phase(control_plane, namespace, "doomed", "Running", operator)
    uid = obj["metadata"]["uid"]
    pool = f"{namespace}/idle"
    tid = task_id(uid, "wait", 1, 0, 0)
    record = await queue.get(pool, tid)
    deadline = time.monotonic() + 30
    while record is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        record = await queue.get(pool, tid)
    assert record is not None
    assert record.state is TaskState.QUEUED
    assert await checkpoint_keys(redis_server.url, uid), "the run keeps checkpoints in Redis"

    control_plane.kubectl("delete", "workflow", "doomed", "--namespace", namespace, "--timeout=60s")
    record = await queue.get(pool, tid)
    assert record is not None
    assert record.state is TaskState.CANCELLED
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (0, 0)
    assert await checkpoint_keys(redis_server.url, uid) == []


def test_operator_killed_mid_workflow_resumes_and_runs_no_step_twice(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, agents: dict[str, AgentProcess]
) -> None:
    steps = [f"s{i}" for i in range(5)]
    apply(control_plane, namespace, workflow("survivor", chain("sleepy", *steps, seconds=1.5)))
    obj = wait_until(
        # 2/5 (or 3/5 on a slow machine): a step is in flight and at least two more are to come.
        lambda: progress_in(control_plane, namespace, "survivor", "2/5", "3/5"),
        timeout=60, interval=0.2, what="survivor at 2/5 or 3/5",
        detail=lambda: f"{get(control_plane, namespace, 'survivor').get('status')}\n{operator.tail()}",
    )  # fmt: skip
    uid = obj["metadata"]["uid"]

    operator.kill()  # SIGKILL while a step is in flight: no cleanup handler, no last status write
    killed_at = time.monotonic()
    time.sleep(2)  # the in-flight step finishes while no operator runs
    assert phase(control_plane, namespace, "survivor") == "Running"
    operator.start()
    done = wait_phase(control_plane, namespace, "survivor", "Succeeded", operator)
    print(f"\nsurvivor finished {time.monotonic() - killed_at:.1f}s after the operator was killed")

    assert done["status"]["progress"] == "5/5"
    assert [(s["name"], s["phase"], s["attempts"]) for s in done["status"]["steps"]] == [
        (name, "Succeeded", 1) for name in steps
    ]
    # Each step ran once: one task per step, each claimed once, by the only agent of the pool.
    claimed = claims(agents["sleepy"], uid)
    assert sorted(claimed) == sorted(task_id(uid, name, 1, 0, 0) for name in steps), claimed


def test_workflow_ids_are_unique_per_object(
    control_plane: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A deleted Workflow re-created under the same name is a new run (thread id = uid), not a resumed one."""
    name = f"again-{uuid.uuid4().hex[:4]}"
    apply(control_plane, namespace, workflow(name, chain("echo", "only")))
    first = wait_phase(control_plane, namespace, name, "Succeeded", operator)
    control_plane.kubectl("delete", "workflow", name, "--namespace", namespace, "--timeout=60s")
    apply(control_plane, namespace, workflow(name, chain("echo", "only")))
    second = wait_phase(control_plane, namespace, name, "Succeeded", operator)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["status"]["steps"][0]["attempts"] == 1
