"""`codeforge.redis.pool.HandoverPool` on a real redis-server: thousands of commands at once are served
without the per-loop-turn lock convoy of redis-py's pool, a capped pool waits instead of failing, and a
cancelled or failed checkout loses no connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codeforge.redis.pool import CONNECTS_AT_ONCE, HandoverPool, plain_client
from codeforge.testing.redis_server import LocalRedis, free_port

pytestmark = pytest.mark.redis

COMMANDS = 3000


async def turns_to_serve(client: Redis, commands: int) -> int:
    """Event-loop turns in which any of `commands` GETs issued at once got its connection. Turns the loop only
    spends waiting for the server's replies are not counted: how many pass depends on the machine's load (a
    busy CI machine made the pools look alike), how many turns hand out connections on the pool."""
    turns = 0
    checkout_turns: set[int] = set()
    done = asyncio.Event()
    pool = client.connection_pool
    get_connection = pool.get_connection

    async def counted_checkout(*args: Any, **kwargs: Any) -> Any:
        connection = await get_connection(*args, **kwargs)
        checkout_turns.add(turns)
        return connection

    async def count() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    pool.get_connection = counted_checkout
    counter = asyncio.create_task(count())
    try:
        await asyncio.gather(*(client.get(f"k{i % 50}") for i in range(commands)))
    finally:
        done.set()
        await counter
        del pool.get_connection  # the class's method again
    return len(checkout_turns)


async def warmed(client: Redis, connections: int) -> None:
    """Open `connections` connections and leave them idle, so the burst starts as on a running process."""
    await asyncio.gather(*(client.ping() for _ in range(connections)))


async def test_a_burst_of_commands_is_served_in_a_few_loop_turns(redis_server: LocalRedis) -> None:
    host, port = "127.0.0.1", redis_server.port
    ours = plain_client(host, port)
    theirs = Redis(host=host, port=port)
    try:
        assert isinstance(ours.connection_pool, HandoverPool)
        await warmed(ours, 20)
        await warmed(theirs, 20)
        ours_turns = await turns_to_serve(ours, COMMANDS)
        theirs_turns = await turns_to_serve(theirs, COMMANDS)
    finally:
        await ours.aclose()
        await theirs.aclose()
    # redis-py's pool (5.3+) lets one checkout through per loop turn once one waits for a new connection:
    # thousands of turns. Ours hands connections over as they are released, many per turn.
    assert type(theirs.connection_pool) is ConnectionPool
    assert ours_turns * 3 < theirs_turns, (ours_turns, theirs_turns)
    assert theirs_turns > COMMANDS // 2  # the convoy this pool is for: about one checkout per turn


async def test_a_capped_pool_waits_for_a_connection_instead_of_failing(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port, max_connections=3)
    try:
        values = await asyncio.gather(*(client.incr("capped") for _ in range(500)))
        assert sorted(values) == list(range(1, 501))
        pool = client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 3
        clients = await client.client_list()
        assert len(clients) <= 3 + 1  # ours, and redis-cli's or another test's at most
    finally:
        await client.aclose()


async def test_opens_at_most_a_few_connections_at_once(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port)
    pool = client.connection_pool
    assert isinstance(pool, HandoverPool)
    most = 0
    original = pool.ensure_connection

    async def watched(connection: object) -> None:
        nonlocal most
        most = max(most, pool._connecting)
        await original(connection)  # type: ignore[arg-type]

    pool.ensure_connection = watched  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(client.ping() for _ in range(200)))
    finally:
        await client.aclose()
    assert 1 <= most <= CONNECTS_AT_ONCE


async def test_cancelled_waiters_lose_no_connection(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port, max_connections=2)
    pool = client.connection_pool
    assert isinstance(pool, HandoverPool)

    async def blpop() -> Any:
        return await client.blpop(["never-pushed"], timeout=1)  # type: ignore[misc]

    async def ping() -> Any:
        return await client.ping()

    try:
        blockers = [asyncio.create_task(blpop()) for _ in range(2)]
        await asyncio.sleep(0.1)  # both connections are held by the blocking pops
        waiting = [asyncio.create_task(ping()) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)
        for task in waiting[:10]:
            task.cancel()
        assert await asyncio.gather(*blockers) == [None, None]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert [r for r in results[10:]] == [True] * 10
        assert all(isinstance(r, asyncio.CancelledError) for r in results[:10])
        # every connection is back: the pool serves as many at once as its cap
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) <= 2
        assert list(await asyncio.gather(ping(), ping())) == [True, True]
    finally:
        await client.aclose()


async def test_a_failed_connect_lets_the_next_checkout_try_again() -> None:
    port = free_port()
    client = plain_client("127.0.0.1", port, socket_connect_timeout=1.0)
    pool = client.connection_pool
    assert isinstance(pool, HandoverPool)
    try:
        results = await asyncio.gather(*(client.ping() for _ in range(30)), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results)
        assert pool._connecting == 0  # no slot leaked by the failures
        assert not pool._waiters
        server = LocalRedis(port=port).start()
        try:
            assert await client.ping()
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
            server.stop()
    finally:
        await client.aclose()


async def test_a_connection_with_an_unread_reply_is_not_handed_out_as_is(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port)
    pool = client.connection_pool
    try:
        await client.set("stale", "old")
        connection = await pool.get_connection("GET")
        await connection.send_command("GET", "stale")  # its reply is never read
        await asyncio.sleep(0.05)  # the loop reads the reply into the connection's stream
        await pool.release(connection)
        await client.set("fresh", "new")
        # with the stale reply left on the connection this GET would read b"old"
        assert await client.get("fresh") == b"new"
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_is_reopened(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port)
    admin = Redis(host="127.0.0.1", port=redis_server.port)
    try:
        await client.client_setname("victim")
        killed = await admin.client_kill_filter(_type="normal", skipme=True)  # every client but admin
        assert killed >= 1
        await asyncio.sleep(0.05)  # the loop sees the end of stream
        assert await client.ping()
        assert await client.client_getname() is None  # a new connection (the name went with the old)
    finally:
        await client.aclose()
        await admin.aclose()


async def test_an_idle_connection_is_checked_out_without_a_loop_turn(redis_server: LocalRedis) -> None:
    client = plain_client("127.0.0.1", redis_server.port)
    pool = client.connection_pool
    try:
        await client.ping()
        ran = False

        async def other() -> None:
            nonlocal ran
            ran = True

        other_task = asyncio.create_task(other())
        connection = await pool.get_connection("PING")
        # redis-py's check (a read with a zero timeout) yields to the loop, letting `other` run first
        assert not ran
        await pool.release(connection)
        await other_task
    finally:
        await client.aclose()
