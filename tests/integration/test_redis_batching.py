"""Calls made in one turn of the event loop share a round trip: a fan-out's parts and many runs' next steps
are enqueued by one script call, and many runs' checkpoints go out as one pipeline. Each caller still gets
its own answer: a task that existed is refused alone, a failing script fails alone, and a server that lost
its scripts gets them again."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from codeforge.queue import open_queue
from codeforge.queue.keys import pool_prefix
from codeforge.redis import Script, ScriptPipeline
from codeforge.testing.redis_server import LocalRedis
from support.tasks import make_task, unique_pool

pytestmark = pytest.mark.redis


async def calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_enqueues_of_one_turn_are_one_script_call(fresh_redis: LocalRedis) -> None:
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    counter = aioredis.Redis.from_url(fresh_redis.url)
    try:
        assert await queue.enqueue(make_task(pool, "t0")) is True
        before = await calls(counter, "evalsha")
        added = await asyncio.gather(*(queue.enqueue(make_task(pool, f"t{i}")) for i in range(5)))
        assert added == [False, True, True, True, True]  # t0 existed: refused alone
        assert await calls(counter, "evalsha") - before == 1
        assert (await queue.stats(pool)).queued == 5
    finally:
        await counter.aclose()
        await queue.close()


async def test_a_task_joins_the_batch_when_enqueue_is_called(fresh_redis: LocalRedis) -> None:
    """The orchestrator hands a routed step's task over as the route is decided and awaits the answer
    later: it goes out with that turn's batch, not once someone awaits it."""
    pool = unique_pool()
    queue = await open_queue(fresh_redis.url)
    try:
        handed = queue.enqueue(make_task(pool, "early"))  # not awaited yet
        await asyncio.sleep(0.2)
        assert await queue.get(pool, "early") is not None
        assert await handed is True
    finally:
        await queue.close()


async def test_a_pool_whose_enqueue_fails_fails_only_its_own_callers(fresh_redis: LocalRedis) -> None:
    """Enqueues of one turn for two pools: one pool's script fails (here its sequence counter is not a
    number); the other pool's callers are answered as if alone."""
    broken, fine = unique_pool(), unique_pool()
    queue = await open_queue(fresh_redis.url)
    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await client.set(pool_prefix(broken) + "seq", "not a number")
        replies = await asyncio.gather(
            queue.enqueue(make_task(broken, "b")),
            queue.enqueue(make_task(fine, "f")),
            return_exceptions=True,
        )
        assert isinstance(replies[0], Exception)
        assert replies[1] is True
        assert (await queue.stats(fine)).queued == 1
    finally:
        await client.aclose()
        await queue.close()


GOOD = Script("good", "return redis.call('INCR', KEYS[1])")
BAD = Script("bad", "return redis.error_reply('refused ' .. ARGV[1])")


async def test_scripts_of_one_turn_are_one_pipeline_and_answer_each_caller(fresh_redis: LocalRedis) -> None:
    client = aioredis.Redis.from_url(fresh_redis.url)
    counter = aioredis.Redis.from_url(fresh_redis.url)
    pipeline = ScriptPipeline(client)
    try:
        await GOOD.run(client, ["warm"])
        replies = await asyncio.gather(
            *(pipeline.run(GOOD, ["n"]) for _ in range(3)),
            pipeline.run(BAD, [], ["x"]),  # unknown to the server: NOSCRIPT, sent again in full, then fails
            return_exceptions=True,
        )
        assert sorted(r for r in replies[:3] if isinstance(r, int)) == [1, 2, 3]
        assert isinstance(replies[3], Exception)
        assert "refused x" in str(replies[3])
        assert int(await counter.get("n") or 0) == 3
        # one connection carried them all: four calls at once on their own would have needed four
        assert (await counter.info("clients"))["connected_clients"] == 2

        # A server that lost its scripts (restart, failover) gets them again, inside the pipeline too.
        await counter.script_flush()
        again = await asyncio.gather(pipeline.run(GOOD, ["n"]), pipeline.run(GOOD, ["n"]))
        assert sorted(again) == [4, 5]
        await pipeline.drain()
    finally:
        await counter.aclose()
        await client.aclose()
