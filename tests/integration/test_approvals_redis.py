"""Approval steps on real Redis: a run waiting for a decision is stopped (as an operator restart stops it)
and resumed by a new runner on a new connection; the decision made meanwhile is honoured, and the
timeout counts from when the wait first began, not from the restart. A large result is stored once in Redis
and fetched back by its reference."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from codeforge.api.approval import Decision
from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowHandle, WorkflowOutcome, WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.results import ResultGone, ResultStore, fetch_result
from codeforge.queue import QueueUnavailableError, open_queue

pytestmark = [pytest.mark.redis]


def gated(pool: str, timeout: float | None = None) -> dict[str, object]:
    gate: dict[str, object] = {"name": "gate", "kind": "approval", "message": "ship?"}
    if timeout is not None:
        gate["timeoutSeconds"] = timeout
    return {
        "steps": [
            {"name": "build", "pool": pool},
            gate,
            {"name": "ship", "pool": pool},
            {"name": "rollback", "pool": pool},
        ],
        "edges": [
            {"from": "build", "to": "gate"},
            {"from": "gate", "to": "ship", "when": "result.approved"},
            {"from": "gate", "to": "rollback", "when": "!result.approved"},
        ],
    }


async def run_until_waiting(url: str, run_id: str, spec_data: dict[str, object], pool: str) -> None:
    """One 'operator': runs the workflow until its approval step waits, then stops as a restart does."""
    queue = await open_queue(url)
    saver = await open_checkpointer(url)
    control = WorkflowHandle()
    try:
        async with InProcessAgents(queue, [PoolSpec(pool)]):
            job = asyncio.ensure_future(
                WorkflowRunner(queue, saver).run(run_id, parse_workflow_spec(spec_data), control=control)
            )
            deadline = time.monotonic() + 20
            while "gate" not in control.approvals.waiting:
                assert time.monotonic() < deadline, "the approval step never started waiting"
                assert not job.done(), job.result()
                await asyncio.sleep(0.02)
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    finally:
        await saver.aclose()
        await queue.close()


async def resume(
    url: str, run_id: str, spec_data: dict[str, object], pool: str, decision: Decision | None
) -> WorkflowOutcome:
    queue = await open_queue(url)
    saver = await open_checkpointer(url)
    control = WorkflowHandle()
    if decision is not None:
        control.approvals.replace({"gate": decision})
    try:
        async with InProcessAgents(queue, [PoolSpec(pool)]):
            runner = WorkflowRunner(queue, saver)
            return await asyncio.wait_for(
                runner.run(run_id, parse_workflow_spec(spec_data), control=control), 30
            )
    finally:
        await saver.aclose()
        await queue.close()


@pytest.mark.parametrize(("approved", "next_step"), [(True, "ship"), (False, "rollback")])
async def test_a_decision_made_while_no_runner_ran_is_honoured_after_the_restart(
    redis_url: str, approved: bool, next_step: str
) -> None:
    pool, run_id = f"p-{uuid.uuid4().hex[:6]}", f"wf-{uuid.uuid4().hex[:8]}"
    spec = gated(pool)
    await run_until_waiting(redis_url, run_id, spec, pool)
    outcome = await resume(redis_url, run_id, spec, pool, Decision(approved, "alice", "checked", visit=1))
    assert outcome.resumed
    assert [h["step"] for h in outcome.history] == ["build", "gate", next_step]
    assert outcome.results["gate"]["by"] == "alice"
    assert outcome.results["gate"]["approved"] is approved
    build = [h for h in outcome.history if h["step"] == "build"]
    assert len(build) == 1  # the finished step was not run again


async def test_the_timeout_counts_from_the_first_wait_across_a_restart(redis_url: str) -> None:
    pool, run_id = f"p-{uuid.uuid4().hex[:6]}", f"wf-{uuid.uuid4().hex[:8]}"
    spec = gated(pool, timeout=3.0)
    await run_until_waiting(redis_url, run_id, spec, pool)
    await asyncio.sleep(2.0)
    started = time.monotonic()
    outcome = await resume(redis_url, run_id, spec, pool, None)
    waited = time.monotonic() - started
    assert [h["step"] for h in outcome.history] == ["build", "gate", "rollback"]
    assert outcome.results["gate"]["decision"] == "timedOut"
    assert waited < 2.5, f"the timeout restarted with the runner: waited {waited:.1f}s more"


async def test_a_large_result_is_stored_once_and_fetched_by_its_reference(redis_url: str) -> None:
    uid = uuid.uuid4().hex
    queue = await open_queue(redis_url)
    saver = await open_checkpointer(redis_url)
    store = ResultStore(saver.client)
    small, none_ref = await store.bounded(uid, {"a": 1})
    assert small == {"a": 1}
    assert none_ref is None
    big = {"report": "x" * 10_000, "n": list(range(100))}
    inline, ref = await store.bounded(uid, big)
    assert inline is None
    assert ref is not None
    assert ref["sizeBytes"] > 10_000
    assert await fetch_result(redis_url, ref) == big
    await store.delete(ref["redisKey"])
    with pytest.raises(ResultGone, match="no longer in Redis"):
        await fetch_result(redis_url, ref)
    with pytest.raises(ValueError, match="is not a Workflow result key"):
        await fetch_result(redis_url, {"redisKey": "cf:{ns/pool}:tasks"})
    with pytest.raises(
        QueueUnavailableError, match=r"cannot reach Redis at redis://\*\*\*@127.0.0.1:1/0"
    ) as info:
        await fetch_result("redis://:secret@127.0.0.1:1/0", ref)
    assert "secret" not in str(info.value)
    await saver.aclose()
    await queue.close()
