"""TaskQueue on Redis (one server or a Redis Cluster).

Every multi-key change is one Lua script (`lua/*.lua`), so it is atomic, and every key of a pool carries
the pool's hash tag, so each script runs on one cluster slot. Idle consumers block in BLPOP on the pool's
wake-up list (one token per ready task), so an enqueue wakes exactly one of them with no polling; result
waiters are woken by Pub/Sub. Lost connections are retried with backoff; every operation is safe to retry.

Durability (`?durability=` on the URL, README "Durability"): `fast` waits for nothing; `fsync` checks at
connect that every node fsyncs each write before answering (appendfsync always); `replicated` checks that
too and sends every state-changing script with a WAIT for one replica on the same connection, so a call
returns only once a replica holds its write and a failover cannot take back what a caller was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from codeforge.api.task import QueueStats, Task, TaskOutcome, TaskState, validate_pool_name
from codeforge.queue.base import DEFAULT_RESULT_TTL_SECONDS, Lease, check_max_tasks, claim_lease_ms
from codeforge.queue.errors import (
    LeaseLostError,
    QueueConfigError,
    QueueError,
    QueueUnavailableError,
    ReplicationTimeoutError,
    TaskCancelledError,
    TaskNotFoundError,
)
from codeforge.queue.factory import check_url, durability_of, password_from_env
from codeforge.queue.keys import done_channel, pool_from_channel, pool_prefix, sync_key, task_key, wake_key
from codeforge.queue.scripts import SCRIPT_NAMES, script_source

log = logging.getLogger(__name__)
T = TypeVar("T")
Client = Redis | RedisCluster

#: Errors after which the same call is retried on a fresh connection.
TRANSIENT = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    ConnectionError,
    OSError,
)
#: Longest single blocking wait; a claim with no timeout re-arms it (no busy loop).
MAX_BLOCK_SECONDS = 30.0
#: Items per script call in batch operations, so one script never blocks Redis for long.
BATCH = 500
#: Scripts that change what a caller is told; with durability=replicated each returns only after a WAIT.
WRITE_SCRIPTS = frozenset(
    {"enqueue", "claim", "complete", "fail", "release", "heartbeat", "cancel", "requeue_dead", "reap"}
)
#: Errors after which a cluster's slot map is stale (a failover moved the slot): refresh it, then retry.
TOPOLOGY = (redis_errors.MovedError, redis_errors.AskError, redis_errors.ReadOnlyError)


def client_options(url: str, password: str | None) -> tuple[list[tuple[str, int]], dict[str, Any], bool]:
    """(hosts, redis-py options, cluster?) from a queue URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    userinfo, _, hostlist = netloc.rpartition("@")
    username = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or password
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "6379")
        hosts.append((host or "127.0.0.1", int(port or 6379)))
    options: dict[str, Any] = {
        "password": password,
        "username": username,
        "decode_responses": True,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 0,
    }
    query = dict(parse_qsl(parts.query))
    if scheme.startswith("rediss"):
        options["ssl"] = True
        # Verify the server against the system CAs (or ssl_ca_certs) unless the URL opts out explicitly.
        options["ssl_cert_reqs"] = query.get("ssl_cert_reqs", "required")
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if key in query:
                if not os.path.isfile(query[key]):
                    raise QueueConfigError(
                        f"queue URL option {key}={query[key]!r} names no readable file: "
                        "point it at the mounted certificate (e.g. /etc/codeforge/redis-tls/ca.crt)"
                    )
                options[key] = query[key]
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise QueueConfigError(f"queue URL database {db!r} must be a number, e.g. redis://host:6379/0")
        options["db"] = int(db)
    return hosts, options, scheme.endswith("+cluster")


class _ResultWatcher:
    """Resolves `wait_result` futures from the pools' `done` Pub/Sub channels (one subscription per pool)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Redis]],
        fetch: Callable[[str, str], Awaitable[TaskOutcome | None]],
    ):
        self._connect = connect
        self._fetch = fetch
        self._waiters: dict[tuple[str, str], list[asyncio.Future[TaskOutcome]]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._client: Redis | None = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def watch(self, pool: str, task_id: str) -> asyncio.Future[TaskOutcome]:
        future: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((pool, task_id), []).append(future)
        channel = done_channel(pool)
        async with self._lock:
            if self._pubsub is None:
                await self._open()
            if channel not in self._confirmed:
                self._confirmed[channel] = asyncio.Event()
                await self._pubsub.subscribe(channel)
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen(), name="codeforge-result-watcher")
        # Read the task only once the subscription is live, so a completion cannot slip between the two.
        await self._confirmed[channel].wait()
        return future

    def forget(self, pool: str, task_id: str, future: asyncio.Future[TaskOutcome]) -> None:
        waiters = self._waiters.get((pool, task_id), [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._waiters.pop((pool, task_id), None)

    async def _open(self) -> None:
        self._client = await self._connect()
        self._pubsub = self._client.pubsub()

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(timeout=MAX_BLOCK_SECONDS)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection: reconnect, resubscribe, re-check every waiter
                log.warning("result channel lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "subscribe":
                event = self._confirmed.get(channel)
                if event:
                    event.set()
            elif kind == "message":
                self._deliver(pool_from_channel(channel), message["data"])

    async def _reconnect(self) -> None:
        async with self._lock:
            old = self._pubsub
            self._pubsub = None
            if old is not None:
                try:
                    await old.aclose()
                except Exception:  # already broken
                    log.debug("closing the broken pubsub failed", exc_info=True)
            try:
                self._client = await self._connect()
                self._pubsub = self._client.pubsub()
                for channel in self._confirmed:
                    await self._pubsub.subscribe(channel)
            except Exception as exc:
                self._pubsub = _BrokenPubSub(exc)
                return
        # Messages published while we were away are gone: read the state of everything still awaited.
        for pool, task_id in list(self._waiters):
            try:
                outcome = await self._fetch(pool, task_id)
            except Exception:
                continue
            if outcome is not None and outcome.state.terminal:
                self._resolve(pool, task_id, outcome)

    def _deliver(self, pool: str, data: str) -> None:
        task_id, state, attempts, consumer, error, result = data.split("\0", 5)
        if (pool, task_id) not in self._waiters:
            return
        outcome = TaskOutcome(
            id=task_id,
            pool=pool,
            state=TaskState(state),
            result=json.loads(result) if result else None,
            error=error or None,
            attempts=int(attempts),
            consumer=consumer or None,
        )
        self._resolve(pool, task_id, outcome)

    def _resolve(self, pool: str, task_id: str, outcome: TaskOutcome) -> None:
        for future in self._waiters.pop((pool, task_id), []):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._pubsub is not None and not isinstance(self._pubsub, _BrokenPubSub):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._client.aclose()


class _BrokenPubSub:
    """Stands in for a pubsub whose reconnect failed, so the listener retries."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def get_message(self, timeout: float) -> None:
        raise self.exc

    async def subscribe(self, channel: str) -> None:
        raise self.exc

    async def aclose(self) -> None:
        return None


class RedisTaskQueue:
    """TaskQueue backed by Redis. Build it with `await RedisTaskQueue.connect(url)` or `open_queue(url)`."""

    def __init__(
        self,
        client: Client,
        *,
        url: str,
        pubsub_connect: Callable[[], Awaitable[Redis]],
        retry_seconds: float = 30.0,
        result_ttl: int = DEFAULT_RESULT_TTL_SECONDS,
        durability: str = "fast",
        replica_wait: float = 1.0,
        node_options: dict[str, Any] | None = None,
    ) -> None:
        # redis-py types every command as `Awaitable[T] | T` (sync and async share stubs): treat it as Any.
        self._r: Any = client
        self.url = url
        self.cluster = isinstance(client, RedisCluster)
        self.retry_seconds = retry_seconds
        self.result_ttl = result_ttl
        self.durability = durability_of(url, durability)
        #: One WAIT's timeout; a write is re-confirmed with further WAITs for up to retry_seconds.
        self.replica_wait_ms = max(int(replica_wait * 1000), 1)
        self._node_options = node_options or {}
        #: durability=replicated on a cluster: one plain client per master, so a script and its WAIT share
        #: a connection (the cluster client may send a keyless WAIT anywhere).
        self._masters: dict[str, Redis] = {}
        self._sources = {name: script_source(name) for name in SCRIPT_NAMES}
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._sources.items()}
        self._watcher = _ResultWatcher(pubsub_connect, self.get)

    # -- connecting --------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        retry_seconds: float = 30.0,
        result_ttl: int = DEFAULT_RESULT_TTL_SECONDS,
        durability: str | None = None,
        replica_wait: float = 1.0,
    ) -> RedisTaskQueue:
        check_url(url)
        mode = durability_of(url, durability)
        hosts, options, cluster = client_options(url, password_from_env())
        safe_url = _redact(url)
        tuning: dict[str, Any] = {
            "retry_seconds": retry_seconds,
            "result_ttl": result_ttl,
            "durability": mode,
            "replica_wait": replica_wait,
            "node_options": options,
        }
        if not cluster:
            single = Redis(host=hosts[0][0], port=hosts[0][1], **options)
            try:
                info = await single.info("cluster")
            except (*TRANSIENT, redis_errors.RedisError) as exc:
                await single.aclose()
                auth = _auth_problem(safe_url, exc, options.get("password"))
                if auth:
                    raise auth from None
                if isinstance(exc, redis_errors.ResponseError):
                    raise QueueError(f"Redis at {safe_url} answered: {exc}") from None
                raise QueueUnavailableError(
                    f"cannot reach Redis at {safe_url}: {_sentence(exc)} Check the host and port, that "
                    "redis-server runs there, and for TLS use rediss://"
                ) from None
            if not info.get("cluster_enabled"):

                async def single_pubsub() -> Redis:
                    return Redis(host=hosts[0][0], port=hosts[0][1], **options)

                return await cls(single, url=safe_url, pubsub_connect=single_pubsub, **tuning)._checked()
            await single.aclose()  # a cluster node behind a plain URL: talk to the cluster
        options.pop("db", None)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            require_full_coverage=True,
            **options,
        )
        try:
            await client.initialize()
        except (*TRANSIENT, redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
            await client.aclose()
            auth = _auth_problem(safe_url, exc, options.get("password"))
            if auth:
                raise auth from None
            raise QueueUnavailableError(
                f"cannot reach Redis Cluster at {safe_url}: {_sentence(exc)} Check the node addresses and "
                "that the cluster is formed (redis-cli --cluster check)"
            ) from None

        async def cluster_pubsub() -> Redis:
            # Classic PUBLISH reaches every node of a cluster, so any reachable node will do.
            nodes = client.get_nodes() or [ClusterNode(h, p) for h, p in hosts]
            random.shuffle(nodes)
            last: Exception | None = None
            for node in nodes:
                candidate = Redis(host=node.host, port=node.port, **options)
                try:
                    await candidate.ping()
                    return candidate
                except TRANSIENT as exc:
                    last = exc
                    await candidate.aclose()
            raise QueueUnavailableError(f"no Redis Cluster node answers: {last}")

        return await cls(client, url=safe_url, pubsub_connect=cluster_pubsub, **tuning)._checked()

    async def _checked(self) -> RedisTaskQueue:
        try:
            await self._check_durability()
        except BaseException:
            await self.close()
            raise
        return self

    async def _check_durability(self) -> None:
        """fsync and replicated: every node must fsync each write, or the mode would promise what the
        servers do not keep (QueueConfigError naming the fix); a master without a replica is logged."""
        if self.durability == "fast":
            return
        nodes: list[tuple[str, Any, bool]] = (
            [(n.name, n, n.server_type == "primary") for n in self._r.get_nodes()]
            if self.cluster
            else [(self.url, None, True)]
        )
        fix = (
            "set appendonly yes and appendfsync always (the chart's redis.durability does), or use "
            "durability=fast and accept losing up to a second of acknowledged writes in a crash"
        )
        for name, node, master in nodes:
            target = {"target_nodes": node} if node is not None else {}
            try:
                config = await self._r.config_get("append*", **target)
            except redis_errors.ResponseError as exc:  # CONFIG renamed or not permitted (managed Redis)
                log.warning("cannot check appendfsync on %s (%s): durability=%s assumes it", name, exc,
                            self.durability)  # fmt: skip
                continue
            except (*TRANSIENT, redis_errors.RedisError) as exc:
                raise QueueUnavailableError(f"cannot read the configuration of Redis {name}: {exc}") from exc
            if (config.get("appendonly"), config.get("appendfsync")) != ("yes", "always"):
                raise QueueConfigError(
                    f"durability={self.durability} needs every Redis node to fsync each write, but {name} "
                    f"has appendonly {config.get('appendonly')} and appendfsync {config.get('appendfsync')}: "
                    f"{fix}"
                )
            if self.durability == "replicated" and master:
                info = await self._r.info("replication", **target)
                if int(info.get("connected_slaves", 0)) < 1:
                    # Possibly for a moment (a replica restarting, a failover): writes wait for one to come.
                    log.warning(
                        "durability=replicated: %s has no replica connected; every write waits up to %gs "
                        "for one (add replicas, e.g. redis.mode cluster with replicasPerMaster >= 1, or use "
                        "durability=fsync)",
                        name,
                        self.retry_seconds,
                    )

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying transient failures with capped exponential backoff for retry_seconds."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.02
        while True:
            try:
                return await call()
            except ReplicationTimeoutError:
                raise  # already waited retry_seconds for a replica
            except TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise QueueUnavailableError(
                        f"Redis at {self.url} unreachable for {self.retry_seconds:g}s: {exc}"
                    ) from exc
                log.warning("redis call failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    async def _script(self, name: str, pool: str, *args: Any) -> Any:
        prefix = pool_prefix(pool)
        if self.durability == "replicated" and name in WRITE_SCRIPTS:
            return await self._retrying(functools.partial(self._replicated, name, pool, args))

        async def call() -> Any:
            try:
                return await self._r.evalsha(self._shas[name], 1, prefix, *args)
            except redis_errors.NoScriptError:
                return await self._r.eval(self._sources[name], 1, prefix, *args)

        return await self._retrying(call)

    # -- durability=replicated --------------------------------------------------------------------

    async def _master(self, pool: str) -> Any:
        """The client whose connection reaches the master of the pool's slot."""
        if not self.cluster:
            return self._r
        node = self._r.get_node_from_key(pool_prefix(pool))
        client = self._masters.get(node.name)
        if client is None:
            client = self._masters[node.name] = Redis(host=node.host, port=node.port, **self._node_options)
        return client

    async def _forget_master(self, pool: str, exc: Exception) -> None:
        """After a failover: drop the old master's client and refresh the slot map, for the retry."""
        if not self.cluster:
            return
        for name, client in list(self._masters.items()):
            with contextlib.suppress(Exception):
                await client.aclose()
            self._masters.pop(name, None)
        with contextlib.suppress(Exception):  # the cluster may still be electing; the retry tries again
            await self._r.nodes_manager.initialize()
        log.warning("pool %s: the slot's master changed or is unreachable (%s); retrying", pool, exc)

    async def _replicated(self, name: str, pool: str, args: tuple[Any, ...]) -> Any:
        """Run a write script, then WAIT for one replica on the same connection (one pipeline)."""
        prefix = pool_prefix(pool)
        client = await self._master(pool)

        async def send(command: str, script: str) -> tuple[Any, int]:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(command, script, 1, prefix, *args)
            # A script that found its work done (a retried complete) writes nothing, and WAIT only covers
            # this connection's own writes: this one comes after whatever the script or its earlier try did.
            pipe.set(sync_key(pool), "1")
            pipe.execute_command("WAIT", 1, self.replica_wait_ms)
            reply, _, acked = await pipe.execute()
            return reply, int(acked)

        try:
            try:
                reply, acked = await send("EVALSHA", self._shas[name])
            except redis_errors.NoScriptError:
                reply, acked = await send("EVAL", self._sources[name])
            if acked < 1 and _changed(name, reply):
                await self._confirm(client, pool)
        except ReplicationTimeoutError:
            raise
        except redis_errors.ResponseError as exc:
            if not _topology_changed(exc):
                raise
            await self._forget_master(pool, exc)
            raise ConnectionError(str(exc)) from exc
        except (*TOPOLOGY, *TRANSIENT) as exc:
            await self._forget_master(pool, exc)
            raise ConnectionError(str(exc)) from exc
        return reply

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
            pipe = client.pipeline(transaction=False)
            pipe.set(sync_key(pool), "1")
            pipe.execute_command("WAIT", 1, self.replica_wait_ms)
            _, acked = await pipe.execute()
            if int(acked) >= 1:
                return

    # -- producing ---------------------------------------------------------------------------------

    async def enqueue(self, task: Task) -> bool:
        return (await self.enqueue_many([task]))[0]

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        by_pool: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            by_pool.setdefault(task.pool, []).append(index)
        added = [False] * len(tasks)
        for pool, indexes in by_pool.items():
            for start in range(0, len(indexes), BATCH):
                chunk = indexes[start : start + BATCH]
                args: list[Any] = [len(chunk)]
                for index in chunk:
                    task = tasks[index]
                    args += [
                        task.id,
                        int(task.priority),
                        task.max_attempts,
                        int(task.lease_seconds * 1000),
                        task.model_dump_json(),
                        task.max_lost_leases,
                        int(task.lost_lease_backoff_seconds * 1000),
                    ]
                flags = await self._script("enqueue", pool, *args)
                for index, flag in zip(chunk, flags, strict=True):
                    added[index] = bool(flag)
        return added

    # -- consuming ---------------------------------------------------------------------------------

    async def claim(
        self, pool: str, consumer: str, timeout: float | None = 0.0, *, lease_seconds: float | None = None
    ) -> Lease | None:
        leases = await self.claim_many(pool, consumer, 1, timeout, lease_seconds=lease_seconds)
        return leases[0] if leases else None

    async def claim_many(
        self,
        pool: str,
        consumer: str,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        lease_seconds: float | None = None,
    ) -> list[Lease]:
        validate_pool_name(pool)
        check_max_tasks(max_tasks)
        lease_ms = claim_lease_ms(lease_seconds)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        reply = await self._script("claim", pool, consumer, max_tasks, lease_ms)
        while True:
            if len(reply) > 2:
                return self._leases(pool, consumer, reply)
            wait = MAX_BLOCK_SECONDS if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return []
            now_ms, next_due_ms = int(reply[0]), int(reply[1])
            if next_due_ms >= 0:
                wait = min(wait, max((next_due_ms - now_ms) / 1000.0, 0.0) + 0.002)
            # Block until an enqueue pushes a wake-up token (or a retry / lease expiry is due), then claim.
            reply = await self._wait_and_claim(pool, consumer, max_tasks, lease_ms, max(wait, 0.01))

    async def _wait_and_claim(
        self, pool: str, consumer: str, max_tasks: int, lease_ms: int, block: float
    ) -> Any:
        if self.cluster or self.durability == "replicated":
            await self._retrying(functools.partial(self._r.blpop, [wake_key(pool)], timeout=block))
            return await self._script("claim", pool, consumer, max_tasks, lease_ms)

        # One server: BLPOP and the claim go out in one pipeline. Redis runs the claim as soon as BLPOP
        # returns, on the same connection, so a woken consumer gets its task one round trip sooner.
        async def call() -> Any:
            pipe = self._r.pipeline(transaction=False)
            pipe.blpop([wake_key(pool)], timeout=block)
            pipe.evalsha(self._shas["claim"], 1, pool_prefix(pool), consumer, max_tasks, lease_ms)
            try:
                return (await pipe.execute())[1]
            except redis_errors.NoScriptError:  # the server restarted and lost its script cache
                return await self._r.eval(
                    self._sources["claim"], 1, pool_prefix(pool), consumer, max_tasks, lease_ms
                )

        return await self._retrying(call)

    @staticmethod
    def _leases(pool: str, consumer: str, reply: list[Any]) -> list[Lease]:
        leases = []
        for i in range(2, len(reply), 5):
            data = json.loads(reply[i + 1])
            data["attempts"] = int(reply[i + 2])
            leases.append(
                Lease(
                    task=Task.model_validate(data),
                    fence=int(reply[i + 3]),
                    consumer=consumer,
                    expires_at=int(reply[i + 4]) / 1000.0,
                )
            )
        return leases

    @staticmethod
    def _refusal(code: str, lease: Lease) -> LeaseLostError:
        if code == "cancelled":
            return TaskCancelledError(f"task {lease.id!r} of pool {lease.pool!r} was cancelled")
        if code == "gone":
            return LeaseLostError(f"task {lease.id!r} of pool {lease.pool!r} no longer exists")
        return LeaseLostError(
            f"lease on task {lease.id!r} (fence {lease.fence}) is stale: it expired or another consumer "
            "claimed the task; nothing was recorded"
        )

    async def heartbeat(self, lease: Lease) -> Lease:
        reply = await self._script("heartbeat", lease.pool, lease.id, lease.fence)
        if reply[0] != "ok":
            raise self._refusal(reply[0], lease)
        return Lease(
            task=lease.task, fence=lease.fence, consumer=lease.consumer, expires_at=int(reply[1]) / 1000.0
        )

    async def complete(self, lease: Lease, result: Any = None) -> None:
        refusal = (await self.complete_many([(lease, result)]))[0]
        if refusal is not None:
            raise refusal

    async def complete_many(self, items: Sequence[tuple[Lease, Any]]) -> list[LeaseLostError | None]:
        out: list[LeaseLostError | None] = []
        by_pool: dict[str, list[tuple[Lease, Any]]] = {}
        for item in items:
            by_pool.setdefault(item[0].pool, []).append(item)
        refusals: dict[tuple[str, str, int], LeaseLostError | None] = {}
        for pool, pool_items in by_pool.items():
            for start in range(0, len(pool_items), BATCH):
                chunk = pool_items[start : start + BATCH]
                args: list[Any] = [self.result_ttl, len(chunk)]
                for lease, result in chunk:
                    args += [lease.id, lease.fence, _encode_result(result)]
                codes = await self._script("complete", pool, *args)
                for (lease, _), code in zip(chunk, codes, strict=True):
                    refusals[(pool, lease.id, lease.fence)] = (
                        None if code == "ok" else self._refusal(code, lease)
                    )
        for lease, _ in items:
            out.append(refusals[(lease.pool, lease.id, lease.fence)])
        return out

    async def fail(
        self, lease: Lease, error: str, *, retryable: bool = True, retry_delay: float = 0.0
    ) -> TaskState:
        error = (error or "failed").replace("\0", " ")[:8192]
        reply = await self._script(
            "fail", lease.pool, lease.id, lease.fence, error, 1 if retryable else 0,
            int(max(retry_delay, 0.0) * 1000), self.result_ttl,
        )  # fmt: skip
        if reply.startswith("refused:"):
            raise self._refusal(reply.removeprefix("refused:"), lease)
        return TaskState(reply)

    async def release(self, lease: Lease, *, started: bool = False, reason: str = "") -> TaskState:
        reason = (reason or "interrupted").replace("\0", " ")[:8192]
        reply = await self._script("release", lease.pool, lease.id, lease.fence, 1 if started else 0, reason)
        if reply not in ("queued", "dead"):
            raise self._refusal(reply, lease)
        return TaskState(reply)

    async def cancel(self, pool: str, task_id: str, reason: str = "cancelled") -> bool:
        validate_pool_name(pool)
        reason = (reason or "cancelled").replace("\0", " ")
        return bool(await self._script("cancel", pool, task_id, reason, self.result_ttl))

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, pool: str, task_id: str) -> TaskOutcome | None:
        validate_pool_name(pool)
        key = task_key(pool, task_id)
        state, attempts, result, error, consumer = await self._retrying(
            lambda: self._r.hmget(key, ["state", "attempts", "result", "error", "consumer"])
        )
        if state is None:
            return None
        return TaskOutcome(
            id=task_id,
            pool=pool,
            state=TaskState(state),
            result=json.loads(result) if result else None,
            error=error or None,
            attempts=int(attempts or 0),
            consumer=consumer or None,
        )

    async def wait_result(self, pool: str, task_id: str, timeout: float | None = None) -> TaskOutcome:
        validate_pool_name(pool)
        future = await self._retrying(lambda: self._watcher.watch(pool, task_id))
        try:
            outcome = await self.get(pool, task_id)
            if outcome is None:
                raise TaskNotFoundError(f"no task {task_id!r} in pool {pool!r}")
            if outcome.state.terminal:
                return outcome
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"task {task_id!r} of pool {pool!r} did not finish within {timeout}s"
                ) from None
        finally:
            self._watcher.forget(pool, task_id, future)

    async def stats(self, pool: str) -> QueueStats:
        validate_pool_name(pool)
        ready, delayed, in_flight, dead, age_ms = await self._script("stats", pool)
        return QueueStats(
            pool=pool,
            queued=int(ready),
            delayed=int(delayed),
            in_flight=int(in_flight),
            dead=int(dead),
            oldest_age_seconds=max(int(age_ms), 0) / 1000.0,
        )

    async def dead_letters(self, pool: str, limit: int = 100) -> list[TaskOutcome]:
        validate_pool_name(pool)
        ids = await self._retrying(lambda: self._r.zrange(pool_prefix(pool) + "dead", 0, limit - 1))
        outcomes = [await self.get(pool, task_id) for task_id in ids]
        return [o for o in outcomes if o is not None]

    async def requeue_dead(self, pool: str, task_id: str) -> bool:
        validate_pool_name(pool)
        return bool(await self._script("requeue_dead", pool, task_id))

    async def reap(self, pool: str) -> int:
        validate_pool_name(pool)
        return int(await self._script("reap", pool))

    async def set_consumer_state(self, pool: str, consumer: str, state: str, ttl: float) -> None:
        validate_pool_name(pool)
        if not consumer or "|" in state:
            raise ValueError("consumer must be non-empty and state must not contain '|'")
        await self._script("consumers", pool, consumer, state, int(ttl * 1000))

    async def consumer_states(self, pool: str) -> dict[str, str]:
        validate_pool_name(pool)
        flat = await self._script("consumers", pool, "", "", 0)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except TRANSIENT as exc:
            raise QueueUnavailableError(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._watcher.close()
        for client in self._masters.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        await self._r.aclose()


def _topology_changed(exc: redis_errors.ResponseError) -> bool:
    """A plain client talking to a cluster node gets MOVED/ASK/CLUSTERDOWN/TRYAGAIN as a bare ResponseError
    (the pipeline prefixes its own text): the slot moved, so refresh the map and retry."""
    text = str(exc)
    return any(
        f"'{code}" in text or text.startswith(code) for code in ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
    )


def _changed(script: str, reply: Any) -> bool:
    """Whether a write script's reply tells the caller of a change a replica must confirm (an empty claim
    or reap only tidied up, which a lost write merely repeats)."""
    if script == "claim":
        return len(reply) > 2
    if script == "reap":
        return int(reply) > 0
    return True


def _auth_problem(url: str, exc: BaseException, password: str | None) -> QueueConfigError | None:
    """A clear configuration error when `exc` (or what it wraps: redis-py's cluster client wraps the
    first node's error) is an authentication failure; None otherwise."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(e) for e in chain)
    auth_markers = ("NOAUTH", "Authentication required", "WRONGPASS", "invalid username-password")
    if not any(isinstance(e, redis_errors.AuthenticationError) for e in chain) and not any(
        marker in text for marker in auth_markers
    ):
        return None
    where = (
        "set it in the URL (redis://:PASSWORD@host:port), CODEFORGE_REDIS_PASSWORD "
        "or CODEFORGE_REDIS_PASSWORD_FILE"
    )
    if not password or "required" in text.lower():
        return QueueConfigError(f"Redis at {url} requires a password: {where}")
    return QueueConfigError(f"Redis at {url} refused the password ({text}): {where}")


def _sentence(exc: BaseException) -> str:
    """An error's text ending in exactly one full stop (redis-py's messages sometimes end in one)."""
    return str(exc).rstrip(". ") + "."


def _encode_result(result: Any) -> str:
    try:
        return json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task result must be JSON-serialisable: {exc}") from exc


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)
