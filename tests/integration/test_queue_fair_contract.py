"""The TaskQueue contract, fair share (README, "Fair share"): on memory, a redis-server and a 6-node cluster.

Within one pool and priority the tasks' keys (a Workflow by default) take turns, FIFO within a key; priority
stays strict across levels; a key holding `max_concurrency` leases is skipped until one ends, however it
ends (complete, fail, release, cancel, lease expiry).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import TaskQueue
from integration import test_queue_contract as contract
from integration.test_queue_contract import PAST_SHORT_LEASE, SHORT_LEASE, WAKE_BOUND, claim_one
from support.tasks import make_task

# The contract suite's fixtures: every backend (memory, redis, cluster), a fresh pool per test.
queue_url = contract.queue_url
queue = contract.queue
pool = contract.pool


def wf_task(pool: str, workflow: str, n: int, **fields: Any) -> Task:
    """Task `n` of a workflow; its id says both ("a/3"), so an order reads at a glance."""
    return make_task(pool, f"{workflow}/{n}", workflow=workflow, **fields)


async def claim_ids(queue: TaskQueue, pool: str, count: int) -> list[str]:
    return [(await claim_one(queue, pool)).id for _ in range(count)]


async def test_workflows_take_turns_fifo_within_each(queue: TaskQueue, pool: str) -> None:
    # Enqueued one whole workflow after another: first come first served would give a0..a5 first.
    for workflow, count in (("a", 6), ("b", 3), ("c", 2)):
        assert all(await queue.enqueue_many([wf_task(pool, workflow, i) for i in range(count)]))

    order = await claim_ids(queue, pool, 11)

    assert order == ["a/0", "b/0", "c/0", "a/1", "b/1", "c/1", "a/2", "b/2", "a/3", "a/4", "a/5"]
    assert await queue.claim(pool, "c1", timeout=0) is None


async def test_a_late_workflow_is_served_next_not_after_the_backlog(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "big", i) for i in range(200)])
    assert await claim_ids(queue, pool, 5) == [f"big/{i}" for i in range(5)]

    await queue.enqueue_many([wf_task(pool, "small", i) for i in range(3)])

    order = await claim_ids(queue, pool, 6)
    assert order == ["small/0", "big/5", "small/1", "big/6", "small/2", "big/7"]


async def test_a_key_that_comes_back_at_once_does_not_jump_the_line(queue: TaskQueue, pool: str) -> None:
    # A trickle of one task at a time must not starve a backlog: the key keeps its place in the rotation.
    await queue.enqueue_many([wf_task(pool, "backlog", i) for i in range(20)])
    order = []
    for i in range(8):
        await queue.enqueue(wf_task(pool, "trickle", i))
        order.append((await claim_one(queue, pool)).id.split("/")[0])
    assert order.count("backlog") == 4, order


async def test_the_concurrency_key_groups_workflows(queue: TaskQueue, pool: str) -> None:
    # Two workflows of team x share one turn; team y's workflow gets the other.
    tasks = [wf_task(pool, "x1", i, fair_key="team-x") for i in range(4)]
    tasks += [wf_task(pool, "x2", i, fair_key="team-x") for i in range(4)]
    tasks += [wf_task(pool, "y1", i, fair_key="team-y") for i in range(4)]
    await queue.enqueue_many(tasks)

    order = await claim_ids(queue, pool, 8)

    assert order == ["x1/0", "y1/0", "x1/1", "y1/1", "x1/2", "y1/2", "x1/3", "y1/3"]


async def test_weights_share_turns_in_proportion(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "heavy", i, fair_weight=3) for i in range(20)])
    await queue.enqueue_many([wf_task(pool, "light", i) for i in range(20)])

    order = [tid.split("/")[0] for tid in await claim_ids(queue, pool, 16)]

    assert order.count("heavy") == 12, order
    assert all(order[i : i + 4].count("light") == 1 for i in range(0, 16, 4)), order


async def test_priority_stays_strict_across_levels(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "a", i, priority="low") for i in range(3)])
    await queue.enqueue_many([wf_task(pool, "b", i, priority="medium") for i in range(2)])
    await queue.enqueue(make_task(pool, "a/urgent", workflow="a", priority="critical"))
    await queue.enqueue(make_task(pool, "c/high", workflow="c", priority="high"))

    order = await claim_ids(queue, pool, 7)

    assert order == ["a/urgent", "c/high", "b/0", "b/1", "a/0", "a/1", "a/2"]


async def test_max_concurrency_caps_a_key_and_others_go_on(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "capped", i, max_concurrency=2) for i in range(5)])
    await queue.enqueue_many([wf_task(pool, "free", i) for i in range(3)])

    leases = [await claim_one(queue, pool) for _ in range(5)]

    assert [lease.id for lease in leases] == ["capped/0", "free/0", "capped/1", "free/1", "free/2"]
    assert await queue.claim(pool, "c1", timeout=0) is None  # three capped tasks wait for a slot
    stats = await queue.stats(pool)
    assert (stats.queued, stats.held_back, stats.in_flight) == (0, 3, 5)  # held back: not claimable

    await queue.complete(leases[0], "done")
    assert (await claim_one(queue, pool)).id == "capped/2"
    assert await queue.claim(pool, "c1", timeout=0) is None


async def test_stats_count_capped_tasks_as_held_back_not_claimable(queue: TaskQueue, pool: str) -> None:
    """`queued` is what agents can claim now (the autoscaler scales on it); tasks whose key is at its
    maxConcurrency are `held_back`, on every path that moves a key in or out of its cap."""
    await queue.enqueue_many([wf_task(pool, "capped", i, max_concurrency=2) for i in range(6)])
    await queue.enqueue(wf_task(pool, "free", 0))

    async def counts() -> tuple[int, int, int]:
        stats = await queue.stats(pool)
        return stats.queued, stats.held_back, stats.in_flight

    assert await counts() == (7, 0, 0)  # below its cap, a key's tasks are all claimable
    first = await claim_one(queue, pool)
    assert await counts() == (6, 0, 1)
    second = await claim_one(queue, pool)
    third = await claim_one(queue, pool)  # the key reaches its cap
    assert (first.id, second.id, third.id) == ("capped/0", "free/0", "capped/1")
    assert await counts() == (0, 4, 3)

    # A task enqueued to a key at its cap is held back at once; cancelling one takes it out of the count.
    assert await queue.enqueue(wf_task(pool, "capped", 6, max_concurrency=2))
    assert await counts() == (0, 5, 3)
    assert await queue.cancel(pool, "capped/6")
    assert await counts() == (0, 4, 3)

    # A lease that ends frees a slot: the key's tasks are claimable again, and held back once re-capped.
    await queue.complete(first, None)
    assert await counts() == (4, 0, 2)
    assert (await claim_one(queue, pool)).id == "capped/2"
    assert await counts() == (0, 3, 3)
    assert await queue.fail(third, "flaky") is TaskState.QUEUED  # back to its key, now below its cap
    assert await counts() == (4, 0, 2)
    assert (await claim_one(queue, pool)).id == "capped/1"
    assert await queue.claim(pool, "c1", timeout=0) is None  # nothing claims past the cap
    assert await counts() == (0, 3, 3)


async def test_a_blocked_claimer_wakes_when_a_slot_frees(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "capped", i, max_concurrency=1) for i in range(2)])
    first = await claim_one(queue, pool)
    waiter = asyncio.ensure_future(queue.claim(pool, "c2", timeout=5.0))
    await asyncio.sleep(0.2)
    assert not waiter.done()  # a queued task, but its key is at its cap

    started = time.monotonic()
    await queue.complete(first, None)
    second = await asyncio.wait_for(waiter, 5.0)

    assert second is not None
    assert second.id == "capped/1"
    assert time.monotonic() - started < WAKE_BOUND


async def test_every_way_a_lease_ends_frees_its_slot(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "k", i, max_concurrency=1, max_attempts=5) for i in range(4)])

    # A retryable failure: the task goes back to the head of its key and holds the one slot again.
    lease = await claim_one(queue, pool)
    assert await queue.fail(lease, "flaky") is TaskState.QUEUED
    lease = await claim_one(queue, pool)
    assert (lease.id, lease.task.attempts) == ("k/0", 2)
    assert await queue.claim(pool, "c1", timeout=0) is None

    # A permanent failure, a release and a cancel each end the lease: the next task can start.
    assert await queue.fail(lease, "broken", retryable=False) is TaskState.FAILED
    lease = await claim_one(queue, pool)
    assert lease.id == "k/1"
    assert await queue.release(lease) is TaskState.QUEUED
    lease = await claim_one(queue, pool)
    assert lease.id == "k/1"
    assert await queue.cancel(pool, lease.id) is True
    lease = await claim_one(queue, pool)
    assert lease.id == "k/2"
    await queue.complete(lease, None)
    assert (await claim_one(queue, pool)).id == "k/3"


async def test_an_expired_lease_frees_its_slot_when_reaped(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many(
        [
            wf_task(pool, "k", i, max_concurrency=1, lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=0)
            for i in range(2)
        ]
    )
    lease = await claim_one(queue, pool)
    assert await queue.claim(pool, "c1", timeout=0) is None

    await asyncio.sleep(PAST_SHORT_LEASE)
    assert await queue.reap(pool) == 1

    again = await claim_one(queue, pool, "c2")
    assert again.id == lease.id  # redelivered first: FIFO within the key
    assert again.fence != lease.fence
    assert await queue.claim(pool, "c1", timeout=0) is None  # and it holds the one slot again
    await queue.complete(again, None)
    assert (await claim_one(queue, pool)).id == "k/1"


async def test_cancelling_queued_tasks_keeps_the_rotation(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, w, i) for w in ("a", "b") for i in range(2)])
    assert await queue.cancel(pool, "a/0") is True
    assert await queue.cancel(pool, "a/1") is True  # key a has nothing left

    assert await claim_ids(queue, pool, 2) == ["b/0", "b/1"]
    assert await queue.claim(pool, "c1", timeout=0) is None
    assert (await queue.stats(pool)).queued == 0


async def test_many_consumers_share_two_workflows_without_twins(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([wf_task(pool, "a", i, max_concurrency=3) for i in range(30)])
    await queue.enqueue_many([wf_task(pool, "b", i) for i in range(30)])
    running: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    seen: list[str] = []

    async def consumer(name: str) -> None:
        while (lease := await queue.claim(pool, name, timeout=0.5)) is not None:
            key = lease.task.workflow
            running[key] += 1
            peak[key] = max(peak[key], running[key])
            seen.append(lease.id)
            await asyncio.sleep(0.005)
            running[key] -= 1
            await queue.complete(lease, None)

    await asyncio.gather(*(consumer(f"c{i}") for i in range(8)))

    assert sorted(seen) == sorted([f"a/{i}" for i in range(30)] + [f"b/{i}" for i in range(30)])
    assert peak["a"] <= 3


@pytest.mark.redis
async def test_tasks_queued_before_fair_share_are_still_served(redis_url: str) -> None:
    """A pool upgraded with tasks waiting in the old layout (only the `ready` zset): the first claim files
    them under their keys, in their old order, and wake-up tokens follow."""
    import redis.asyncio as aioredis

    from codeforge.queue import open_queue
    from codeforge.queue.keys import pool_prefix
    from support.tasks import unique_pool

    name = unique_pool()
    prefix = pool_prefix(name)
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for seq, tid in enumerate(["old-1", "old-2"], start=1):
            score = 3 * 1099511627776 + seq
            task = make_task(name, tid)
            await raw.hset(
                prefix + "t:" + tid,
                mapping={"data": task.model_dump_json(), "state": "queued", "attempts": 0, "fence": 0,
                         "max": 3, "lease": 30000, "score": score, "enq": 0, "fails": 0, "lost": 0,
                         "maxlost": 10, "lostbk": 1000},
            )  # fmt: skip
            await raw.zadd(prefix + "ready", {tid: score})
        await raw.set(prefix + "seq", 2)
    finally:
        await raw.aclose()
    upgraded = await open_queue(redis_url)
    try:
        await upgraded.enqueue(wf_task(name, "new", 0))
        order = await claim_ids(upgraded, name, 3)
        assert order == ["old-1", "new/0", "old-2"]
        assert await upgraded.claim(name, "c1", timeout=0) is None
    finally:
        await upgraded.close()
