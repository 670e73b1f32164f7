"""The operator and the orchestrator together on a real Redis, with real `codeforge-agent` processes.

The operator (Kopf, against kmock's Kubernetes emulator) is stopped in the middle of a step, the way a
rolling update or a failover stops it, and a new operator is started: it resumes the Workflow from its
Redis checkpoint, re-attaches the in-flight step to its task, and no step runs twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kmock
import pytest

from codeforge.api.task import TaskState
from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import task_id
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis
from support.kopf_harness import NS, prepare, running

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]

TESTS_DIR = Path(__file__).resolve().parents[1]


async def test_a_restarted_operator_resumes_the_workflow_and_runs_no_step_twice(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    log = tmp_path / "executions.log"
    step = {"pool": "durable-work", "params": {"log": str(log), "seconds": 0}}
    spec = {
        "input": {"n": 7},
        "steps": [
            {"name": "first", **step},
            {"name": "slow", **step, "params": {"log": str(log), "seconds": 3}},
            {"name": "last", **step},
        ],
        "edges": [{"from": "first", "to": "slow"}, {"from": "slow", "to": "last"}],
    }
    pool = PoolSpec(
        f"{NS}/durable-work",
        "python",
        {"pythonFunction": "support.workflow_agents:logged_sleep"},
        concurrency=2,
    )
    queue = await open_queue(redis_url)
    slow_id = task_id("uid-durable", "slow", 1, 0, 0)
    try:
        with AgentProcesses(redis_url, [pool], TESTS_DIR):
            async with running(kmock) as cluster:
                await cluster.create("durable", spec, uid="uid-durable")

                async def slow_running() -> bool:
                    record = await queue.get(f"{NS}/durable-work", slow_id)
                    return record is not None and record.state is TaskState.RUNNING

                for _ in range(300):  # the test polls; the operator never does
                    if await slow_running():
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the slow step never started")
            # The first operator is gone; the agent still works on the slow step.
            stopped = cluster.status("durable")
            assert stopped["phase"] == "Running"
            assert {s["name"]: s["phase"] for s in stopped["steps"]}["slow"] == "Running"

            async with running(kmock) as cluster:
                await cluster.eventually(lambda: cluster.phase("durable") == "Succeeded", timeout=60)
                status = cluster.status("durable")
    finally:
        await queue.close()

    executions = log.read_text().splitlines()
    assert sorted(executions) == sorted(
        task_id("uid-durable", name, 1, 0, 0) for name in ("first", "slow", "last")
    ), "every step ran exactly once"
    assert status["progress"] == "3/3"
    assert [(s["name"], s["visits"], s["attempts"]) for s in status["steps"]] == [
        ("first", 1, 1),
        ("slow", 1, 1),
        ("last", 1, 1),
    ]
    assert status["result"]["last"]["n"] == 7


async def test_the_codeforge_operator_command_runs_workflows_and_serves_liveness(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """`codeforge operator` as its own process, configured only through the environment."""
    import os
    import socket
    import sys

    import aiohttp

    from support.kopf_harness import API, agents

    prepare(kmock, tmp_path, monkeypatch, redis_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "CODEFORGE_QUEUE_URL": redis_url,
        # The whole cluster: watching listed namespaces makes Kopf list Namespaces, a path kmock cannot parse.
        "CODEFORGE_WATCH_NAMESPACES": "",
        "CODEFORGE_LOG_FORMAT": "json",
        "CODEFORGE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
        "CODEFORGE_WORKFLOW_STATUS_INTERVAL": "0.2",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    codeforge = Path(sys.executable).parent / "codeforge"
    spec = {"steps": [{"name": "hello", "pool": "cli-echo"}]}
    async with agents(redis_url, {f"{NS}/cli-echo": ("echo", {})}), aiohttp.ClientSession() as http:
        process = await asyncio.create_subprocess_exec(
            str(codeforge),
            "operator",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            body = {
                "apiVersion": "codeforge.ai/v1alpha1",
                "kind": "Workflow",
                "metadata": {"name": "cli", "namespace": NS, "uid": "uid-cli", "resourceVersion": "1"},
                "spec": spec,
            }
            async with http.post(f"{str(kmock.url).rstrip('/')}{API}", json=body) as response:
                assert response.status < 400
            pool = {**body, "kind": "AgentPool", "metadata": {"name": "cli-echo", "namespace": NS}}
            pool["spec"] = {"image": "agent:1", "handler": {"kind": "echo"}}
            pools = f"{str(kmock.url).rstrip('/')}{API.replace('workflows', 'agentpools')}"
            async with http.post(pools, json=pool) as response:  # the pool the step names exists
                assert response.status < 400
            phase = None
            for _ in range(300):
                for (res, _ns, name), obj in kmock.objects.items():
                    if res.plural == "workflows" and name == "cli":
                        phase = (obj.raw.get("status") or {}).get("phase")
                if phase == "Succeeded":
                    break
                await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                alive = response.status
        finally:
            process.terminate()
            output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert phase == "Succeeded", output.decode()[-3000:]
    assert alive == 200
    assert process.returncode == 0, output.decode()[-3000:]
    assert b'"message"' in output  # JSON logs


async def test_a_workflow_deleted_while_the_operator_is_down_is_cleaned_up_on_restart(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """No run is active to cancel: the finalizer cancels the in-flight tasks the status names, and removes
    the checkpoints."""
    import aiohttp

    from codeforge.orchestrator.checkpoint import open_checkpointer
    from support.kopf_harness import API

    prepare(kmock, tmp_path, monkeypatch, redis_url)
    spec = {
        "steps": [{"name": "stuck", "pool": "nobody-home"}, {"name": "after", "pool": "nobody-home"}],
        "edges": [{"from": "stuck", "to": "after"}],
    }
    tid = task_id("uid-orphan", "stuck", 1, 0, 0)
    async with running(kmock) as cluster:
        await cluster.create("orphan", spec, uid="uid-orphan")
        await cluster.eventually(lambda: cluster.status("orphan").get("currentStep") == "stuck")
    # The operator is down: the deletion only marks the object (the finalizer holds it).
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"{str(kmock.url).rstrip('/')}{API}/orphan") as response,
    ):
        assert response.status < 400
    assert cluster.get("orphan") is not None
    queue = await open_queue(redis_url)
    checkpoints = await open_checkpointer(redis_url)
    config: Any = {"configurable": {"thread_id": "uid-orphan"}}
    try:
        assert await checkpoints.aget_tuple(config) is not None
        async with running(kmock) as cluster:
            await cluster.eventually(lambda: cluster.get("orphan") is None)
        record = await queue.get(f"{NS}/nobody-home", tid)
        assert record is not None
        assert record.state is TaskState.CANCELLED
        assert await checkpoints.aget_tuple(config) is None
    finally:
        await queue.close()
        await checkpoints.aclose()


async def test_a_redis_outage_mid_run_is_reported_and_the_run_resumes(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_redis: LocalRedis
) -> None:
    from support.kopf_harness import agents

    prepare(kmock, tmp_path, monkeypatch, fresh_redis.url)
    spec = {
        "steps": [
            {"name": "before", "pool": "outage-work", "params": {"seconds": 0}},
            {"name": "during", "pool": "outage-work", "params": {"seconds": 2}},
            {"name": "after", "pool": "outage-work", "params": {"seconds": 0}},
        ],
        "edges": [{"from": "before", "to": "during"}, {"from": "during", "to": "after"}],
    }

    def degraded(cluster: Any) -> str:
        for condition in cluster.status("outage").get("conditions") or []:
            if condition["type"] == "Degraded" and condition["status"] == "True":
                return str(condition["message"])
        return ""

    async with agents(fresh_redis.url, {f"{NS}/outage-work": ("sleep", {})}), running(kmock) as cluster:
        await cluster.create("outage", spec)
        await cluster.eventually(lambda: cluster.status("outage").get("currentStep") == "during")
        fresh_redis.kill()
        message = await cluster.eventually(lambda: degraded(cluster), timeout=30)
        assert "queue unreachable" in message
        fresh_redis.restart()
        await cluster.eventually(lambda: cluster.phase("outage") == "Succeeded", timeout=60)
        assert not degraded(cluster)
        assert cluster.status("outage")["progress"] == "3/3"
