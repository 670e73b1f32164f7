"""Per-pool Redis identities (README, "Multi-tenancy"): the ACL user the operator gives an AgentPool's agents
runs everything an agent does on its own pool's keys, and Redis refuses it (NOPERM) on another pool's keys,
on a single server and on the 6-node Redis Cluster (the user is set on every node, replicas included).

The users are set exactly as the operator sets them (`identity.user_rules` + `acl.set_user`); the agents are
real `codeforge-agent` processes and real queue clients logged in as those users.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis import exceptions as redis_errors

from codeforge.api.task import Task, TaskState
from codeforge.controller.agentpool.builders import PoolRef
from codeforge.controller.agentpool.identity import user_rules
from codeforge.controller.config import AgentDefaults
from codeforge.queue import TaskQueue, open_queue
from codeforge.queue.keys import hand_key, pool_prefix, task_key
from codeforge.redis import acl
from codeforge.redis.connect import Connection, connect
from codeforge.testing.redis_server import LocalRedis, LocalRedisCluster
from support.agent_procs import agent_env, running_agents

pytestmark = pytest.mark.redis
#: What the rate-limit keys of the fleet look like: granted to every pool by the operator's setting.
FLEET_PATTERN = "cf:rl:{fleet}:*"


@pytest.fixture(params=["server", "cluster"])
def admin_url(request: pytest.FixtureRequest) -> str:
    if request.param == "server":
        server: LocalRedis = request.getfixturevalue("redis_server")
        return server.url
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture
async def admin(admin_url: str) -> AsyncIterator[Connection]:
    conn = await connect(admin_url)
    yield conn
    await conn.aclose()


class Tenant:
    """One AgentPool's identity: its queue name, ACL user and password."""

    def __init__(self, namespace: str) -> None:
        self.ref = PoolRef(namespace=namespace, name="research", uid=uuid.uuid4().hex)
        self.pool = self.ref.queue
        self.user = acl.user_name(self.pool)
        self.password = uuid.uuid4().hex + uuid.uuid4().hex

    def url(self, admin_url: str) -> str:
        """The admin URL with this pool's user instead (agents get the user through the environment)."""
        scheme, rest = admin_url.split("://", 1)
        return f"{scheme}://{quote(self.user, safe='')}:{self.password}@{rest.rpartition('@')[2]}"


@pytest.fixture
async def tenants(admin: Connection) -> AsyncIterator[tuple[Tenant, Tenant]]:
    a, b = Tenant(f"team-a-{uuid.uuid4().hex[:6]}"), Tenant(f"team-b-{uuid.uuid4().hex[:6]}")
    defaults = AgentDefaults(queue_url="", redis_acl=True, acl_key_patterns=(FLEET_PATTERN,))
    for tenant in (a, b):
        await acl.set_user(admin, tenant.user, user_rules(tenant.ref, tenant.password, defaults))
    yield a, b
    for tenant in (a, b):
        await acl.delete_user(admin, tenant.user)


async def test_the_user_is_set_on_every_node(
    request: pytest.FixtureRequest, admin: Connection, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    if admin.cluster:
        servers = request.getfixturevalue("redis_cluster").nodes
        assert len(servers) == 6  # the 3 replicas too: a failover must not lock the agents out
    else:
        servers = [request.getfixturevalue("redis_server")]
    for server in servers:
        assert a.user in server.cli("ACL", "USERS").split(), f"node {server.port} lacks {a.user}"
    listed = servers[0].cli("ACL", "GETUSER", a.user)
    assert acl.password_hash(a.password) in listed
    assert a.password not in listed  # only its SHA-256 is stored and shown


async def test_an_agent_runs_every_queue_operation_on_its_own_pool(
    admin_url: str, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    operator = await open_queue(admin_url)
    agent: TaskQueue = await open_queue(a.url(admin_url))
    try:
        for n in range(3):
            await operator.enqueue(Task(id=f"t{n}", pool=a.pool, payload={"n": n}))
        await agent.set_consumer_state(a.pool, "pod-1", "busy", 30)
        lease = await agent.claim(a.pool, "pod-1", timeout=1)
        assert lease is not None
        lease = await agent.heartbeat(lease)
        await agent.complete(lease, {"ok": True})
        failing = await agent.claim(a.pool, "pod-1", timeout=1)
        assert failing is not None
        await agent.fail(failing, "boom")
        held = await agent.claim_many(a.pool, "pod-1", 5, timeout=1)
        assert held
        for lease in held:
            await agent.release(lease)
        assert (await agent.get(a.pool, "t0")).state is TaskState.SUCCEEDED  # type: ignore[union-attr]
        assert (await agent.stats(a.pool)).queued >= 1
        assert await operator.consumer_states(a.pool) == {"pod-1": "busy"}
        assert (await operator.get(a.pool, "t0")).result == {"ok": True}  # type: ignore[union-attr]
    finally:
        await agent.close()
        await operator.close()


async def test_an_agent_of_pool_a_is_refused_on_pool_b(
    admin_url: str, admin: Connection, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    operator = await open_queue(admin_url)
    await operator.enqueue(Task(id="secret", pool=b.pool, payload={"token": "team-b-only"}))
    intruder = await connect(a.url(admin_url))
    r: Any = intruder.client
    b_task, b_hand = task_key(b.pool, "secret"), hand_key(b.pool, "agent-b")
    single: Any = await intruder.any_node()  # a plain client: Pub/Sub and keyless commands
    try:
        refused: list[Callable[[], Awaitable[Any]]] = [
            lambda: r.hgetall(b_task),  # read B's task
            lambda: r.hset(b_task, "state", "succeeded"),  # forge B's result
            lambda: r.rpush(b_hand, "x"),  # forge a handed-over lease
            lambda: r.delete(b_task),
            lambda: single.publish(pool_prefix(b.pool) + "done", "forged"),
            # A script may not reach B's keys either (Redis checks every call inside it).
            lambda: r.eval("return redis.call('HGETALL', KEYS[1])", 1, b_task),
            # Commands that would list, flush or reconfigure everything are not permitted at all.
            lambda: single.execute_command("KEYS", "*"),
            lambda: single.execute_command("SCAN", "0"),
            lambda: single.execute_command("FLUSHALL"),
            lambda: single.execute_command("CONFIG", "GET", "requirepass"),
            lambda: single.execute_command("ACL", "LIST"),
            lambda: single.execute_command("SCRIPT", "FLUSH"),
        ]
        for call in refused:
            with pytest.raises(redis_errors.NoPermissionError):
                await call()
        # The claim script on B's queue is refused as a whole: B's task stays queued, unread.
        agent = await open_queue(a.url(admin_url))
        try:
            with pytest.raises(Exception, match=r"(?i)noperm|permission"):
                await agent.claim(b.pool, "pod-1", timeout=0)
        finally:
            await agent.close()
        assert (await operator.get(b.pool, "secret")).state is TaskState.QUEUED  # type: ignore[union-attr]
        # The fleet-wide pattern granted to every pool works for A.
        await r.set("cf:rl:{fleet}:openai/gpt-4.1", "1")
    finally:
        await single.aclose()
        await intruder.aclose()
        await operator.close()


async def test_a_wrong_or_rotated_password_is_refused(admin_url: str, admin: Connection) -> None:
    tenant = Tenant(f"team-c-{uuid.uuid4().hex[:6]}")
    defaults = AgentDefaults(queue_url="", redis_acl=True)
    await acl.set_user(admin, tenant.user, user_rules(tenant.ref, tenant.password, defaults))
    old = tenant.url(admin_url)
    tenant.password = uuid.uuid4().hex  # the pool was recreated: a new Secret, a new password
    await acl.set_user(admin, tenant.user, user_rules(tenant.ref, tenant.password, defaults))
    try:
        with pytest.raises(Exception, match=r"(?i)password"):
            await open_queue(old)
        fresh = await open_queue(tenant.url(admin_url))
        await fresh.close()
    finally:
        await acl.delete_user(admin, tenant.user)
    with pytest.raises(Exception, match=r"(?i)password"):
        await open_queue(tenant.url(admin_url))  # deleted with the pool


async def test_a_real_agent_process_serves_its_pool_as_its_user(
    admin_url: str, tenants: tuple[Tenant, Tenant], tmp_path: Path
) -> None:
    """The agent reads its user from CODEFORGE_REDIS_USERNAME and the password from the mounted file, as
    the operator's Deployment gives them, and runs a task end to end (claim, heartbeat, complete)."""
    a, _ = tenants
    (tmp_path / "password").write_text(a.password)
    env = agent_env(a.pool, admin_url)
    env["CODEFORGE_REDIS_USERNAME"] = a.user
    env["CODEFORGE_REDIS_PASSWORD_FILE"] = str(tmp_path / "password")
    operator = await open_queue(admin_url)
    try:
        async with running_agents(env) as [agent]:
            await operator.enqueue(Task(id="real", pool=a.pool, payload={"hello": "a"}))
            outcome = await operator.wait_result(a.pool, "real", timeout=30)
            log = agent.log
    finally:
        await operator.close()
    assert outcome.state is TaskState.SUCCEEDED, log
    assert "NOPERM" not in log, log
    assert "permission" not in log.lower(), log
