"""Rate-limit governance on real Redis (README, "Multi-tenancy"): a key a pool declares is its namespace's
own, so one team's limit never throttles another's agents; a fleet-wide key the platform declares is shared;
and each pool's Redis user (as the operator sets it) reaches its namespace's keys and the one fleet key its
spec names, never another namespace's or another fleet key (NOPERM), on a server and on the 6-node cluster.
"""

from __future__ import annotations

import uuid

import pytest
from redis import exceptions as redis_errors

from codeforge.api.agentpool import AgentPoolSpec
from codeforge.api.usage import RateLimitSpec
from codeforge.controller.agentpool import builders
from codeforge.controller.agentpool.identity import user_rules
from codeforge.controller.config import AgentDefaults
from codeforge.queue.errors import QueueError
from codeforge.queue.ratelimit import RateLimit, RedisRateLimiter
from codeforge.redis import acl
from codeforge.redis.connect import Connection, connect
from integration.test_pool_acl import Tenant, admin, admin_url

pytestmark = pytest.mark.redis
__all__ = ["admin", "admin_url"]  # the fixtures of test_pool_acl: a server and the cluster, as admin


def pool_spec(key: str, rpm: int = 0) -> AgentPoolSpec:
    rate: dict[str, object] = {"key": key}
    if rpm:
        rate["requestsPerMinute"] = rpm
    return AgentPoolSpec.model_validate({"role": "r", "handler": {"kind": "echo"}, "rateLimit": rate})


def agent_limit(tenant: Tenant, spec: AgentPoolSpec, defaults: AgentDefaults) -> RateLimit:
    """The limit the operator's env gives the pool's agents, as the agent builds it from that env."""
    resolved = builders.rate_limit(tenant.ref, spec, defaults)
    assert resolved is not None
    env = resolved.to_env()
    return RateLimit(
        env["CODEFORGE_RATE_LIMIT_KEY"],
        int(env["CODEFORGE_RATE_LIMIT_RPM"]),
        int(env["CODEFORGE_RATE_LIMIT_TPM"]),
        float(env["CODEFORGE_RATE_LIMIT_BURST_SECONDS"]),
        env["CODEFORGE_RATE_LIMIT_SCOPE"],
    )


async def test_the_same_key_in_two_namespaces_is_two_limits(admin: Connection) -> None:
    """Team B declares a tiny limit on the key team A uses: team A's agents are not throttled by it."""
    key = f"openai/gpt-{uuid.uuid4().hex[:6]}"
    a, b = Tenant("team-a"), Tenant("team-b")
    defaults = AgentDefaults(queue_url="")
    limiter = RedisRateLimiter(admin)
    starved = agent_limit(b, pool_spec(key, rpm=1), defaults)  # one call a minute
    roomy = agent_limit(a, pool_spec(key, rpm=6000), defaults)
    assert (starved.scope, roomy.scope) == ("team-b", "team-a")

    assert (await limiter.acquire(starved)).slots == 1
    assert (await limiter.acquire(starved)).slots == 0  # team B is at its own limit
    granted = sum([(await limiter.acquire(roomy)).slots for _ in range(20)])
    assert granted >= 20 * 0.9  # team A runs at its own 100/s (burst 1 s), untouched by team B's 1/min


async def test_a_fleet_key_is_shared_with_the_platforms_numbers(admin: Connection) -> None:
    key = f"openai/gpt-{uuid.uuid4().hex[:6]}"
    fleet = {key: RateLimitSpec(key=key, requests_per_minute=1)}
    defaults = AgentDefaults(queue_url="", fleet_rate_limits=fleet)
    limiter = RedisRateLimiter(admin)
    # Team B names the key with its own (bigger) numbers: the platform's apply, to both teams, in one state.
    a = agent_limit(Tenant("team-a"), pool_spec(key), defaults)
    b = agent_limit(Tenant("team-b"), pool_spec(key, rpm=6000), defaults)
    assert a == b == RateLimit(key, 1, 0, 1.0, "")

    assert (await limiter.acquire(a)).slots == 1
    assert (await limiter.acquire(b)).slots == 0  # the one slot a minute is the fleet's, both teams'


async def test_a_pools_redis_user_reaches_its_rate_limit_keys_only(admin_url: str, admin: Connection) -> None:
    suffix = uuid.uuid4().hex[:6]
    used, other = f"openai/used-{suffix}", f"openai/other-{suffix}"
    fleet = {k: RateLimitSpec(key=k, requests_per_minute=600) for k in (used, other)}
    defaults = AgentDefaults(queue_url="", redis_acl=True, fleet_rate_limits=fleet)
    a, b = Tenant(f"team-a-{suffix}"), Tenant(f"team-b-{suffix}")
    fleet_pool, own_pool = pool_spec(used), pool_spec("team/own", rpm=600)
    granted = builders.rate_limit(a.ref, fleet_pool, defaults)
    await acl.set_user(admin, a.user, user_rules(a.ref, a.password, defaults, granted))
    conn = await connect(a.url(admin_url))
    as_a = RedisRateLimiter(conn)
    try:
        # Its namespace's keys (any of them) and the fleet key its spec names: allowed.
        assert (await as_a.acquire(agent_limit(a, own_pool, defaults))).slots == 1
        assert (await as_a.acquire(agent_limit(a, pool_spec("team/else", rpm=600), defaults))).slots == 1
        assert (await as_a.acquire(agent_limit(a, fleet_pool, defaults))).slots == 1
        # Another namespace's key of the same name, and a fleet key it does not use: refused, so a tenant's
        # agent can neither drain nor pause (429) them.
        for limit in (agent_limit(b, own_pool, defaults), agent_limit(a, pool_spec(other), defaults)):
            with pytest.raises(QueueError, match="no permissions"):
                await as_a.pause(limit, 600)
        with pytest.raises(redis_errors.NoPermissionError):
            await conn.client.execute_command("HGETALL", f"cf:{{rl:{other}}}")
    finally:
        await conn.aclose()
        await acl.delete_user(admin, a.user)
