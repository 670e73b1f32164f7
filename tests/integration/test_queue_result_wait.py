"""Waiting for a task this queue enqueued (a workflow step's task): once its pool's result channel is live,
the wait needs no read of the task (one round trip less per step), and still sees an end that came before
it, a task that existed already, and an end published while the channel was down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from codeforge.api.task import TaskOutcome, TaskState
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis
from support.tasks import make_task, unique_pool

pytestmark = pytest.mark.redis


def count_reads(queue: Any) -> list[str]:
    """Record the task reads (`get`: one HMGET each) the queue makes from now on."""
    read: list[str] = []
    get: Callable[[str, str], Awaitable[TaskOutcome | None]] = queue.get

    async def counted(pool: str, task_id: str) -> TaskOutcome | None:
        read.append(task_id)
        return await get(pool, task_id)

    queue.get = counted
    return read


async def finish(queue: TaskQueue, pool: str, result: str) -> None:
    lease = await queue.claim(pool, "agent", timeout=5)
    assert lease is not None
    await queue.complete(lease, result)


async def test_a_task_enqueued_on_a_live_channel_is_awaited_without_a_read(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.enqueue(make_task(pool, "first"))
        await finish(queue, pool, "one")
        assert (await queue.wait_result(pool, "first", timeout=5)).result == "one"  # subscribes the pool

        read = count_reads(queue)
        await queue.enqueue(make_task(pool, "second"))
        waiter = asyncio.ensure_future(queue.wait_result(pool, "second", timeout=5))
        await finish(queue, pool, "two")
        assert (await waiter).result == "two"
        # It ended before anyone waited: the end was kept for the wait to come.
        await queue.enqueue(make_task(pool, "third"))
        await finish(queue, pool, "three")
        await asyncio.sleep(0.1)  # the notification is in
        assert (await queue.wait_result(pool, "third", timeout=5)).result == "three"
        assert read == []
    finally:
        await queue.close()


async def test_a_task_that_existed_is_read_before_the_wait(fresh_redis: LocalRedis) -> None:
    """Enqueue is idempotent on the id: a task that ended before (a re-attached step) is not announced
    again, so its wait reads it."""
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.enqueue(make_task(pool, "warm"))
        await finish(queue, pool, "warm")
        await queue.wait_result(pool, "warm", timeout=5)
        await queue.enqueue(make_task(pool, "t1"))
        await finish(queue, pool, "done before")
        await asyncio.sleep(0.1)
        await queue.wait_result(pool, "t1", timeout=5)  # took the kept end
        read = count_reads(queue)
        assert await queue.enqueue(make_task(pool, "t1")) is False
        outcome = await queue.wait_result(pool, "t1", timeout=2)
        assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, "done before")
        assert read == ["t1"]
    finally:
        await queue.close()


async def test_an_end_published_while_the_channel_was_down_is_not_missed(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.enqueue(make_task(pool, "warm"))
        await finish(queue, pool, "warm")
        await queue.wait_result(pool, "warm", timeout=5)
        await queue.enqueue(make_task(pool, "t1"))  # expected on the live channel
        fresh_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        await finish(queue, pool, "while down")  # its notification may go nowhere
        await asyncio.sleep(0.5)  # the watcher reconnected
        outcome = await queue.wait_result(pool, "t1", timeout=5)
        assert outcome.result == "while down"
    finally:
        await queue.close()
