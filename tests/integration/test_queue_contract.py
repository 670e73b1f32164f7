"""The TaskQueue contract (`codeforge.queue.base`), one suite run on every backend.

The same tests run on the in-process memory backend, on one real redis-server and on a real 6-node Redis
Cluster. Each test uses its own pool (a fresh name), so all tests share the session's servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator

import pytest

from codeforge.api.limits import MAX_RESULT_BYTES
from codeforge.api.task import Priority, TaskState
from codeforge.queue import (
    HANDLER_BUDGET_SPENT,
    LOST_LEASE_BUDGET_SPENT,
    Lease,
    LeaseLostError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskQueue,
    open_queue,
)
from support.tasks import make_task, unique_pool

#: Short leases keep the expiry tests fast; the waits leave room for a busy 2-core machine.
SHORT_LEASE = 0.2
PAST_SHORT_LEASE = 0.45
#: An enqueue must reach a blocked consumer well inside this (the target is about a millisecond).
WAKE_BOUND = 0.5

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=BACKENDS)
def queue_url(request: pytest.FixtureRequest) -> str:
    """The URL of one backend; the Redis servers start only when a test of theirs runs."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("cluster_url"))


@pytest.fixture
async def queue(queue_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(queue_url)
    yield q
    await q.close()


@pytest.fixture
def pool() -> str:
    return unique_pool()


async def claim_one(queue: TaskQueue, pool: str, consumer: str = "c1", timeout: float = 2.0) -> Lease:
    """Claim a task the test knows is there (blocking, so a backend may hand it off lazily)."""
    lease = await queue.claim(pool, consumer, timeout=timeout)
    assert lease is not None, f"expected a task in pool {pool}, claim returned None"
    return lease


async def expire(queue: TaskQueue, pool: str, expected: int = 1) -> None:
    """Let short leases run out, then reap them, as any agent or the operator would."""
    await asyncio.sleep(PAST_SHORT_LEASE)
    assert await queue.reap(pool) == expected


def test_backends_satisfy_the_protocol(queue: TaskQueue) -> None:
    assert isinstance(queue, TaskQueue)


# --- ordering ---------------------------------------------------------------------------------------------


async def test_priority_order_then_fifo_within_a_priority(queue: TaskQueue, pool: str) -> None:
    order = [
        Priority.LOW,
        Priority.MEDIUM,
        Priority.CRITICAL,
        Priority.LOW,
        Priority.HIGH,
        Priority.CRITICAL,
        Priority.MEDIUM,
        Priority.HIGH,
        Priority.LOW,
        Priority.CRITICAL,
    ]
    tasks = [make_task(pool, f"p{i}", priority=p) for i, p in enumerate(order)]
    for task in tasks:
        assert await queue.enqueue(task) is True

    claimed = [(await claim_one(queue, pool)).id for _ in tasks]

    expected = [t.id for t in sorted(tasks, key=lambda t: (t.priority, int(t.id[1:])))]
    assert claimed == expected
    assert await queue.claim(pool, "c1", timeout=0) is None


async def test_urgent_task_overtakes_a_waiting_backlog(queue: TaskQueue, pool: str) -> None:
    for i in range(5):
        await queue.enqueue(make_task(pool, f"low-{i}", priority="low"))
    assert (await claim_one(queue, pool)).id == "low-0"

    await queue.enqueue(make_task(pool, "urgent", priority="critical"))

    assert (await claim_one(queue, pool)).id == "urgent"
    assert (await claim_one(queue, pool)).id == "low-1"


async def test_fifo_holds_for_a_fast_burst_of_one_priority(queue: TaskQueue, pool: str) -> None:
    # Enqueued back to back, many tasks share a timestamp: order must not depend on clock resolution.
    ids = [f"burst-{i:03d}" for i in range(100)]
    await queue.enqueue_many([make_task(pool, i, priority=Priority.HIGH) for i in ids[:50]])
    for task_id in ids[50:]:
        await queue.enqueue(make_task(pool, task_id, priority=Priority.HIGH))

    claimed: list[str] = []
    while len(claimed) < len(ids):
        leases = await queue.claim_many(pool, "c1", 16, timeout=1.0)
        assert leases, f"queue ran dry after {len(claimed)} of {len(ids)} tasks"
        claimed += [lease.id for lease in leases]

    assert claimed == ids


async def test_pools_are_isolated(queue: TaskQueue, pool: str) -> None:
    other = unique_pool()
    await queue.enqueue(make_task(pool, "mine"))

    assert await queue.claim(other, "c1", timeout=0) is None
    assert (await queue.stats(other)).queued == 0
    assert await queue.get(other, "mine") is None
    assert (await claim_one(queue, pool)).id == "mine"


# --- claim, lease and task round trip -------------------------------------------------------------------


async def test_claim_returns_the_task_intact_with_a_lease(queue: TaskQueue, pool: str) -> None:
    deadline = time.time() + 3600
    task = make_task(
        pool,
        "full",
        priority=Priority.HIGH,
        payload={"prompt": "fix the bug", "files": ["a.py", "b.py"], "n": 3, "ok": True, "none": None},
        workflow="ns/wf-1",
        step="implement",
        lease_seconds=20,
        max_attempts=5,
        deadline=deadline,
    )
    await queue.enqueue(task)
    queued = await queue.get(pool, "full")
    assert queued is not None
    assert (queued.state, queued.attempts) == (TaskState.QUEUED, 0)

    before = time.time()
    lease = await claim_one(queue, pool, "agent-7")

    assert lease.consumer == "agent-7"
    assert (lease.id, lease.pool) == ("full", pool)
    assert lease.task.attempts == 1
    assert lease.task.model_dump(exclude={"attempts"}) == task.model_dump(exclude={"attempts"})
    assert before + 19 <= lease.expires_at <= time.time() + 21
    running = await queue.get(pool, "full")
    assert running is not None
    assert (running.state, running.attempts) == (TaskState.RUNNING, 1)
    assert (await queue.stats(pool)).in_flight == 1


async def test_get_unknown_task_is_none(queue: TaskQueue, pool: str) -> None:
    assert await queue.get(pool, "never-enqueued") is None


async def test_claim_on_an_empty_pool_returns_none_after_its_timeout(queue: TaskQueue, pool: str) -> None:
    start = time.monotonic()
    assert await queue.claim(pool, "c1", timeout=0) is None
    assert time.monotonic() - start < WAKE_BOUND

    start = time.monotonic()
    assert await queue.claim(pool, "c1", timeout=0.3) is None
    waited = time.monotonic() - start
    assert 0.25 <= waited < 2.0, f"claim(timeout=0.3) returned after {waited:.3f}s"


async def test_blocked_claim_is_woken_promptly_by_an_enqueue(queue: TaskQueue, pool: str) -> None:
    async def consumer() -> tuple[Lease | None, float]:
        lease = await queue.claim(pool, "idle-agent", timeout=10)
        return lease, time.monotonic()

    waiter = asyncio.create_task(consumer())
    await asyncio.sleep(0.3)
    assert not waiter.done(), "claim returned before anything was enqueued"

    async def producer() -> float:
        enqueued_at = time.monotonic()
        await queue.enqueue(make_task(pool, "wake-up"))
        return enqueued_at

    enqueued_at = await asyncio.create_task(producer())
    lease, woke_at = await asyncio.wait_for(waiter, 10)

    assert lease is not None
    assert lease.id == "wake-up"
    assert woke_at - enqueued_at < WAKE_BOUND, f"woken {woke_at - enqueued_at:.3f}s after the enqueue"


async def test_blocked_claim_ignores_other_pools(queue: TaskQueue, pool: str) -> None:
    other = unique_pool()
    waiter = asyncio.create_task(queue.claim(other, "c1", timeout=0.5))
    await asyncio.sleep(0.1)
    await queue.enqueue(make_task(pool, "not-for-other"))

    assert await asyncio.wait_for(waiter, 5) is None
    assert (await claim_one(queue, pool)).id == "not-for-other"


# --- exactly one winner ---------------------------------------------------------------------------------


async def test_racing_consumers_exactly_one_wins(queue: TaskQueue, queue_url: str, pool: str) -> None:
    # For Redis, race over several clients (own connection pools), not only one client's connections.
    clients = [queue]
    if not queue_url.startswith("memory"):
        clients += [await open_queue(queue_url) for _ in range(3)]
    try:
        for round_no in range(50):
            task = make_task(pool, f"race-{round_no}")
            await queue.enqueue(task)
            results = await asyncio.gather(
                *(clients[i % len(clients)].claim(pool, f"racer-{i}", timeout=0) for i in range(20))
            )
            winners = [lease for lease in results if lease is not None]
            assert len(winners) == 1, f"round {round_no}: {len(winners)} consumers claimed one task"
            assert winners[0].id == task.id
            await queue.complete(winners[0], {"round": round_no, "by": winners[0].consumer})
    finally:
        for extra in clients[1:]:
            await extra.close()

    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (0, 0)


async def test_blocked_racers_one_task_one_winner(queue: TaskQueue, pool: str) -> None:
    for round_no in range(3):
        racers = [asyncio.create_task(queue.claim(pool, f"racer-{i}", timeout=0.5)) for i in range(20)]
        await asyncio.sleep(0.1)
        await queue.enqueue(make_task(pool, f"blocked-race-{round_no}"))

        results = await asyncio.gather(*racers)

        winners = [lease for lease in results if lease is not None]
        assert len(winners) == 1, f"round {round_no}: {len(winners)} blocked consumers got one task"
        await queue.complete(winners[0])


async def test_concurrent_batch_consumers_never_share_a_task(queue: TaskQueue, pool: str) -> None:
    ids = [f"work-{i:03d}" for i in range(120)]
    await queue.enqueue_many([make_task(pool, i) for i in ids])
    delivered: list[str] = []

    async def consumer(name: str) -> None:
        while leases := await queue.claim_many(pool, name, 7, timeout=0):
            delivered.extend(lease.id for lease in leases)
            assert await queue.complete_many([(lease, name) for lease in leases]) == [None] * len(leases)

    await asyncio.gather(*(consumer(f"c{i}") for i in range(10)))

    assert sorted(delivered) == ids, "a task was delivered twice or not at all"


async def test_concurrent_producers_of_one_id_make_one_task(queue: TaskQueue, pool: str) -> None:
    # A controller and its restarted twin re-dispatching the same step at the same moment.
    results = await asyncio.gather(*(queue.enqueue(make_task(pool, "step-1")) for _ in range(20)))

    assert sorted(results) == [False] * 19 + [True]
    assert (await queue.stats(pool)).queued == 1


# --- leases: expiry, fencing, heartbeats ----------------------------------------------------------------


async def test_expired_lease_is_redelivered_with_one_more_attempt(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "slow", lease_seconds=SHORT_LEASE))
    first = await claim_one(queue, pool, "crashed-agent")
    assert first.task.attempts == 1

    await expire(queue, pool)

    again = await claim_one(queue, pool, "second-agent")
    assert again.id == "slow"
    assert again.task.attempts == 2
    assert again.fence > first.fence, "a redelivery must carry a newer fencing token"
    outcome = await queue.get(pool, "slow")
    assert outcome is not None
    assert (outcome.state, outcome.attempts) == (TaskState.RUNNING, 2)


async def test_reap_leaves_live_leases_alone(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "live", lease_seconds=30))
    lease = await claim_one(queue, pool)

    assert await queue.reap(pool) == 0
    assert await queue.claim(pool, "thief", timeout=0) is None
    await queue.complete(lease, "ok")


async def test_stale_fencing_token_is_refused_everywhere(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "fenced", lease_seconds=SHORT_LEASE))
    stale = await claim_one(queue, pool, "a")
    await expire(queue, pool)
    current = await claim_one(queue, pool, "b")
    current = await queue.heartbeat(current)  # the new holder keeps it alive while "a" wakes up

    with pytest.raises(LeaseLostError):
        await queue.complete(stale, {"by": "a"})
    with pytest.raises(LeaseLostError):
        await queue.heartbeat(stale)
    with pytest.raises(LeaseLostError):
        await queue.fail(stale, "a gives up", retryable=True)
    with pytest.raises(LeaseLostError):
        await queue.release(stale)

    await queue.complete(current, {"by": "b"})
    outcome = await queue.get(pool, "fenced")
    assert outcome is not None
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"by": "b"})


async def test_the_outcome_names_the_agent_that_finished_it(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "who"))
    lease = await queue.claim(pool, "agent-a", timeout=2)
    assert lease is not None
    running = await queue.get(pool, "who")
    assert running is not None
    assert running.consumer == "agent-a"
    waiter = asyncio.create_task(queue.wait_result(pool, "who", timeout=5))
    await asyncio.sleep(0.05)  # waiting already: the outcome arrives by notification, not by a read
    await queue.complete(lease, "done")
    waited = await waiter
    stored = await queue.get(pool, "who")
    assert stored is not None
    assert (waited.consumer, stored.consumer) == ("agent-a", "agent-a")


async def test_a_result_is_recorded_once(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "once"))
    lease = await claim_one(queue, pool)
    await queue.complete(lease, "first")

    with pytest.raises(LeaseLostError):
        await queue.complete(lease, "second")
    with pytest.raises(LeaseLostError):
        await queue.fail(lease, "late failure", retryable=False)

    outcome = await queue.get(pool, "once")
    assert outcome is not None
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, "first")


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ({"diff": "x" * MAX_RESULT_BYTES}, "over the limit of 524,288"),
        (json.loads("[" * 65 + "]" * 65), "nests more than 64 levels deep"),
        ({"when": float("nan")}, "the result is not JSON"),
    ],
    ids=["large", "deep", "nan"],
)
async def test_a_result_out_of_bounds_is_refused_and_the_lease_kept(
    queue: TaskQueue, pool: str, result: object, why: str
) -> None:
    await queue.enqueue(make_task(pool, "big"))
    lease = await claim_one(queue, pool)
    with pytest.raises(ValueError, match=why):
        await queue.complete(lease, result)
    await queue.complete(lease, {"diff": "x" * (MAX_RESULT_BYTES - 20)})  # the bound itself fits
    outcome = await queue.get(pool, "big")
    assert outcome is not None
    assert outcome.state is TaskState.SUCCEEDED


async def test_a_retried_complete_is_not_a_second_recording(queue: TaskQueue, pool: str) -> None:
    # A complete whose reply was lost on the network is sent again: same lease, same result.
    await queue.enqueue(make_task(pool, "retried-complete"))
    lease = await claim_one(queue, pool)
    await queue.complete(lease, {"v": 1})

    await queue.complete(lease, {"v": 1})

    outcome = await queue.get(pool, "retried-complete")
    assert outcome is not None
    assert (outcome.state, outcome.result, outcome.attempts) == (TaskState.SUCCEEDED, {"v": 1}, 1)
    assert (await queue.stats(pool)).in_flight == 0


async def test_forged_fencing_token_is_refused(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "forged"))
    lease = await claim_one(queue, pool)

    with pytest.raises(LeaseLostError):
        await queue.complete(dataclasses.replace(lease, fence=lease.fence + 1), "forged")
    with pytest.raises(LeaseLostError):
        await queue.complete(dataclasses.replace(lease, fence=lease.fence - 1), "forged")

    await queue.complete(lease, "genuine")
    outcome = await queue.get(pool, "forged")
    assert outcome is not None
    assert outcome.result == "genuine"


async def test_heartbeats_keep_a_long_task(queue: TaskQueue, pool: str) -> None:
    lease_seconds = 0.5
    await queue.enqueue(make_task(pool, "long", lease_seconds=lease_seconds))
    lease = await claim_one(queue, pool, "worker")
    first_expiry = lease.expires_at

    started = time.monotonic()
    while time.monotonic() - started < 3 * lease_seconds:
        await asyncio.sleep(0.1)
        lease = await queue.heartbeat(lease)
        assert await queue.reap(pool) == 0
        assert await queue.claim(pool, "thief", timeout=0) is None

    assert lease.expires_at > first_expiry + lease_seconds
    await queue.complete(lease, "finished")
    outcome = await queue.get(pool, "long")
    assert outcome is not None
    assert (outcome.state, outcome.attempts, outcome.result) == (TaskState.SUCCEEDED, 1, "finished")


# --- dead-letter queue ----------------------------------------------------------------------------------


async def test_the_claim_sets_the_lease_length_not_the_task(queue: TaskQueue, pool: str) -> None:
    # The task asks for 30 s; the consumer's pool says 0.2 s: a dead agent's task comes back after 0.2 s.
    await queue.enqueue(make_task(pool, "pool-lease", lease_seconds=30, lost_lease_backoff_seconds=0))
    before = time.time()
    lease = await queue.claim(pool, "short-lease-agent", timeout=2, lease_seconds=SHORT_LEASE)
    assert lease is not None
    assert lease.expires_at - before < 5, "the claim's lease_seconds must set the lease, not the task's 30 s"
    renewed = await queue.heartbeat(lease)
    assert renewed.expires_at - time.time() < 5, "a heartbeat extends by the claim's lease length"

    await expire(queue, pool)

    again = await claim_one(queue, pool, "heir")
    assert (again.id, again.task.attempts) == ("pool-lease", 2)
    outcome = await queue.get(pool, "pool-lease")
    assert outcome is not None
    assert outcome.error is not None
    assert f"lease expired after {SHORT_LEASE:g}s" in outcome.error, outcome.error
    with pytest.raises(ValueError, match="lease_seconds"):
        await queue.claim(pool, "bad", timeout=0, lease_seconds=0)


async def test_lost_leases_spend_their_own_budget_not_the_handlers(queue: TaskQueue, pool: str) -> None:
    # One handler run allowed, yet three agent deaths do not use it up.
    await queue.enqueue(
        make_task(pool, "survives", max_attempts=1, lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=0)
    )
    for delivery in (1, 2, 3):
        lease = await claim_one(queue, pool, f"agent-{delivery}")
        assert lease.task.attempts == delivery
        await expire(queue, pool)

    lease = await claim_one(queue, pool, "agent-4")
    assert await queue.fail(lease, "handler broke", retryable=True) == TaskState.DEAD
    dead = await queue.dead_letters(pool)
    assert [d.id for d in dead] == ["survives"]
    assert dead[0].error is not None
    assert dead[0].error.startswith("handler broke"), dead[0].error
    assert HANDLER_BUDGET_SPENT in dead[0].error
    assert LOST_LEASE_BUDGET_SPENT not in dead[0].error


async def test_lost_leases_past_their_budget_dead_letter_saying_so(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(
        make_task(pool, "doomed", max_lost_leases=2, lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=0)
    )
    for attempt in (1, 2):
        lease = await claim_one(queue, pool)
        assert lease.task.attempts == attempt
        await expire(queue, pool)

    assert await queue.claim(pool, "c1", timeout=0) is None
    dead = await queue.dead_letters(pool)
    assert [d.id for d in dead] == ["doomed"]
    assert dead[0].state == TaskState.DEAD
    assert dead[0].attempts == 2
    assert dead[0].error is not None
    assert "lease expired" in dead[0].error, dead[0].error
    assert LOST_LEASE_BUDGET_SPENT in dead[0].error
    assert HANDLER_BUDGET_SPENT not in dead[0].error
    assert "lost 2 of 2" in dead[0].error, dead[0].error
    stats = await queue.stats(pool)
    assert (stats.dead, stats.queued, stats.in_flight) == (1, 0, 0)
    outcome = await queue.wait_result(pool, "doomed", timeout=2)
    assert outcome.state == TaskState.DEAD

    # A requeued dead letter starts with both budgets fresh: two more losses before it is dead again.
    assert await queue.requeue_dead(pool, "doomed") is True
    await claim_one(queue, pool)
    await expire(queue, pool)
    assert (await claim_one(queue, pool)).task.attempts == 2


async def test_a_lost_lease_is_redelivered_after_a_doubling_backoff(queue: TaskQueue, pool: str) -> None:
    backoff = 0.4
    await queue.enqueue(
        make_task(pool, "crashy", lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=backoff)
    )
    for loss in (1, 2):
        await claim_one(queue, pool, f"agent-{loss}")
        await expire(queue, pool)
        lost_at = time.monotonic()
        stats = await queue.stats(pool)
        assert (stats.queued, stats.delayed) == (0, 1), "a task whose agent died waits out a backoff"
        assert await queue.claim(pool, "eager", timeout=0) is None
        lease = await queue.claim(pool, "patient", timeout=5)  # woken when the backoff ends, no polling
        waited = time.monotonic() - lost_at
        assert lease is not None
        wanted = backoff * 2 ** (loss - 1)
        assert wanted - 0.1 <= waited < wanted + 1.5, (loss, waited)
        await queue.release(lease)  # unstarted: spends nothing, so the next loop starts from the queue


async def test_a_drain_hands_started_work_back_on_the_lost_lease_budget(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(
        make_task(pool, "drained", max_attempts=1, max_lost_leases=2, lost_lease_backoff_seconds=30)
    )
    lease = await claim_one(queue, pool, "stopping-agent")
    state = await queue.release(lease, started=True, reason="agent a shut down before the task finished")
    assert state == TaskState.QUEUED
    again = await queue.claim(pool, "next-agent", timeout=0)  # at once: a drain is no crash loop
    assert again is not None
    assert again.task.attempts == 2
    with pytest.raises(LeaseLostError):
        await queue.complete(lease, "after release")

    state = await queue.release(again, started=True, reason="agent b shut down before the task finished")
    assert state == TaskState.DEAD
    dead = await queue.dead_letters(pool)
    assert dead[0].error is not None
    assert dead[0].error.startswith("agent b shut down"), dead[0].error
    assert LOST_LEASE_BUDGET_SPENT in dead[0].error


async def test_retryable_failures_past_max_attempts_dead_letter_with_the_error(
    queue: TaskQueue, pool: str
) -> None:
    await queue.enqueue(make_task(pool, "flaky", max_attempts=2))

    first = await claim_one(queue, pool)
    assert await queue.fail(first, "boom-1: connection reset", retryable=True) == TaskState.QUEUED
    second = await claim_one(queue, pool)
    assert second.task.attempts == 2
    assert await queue.fail(second, "boom-2: connection reset", retryable=True) == TaskState.DEAD

    dead = await queue.dead_letters(pool)
    assert [(d.id, d.state) for d in dead] == [("flaky", TaskState.DEAD)]
    assert dead[0].error is not None
    assert dead[0].error.startswith("boom-2"), dead[0].error
    assert f"{HANDLER_BUDGET_SPENT}: failed 2 of 2" in dead[0].error, dead[0].error


async def test_dead_letters_are_listed_oldest_first_and_requeued_fresh(queue: TaskQueue, pool: str) -> None:
    for name in ("dead-a", "dead-b", "dead-c"):
        await queue.enqueue(make_task(pool, name, max_attempts=1))
        lease = await claim_one(queue, pool)
        assert await queue.fail(lease, f"{name} failed", retryable=True) == TaskState.DEAD

    assert [d.id for d in await queue.dead_letters(pool)] == ["dead-a", "dead-b", "dead-c"]
    assert [d.id for d in await queue.dead_letters(pool, limit=2)] == ["dead-a", "dead-b"]

    assert await queue.requeue_dead(pool, "dead-b") is True
    assert await queue.requeue_dead(pool, "dead-b") is False, "already requeued"
    assert await queue.requeue_dead(pool, "never-existed") is False

    stats = await queue.stats(pool)
    assert (stats.dead, stats.queued) == (2, 1)
    lease = await claim_one(queue, pool)
    assert (lease.id, lease.task.attempts) == ("dead-b", 1), "a requeued task starts a fresh set of attempts"
    await queue.complete(lease, "second life")
    outcome = await queue.get(pool, "dead-b")
    assert outcome is not None
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, "second life")
    assert [d.id for d in await queue.dead_letters(pool)] == ["dead-a", "dead-c"]


async def test_permanent_failure_is_failed_not_dead(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "bad-input", max_attempts=5))
    lease = await claim_one(queue, pool)

    assert await queue.fail(lease, "payload names no repository", retryable=False) == TaskState.FAILED

    outcome = await queue.get(pool, "bad-input")
    assert outcome is not None
    assert outcome.state == TaskState.FAILED
    assert outcome.error is not None
    assert "payload names no repository" in outcome.error
    assert await queue.dead_letters(pool) == []
    assert await queue.claim(pool, "c1", timeout=0) is None


# --- idempotent enqueue ---------------------------------------------------------------------------------


async def test_enqueue_twice_with_one_id_makes_one_task(queue: TaskQueue, pool: str) -> None:
    original = make_task(pool, "dup", payload={"version": 1})
    assert await queue.enqueue(original) is True
    assert await queue.enqueue(original) is False
    assert await queue.enqueue(make_task(pool, "dup", payload={"version": 2}, priority="critical")) is False

    assert (await queue.stats(pool)).queued == 1
    lease = await claim_one(queue, pool)
    assert lease.task.payload == {"version": 1}, "a duplicate enqueue must change nothing"
    assert await queue.claim(pool, "c2", timeout=0) is None

    assert await queue.enqueue(original) is False, "a running task is found, not duplicated"
    await queue.complete(lease, "done")
    assert await queue.enqueue(original) is False, "a finished task is found while its record lives"
    assert await queue.claim(pool, "c2", timeout=0) is None


async def test_same_id_in_another_pool_is_another_task(queue: TaskQueue, pool: str) -> None:
    other = unique_pool()
    assert await queue.enqueue(make_task(pool, "shared-id")) is True
    assert await queue.enqueue(make_task(other, "shared-id")) is True
    assert (await claim_one(queue, pool)).pool == pool
    assert (await claim_one(queue, other)).pool == other


# --- release and cancel ---------------------------------------------------------------------------------


async def test_release_on_shutdown_gives_the_task_back_without_counting(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "handed-back", max_attempts=1))
    for _ in range(3):  # even with one attempt allowed, releases never dead-letter it
        lease = await claim_one(queue, pool, "stopping-agent")
        assert lease.task.attempts == 1
        await queue.release(lease)
        stats = await queue.stats(pool)
        assert (stats.queued, stats.in_flight, stats.dead) == (1, 0, 0)
        with pytest.raises(LeaseLostError):
            await queue.complete(lease, "after release")

    lease = await claim_one(queue, pool, "next-agent")
    assert (lease.id, lease.task.attempts) == ("handed-back", 1)
    await queue.complete(lease, "done")


async def test_cancel_a_queued_task(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "unwanted"))

    assert await queue.cancel(pool, "unwanted", reason="workflow deleted") is True

    assert await queue.claim(pool, "c1", timeout=0) is None
    outcome = await queue.wait_result(pool, "unwanted", timeout=2)
    assert outcome.state == TaskState.CANCELLED
    assert outcome.error is not None
    assert "workflow deleted" in outcome.error
    assert (await queue.stats(pool)).queued == 0
    assert await queue.cancel(pool, "unwanted") is False, "already cancelled"
    assert await queue.enqueue(make_task(pool, "unwanted")) is False, "a cancelled task is not re-created"


async def test_cancel_a_running_task_refuses_its_holder(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "running"))
    lease = await claim_one(queue, pool)

    assert await queue.cancel(pool, "running", reason="user abort") is True

    with pytest.raises(TaskCancelledError):
        await queue.heartbeat(lease)
    with pytest.raises(TaskCancelledError):
        await queue.complete(lease, "too late")
    with pytest.raises(LeaseLostError):
        await queue.fail(lease, "too late", retryable=True)
    outcome = await queue.get(pool, "running")
    assert outcome is not None
    assert (outcome.state, outcome.result) == (TaskState.CANCELLED, None)
    assert outcome.error is not None
    assert "user abort" in outcome.error
    assert (await queue.stats(pool)).in_flight == 0


async def test_cancel_finished_or_unknown_is_false(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "finished"))
    await queue.complete(await claim_one(queue, pool), 1)

    assert await queue.cancel(pool, "finished") is False
    assert await queue.cancel(pool, "no-such-task") is False
    outcome = await queue.get(pool, "finished")
    assert outcome is not None
    assert outcome.state == TaskState.SUCCEEDED


# --- results --------------------------------------------------------------------------------------------


async def test_wait_result_resolves_on_completion(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "answer"))
    waiter = asyncio.create_task(queue.wait_result(pool, "answer", timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()

    lease = await claim_one(queue, pool)
    done_at = time.monotonic()
    await queue.complete(lease, {"answer": 42, "notes": ["ok"]})
    outcome = await asyncio.wait_for(waiter, 10)

    assert time.monotonic() - done_at < WAKE_BOUND
    assert (outcome.id, outcome.pool, outcome.state) == ("answer", pool, TaskState.SUCCEEDED)
    assert outcome.result == {"answer": 42, "notes": ["ok"]}
    assert outcome.attempts == 1
    again = await queue.wait_result(pool, "answer", timeout=0.5)
    assert again.result == outcome.result, "a finished task's result is returned at once"


async def test_wait_result_resolves_on_failure(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "broken"))
    waiter = asyncio.create_task(queue.wait_result(pool, "broken", timeout=10))
    await asyncio.sleep(0.1)

    await queue.fail(await claim_one(queue, pool), "tests do not compile", retryable=False)
    outcome = await asyncio.wait_for(waiter, 10)

    assert outcome.state == TaskState.FAILED
    assert outcome.error is not None
    assert "tests do not compile" in outcome.error


async def test_wait_result_waits_through_a_retry(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "retried"))
    waiter = asyncio.create_task(queue.wait_result(pool, "retried", timeout=10))

    await queue.fail(await claim_one(queue, pool), "transient", retryable=True)
    await asyncio.sleep(0.1)
    assert not waiter.done(), "a retryable failure is not a result"
    await queue.complete(await claim_one(queue, pool), "second try")

    outcome = await asyncio.wait_for(waiter, 10)
    assert (outcome.state, outcome.result, outcome.attempts) == (TaskState.SUCCEEDED, "second try", 2)


async def test_wait_result_times_out_or_reports_an_unknown_task(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "pending"))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await queue.wait_result(pool, "pending", timeout=0.3)
    assert time.monotonic() - start < 2.0

    with pytest.raises(TaskNotFoundError):
        await queue.wait_result(pool, "never-enqueued", timeout=1)


# --- retry delay ----------------------------------------------------------------------------------------


async def test_retry_delay_holds_the_task_back(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "backoff"))
    lease = await claim_one(queue, pool)

    assert await queue.fail(lease, "rate limited", retryable=True, retry_delay=0.6) == TaskState.QUEUED

    stats = await queue.stats(pool)
    assert (stats.queued, stats.delayed, stats.in_flight) == (0, 1, 0)
    assert await queue.claim(pool, "c1", timeout=0) is None
    await asyncio.sleep(0.8)
    again = await claim_one(queue, pool)
    assert (again.id, again.task.attempts) == ("backoff", 2)


async def test_blocked_claim_gets_a_retry_once_its_delay_passes(queue: TaskQueue, pool: str) -> None:
    # An idle agent waiting in claim must not miss a retry just because nothing else is enqueued.
    await queue.enqueue(make_task(pool, "later"))
    await queue.fail(await claim_one(queue, pool), "busy upstream", retryable=True, retry_delay=0.5)

    start = time.monotonic()
    lease = await queue.claim(pool, "idle", timeout=5)

    waited = time.monotonic() - start
    assert lease is not None, "the delayed retry never reached the waiting consumer"
    assert lease.id == "later"
    assert 0.4 <= waited < 2.0, f"retry delivered after {waited:.3f}s, expected about 0.5s"


# --- stats ----------------------------------------------------------------------------------------------


async def test_stats_count_every_place_a_task_can_be(queue: TaskQueue, pool: str) -> None:
    empty = await queue.stats(pool)
    assert (empty.pool, empty.queued, empty.delayed, empty.in_flight, empty.dead) == (pool, 0, 0, 0, 0)
    assert empty.oldest_age_seconds == 0

    await queue.enqueue(make_task(pool, "dies", priority="critical", max_attempts=1))
    await queue.enqueue(make_task(pool, "held", priority="high"))
    await queue.enqueue(make_task(pool, "delayed", priority="high"))
    await queue.enqueue(make_task(pool, "waits-1", priority="low"))
    await queue.enqueue(make_task(pool, "waits-2", priority="low"))
    await queue.fail(await claim_one(queue, pool), "fatal", retryable=True)  # "dies": no attempts left
    held = await claim_one(queue, pool)
    assert held.id == "held"
    await queue.fail(await claim_one(queue, pool), "later", retryable=True, retry_delay=60)
    await asyncio.sleep(0.3)

    stats = await queue.stats(pool)

    assert (stats.queued, stats.delayed, stats.in_flight, stats.dead) == (2, 1, 1, 1)
    assert 0.25 <= stats.oldest_age_seconds < 30, stats.oldest_age_seconds
    await queue.complete(held)
    assert (await queue.stats(pool)).in_flight == 0


# --- batches --------------------------------------------------------------------------------------------


async def test_enqueue_many_is_idempotent_per_task(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "already-there"))
    batch = [
        make_task(pool, "b-1", priority="low"),
        make_task(pool, "already-there"),
        make_task(pool, "b-2", priority="critical"),
        make_task(pool, "b-1", priority="critical"),
        make_task(pool, "b-3", priority="medium"),
    ]

    assert await queue.enqueue_many(batch) == [True, False, True, False, True]
    assert await queue.enqueue_many([]) == []

    assert (await queue.stats(pool)).queued == 4
    order = [lease.id for lease in await queue.claim_many(pool, "c1", 10, timeout=1)]
    assert order == ["b-2", "already-there", "b-3", "b-1"]


async def test_claim_many_and_complete_many(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue_many(
        [make_task(pool, f"m-{i}", lease_seconds=SHORT_LEASE, lost_lease_backoff_seconds=0) for i in range(6)]
    )

    leases = await queue.claim_many(pool, "batcher", 4, timeout=1)

    assert [lease.id for lease in leases] == ["m-0", "m-1", "m-2", "m-3"]
    assert all(lease.task.attempts == 1 and lease.consumer == "batcher" for lease in leases)
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (2, 4)

    await expire(queue, pool, expected=4)
    # Whether a redelivered task goes before or after never-claimed ones of its priority is not part of
    # the contract, so pick the redeliveries by id.
    again = {lease.id: lease for lease in await queue.claim_many(pool, "batcher-2", 10, timeout=1)}
    assert sorted(again) == [f"m-{i}" for i in range(6)]
    assert [again[f"m-{i}"].task.attempts for i in range(6)] == [2, 2, 2, 2, 1, 1]

    results = await queue.complete_many(
        [(again["m-0"], "r0"), (leases[1], "stale"), (again["m-2"], "r2"), (again["m-1"], "r1")]
    )

    assert [results[0], results[2], results[3]] == [None, None, None]
    assert isinstance(results[1], LeaseLostError)
    for task_id, expected in (("m-0", "r0"), ("m-1", "r1"), ("m-2", "r2")):
        outcome = await queue.get(pool, task_id)
        assert outcome is not None
        assert (outcome.state, outcome.result, outcome.attempts) == (TaskState.SUCCEEDED, expected, 2)
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (0, 3)
    assert await queue.complete_many([]) == []


async def test_claim_many_on_an_empty_pool(queue: TaskQueue, pool: str) -> None:
    assert await queue.claim_many(pool, "c1", 5, timeout=0) == []

    waiter = asyncio.create_task(queue.claim_many(pool, "c1", 5, timeout=5))
    await asyncio.sleep(0.2)
    await queue.enqueue(make_task(pool, "first-of-many"))
    leases = await asyncio.wait_for(waiter, 5)

    assert [lease.id for lease in leases] == ["first-of-many"]


# --- consumer states ------------------------------------------------------------------------------------


async def test_consumer_states_expire_with_their_ttl(queue: TaskQueue, pool: str) -> None:
    assert await queue.consumer_states(pool) == {}
    await queue.set_consumer_state(pool, "agent-a", "busy", ttl=30)
    await queue.set_consumer_state(pool, "agent-b", "idle", ttl=0.3)
    await queue.set_consumer_state(unique_pool(), "agent-c", "idle", ttl=30)

    assert await queue.consumer_states(pool) == {"agent-a": "busy", "agent-b": "idle"}

    await queue.set_consumer_state(pool, "agent-a", "idle", ttl=30)
    await asyncio.sleep(0.6)
    assert await queue.consumer_states(pool) == {"agent-a": "idle"}


async def test_ping_answers(queue: TaskQueue) -> None:
    await queue.ping()


async def test_bad_pool_name_is_refused_before_touching_the_backend(queue: TaskQueue) -> None:
    # Pool names become Redis hash tags: a brace in one would scatter a pool's keys over cluster slots.
    with pytest.raises(ValueError, match=r"invalid pool name 'Team A': use a lowercase DNS-1123 name"):
        await queue.claim("Team A", "c1", timeout=0)
    with pytest.raises(ValueError, match=r"invalid pool name 'a}\{b'"):
        await queue.stats("a}{b")
    with pytest.raises(ValueError, match="invalid pool name"):
        await queue.cancel("", "some-task")


async def test_claim_many_needs_at_least_one_task(queue: TaskQueue, pool: str) -> None:
    with pytest.raises(ValueError, match=r"max_tasks must be at least 1 \(got 0\)"):
        await queue.claim_many(pool, "agent", 0)


# --- forgetting a finished run's records (a Workflow's TTL) ---------------------------------------------


async def test_forget_removes_ended_tasks_only(queue: TaskQueue, pool: str) -> None:
    for name in ("done", "failed", "dead", "running", "cancelled", "queued"):
        await queue.enqueue(make_task(pool, name, max_attempts=1))
    await queue.cancel(pool, "cancelled")
    leases = {lease.id: lease for lease in [await claim_one(queue, pool) for _ in range(4)]}
    assert set(leases) == {"done", "failed", "dead", "running"}
    await queue.complete(leases["done"], {"ok": 1})
    await queue.fail(leases["failed"], "bad", retryable=False)
    await queue.fail(leases["dead"], "worse", retryable=True)  # its one attempt spent: a dead letter
    ids = ["done", "failed", "cancelled", "queued", "running", "dead", "never-was"]

    assert await queue.forget(pool, ids) == 3
    for gone in ("done", "failed", "cancelled"):
        assert await queue.get(pool, gone) is None, gone
    for kept, state in (
        ("running", TaskState.RUNNING),
        ("queued", TaskState.QUEUED),
        ("dead", TaskState.DEAD),
    ):
        record = await queue.get(pool, kept)
        assert record is not None, kept
        assert record.state is state
    assert await queue.dead_letter(pool, "dead") is not None
    assert await queue.forget(pool, ids) == 0
    assert (await claim_one(queue, pool)).id == "queued"  # the queue still works around the gaps
