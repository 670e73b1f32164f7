"""The times a queue reports for the metrics (issue 13), on every backend: how long a task waited ready before
its claim (`Lease.queued_seconds`), when it ended and how long an agent held it (`TaskOutcome.finished_at`,
`run_seconds`), and whether a waiter was woken by the completion notification (`notified`).

The Redis backends measure with the server's clock on both ends, so agents and operator disagreeing about the
time does not skew them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from codeforge.api.task import TaskState
from codeforge.queue import TaskQueue, open_queue
from support.tasks import make_task, unique_pool

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]
#: Slack for a busy 2-core machine; the waits below are several times the clock resolution (1 ms).
SLACK = 1.0


@pytest.fixture(params=BACKENDS)
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[TaskQueue]:
    url = "memory://"
    if request.param == "redis":
        url = str(request.getfixturevalue("redis_url"))
    elif request.param == "cluster":
        url = str(request.getfixturevalue("cluster_url"))
    q = await open_queue(url)
    yield q
    await q.close()


async def test_queue_wait_counts_from_enqueue_then_from_a_retry_becoming_due(queue: TaskQueue) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "t1", max_attempts=2))
    await asyncio.sleep(0.3)
    lease = await queue.claim(pool, "a1", timeout=2)
    assert lease is not None
    assert 0.28 <= lease.queued_seconds < 0.3 + SLACK

    # A retry waits out its backoff before it is claimable: that part is not queue wait.
    await queue.fail(lease, "flaky", retryable=True, retry_delay=0.4)
    started = time.monotonic()
    again = await queue.claim(pool, "a1", timeout=5)
    assert again is not None
    assert time.monotonic() - started >= 0.35
    assert again.queued_seconds < 0.25, "counted from when the retry became due, not from the failure"

    # A heartbeat keeps the figure on the lease.
    assert (await queue.heartbeat(again)).queued_seconds == again.queued_seconds


async def test_an_outcome_tells_when_it_ended_and_how_long_an_agent_held_it(queue: TaskQueue) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "t1"))
    lease = await queue.claim(pool, "a1", timeout=2)
    assert lease is not None
    waiter = asyncio.ensure_future(queue.wait_result(pool, "t1", timeout=10))
    await asyncio.sleep(0.3)
    before = time.time()
    await queue.complete(lease, {"ok": True})
    woken = await waiter
    assert woken.notified, "the waiter was woken by the completion"
    assert woken.finished_at is not None
    assert abs(woken.finished_at - before) < SLACK
    assert woken.run_seconds is not None
    assert 0.28 <= woken.run_seconds < 0.3 + SLACK

    read = await queue.wait_result(pool, "t1", timeout=1)
    assert not read.notified, "it had ended before this wait began"
    assert read == woken, "how an outcome arrived is not part of the record"
    assert (read.finished_at, read.run_seconds) == pytest.approx((woken.finished_at, woken.run_seconds))
    stored = await queue.get(pool, "t1")
    assert stored is not None
    assert stored.run_seconds == pytest.approx(woken.run_seconds)


async def test_a_task_cancelled_while_queued_has_no_run_time(queue: TaskQueue) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "t1"))
    lease = await queue.claim(pool, "a1", timeout=2)
    assert lease is not None
    await queue.release(lease)  # back in the queue unstarted: the earlier claim is not a run
    waiter = asyncio.ensure_future(queue.wait_result(pool, "t1", timeout=10))
    await asyncio.sleep(0.05)
    assert await queue.cancel(pool, "t1", "not needed")
    outcome = await waiter
    assert outcome.state is TaskState.CANCELLED
    assert outcome.notified
    assert outcome.finished_at is not None
    assert outcome.run_seconds is None


async def test_a_running_task_has_no_end_yet(queue: TaskQueue) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "t1"))
    assert await queue.claim(pool, "a1", timeout=2) is not None
    running = await queue.get(pool, "t1")
    assert running is not None
    assert running.state is TaskState.RUNNING
    assert (running.finished_at, running.run_seconds, running.notified) == (None, None, False)


async def test_the_oldest_task_age_counts_from_its_return_to_the_queue(queue: TaskQueue) -> None:
    """A task that ran a while and came back for a retry is not reported (and alerted on) as old."""
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "t1", max_attempts=2))
    lease = await queue.claim(pool, "a1", timeout=2)
    assert lease is not None
    await asyncio.sleep(0.5)
    await queue.fail(lease, "flaky", retryable=True)
    stats = await queue.stats(pool)
    assert stats.queued == 1
    assert stats.oldest_age_seconds < 0.3
