"""Results stored by a client that is not codeforge's (it calls the queue's scripts itself, with any string):
the queue keeps none over `MAX_RESULT_BYTES`, and the reader turns one it cannot use (not JSON, nested past
`MAX_JSON_DEPTH`) into a failed outcome saying why, never an exception in the listener that wakes every
waiter; nor does a malformed message on a pool's done channel, and a task record that is no Task is failed at
its claim (the claim delivers the rest), and entries of the pool's sets no codeforge client wrote are dropped.
Real redis-server and 6-node cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from codeforge.api.limits import MAX_RESULT_BYTES
from codeforge.api.task import TaskState
from codeforge.queue import QueueError, TaskQueue, open_queue
from codeforge.queue.keys import done_channel, pool_prefix, task_key
from codeforge.queue.redis_backend import RedisTaskQueue
from support.tasks import make_task, unique_pool


@pytest.fixture(
    params=[
        pytest.param("redis_url", marks=pytest.mark.redis, id="redis"),
        pytest.param("cluster_url", marks=pytest.mark.cluster, id="cluster"),
    ]
)
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[RedisTaskQueue]:
    q = await open_queue(str(request.getfixturevalue(request.param)))
    assert isinstance(q, RedisTaskQueue)
    yield q
    await q.close()


async def store_raw(queue: RedisTaskQueue, pool: str, task_id: str, raw: str) -> None:
    """Complete a task the way a foreign client would: the complete script, called with a raw result."""
    lease = await queue.claim(pool, "foreign", timeout=2)
    assert lease is not None
    assert lease.id == task_id
    assert await queue._script("complete", pool, 3600, 1, lease.id, lease.fence, raw) == ["ok"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests more than 64 levels deep"),
        ("[" * 65 + "]" * 65, "nests more than 64 levels deep"),
        ("{not json", "is not JSON (it starts '{not json')"),
        ('"' + "x" * MAX_RESULT_BYTES + '"', "the result is 524,290 bytes"),
    ],
    ids=["deep-for-json", "deep", "not-json", "large"],
)
async def test_a_foreign_result_fails_its_task_and_every_other_waiter_is_still_woken(
    queue: TaskQueue, raw: str, why: str
) -> None:
    assert isinstance(queue, RedisTaskQueue)
    pool = unique_pool()
    for task_id in ("bad", "good"):
        await queue.enqueue(make_task(pool, task_id))
    waits = [asyncio.create_task(queue.wait_result(pool, t, timeout=10)) for t in ("bad", "good")]
    await asyncio.sleep(0.1)  # both waiting on the listener
    await store_raw(queue, pool, "bad", raw)
    lease = await queue.claim(pool, "agent", timeout=2)
    assert lease is not None
    await queue.complete(lease, {"ok": True})
    bad, good = await asyncio.gather(*waits)
    assert (good.state, good.result) == (TaskState.SUCCEEDED, {"ok": True})
    assert bad.state is TaskState.FAILED
    assert bad.result is None
    assert bad.error is not None
    assert why.replace(",", "") in bad.error.replace(",", "")
    # Read back later (not from the notification): the same outcome.
    again = await queue.get(pool, "bad")
    assert again is not None
    assert (again.state, again.error) == (bad.state, bad.error)


@pytest.mark.parametrize(
    "message",
    ["garbage", "a\0b", "good\0notastate\0x\0c\0\0boom", "good\0succeeded\0NaN\0c\0\0\0"],
    ids=["one-field", "two-fields", "bad-state", "bad-attempts"],
)
async def test_a_malformed_done_message_is_ignored_and_the_listener_goes_on(
    queue: TaskQueue, message: str
) -> None:
    assert isinstance(queue, RedisTaskQueue)
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "good"))
    wait = asyncio.create_task(queue.wait_result(pool, "good", timeout=10))
    await asyncio.sleep(0.1)
    client = await queue._watcher._connect()
    try:
        await client.publish(done_channel(pool), message)
    finally:
        await client.aclose()
    await asyncio.sleep(0.1)
    lease = await queue.claim(pool, "agent", timeout=2)
    assert lease is not None
    await queue.complete(lease, {"ok": True})
    outcome = await wait
    assert outcome.notified  # woken by the listener, not read back after it died
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"ok": True})


@pytest.mark.parametrize(
    "data", ["{not json", '{"id": 1}', "[" * 10_000 + "]" * 10_000], ids=["json", "task", "deep"]
)
async def test_a_task_record_no_codeforge_client_wrote_is_failed_at_its_claim_and_the_rest_delivered(
    queue: TaskQueue, data: str
) -> None:
    assert isinstance(queue, RedisTaskQueue)
    pool = unique_pool()
    for task_id in ("bad", "good"):
        await queue.enqueue(make_task(pool, task_id))
    await queue._r.hset(pool_prefix(pool) + "t:bad", "data", data)  # as a foreign client could
    leases = await queue.claim_many(pool, "agent", 10, timeout=1)
    assert [lease.id for lease in leases] == ["good"]
    bad = await queue.wait_result(pool, "bad", timeout=5)
    assert bad.state is TaskState.FAILED
    assert bad.error is not None
    assert bad.error.startswith("the task's record is not a valid codeforge task")
    # Alone in a claim, it is failed the same way and the claim goes on waiting for a task it can deliver.
    await queue.enqueue(make_task(pool, "bad2"))
    await queue._r.hset(pool_prefix(pool) + "t:bad2", "data", data)
    assert await queue.claim(pool, "agent", timeout=0.5) is None
    assert (await queue.wait_result(pool, "bad2", timeout=5)).state is TaskState.FAILED


async def test_a_task_stored_with_all_its_fields_reads_as_one_stored_without_its_defaults(
    queue: RedisTaskQueue,
) -> None:
    """The queue stores a task without the fields at their defaults (`Task.stored_json`); records written
    whole (by a client of an earlier version, or any other) read the same, under the queue's count."""
    pool = unique_pool()
    lean = make_task(pool, "lean", payload={"n": 1})
    await queue.enqueue(lean)
    stored = json.loads(await queue._r.hget(task_key(pool, "lean"), "data"))
    assert set(stored) == {"id", "pool", "payload", "created_at"}
    whole = make_task(pool, "whole", priority="high", max_attempts=5, workflow="ns/wf", attempts=7)
    added = await queue._script(
        "enqueue", pool, 1, whole.id, int(whole.priority), whole.max_attempts,
        int(whole.lease_seconds * 1000), whole.model_dump_json(), whole.max_lost_leases,
        int(whole.lost_lease_backoff_seconds * 1000), whole.fairness_key, whole.fair_weight,
        whole.max_concurrency,
    )  # fmt: skip
    assert added == [1]
    for expected in (whole, lean):  # priority order
        lease = await queue.claim(pool, "reader", timeout=2)
        assert lease is not None
        assert lease.task == expected.model_copy(update={"attempts": 1})


async def test_entries_of_the_pools_sets_no_codeforge_client_filed_are_dropped_and_the_queue_goes_on(
    queue: RedisTaskQueue,
) -> None:
    """A foreign client's members of `idle` (not "max|lease_ms|consumer"), and `inflight` and `delayed`
    entries with no task behind them: each is dropped where a script meets it, not an error that fails
    every enqueue or claim of the pool from then on."""
    pool = unique_pool()
    prefix = pool_prefix(pool)
    seconds, micros = await queue._r.time()
    soon = seconds * 1000 + micros // 1000 + 2_000  # ends before the agent's own wait: picked first
    foreign = [
        "garbage",
        "x|y",
        "0|100|agent",
        "1|100|",
        "1|-5|agent",
        "a|b|agent",
        "inf|100|agent",
        "nan|1|agent",
    ]
    await queue._r.zadd(prefix + "idle", dict.fromkeys(foreign, soon))
    await queue._r.zadd(prefix + "inflight", {"ghost-lease": 1})  # expired long ago
    await queue._r.zadd(prefix + "delayed", {"ghost-retry": 1})  # due long ago
    waiter = asyncio.create_task(queue.claim(pool, "agent", timeout=5))
    await asyncio.sleep(0.3)  # the claim reaped, promoted and registered the agent as idle
    assert await queue.enqueue(make_task(pool, "t1"))
    lease = await asyncio.wait_for(waiter, 5)
    assert lease is not None
    assert lease.id == "t1"
    await queue.complete(lease, None)
    assert not set(foreign) & {m.decode() for m in await queue._r.zrange(prefix + "idle", 0, -1)}
    assert await queue._r.zscore(prefix + "inflight", "ghost-lease") is None
    assert await queue._r.zscore(prefix + "delayed", "ghost-retry") is None
    for ghost in ("ghost-lease", "ghost-retry"):  # dropped, not turned into half a task
        assert not await queue._r.exists(prefix + "t:" + ghost)
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight, stats.delayed) == (0, 0, 0)


async def test_entries_of_a_key_no_codeforge_client_wrote_are_dropped_at_a_claim(
    queue: RedisTaskQueue,
) -> None:
    pool = unique_pool()
    prefix = pool_prefix(pool)
    for task_id in ("gone", "bare", "t1", "t2"):
        assert await queue.enqueue(make_task(pool, task_id, fair_key="team"))
    fifo = prefix + "fq:3:team"  # MEDIUM
    assert await queue._r.zcard(fifo) == 4
    # What a foreign client may leave: a FIFO entry that is not ready (first in line), a ready task whose
    # hash is gone, one whose hash holds no task (no lease length).
    await queue._r.zadd(fifo, {"phantom": 0})
    await queue._r.delete(prefix + "t:gone")
    await queue._r.hdel(prefix + "t:bare", "lease")
    leases = await queue.claim_many(pool, "agent", 5, timeout=1)
    assert [lease.id for lease in leases] == ["t1", "t2"]
    assert not await queue._r.exists(prefix + "t:phantom")  # not turned into half a task
    assert not await queue._r.exists(prefix + "t:gone")
    assert await queue._r.hget(prefix + "t:bare", "state") == "queued"  # left as it was, out of line
    assert await queue._r.hget(prefix + "fs:team", "n3") == "0"
    assert await queue._r.hget(prefix + "fs:team", "h") == "2"
    for lease in leases:
        await queue.complete(lease, None)
    # The key's counts came out even: with nothing queued or held it is forgotten.
    assert not await queue._r.exists(prefix + "fs:team")
    assert await queue._r.get(prefix + "fkeys") == "0"
    assert await queue._r.zcard(fifo) == 0
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (0, 0)
    assert await queue.enqueue(make_task(pool, "t3", fair_key="team"))  # the pool serves on
    last = await queue.claim(pool, "agent", timeout=1)
    assert last is not None
    assert last.id == "t3"


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [("seq", "not-a-number", "not an integer"), ("ready", "a string", "WRONGTYPE")],
)
async def test_a_key_of_the_wrong_kind_is_named_in_a_queue_error(
    queue: RedisTaskQueue, key: str, value: str, said: str
) -> None:
    pool, other = unique_pool(), unique_pool()
    prefix = pool_prefix(pool)
    await queue._r.set(prefix + key, value)
    with pytest.raises(QueueError) as refused:
        await queue.enqueue(make_task(pool, "t1"))
    message = str(refused.value)
    assert message.startswith(f"pool {pool}: Redis refused the queue's enqueue script: ")
    assert said in message
    assert f"redis-cli --scan --pattern '{prefix}*'" in message
    assert " script: " not in message.split("enqueue script: ", 1)[1]  # no SHA or Lua line
    assert await queue.enqueue(make_task(other, "t1"))  # other pools are untouched
    await queue._r.delete(prefix + key)  # the repair the message points to
    assert await queue.enqueue(make_task(pool, "t1"))


async def served_once(queue: RedisTaskQueue) -> str:
    """A new pool that has served one task (its fair-share state filed), empty again."""
    pool = unique_pool()
    assert await queue.enqueue(make_task(pool, "t1"))
    lease = await queue.claim(pool, "agent", timeout=1)
    assert lease is not None
    await queue.complete(lease, None)
    return pool


async def test_ready_entries_filed_under_no_key_are_dropped_when_they_head_the_line(
    queue: RedisTaskQueue,
) -> None:
    pool = await served_once(queue)
    prefix = pool_prefix(pool)
    # A foreign ZADD to ready: one id without a task, one whose task is filed under no key's line.
    await queue._r.zadd(prefix + "ready", {"phantom": 0, "stray": 1})
    await queue._r.hset(prefix + "t:stray", mapping={"state": "queued", "score": "3298534883329"})
    assert (await queue.stats(pool)).queued == 2
    assert await queue.claim(pool, "agent", timeout=0) is None
    assert await queue._r.zcard(prefix + "ready") == 0
    assert (await queue.stats(pool)).queued == 0
    assert await queue.enqueue(make_task(pool, "t2"))  # the pool serves on
    last = await queue.claim(pool, "agent", timeout=1)
    assert last is not None
    assert last.id == "t2"


async def test_ready_entries_filed_under_no_key_are_dropped_a_bounded_number_per_call(
    queue: RedisTaskQueue,
) -> None:
    pool = await served_once(queue)
    prefix = pool_prefix(pool)
    await queue._r.zadd(prefix + "ready", {f"phantom-{i}": i for i in range(250)})
    assert await queue.claim(pool, "agent", timeout=0) is None
    assert await queue._r.zcard(prefix + "ready") == 150  # 100 per script call
    for _ in range(2):
        assert await queue.claim(pool, "agent", timeout=0) is None
    assert await queue._r.zcard(prefix + "ready") == 0
