"""The connection pool of every plain (non-cluster) Redis client codeforge opens (`redis/connect.py`).

redis-py 5.3 takes one `asyncio.Lock` around every connection checkout and holds it while a new connection
connects (redis-py #3692, #3842). Once one checkout waits there, every later one queues behind it, and an
asyncio lock hands itself on to one waiter per event-loop turn: with thousands of commands in flight (an
operator resuming 10,000 runs) every Redis command of the process waited its turn in that one queue, one
per loop turn (probed at 10,000 Workflows: 11,050 coroutines waiting on it, runs unable to park behind
their checkpoint writes). Here an idle connection is taken without a lock; a checkout that finds none
opens one while fewer than `CONNECTS_AT_ONCE` are being opened, and otherwise waits for the next
connection released or opened, handed over directly, first come first served. redis-py's
`max_connections` caps the pool (a checkout beyond it waits instead of failing); codeforge's URLs do not set
it, so a pool is unbounded, as redis-py's is by default.
The Redis Cluster client keeps redis-py's per-node connections, which take no lock.

redis-py also checks every connection it hands out by reading from it with a zero timeout: a future, a
timer and a cancellation, and two loop turns before each command goes out. A connection here is checked
from what its stream and parser already hold (nothing buffered, no end of stream), which the loop keeps
current; only one that fails that, or whose parser does not say, gets redis-py's check (and its
reconnect).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from codeforge.redis.packing import hiredis_packed

#: New connections opened at once per pool (each is a TCP, maybe TLS, handshake and an AUTH round trip).
CONNECTS_AT_ONCE: Final = 8


class HandoverPool(ConnectionPool):
    """A `ConnectionPool` whose checkout takes no lock (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: checkouts waiting, in order: each gets a connection, or None to open one itself
        self._waiters: deque[asyncio.Future[AbstractConnection | None]] = deque()
        self._connecting = 0

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        if self._waiters and self._available_connections:  # only waiters cancelled since the last release
            self._hand_over()
        if self._available_connections and not self._waiters:
            connection: AbstractConnection | None = self._take()
        elif self._can_open():
            self._connecting += 1
            connection = None
        else:
            connection = await self._wait()
        if connection is None:  # a slot to open one is ours
            return await self._open()
        if _ready_to_send(connection):
            return connection
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    def _take(self) -> AbstractConnection:
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        return connection

    def _can_open(self) -> bool:
        total = len(self._in_use_connections) + len(self._available_connections) + self._connecting
        return self._connecting < CONNECTS_AT_ONCE and total < self.max_connections

    async def _wait(self) -> AbstractConnection | None:
        waiter: asyncio.Future[AbstractConnection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed something just as it was cancelled: pass it on, or it is lost to the pool.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    await self.release(handed)
                else:  # the slot to open one reserved for it
                    self._connecting -= 1
                    self._hand_over()
            raise

    async def _open(self) -> AbstractConnection:
        """Open a connection in a slot counted in `_connecting` already."""
        connection: AbstractConnection = self.make_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            self._connecting -= 1
            self._hand_over()  # a waiter may open one in its place
            raise
        self._connecting -= 1
        self._in_use_connections.add(connection)
        self._hand_over()
        return connection

    def _hand_over(self) -> None:
        """Serve waiters in order: an idle connection each, else a turn to open one while allowed."""
        while self._waiters:
            if self._available_connections:
                handed: AbstractConnection | None = self._available_connections[-1]
            elif self._can_open():
                handed = None
            else:
                return
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while waiting
                continue
            if handed is not None:
                self._take()
            else:
                self._connecting += 1  # the slot is the waiter's: `_open`, or `_wait` if it was cancelled
            waiter.set_result(handed)

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        self._hand_over()

    def reset(self) -> None:
        super().reset()  # type: ignore[no-untyped-call]
        self._connecting = 0
        for waiter in self._waiters:  # their connections are gone: let them open new ones
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


def _ready_to_send(connection: AbstractConnection) -> bool:
    """Connected, nothing unread and no end of stream, from what the loop has already read into the
    connection's stream (redis-py's own `_socket_is_empty` looks there too). False when unsure."""
    stream = connection._reader
    parser = connection._parser
    if stream is None or not isinstance(parser, _AsyncHiredisParser) or not parser._connected:
        return False
    if stream.exception() is not None or stream.at_eof() or stream._buffer:  # type: ignore[attr-defined]
        return False
    reader: Any = parser._reader  # typed None in redis-py: set on connect
    return reader is not None and not reader.has_data()


def plain_client(host: str, port: int, **options: Any) -> Redis:
    """A client on one server with redis-py's options (as `Redis(host=..., port=..., **options)` takes
    them), on a `HandoverPool`, its commands packed by hiredis (`redis/packing.py`)."""
    template = Redis(host=host, port=port, **options).connection_pool  # redis-py's option handling
    connection_class = hiredis_packed(template.connection_class)
    pool = HandoverPool(connection_class, template.max_connections, **template.connection_kwargs)
    return Redis.from_pool(pool)
