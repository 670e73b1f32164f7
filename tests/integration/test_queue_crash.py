"""Crashes on real processes: a consumer killed with SIGKILL mid-task, a frozen (zombie) consumer, a
redis-server killed and restarted with AOF during a run, and dropped client connections.

Nothing acknowledged may be lost and no result may be recorded twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codeforge.api.task import TaskState
from codeforge.queue import LeaseLostError, QueueUnavailableError, TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis
from support.tasks import make_task, unique_pool

CONSUMER = Path(__file__).resolve().parents[1] / "support" / "consumer.py"

SERVERS = [
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=SERVERS)
def shared_url(request: pytest.FixtureRequest) -> str:
    """A server other processes can reach too (the memory backend cannot be shared)."""
    name = "redis_url" if request.param == "redis" else "cluster_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def queue(shared_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(shared_url)
    yield q
    await q.close()


class Consumer:
    """One `support/consumer.py` subprocess; its stdout is a stream of JSON events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, pool: str, name: str, *, work: float, heartbeat: float = 0.2) -> Consumer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CONSUMER),
            url,
            pool,
            name,
            "--work",
            str(work),
            "--heartbeat",
            str(heartbeat),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    async def event(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(
                f"consumer exited ({await self.proc.wait()}) without an event: {err.decode()}"
            )
        event: dict[str, Any] = json.loads(line)
        return event

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def exit_code(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.slow
async def test_consumer_killed_mid_task_is_redelivered_and_recorded_once(
    queue: TaskQueue, shared_url: str
) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "survivor", lease_seconds=1.0, max_attempts=3))
    doomed = await Consumer.start(shared_url, pool, "doomed", work=60)
    try:
        claimed = await doomed.event()
        assert (claimed["event"], claimed["id"], claimed["attempts"]) == ("claimed", "survivor", 1)
        await asyncio.sleep(1.5)  # past the lease: the living consumer's heartbeats keep it
        assert await queue.reap(pool) == 0
        assert (await queue.stats(pool)).in_flight == 1

        doomed.signal(signal.SIGKILL)
        assert await doomed.exit_code() == -signal.SIGKILL
    finally:
        await doomed.stop()

    # No reaper runs here: the next consumer's claim must notice the expired lease on its own.
    heir = await Consumer.start(shared_url, pool, "heir", work=0.1)
    try:
        claimed = await heir.event()
        assert (claimed["event"], claimed["id"], claimed["attempts"]) == ("claimed", "survivor", 2)
        assert (await heir.event())["event"] == "completed"
        assert await heir.exit_code() == 0
    finally:
        await heir.stop()

    outcome = await queue.wait_result(pool, "survivor", timeout=5)
    assert outcome.state == TaskState.SUCCEEDED
    assert outcome.result == {"by": "heir", "attempt": 2}
    assert outcome.attempts == 2
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


@pytest.mark.slow
async def test_frozen_consumer_cannot_record_after_losing_its_lease(
    queue: TaskQueue, shared_url: str
) -> None:
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "contested", lease_seconds=1.0))
    zombie = await Consumer.start(shared_url, pool, "zombie", work=3)
    heir: Consumer | None = None
    try:
        assert (await zombie.event())["event"] == "claimed"
        zombie.signal(signal.SIGSTOP)  # a long GC pause or a frozen node: no heartbeats, lease runs out

        heir = await Consumer.start(shared_url, pool, "heir", work=0.1)
        claimed = await heir.event()
        assert (claimed["event"], claimed["attempts"]) == ("claimed", 2)
        assert (await heir.event())["event"] == "completed"

        zombie.signal(signal.SIGCONT)
        woke = await zombie.event()
        assert woke["event"] == "lease-lost", f"the zombie must be refused, got {woke}"
        assert await zombie.exit_code() == 3
    finally:
        if zombie.proc.returncode is None:
            zombie.signal(signal.SIGCONT)  # a stopped process ignores SIGKILL's exit until continued
        await zombie.stop()
        if heir is not None:
            await heir.stop()

    outcome = await queue.get(pool, "contested")
    assert outcome is not None
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"by": "heir", "attempt": 2})


# --- redis-server crashes -------------------------------------------------------------------------------


@pytest.mark.redis
async def test_state_survives_a_redis_restart_with_aof(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.enqueue_many([make_task(pool, f"t-{i:02d}") for i in range(50)])
        held = await queue.claim_many(pool, "agent", 10, timeout=1)
        for lease in held[:5]:
            await queue.complete(lease, {"done": lease.id})
        await queue.fail(held[5], "permanent", retryable=False)

        await asyncio.to_thread(fresh_redis.restart)  # SIGKILL, then start on the same AOF

        stats = await queue.stats(pool)
        assert (stats.queued, stats.in_flight) == (40, 4)
        for lease in held[:5]:
            outcome = await queue.get(pool, lease.id)
            assert outcome is not None
            assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"done": lease.id})
        failed = await queue.get(pool, held[5].id)
        assert failed is not None
        assert failed.state == TaskState.FAILED
        for lease in held[6:]:  # leases taken before the crash are still honoured after it
            await queue.complete(lease, "after restart")
        with pytest.raises(LeaseLostError):
            await queue.complete(held[0], "twice")
        assert await queue.enqueue(make_task(pool, "t-00")) is False, "idempotency survives the restart"
    finally:
        await queue.close()


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_killed_and_restarted_mid_run_loses_no_task(fresh_redis: LocalRedis) -> None:
    """A producer and two consumers run while redis-server is SIGKILLed and restarted on its AOF."""
    pool = unique_pool()
    total = 300
    producer_q = await open_queue(fresh_redis.url)
    consumer_qs = [await open_queue(fresh_redis.url) for _ in range(2)]
    acked: list[str] = []
    completed: list[str] = []
    at_crash: list[int] = []
    a_third_acked = asyncio.Event()

    async def produce() -> None:
        for i in range(total):
            task = make_task(pool, f"job-{i:03d}", lease_seconds=1.0, max_attempts=10)
            # Retried inside the queue across the outage; a False here would mean the first try landed.
            await producer_q.enqueue(task)
            acked.append(task.id)
            if len(acked) == total // 3:
                a_third_acked.set()
            await asyncio.sleep(0.002)

    async def consume(queue: TaskQueue, name: str) -> None:
        while len(completed) < total:
            lease = await queue.claim(pool, name, timeout=0.5)
            if lease is None:
                continue
            try:
                await queue.complete(lease, {"id": lease.id})
            except LeaseLostError:
                continue  # the lease expired during the outage; the task comes round again
            completed.append(lease.id)

    async def crash_midway() -> None:
        await a_third_acked.wait()
        assert fresh_redis.process is not None
        old_pid = fresh_redis.process.pid
        at_crash.extend([len(acked), len(completed)])
        await asyncio.to_thread(fresh_redis.restart)
        assert fresh_redis.process.pid != old_pid

    try:
        await asyncio.wait_for(
            asyncio.gather(
                produce(),
                consume(consumer_qs[0], "c0"),
                consume(consumer_qs[1], "c1"),
                crash_midway(),
            ),
            timeout=90,
        )
        assert len(acked) == total
        assert max(at_crash) < total, f"the crash came too late to matter: {at_crash}"
        assert sorted(completed) == sorted(acked), "a task was lost or its result recorded twice"
        for task_id in acked:
            outcome = await producer_q.get(pool, task_id)
            assert outcome is not None
            assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"id": task_id})
        stats = await producer_q.stats(pool)
        assert (stats.queued, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    finally:
        for q in (producer_q, *consumer_qs):
            await q.close()


# --- lost connections -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_dropped_connections_are_retried(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.enqueue(make_task(pool, "before"))
        await queue.enqueue(make_task(pool, "late"))
        waiter = asyncio.create_task(queue.wait_result(pool, "late", timeout=20))
        claimer = asyncio.create_task(queue.claim(pool + "-idle", "idle", timeout=20))
        await asyncio.sleep(0.3)

        # Drop every client connection: the pooled ones, the blocked claim and the result subscription.
        fresh_redis.cli("CLIENT", "KILL", "TYPE", "normal")
        fresh_redis.cli("CLIENT", "KILL", "TYPE", "pubsub")

        assert (await queue.stats(pool)).queued == 2
        assert await queue.enqueue(make_task(pool + "-idle", "for-the-idle")) is True
        lease = await asyncio.wait_for(claimer, 10)
        assert lease is not None
        assert lease.id == "for-the-idle"

        while (late := await queue.claim(pool, "c1", timeout=2)) is not None and late.id != "late":
            await queue.complete(late)
        assert late is not None
        await queue.complete(late, "resolved after reconnect")
        outcome = await asyncio.wait_for(waiter, 10)
        assert outcome.result == "resolved after reconnect"
    finally:
        await queue.close()


@pytest.mark.redis
async def test_a_short_outage_is_ridden_out(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        await queue.ping()
        fresh_redis.kill()
        pending = asyncio.ensure_future(queue.enqueue(make_task(pool, "during-outage")))
        await asyncio.sleep(0.7)
        assert not pending.done(), "the enqueue gave up while Redis was down instead of retrying"
        await asyncio.to_thread(fresh_redis.start)

        assert await asyncio.wait_for(pending, 30) is True
        lease = await queue.claim(pool, "c1", timeout=2)
        assert lease is not None
        assert lease.id == "during-outage"
    finally:
        await queue.close()


@pytest.mark.redis
async def test_a_long_outage_ends_in_a_clear_error(fresh_redis: LocalRedis) -> None:
    queue = await open_queue(fresh_redis.url, retry_seconds=1.0)
    try:
        fresh_redis.kill()
        start = time.monotonic()
        with pytest.raises(QueueUnavailableError) as info:
            await queue.stats(unique_pool())
        assert time.monotonic() - start < 10
        assert f"127.0.0.1:{fresh_redis.port}" in str(info.value)
        assert "unreachable" in str(info.value)
    finally:
        await queue.close()
