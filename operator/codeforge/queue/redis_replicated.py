"""durability=fsync|replicated on Redis: the check at connect, and the WAIT after each write.

`replicated` sends every state-changing script with a WAIT for one replica on the same connection, so a
call returns only once a replica holds its write and a failover cannot take back what a caller was told.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from codeforge.queue.errors import QueueConfigError, QueueUnavailableError, ReplicationTimeoutError
from codeforge.queue.keys import pool_prefix, sync_key
from codeforge.redis import Connection, Script
from codeforge.redis.errors import TOPOLOGY, TRANSIENT, topology_changed

log = logging.getLogger(__name__)

#: Scripts that change what a caller is told; with durability=replicated each returns only after a WAIT.
WRITE_SCRIPTS = frozenset(
    {
        "enqueue",
        "claim",
        "complete",
        "fail",
        "release",
        "heartbeat",
        "cancel",
        "requeue_dead",
        "reap",
        "purge_dead",
        "forget",
    }
)

#: Of those, the ones whose reply says whether they changed anything a caller is told (`_changed`): each is
#: sent alone and a WAIT follows only when it did. An empty claim (a consumer about to wait: its idle
#: registration, a reap that found nothing) then costs no replica round trip, which a consumer going idle
#: otherwise paid on every turn of its loop; a claim that leased tasks pays one more local round trip.
CONFIRM_IF_CHANGED = frozenset({"claim", "reap"})


async def check_durability(conn: Connection, durability: str, url: str, retry_seconds: float) -> None:
    """fsync and replicated: every node must fsync each write, or the mode would promise what the
    servers do not keep (QueueConfigError naming the fix); a master without a replica is logged."""
    if durability == "fast":
        return
    r: Any = conn.client
    nodes: list[tuple[str, Any, bool]] = [(url, None, True)]
    if conn.cluster:
        nodes = [(n.name, n, n.server_type == "primary") for n in r.get_nodes()]
    fix = (
        "set appendonly yes and appendfsync always (the chart's redis.durability does), or use "
        "durability=fast and accept losing up to a second of acknowledged writes in a crash"
    )
    for name, node, master in nodes:
        target = {"target_nodes": node} if node is not None else {}
        try:
            config = await r.config_get("append*", **target)
        except redis_errors.ResponseError as exc:  # CONFIG renamed or not permitted (managed Redis)
            log.warning("cannot check appendfsync on %s (%s): durability=%s assumes it", name, exc,
                        durability)  # fmt: skip
            continue
        except (*TRANSIENT, redis_errors.RedisError) as exc:
            raise QueueUnavailableError(f"cannot read the configuration of Redis {name}: {exc}") from exc
        if (config.get("appendonly"), config.get("appendfsync")) != ("yes", "always"):
            raise QueueConfigError(
                f"durability={durability} needs every Redis node to fsync each write, but {name} "
                f"has appendonly {config.get('appendonly')} and appendfsync {config.get('appendfsync')}: "
                f"{fix}"
            )
        if durability == "replicated" and master:
            info = await r.info("replication", **target)
            if int(info.get("connected_slaves", 0)) < 1:
                # Possibly for a moment (a replica restarting, a failover): writes wait for one to come.
                log.warning(
                    "durability=replicated: %s has no replica connected; every write waits up to %gs "
                    "for one (add replicas, e.g. redis.mode cluster with replicasPerMaster >= 1, or use "
                    "durability=fsync)",
                    name,
                    retry_seconds,
                )


class ReplicatedWrites:
    """Runs a write script and a WAIT for one replica in one pipeline on the master's own connection."""

    def __init__(self, conn: Connection, *, url: str, retry_seconds: float, replica_wait_ms: int) -> None:
        self._conn = conn
        self._r: Any = conn.client
        self.url = url
        self.retry_seconds = retry_seconds
        self.replica_wait_ms = replica_wait_ms
        #: On a cluster: one plain client per master, so a script and its WAIT share a connection (the
        #: cluster client may send a keyless WAIT anywhere).
        self._masters: dict[str, Redis] = {}

    async def _master(self, pool: str) -> Any:
        """The client whose connection reaches the master of the pool's slot."""
        if not self._conn.cluster:
            return self._r
        node = self._r.get_node_from_key(pool_prefix(pool))
        client = self._masters.get(node.name)
        if client is None:
            client = self._masters[node.name] = self._conn.node(node.host, node.port)
        return client

    async def _forget_master(self, pool: str, exc: Exception) -> None:
        """After a failover: drop the old master's client and refresh the slot map, for the retry."""
        if not self._conn.cluster:
            return
        await self.close()
        with contextlib.suppress(Exception):  # the cluster may still be electing; the retry tries again
            await self._r.nodes_manager.initialize()
        log.warning("pool %s: the slot's master changed or is unreachable (%s); retrying", pool, exc)

    async def run(self, script: Script, pool: str, args: tuple[Any, ...]) -> Any:
        """Run a write script, then WAIT for one replica on the same connection (one pipeline)."""
        prefix = pool_prefix(pool)
        client = await self._master(pool)

        async def send(command: str, body: str) -> tuple[Any, int]:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(command, body, 1, prefix, *args)
            # A script that found its work done (a retried complete) writes nothing, and WAIT only covers
            # this connection's own writes: this one comes after whatever the script or its earlier try did.
            pipe.set(sync_key(pool), "1")
            pipe.execute_command("WAIT", 1, self.replica_wait_ms)
            reply, _, acked = await pipe.execute()
            return reply, int(acked)

        async with self._master_changes(pool):
            if script.name in CONFIRM_IF_CHANGED:
                # The WAIT after a write of our own covers the script's writes even on another pooled
                # connection of this master: replication is one ordered stream.
                reply = await script.run(client, [prefix], args)
                if _changed(script.name, reply):
                    await self._sync(client, pool)
                return reply
            try:
                reply, acked = await send("EVALSHA", script.sha)
            except redis_errors.NoScriptError:
                reply, acked = await send("EVAL", script.source)
            if acked < 1 and _changed(script.name, reply):
                await self._confirm(client, pool)
        return reply

    async def pop(self, pool: str, key: str, block: float) -> str | None:
        """BLPOP a handed-over lease, then WAIT for one replica on the same connection (one pipeline): the
        consumer starts the task only once a replica holds its lease, as after a claim."""
        client = await self._master(pool)
        async with self._master_changes(pool):
            pipe = client.pipeline(transaction=False)
            pipe.blpop([key], timeout=block)
            pipe.set(sync_key(pool), "1")  # WAIT covers this connection's writes: one after the pop
            pipe.execute_command("WAIT", 1, self.replica_wait_ms)
            item, _, acked = await pipe.execute()
            if item is not None and int(acked) < 1:
                await self._confirm(client, pool)
        return None if item is None else str(item[1])

    @contextlib.asynccontextmanager
    async def _master_changes(self, pool: str) -> AsyncIterator[None]:
        """A moved slot or a lost master: forget the master's client and raise a retryable ConnectionError."""
        try:
            yield
        except ReplicationTimeoutError:
            raise
        except redis_errors.ResponseError as exc:
            if not topology_changed(exc):
                raise
            await self._forget_master(pool, exc)
            raise ConnectionError(str(exc)) from exc
        except (*TOPOLOGY, *TRANSIENT) as exc:
            await self._forget_master(pool, exc)
            raise ConnectionError(str(exc)) from exc

    async def _sync(self, client: Any, pool: str) -> None:
        """A write of our own and a WAIT for one replica; then `_confirm` if none answered."""
        if not await self._wait_once(client, pool):
            await self._confirm(client, pool)

    async def _wait_once(self, client: Any, pool: str) -> bool:
        """One pipeline: a write of our own, then WAIT for one replica; whether one confirmed it."""
        pipe = client.pipeline(transaction=False)
        pipe.set(sync_key(pool), "1")
        pipe.execute_command("WAIT", 1, self.replica_wait_ms)
        _, acked = await pipe.execute()
        return int(acked) >= 1

    async def _confirm(self, client: Any, pool: str) -> None:
        """WAIT again (after a fresh write of our own) until a replica confirms, for up to retry_seconds."""
        deadline = time.monotonic() + self.retry_seconds
        while True:
            if time.monotonic() >= deadline:
                raise ReplicationTimeoutError(
                    f"no replica of the master of pool {pool!r} at {self.url} confirmed a write within "
                    f"{self.retry_seconds:g}s (durability=replicated): the write is on the master only; "
                    "retry the call (it is idempotent) once a replica is back"
                )
            log.warning("pool %s: no replica confirmed the write within %d ms; waiting on", pool,
                        self.replica_wait_ms)  # fmt: skip
            if await self._wait_once(client, pool):
                return

    async def close(self) -> None:
        for name, client in list(self._masters.items()):
            with contextlib.suppress(Exception):
                await client.aclose()
            self._masters.pop(name, None)


def _changed(script: str, reply: Any) -> bool:
    """Whether a write script's reply tells the caller of a change a replica must confirm (an empty claim
    or reap only tidied up, which a lost write merely repeats)."""
    if script == "claim":
        return len(reply) > 2
    if script in ("reap", "cancel"):
        return int(reply) > 0  # a cancel that found the task ended or (withdrawing) claimed changed nothing
    return True
