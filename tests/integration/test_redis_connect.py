"""`codeforge.redis`, which the queue and the checkpointer share: scripts survive a lost script cache, and
the checkpointer's connection reads a wrong password or an unreachable server as the queue does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import QueueConfigError, QueueUnavailableError
from codeforge.redis import Connection, Script, connect
from codeforge.redis.packing import HiredisPacking
from codeforge.testing.redis_server import LocalRedis, LocalRedisCluster, free_port

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-connect"
ECHO = Script("echo_key", "return {KEYS[1], ARGV[1]}")


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[LocalRedis]:
    server = LocalRedis(password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_password_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CODEFORGE_REDIS_PASSWORD", "CODEFORGE_REDIS_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)


async def test_a_script_runs_after_the_server_forgot_it(redis_url: str) -> None:
    conn = await connect(redis_url)
    try:
        r = conn.client
        await r.script_flush()
        assert await ECHO.run(r, ["k"], ["v"]) == ["k", "v"]  # NOSCRIPT -> EVAL
        assert await r.script_exists(ECHO.sha) == [True]  # EVAL cached it: the next call is an EVALSHA
        assert await ECHO.run(r, ["k2"], ["v2"]) == ["k2", "v2"]
    finally:
        await conn.aclose()


async def test_a_plain_client_packs_with_hiredis_and_round_trips(redis_url: str) -> None:
    conn = await connect(redis_url)
    try:
        r = conn.client
        value = "é✓\x00" + "x" * 100_000
        await r.set("packed", value)
        pipe = r.pipeline(transaction=False)
        pipe.get("packed")
        pipe.set("n", 10**20)
        pipe.get("n")
        pipe.set("f", 0.1)
        pipe.get("f")
        assert await pipe.execute() == [value, True, str(10**20), True, "0.1"]
        connections = r.connection_pool._available_connections
        assert connections
        assert all(isinstance(c, HiredisPacking) for c in connections)
    finally:
        await conn.aclose()


async def round_trip_on_every_master(conn: Connection, key: str, value: str) -> None:
    for i in range(20):  # keys on every master's slots
        await conn.client.set(f"{key}{i}", f"{value}{i}")
        assert await conn.client.get(f"{key}{i}") == f"{value}{i}"


@pytest.mark.cluster
async def test_a_cluster_client_packs_with_hiredis_on_every_node(redis_cluster: LocalRedisCluster) -> None:
    conn = await connect(redis_cluster.url)
    try:
        await round_trip_on_every_master(conn, "p", "é")
        assert isinstance(conn.client, RedisCluster)
        nodes = conn.client.get_nodes()
        assert len(nodes) >= redis_cluster.masters
        assert all(issubclass(node.connection_class, HiredisPacking) for node in nodes)
        opened = [c for node in nodes for c in node._connections]
        assert opened
        assert all(isinstance(c, HiredisPacking) for c in opened)
    finally:
        await conn.aclose()


@pytest.mark.cluster
async def test_a_plain_url_to_a_cluster_node_means_the_cluster(redis_cluster: LocalRedisCluster) -> None:
    node = redis_cluster.nodes[0]
    conn = await connect(f"redis://127.0.0.1:{node.port}/0")
    try:
        assert conn.cluster
        await round_trip_on_every_master(conn, "k", "v")
        pubsub_node = await conn.any_node()
        assert await pubsub_node.ping()
        await pubsub_node.aclose()
    finally:
        await conn.aclose()


async def test_checkpointer_without_the_password_says_where_to_put_it(locked_redis: LocalRedis) -> None:
    with pytest.raises(QueueConfigError) as info:
        await open_checkpointer(f"redis://127.0.0.1:{locked_redis.port}/0")
    assert "requires a password" in str(info.value)
    assert "CODEFORGE_REDIS_PASSWORD" in str(info.value)


async def test_checkpointer_with_a_wrong_password_is_refused(locked_redis: LocalRedis) -> None:
    with pytest.raises(QueueConfigError, match="refused the password"):
        await open_checkpointer(f"redis://:not-it@127.0.0.1:{locked_redis.port}/0")


async def test_checkpointer_with_the_password_from_env_works(
    locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", PASSWORD)
    async with await open_checkpointer(f"redis://127.0.0.1:{locked_redis.port}/0") as saver:
        assert await saver.aget_tuple({"configurable": {"thread_id": "none"}}) is None


async def test_checkpointer_on_nothing_is_unavailable() -> None:
    with pytest.raises(QueueUnavailableError, match="cannot reach Redis at"):
        await open_checkpointer(f"redis://127.0.0.1:{free_port()}/0")
