"""The orchestrator keeps the first result it received for a task id: when Redis forgets a completion (a
crash in durability=fast) and the task runs again with another result, the step keeps the first one, and a
resumed part is neither re-dispatched nor re-read from the queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from codeforge.api.task import Priority, Task
from codeforge.api.workflow import Step
from codeforge.orchestrator.dispatch import DispatchContext, PartRequest, StepDispatcher, task_id
from codeforge.queue import TaskQueue, open_queue
from codeforge.queue.keys import task_key
from support.tasks import unique_pool

pytestmark = pytest.mark.redis


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    yield q
    await q.close()


def context(first: dict[str, Any]) -> DispatchContext:
    return DispatchContext(
        workflow="wf-first",
        priority=Priority.MEDIUM,
        emit=lambda _: None,
        max_in_flight=4,
        deadline=None,
        first=first,
    )


async def agent(queue: TaskQueue, pool: str, result: Any) -> None:
    """Claim the next task of the pool and complete it with `result`."""
    lease = await queue.claim(pool, f"agent-{result}", timeout=10)
    assert lease is not None
    await queue.complete(lease, result)


async def test_a_second_result_after_redis_forgot_the_first_is_ignored(
    queue: TaskQueue, redis_url: str
) -> None:
    pool = unique_pool("first")
    step = Step.model_validate({"name": "s", "pool": pool})
    req = PartRequest(step, 1, 0, {"n": 1}, first_success=False)
    tid = task_id("wf-first", "s", 1, 0, 0)
    first: dict[str, Any] = {}

    worker = asyncio.create_task(agent(queue, pool, {"v": 1}))
    part = await StepDispatcher(queue, context(first)).run_part(req)
    await worker
    assert (part["status"], part["result"]) == ("succeeded", {"v": 1})

    # Redis forgets the completion (as a crash without fsync does); the task is dispatched and run again,
    # and this time its agent records another result, which Redis now holds.
    raw = aioredis.Redis.from_url(redis_url)
    try:
        assert await raw.delete(task_key(pool, tid)) == 1
    finally:
        await raw.aclose()
    assert await queue.enqueue(Task(id=tid, pool=pool, payload={"n": 1})) is True
    await agent(queue, pool, {"v": 2})
    twin = await queue.get(pool, tid)
    assert twin is not None
    assert twin.result == {"v": 2}

    # The part resumed in this process (a fresh dispatcher, as after a re-run of the graph) keeps the first.
    again = await StepDispatcher(queue, context(first)).run_part(req)
    assert (again["status"], again["result"]) == ("succeeded", {"v": 1})
    assert again["agent"] == "agent-{'v': 1}"


async def test_a_recorded_part_is_not_dispatched_again_when_its_task_is_gone(
    queue: TaskQueue, redis_url: str
) -> None:
    pool = unique_pool("first")
    step = Step.model_validate({"name": "s", "pool": pool})
    req = PartRequest(step, 1, 0, None, first_success=False)
    first: dict[str, Any] = {}
    worker = asyncio.create_task(agent(queue, pool, "once"))
    assert (await StepDispatcher(queue, context(first)).run_part(req))["result"] == "once"
    await worker
    raw = aioredis.Redis.from_url(redis_url)
    try:  # Redis forgets the task altogether ...
        assert await raw.delete(task_key(pool, task_id("wf-first", "s", 1, 0, 0))) == 1
    finally:
        await raw.aclose()

    # ... but a resumed part answers from what it received first, without dispatching the task again (no
    # agent is left: a re-dispatch would wait for ever).
    resumed = await asyncio.wait_for(StepDispatcher(queue, context(first)).run_part(req), 5)
    assert (resumed["status"], resumed["result"]) == ("succeeded", "once")
    assert await queue.get(pool, task_id("wf-first", "s", 1, 0, 0)) is None
