"""The TaskQueue contract, withdrawal (`cancel(..., only_if_queued=True)`, what spec.shutdown Stop does to a
run's tasks no agent took): on memory, a redis-server and a 6-node cluster.

A task no consumer holds is cancelled, whichever way it waits (ready, held back by its key's cap, waiting out
a retry backoff); a claimed one, handed over ones included, is left running with its lease intact. Withdrawals
racing claims split the tasks: each one is withdrawn or leased, never both, never neither.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest

from codeforge.api.task import Priority, TaskState
from codeforge.queue import Lease, ReplicationTimeoutError, TaskQueue, open_queue
from codeforge.queue.keys import task_key
from codeforge.testing.redis_server import LocalRedis
from integration import test_queue_contract as contract
from integration.test_queue_contract import PAST_SHORT_LEASE, SHORT_LEASE, claim_one
from support.tasks import make_task, unique_pool

# The contract suite's fixtures: every backend (memory, redis, cluster), a fresh pool per test.
queue_url = contract.queue_url
queue = contract.queue
pool = contract.pool

WHY = "stopped before an agent took it"


async def withdraw(queue: TaskQueue, pool: str, task_id: str) -> bool:
    return await queue.cancel(pool, task_id, WHY, only_if_queued=True)


async def assert_withdrawn(queue: TaskQueue, pool: str, task_id: str) -> None:
    outcome = await queue.wait_result(pool, task_id, timeout=2)
    assert (outcome.state, outcome.error) == (TaskState.CANCELLED, WHY)
    assert outcome.run_seconds is None  # no agent ran it


async def test_a_ready_task_is_withdrawn(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "ready"))

    assert await withdraw(queue, pool, "ready") is True

    await assert_withdrawn(queue, pool, "ready")
    assert await queue.claim(pool, "c1", timeout=0) is None
    stats = await queue.stats(pool)
    assert (stats.queued, stats.delayed, stats.in_flight) == (0, 0, 0)
    assert await withdraw(queue, pool, "ready") is False  # ended already
    assert await queue.enqueue(make_task(pool, "ready")) is False  # not re-created


async def test_a_claimed_task_is_left_running_with_its_lease(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "busy"))
    lease = await claim_one(queue, pool)

    assert await withdraw(queue, pool, "busy") is False

    outcome = await queue.get(pool, "busy")
    assert outcome is not None
    assert outcome.state is TaskState.RUNNING
    lease = await queue.heartbeat(lease)  # the holder never sees its lease vanish
    await queue.complete(lease, "finished")
    done = await queue.get(pool, "busy")
    assert done is not None
    assert (done.state, done.result) == (TaskState.SUCCEEDED, "finished")


async def test_a_task_handed_to_a_waiting_consumer_is_left_running(queue: TaskQueue, pool: str) -> None:
    # A consumer blocked in a claim gets the task leased in the enqueue itself (README, "Handover"): it is
    # claimed from then on, although the consumer's call has not returned yet.
    waiter = asyncio.ensure_future(queue.claim(pool, "idle-agent", timeout=10))
    await asyncio.sleep(0.3)
    await queue.enqueue(make_task(pool, "handed"))

    assert await withdraw(queue, pool, "handed") is False

    lease = await asyncio.wait_for(waiter, 10)
    assert lease is not None
    assert lease.id == "handed"
    await queue.complete(lease, "ok")


async def test_a_retry_waiting_out_its_backoff_is_withdrawn(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "backoff", max_attempts=3))
    await queue.fail(await claim_one(queue, pool), "busy upstream", retryable=True, retry_delay=60)
    assert (await queue.stats(pool)).delayed == 1

    assert await withdraw(queue, pool, "backoff") is True

    await assert_withdrawn(queue, pool, "backoff")
    stats = await queue.stats(pool)
    assert (stats.queued, stats.delayed, stats.in_flight) == (0, 0, 0)


async def test_a_redelivery_waiting_out_its_lost_lease_backoff_is_withdrawn(
    queue: TaskQueue, pool: str
) -> None:
    await queue.enqueue(make_task(pool, "orphan", lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=60))
    await claim_one(queue, pool)  # its agent dies: the lease runs out
    await asyncio.sleep(PAST_SHORT_LEASE)
    assert await queue.reap(pool) == 1
    assert (await queue.stats(pool)).delayed == 1

    assert await withdraw(queue, pool, "orphan") is True

    await assert_withdrawn(queue, pool, "orphan")
    assert (await queue.stats(pool)).delayed == 0


async def test_a_task_held_back_by_its_keys_cap_is_withdrawn_and_frees_nothing(
    queue: TaskQueue, pool: str
) -> None:
    await queue.enqueue_many(
        [make_task(pool, f"capped-{i}", fair_key="wf", max_concurrency=1) for i in range(3)]
    )
    first = await claim_one(queue, pool)
    assert (await queue.stats(pool)).held_back == 2

    assert await withdraw(queue, pool, "capped-1") is True

    assert (await queue.stats(pool)).held_back == 1
    assert await queue.claim(pool, "c2", timeout=0) is None  # the key still holds its one lease
    await queue.complete(first, "done")
    assert (await claim_one(queue, pool)).id == "capped-2"


async def test_withdrawing_the_most_urgent_task_leaves_the_order_of_the_rest(
    queue: TaskQueue, pool: str
) -> None:
    await queue.enqueue_many(
        [
            make_task(pool, "low", priority=Priority.LOW),
            make_task(pool, "critical", priority=Priority.CRITICAL),
            make_task(pool, "high", priority=Priority.HIGH),
        ]
    )

    assert await withdraw(queue, pool, "critical") is True

    assert [(await claim_one(queue, pool)).id for _ in range(2)] == ["high", "low"]


async def test_ended_dead_or_unknown_tasks_are_not_withdrawn(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many([make_task(pool, "done"), make_task(pool, "dead", max_attempts=1)])
    await queue.complete(await claim_one(queue, pool), 1)
    await queue.fail(await claim_one(queue, pool), "broken", retryable=True)

    assert await withdraw(queue, pool, "done") is False
    assert await withdraw(queue, pool, "dead") is False
    assert await withdraw(queue, pool, "no-such-task") is False
    assert (await queue.dead_letter(pool, "dead")) is not None  # still there for a requeue


@pytest.mark.parametrize("round_", range(3))
async def test_withdrawals_racing_claims_never_take_a_claimed_task(
    queue: TaskQueue, pool: str, round_: int
) -> None:
    """Four consumers claim (some blocked in a claim, so they get tasks handed over) while every task is
    withdrawn at the same time: each task is withdrawn xor leased, and every lease stays valid."""
    ids = [f"race-{round_}-{i}" for i in range(120)]
    leases: list[Lease] = []
    stop = asyncio.Event()

    async def consumer(name: str) -> None:
        while not stop.is_set():
            leases.extend(await queue.claim_many(pool, name, 3, timeout=0.05))

    consumers = [asyncio.ensure_future(consumer(f"c{i}")) for i in range(4)]
    await asyncio.sleep(0.1)  # some of them wait in a claim now
    await queue.enqueue_many([make_task(pool, tid) for tid in ids])
    order = random.Random(round_).sample(ids, len(ids))
    flags = await asyncio.gather(*(withdraw(queue, pool, tid) for tid in order))
    await asyncio.sleep(0.3)  # the consumers take whatever was not withdrawn
    stop.set()
    await asyncio.gather(*consumers)

    withdrawn = {tid for tid, flag in zip(order, flags, strict=True) if flag}
    leased = [lease.id for lease in leases]
    assert len(leased) == len(set(leased)), "a task leased twice"
    assert withdrawn.isdisjoint(leased), "a task both withdrawn and leased"
    assert withdrawn | set(leased) == set(ids)
    assert withdrawn, "no race: the consumers took every task"
    assert leased, "no race: the withdrawals took every task"
    for lease in leases:  # no holder lost its lease to a withdrawal
        await queue.complete(await queue.heartbeat(lease), "ok")
    for tid in withdrawn:
        outcome = await queue.get(pool, tid)
        assert outcome is not None
        assert (outcome.state, outcome.error) == (TaskState.CANCELLED, WHY)
    stats = await queue.stats(pool)
    assert (stats.queued, stats.delayed, stats.in_flight, stats.held_back) == (0, 0, 0, 0)


@pytest.mark.redis
@pytest.mark.slow
async def test_replicated_confirms_a_withdrawal_and_not_a_refused_one(fresh_redis: LocalRedis) -> None:
    """durability=replicated: a withdrawal returns once the replica holds it; one that changed nothing (the
    task was claimed) needs no replica, so it answers even while none does."""
    replica = fresh_redis.start_replica()
    queue = await open_queue(f"{fresh_redis.url}?durability=replicated", retry_seconds=2.0, replica_wait=0.5)
    pool = unique_pool("wdr")
    try:
        await queue.enqueue_many([make_task(pool, t) for t in ("queued", "claimed", "late")])
        assert await withdraw(queue, pool, "queued") is True
        assert replica.cli("HGET", task_key(pool, "queued"), "state") == "cancelled"
        lease = await claim_one(queue, pool)
        assert lease.id == "claimed"

        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)  # no replica answers from here on
        try:
            start = time.monotonic()
            assert await withdraw(queue, pool, "claimed") is False
            assert time.monotonic() - start < 1.5, "a refused withdrawal waited for a replica to confirm"
            with pytest.raises(ReplicationTimeoutError):
                await withdraw(queue, pool, "late")  # done on the master, never confirmed
        finally:
            replica.process.send_signal(signal.SIGCONT)
    finally:
        await queue.close()
        replica.stop()
