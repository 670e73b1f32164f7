"""The fleet-wide rate limiter on a real redis-server, a real 6-node Redis Cluster, and in memory.

Several limiter clients (separate connections, as separate agents would have) share one key; what they are
granted is counted against the declared limits over real time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio.cluster import RedisCluster

from codeforge.queue.keys import pool_prefix
from codeforge.queue.ratelimit import (
    MemoryRateLimiter,
    RateLimit,
    RateLimiter,
    RedisRateLimiter,
    open_rate_limiter,
    rate_key,
)

Factory = Callable[[], Awaitable[RateLimiter]]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Opens limiter clients of one backend; all of one test share the backend's state."""
    opened: list[RateLimiter] = []
    if request.param == "memory":
        shared = MemoryRateLimiter()

        async def factory() -> RateLimiter:
            return shared
    else:
        fixture = "redis_url" if request.param == "redis" else "cluster_url"
        request.applymarker(pytest.mark.redis if request.param == "redis" else pytest.mark.cluster)
        url = request.getfixturevalue(fixture)

        async def factory() -> RateLimiter:
            limiter = await open_rate_limiter(url)
            opened.append(limiter)
            return limiter

    yield factory
    for limiter in opened:
        await limiter.close()


def new_key() -> str:
    return f"openai/gpt-test-{uuid.uuid4().hex[:8]}"


def test_key_has_a_hash_tag_of_its_own() -> None:
    """Not a pool's tag: pools of any namespace share a key, and it must be one cluster slot."""
    assert rate_key("openai/gpt-4.1") == "cf:{rl:openai/gpt-4.1}"
    assert not rate_key("team-a/research").startswith(pool_prefix("team-a/research"))
    for bad in ("", "a{b}", "has space", "x" * 201, "-lead"):
        with pytest.raises(ValueError, match="rate-limit key"):
            RateLimit(bad, requests_per_minute=1)
    with pytest.raises(ValueError, match="neither"):
        RateLimit("k")


async def test_requests_per_minute_hold_across_clients(limiters: Factory) -> None:
    """Eight clients hammer one key for 3 s at 600 rpm (10/s, burst 1 s): they get 10/s, not more."""
    limit = RateLimit(new_key(), requests_per_minute=600, burst_seconds=1.0)
    clients = [await limiters() for _ in range(8)]
    grants: list[float] = []
    stop_at = time.monotonic() + 3.0

    async def hammer(limiter: RateLimiter) -> None:
        while time.monotonic() < stop_at:
            grant = await limiter.acquire(limit, 1)
            if grant.slots:
                grants.append(time.monotonic())
            else:
                await asyncio.sleep(min(grant.wait, 0.05))

    await asyncio.gather(*(hammer(c) for c in clients))
    # At most rpm*(W+burst)/60 in W seconds: 10/s * (3 + 1) = 40; and the limiter does not starve them.
    assert 28 <= len(grants) <= 40, len(grants)
    # Any 1-second window after the first burst holds at most one second's worth plus the burst (10 + 10).
    for start in grants:
        assert sum(1 for g in grants if start <= g < start + 1.0) <= 20


async def test_tokens_run_into_debt_and_later_calls_wait_it_out(limiters: Factory) -> None:
    limit = RateLimit(new_key(), tokens_per_minute=6000, burst_seconds=1.0)  # 100 tokens/s, bucket 100
    a, b = await limiters(), await limiters()
    grant = await a.acquire(limit)
    assert grant.slots == 1
    assert grant.tokens_each == 100  # nothing known about calls yet: the whole bucket, one call at a time
    assert (await b.acquire(limit)).slots == 0
    await a.settle(limit, grant.tokens_each, 400)  # the call used 400: 300 in debt
    refused = await b.acquire(limit)
    assert refused.slots == 0
    # Paying back 300 tokens at 100/s, then room for an average call (400, capped at the bucket's 100): 4 s.
    assert 3.8 <= refused.wait <= 4.05, refused.wait
    state = await b.state(limit)
    assert state["average"] == pytest.approx(400)


async def test_a_slot_reserves_the_average_and_settles_the_difference(limiters: Factory) -> None:
    limit = RateLimit(new_key(), tokens_per_minute=60000, burst_seconds=1.0)  # 1000/s, bucket 1000
    client = await limiters()
    first = await client.acquire(limit)
    await client.settle(limit, first.tokens_each, 300)
    grant = await client.acquire(limit, 5)
    assert grant.tokens_each == 300
    assert grant.slots == 2  # 1000 - 300 (the first call) = 700: room for two calls of 300, not three
    level = (await client.state(limit))["level"]
    assert level < 300
    await client.give_back(limit, grant.slots, grant.tokens_each)  # the claim found nothing
    assert (await client.state(limit))["level"] >= level + 600 - 1


async def test_give_back_frees_the_request_slot(limiters: Factory) -> None:
    limit = RateLimit(new_key(), requests_per_minute=6, burst_seconds=1.0)  # one per 10 s
    a, b = await limiters(), await limiters()
    assert (await a.acquire(limit)).slots == 1
    refused = await b.acquire(limit)
    assert refused.slots == 0
    assert 9.0 <= refused.wait <= 10.0
    await a.give_back(limit, 1, 0)
    assert (await b.acquire(limit)).slots == 1


async def test_a_pause_stops_every_client_until_it_ends(limiters: Factory) -> None:
    limit = RateLimit(new_key(), requests_per_minute=60000)
    a, b = await limiters(), await limiters()
    assert (await a.acquire(limit)).slots == 1
    paused_for = await a.pause(limit, 0.6)
    assert 0.5 <= paused_for <= 0.6
    refused = await b.acquire(limit)
    assert refused.slots == 0
    assert refused.paused
    assert 0.4 <= refused.wait <= 0.6
    # A shorter pause never shortens a longer one.
    assert await b.pause(limit, 0.1) >= 0.4
    await asyncio.sleep(refused.wait + 0.05)
    assert (await b.acquire(limit)).slots == 1


async def test_a_hostile_retry_after_is_capped(limiters: Factory) -> None:
    limit = RateLimit(new_key(), requests_per_minute=60)
    client = await limiters()
    assert await client.pause(limit, 10**9) <= 600
    assert await client.pause(limit, float("inf")) <= 600


@pytest.mark.cluster
async def test_the_key_lives_on_one_cluster_slot(cluster_url: str) -> None:
    limiter = await open_rate_limiter(cluster_url)
    assert isinstance(limiter, RedisRateLimiter)
    try:
        limit = RateLimit(new_key(), requests_per_minute=60, tokens_per_minute=1000)
        await limiter.settle(limit, 0, 10)
        client = limiter._r
        assert isinstance(client, RedisCluster)
        assert await client.exists(rate_key(limit.key)) == 1
        ttl = await client.pttl(rate_key(limit.key))
        assert 0 < ttl <= 125_000  # an idle key goes away by itself
    finally:
        await limiter.close()
