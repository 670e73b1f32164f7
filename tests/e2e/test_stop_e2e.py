"""`codeforge stop | terminate` (spec.shutdown) end to end: the local control plane, a real redis-server, the
operator as a local process and a real `codeforge-agent`, driven through the CLI's real entry points.

Stop lets the running step finish and starts nothing new (Cancelled, reason Stopped), withdrawing a task no
agent took; Terminate cancels the running task (reason Terminated); a Stop given while no operator runs is
honoured by the next one, which waits for the step still running in the agent. A step runs until the test
opens its gate (a file the agent's command waits for), so no assertion depends on how long a CLI call takes on
a busy machine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.processes import VENV_BIN, AgentProcess, OperatorProcess, running_agents, wait_until
from cluster.resources import (
    apply_docs,
    event_reasons,
    install_crds,
    pool_doc,
    sleep_workflow,
    temporary_namespace,
    wait_workflow,
)
from codeforge.api.task import TaskState
from codeforge.orchestrator.shutdown import WITHDRAWN_MESSAGE
from codeforge.queue import TaskQueue
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-stop") as name:
        apply_docs(control_plane, name, pool_doc("gated", "command"))
        yield name


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stop-e2e")


@pytest.fixture(scope="module")
def gates(log_dir: Path) -> Path:
    path = log_dir / "gates"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def agent(namespace: str, redis_server: LocalRedis, log_dir: Path, gates: Path) -> Iterator[AgentProcess]:
    # Each task marks itself started, then runs until its gate file exists (or the agent cancels it).
    script = (
        f'g="{gates}/$CODEFORGE_TASK_WORKFLOW.$CODEFORGE_TASK_STEP"; touch "$g.started"; '
        'while [ ! -e "$g" ]; do sleep 0.1; done; echo "{\\"step\\": \\"$CODEFORGE_TASK_STEP\\"}"'
    )
    command = json.dumps(["sh", "-c", script])
    with running_agents(
        f"{namespace}/gated", redis_server.url, log_dir, handler="command", command=command, concurrency="4"
    ) as started:
        yield started[0]


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, log_dir: Path, agent: AgentProcess
) -> Iterator[OperatorProcess]:
    with OperatorProcess.for_namespace(
        control_plane, namespace, redis_server.url, log_dir / "operator.log", "codeforge"
    ) as process:
        yield process


def cli(cluster: Cluster, *args: str, plugin: bool = False) -> subprocess.CompletedProcess[str]:
    """`codeforge ARGS` (or `kubectl codeforge ARGS`, kubectl finding the plugin on the PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEFORGE_")}
    env.update(KUBECONFIG=str(cluster.kubeconfig), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    argv = [str(cluster.kubectl_path), "codeforge"] if plugin else [str(VENV_BIN / "codeforge")]
    return subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip


def step(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in obj.get("steps", []) if s["name"] == name), {})


def finished_reason(obj: dict[str, Any]) -> str:
    return next((c["reason"] for c in obj.get("conditions", []) if c["type"] == "Finished"), "")


def wait_status(
    cluster: Cluster, namespace: str, name: str, operator: OperatorProcess, check: Any, what: str
) -> dict[str, Any]:
    """The Workflow's status once `check` holds for it."""
    obj = wait_workflow(
        cluster, namespace, name, lambda o: check(o.get("status") or {}), f": {what}", timeout=90,
        tail=operator.tail,
    )  # fmt: skip
    return dict(obj["status"])


def stopping(s: dict[str, Any]) -> bool:
    return any(c["type"] == "Running" and c["reason"] == "Stopping" for c in s.get("conditions", []))


def never_dispatched(s: dict[str, Any]) -> bool:
    """The step after the stop: reached by the graph at most, held at the gate, no task (no attempt)."""
    return s == {} or (s["phase"] == "Cancelled" and s["attempts"] == 0)


def cancelled(s: dict[str, Any]) -> bool:
    return s.get("phase") == "Cancelled"


def start(cluster: Cluster, namespace: str, name: str, gates: Path, operator: OperatorProcess) -> str:
    """Create a two-step Workflow on the gated pool and wait until its first step's task runs; its uid."""
    doc = sleep_workflow(name, "gated", ["one", "two"], 0)
    apply_docs(cluster, namespace, doc)
    uid = str(cluster.kubectl_json("get", "workflow", name, "-n", namespace)["metadata"]["uid"])
    wait_until(lambda: (gates / f"{uid}.one.started").exists(), timeout=90, what=f"{name}: step one started",
               detail=operator.tail)  # fmt: skip
    return uid


async def test_stop_lets_the_running_step_finish_and_starts_nothing_new(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue, gates: Path
) -> None:
    name = "stopped"
    uid = start(control_plane, namespace, name, gates, operator)
    done = cli(control_plane, "stop", name, "-n", namespace, plugin=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"workflow.codeforge.ai/{name} stopping (running steps finish, nothing new starts)"
    )
    again = cli(control_plane, "stop", name, "-n", namespace)
    assert again.stdout.strip() == f"workflow.codeforge.ai/{name} already stopping", again.stderr
    draining = wait_status(control_plane, namespace, name, operator, stopping, "condition Stopping")
    assert draining["phase"] == "Running"  # the running step is allowed to finish: nothing ends it early
    assert step(draining, "one")["phase"] == "Running"

    (gates / f"{uid}.one").touch()  # the step finishes
    final = wait_status(control_plane, namespace, name, operator, cancelled, "Cancelled")
    assert step(final, "one")["phase"] == "Succeeded"
    assert final["result"] == {"one": {"step": "one"}}
    assert never_dispatched(step(final, "two"))
    assert finished_reason(final) == "Stopped"
    assert "spec.shutdown: Stop" in final["message"]
    record = await queue.get(f"{namespace}/gated", f"{uid}/one/v1/p0/a0")
    assert record is not None
    assert record.state is TaskState.SUCCEEDED
    assert await queue.get(f"{namespace}/gated", f"{uid}/two/v1/p0/a0") is None
    reasons = event_reasons(control_plane, namespace, "Workflow", name)
    assert "Stopping" in reasons
    assert "WorkflowCancelled" in reasons

    shown = cli(control_plane, "get", name, "-n", namespace)
    assert "Phase:       Cancelled" in shown.stdout, shown.stdout
    late = cli(control_plane, "stop", name, "-n", namespace)
    assert late.returncode == 1
    assert (
        late.stderr.strip() == f"error: Workflow {name!r} is Cancelled: a finished Workflow cannot be stopped"
    )


async def test_terminate_cancels_the_running_task(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue, gates: Path
) -> None:
    name = "terminated"
    uid = start(control_plane, namespace, name, gates, operator)
    try:
        done = cli(control_plane, "terminate", name, "-n", namespace)
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout.strip() == f"workflow.codeforge.ai/{name} terminating (running tasks are cancelled)"
        )
        final = wait_status(control_plane, namespace, name, operator, cancelled, "Cancelled")
    finally:
        (gates / f"{uid}.one").touch()  # let the agent's command go, whatever happened
    assert step(final, "one")["phase"] == "Cancelled"
    assert finished_reason(final) == "Terminated"
    assert "spec.shutdown: Terminate" in final["message"]
    record = await queue.get(f"{namespace}/gated", f"{uid}/one/v1/p0/a0")
    assert record is not None
    assert record.state is TaskState.CANCELLED
    assert "Terminating" in event_reasons(control_plane, namespace, "Workflow", name)


async def test_a_stop_given_while_the_operator_is_down_is_honoured_after_its_restart(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue, gates: Path
) -> None:
    name = "stopped-restart"
    uid = start(control_plane, namespace, name, gates, operator)
    operator.kill()
    try:
        done = cli(control_plane, "stop", name, "-n", namespace)
        assert done.returncode == 0, done.stderr
    finally:
        operator.start()
    # The killed operator may not have written phase Running yet: the new one shows it once the run resumes.
    draining = wait_status(
        control_plane, namespace, name, operator, lambda s: stopping(s) and s["phase"] != "Pending",
        "condition Stopping, run resumed",
    )  # fmt: skip
    assert draining["phase"] == "Running"
    (gates / f"{uid}.one").touch()
    final = wait_status(control_plane, namespace, name, operator, cancelled, "Cancelled")
    assert finished_reason(final) == "Stopped"
    assert step(final, "one")["phase"] == "Succeeded"  # re-attached and waited for, not dropped
    assert step(final, "one")["visits"] == 1
    assert final["result"] == {"one": {"step": "one"}}
    assert never_dispatched(step(final, "two"))
    assert await queue.get(f"{namespace}/gated", f"{uid}/two/v1/p0/a0") is None


async def test_stop_withdraws_a_part_no_agent_took(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue, gates: Path
) -> None:
    """Five parts on an agent that runs four at a time: Stop withdraws the fifth, still queued, which never
    runs; the four finish; the step shows Cancelled (as Terminate's) and the run ends Stopped."""
    name = "stopped-queued"
    doc = sleep_workflow(name, "gated", ["fan"], 0)
    doc["spec"]["steps"][0]["parallel"] = 5
    apply_docs(control_plane, namespace, doc)
    uid = str(control_plane.kubectl_json("get", "workflow", name, "-n", namespace)["metadata"]["uid"])
    pool, tids = f"{namespace}/gated", [f"{uid}/fan/v1/p{i}/a0" for i in range(5)]

    async def states() -> list[TaskState | None]:
        return [None if (r := await queue.get(pool, tid)) is None else r.state for tid in tids]

    try:
        for _ in range(900):  # the four the agent holds run until the gate opens
            now = await states()
            if now.count(TaskState.RUNNING) == 4 and now.count(TaskState.QUEUED) == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(
                f"{name}: expected 4 parts running and 1 queued, got {now}\n{operator.tail()}"
            )
        queued = tids[now.index(TaskState.QUEUED)]
        done = cli(control_plane, "stop", name, "-n", namespace)
        assert done.returncode == 0, done.stderr
        for _ in range(900):
            if (await states())[tids.index(queued)] is TaskState.CANCELLED:
                break
            await asyncio.sleep(0.1)
    finally:
        (gates / f"{uid}.fan").touch()  # the four finish
    final = wait_status(control_plane, namespace, name, operator, cancelled, "Cancelled")
    assert finished_reason(final) == "Stopped"
    assert step(final, "fan")["phase"] == "Cancelled"
    withdrawn = await queue.get(pool, queued)
    assert withdrawn is not None
    assert (withdrawn.state, withdrawn.error, withdrawn.consumer) == (
        TaskState.CANCELLED,
        WITHDRAWN_MESSAGE,
        None,
    )
    assert [s for s in await states() if s is not TaskState.CANCELLED] == [TaskState.SUCCEEDED] * 4
    assert "StepFailed" not in event_reasons(control_plane, namespace, "Workflow", name)
