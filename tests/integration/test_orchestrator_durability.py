"""SIGKILL the orchestrator (`codeforge run --queue redis://...`) in the middle of a step, start it again:
the run resumes from its Redis checkpoint, finished steps are not run again, and the step that was in
flight is re-attached to its task by the task's deterministic id instead of being dispatched twice."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from codeforge.api.task import TaskState
from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import task_id
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TESTS_DIR = Path(__file__).resolve().parents[1]
CODEFORGE = Path(sys.executable).parent / "codeforge"


def manifest(tmp_path: Path, log: Path) -> Path:
    step = {"pool": "work", "params": {"log": str(log), "seconds": 0}}
    doc = {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "durable"},
        "spec": {
            "input": {"n": 7},
            "steps": [
                {"name": "first", **step},
                {"name": "slow", **step, "params": {"log": str(log), "seconds": 4}},
                {"name": "last", **step},
            ],
            "edges": [{"from": "first", "to": "slow"}, {"from": "slow", "to": "last"}],
        },
    }
    path = tmp_path / "durable.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def orchestrator(path: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CODEFORGE), "run", str(path), "--queue", url, "--workflow-id", "wf-durable", "--no-agents"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_sigkill_mid_step_resumes_and_reattaches(fresh_redis: LocalRedis, tmp_path: Path) -> None:
    url = fresh_redis.url
    log = tmp_path / "executions.log"
    path = manifest(tmp_path, log)
    pool = PoolSpec(
        "work", "python", {"pythonFunction": "support.workflow_agents:logged_sleep"}, concurrency=2
    )
    queue = await open_queue(url)
    slow_id = task_id("wf-durable", "slow", 1, 0, 0)
    with AgentProcesses(url, [pool], TESTS_DIR):
        first = orchestrator(path, url)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the test polls; the orchestrator never does
                record = await queue.get("work", slow_id)
                if record is not None and record.state is TaskState.RUNNING:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the slow step never started: {first.stderr.read() if first.stderr else ''}")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        second = orchestrator(path, url)
        out, err = await asyncio.to_thread(second.communicate, timeout=60)
    assert second.returncode == 0, err + out
    assert f"step slow: re-attached to task {slow_id}" in err, (err, out)
    assert "step first:" not in err  # finished before the kill: not run again
    assert "workflow: resumed from its checkpoint" in err
    executions = log.read_text().split()
    assert sorted(executions) == sorted(
        [task_id("wf-durable", s, 1, 0, 0) for s in ("first", "slow", "last")]
    ), executions  # each task ran exactly once
    for step in ("first", "slow", "last"):
        record = await queue.get("work", task_id("wf-durable", step, 1, 0, 0))
        assert record is not None
        assert record.state is TaskState.SUCCEEDED
        assert record.attempts == 1
        assert await queue.get("work", task_id("wf-durable", step, 1, 0, 1)) is None  # no retry twin
    await queue.close()
    # Running it a third time only reports the finished run.
    third = await asyncio.to_thread(
        subprocess.run,
        [
            str(CODEFORGE),
            "run",
            str(path),
            "--queue",
            url,
            "--workflow-id",
            "wf-durable",
            "--no-agents",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert third.returncode == 0, third.stderr
    outcome = json.loads(third.stdout)
    assert [h["step"] for h in outcome["history"]] == ["first", "slow", "last"]
    assert outcome["results"]["last"]["n"] == 7
