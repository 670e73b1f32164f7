"""A LangGraph checkpointer on plain Redis (no modules), safe on Redis Cluster.

Why our own: `langgraph-checkpoint-redis` needs RedisJSON and RediSearch; `langgraph-checkpoint-plainredis`
0.1.0 puts each checkpoint, blob and write under a key without a hash tag and bumps a global counter, so on a
cluster one checkpoint spans slots and its pipeline is not atomic (it passes the conformance suite on one
Redis 7.0, but on our 6-node cluster it fails 4 `put` tests and 1 `delete_thread` test). Here every key of
a thread shares the thread's hash tag (see `keys.py`) and one checkpoint write (or one task's writes) is one
Lua script: a crash never leaves a torn checkpoint. A task's writes wait briefly for the checkpoint that
follows them and go in its script (`pending.py`): one round trip per workflow step instead of two.

Checkpoint ids are LangGraph's time-ordered UUIDs, kept in a sorted set with equal scores, so lexical order
is creation order and "latest" / "before" are single range reads.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from codeforge.orchestrator.checkpoint.keys import ThreadKeys, registry_key
from codeforge.orchestrator.checkpoint.pending import LINGER_SECONDS, Key, PendingWrites
from codeforge.orchestrator.checkpoint.serde import CheckpointSerializer
from codeforge.redis import Script, ScriptPipeline

RedisClient = Redis | RedisCluster
DEFAULT_PREFIX = "cf:cp"
#: A thread read as empty is taken as still empty by the next read of it within this time: a run's start
#: reads its thread twice in a row (the runner, to tell a new run from a resumed one, then LangGraph's loop).
#: One orchestrator runs a workflow at a time, so nothing writes the thread in between.
ABSENT_MEMO_SECONDS = 0.5
ABSENT_MEMO_LIMIT = 4096
#: Threads whose latest stored checkpoint is remembered (`_waiting`).
STORED_LIMIT = 100_000


SCRIPTS = {
    name: Script.from_package("codeforge.orchestrator.checkpoint", name, prelude=prelude)
    for name, prelude in (("put_checkpoint", "writes"), ("put_writes", "writes"), ("delete_keys", ""))
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCheckpointSaver(BaseCheckpointSaver[str]):
    """Async checkpointer (`ainvoke`/`astream`); the sync API is not provided.

    It owns its client: `aclose()` (or `async with`) closes it, and `client` is there for records that
    live beside the checkpoints (e.g. large Workflow results), not for closing.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        serde: SerializerProtocol | None = None,
        writes_linger: float = LINGER_SECONDS,
    ) -> None:
        super().__init__(serde=serde or CheckpointSerializer())  # its fast path for fan-out writes
        self.client = client
        # redis-py types every command as `Awaitable[T] | T` (sync and async share stubs): treat it as Any.
        self._r: Any = client
        self.prefix = prefix
        self._registered: set[str] = set()  # threads this process already put in the registry
        self._cluster = isinstance(client, RedisCluster)
        #: one server: the scripts of one turn of the event loop (many runs' checkpoints) in one pipeline
        self._pipeline = None if self._cluster else ScriptPipeline(client)
        self._absent: dict[str, float] = {}  # thread id -> monotonic time a read found it empty
        self._writing: Counter[str] = Counter()  # thread id -> its checkpoint scripts in flight
        #: thread id -> the latest checkpoint id stored (of the threads written to lately), for `_waiting`
        self._stored: OrderedDict[str, str] = OrderedDict()
        self._pending = PendingWrites(self._put_writes, self._waiting, writes_linger)

    def _waiting(self, key: Key) -> bool:
        """Whether the checkpoint that follows writes of checkpoint `key` cannot have come yet: one of the
        thread's checkpoints is being written, or `key`'s own is not stored yet (ids sort by time)."""
        thread_id, _, checkpoint_id = key
        return thread_id in self._writing or self._stored.get(thread_id, checkpoint_id) < checkpoint_id

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self._pipeline is not None:
            return await self._pipeline.run(SCRIPTS[name], keys, args)
        return await SCRIPTS[name].run(self._r, keys, args)

    async def aclose(self) -> None:
        """Store the writes still held, close the connection (the saver is unusable after)."""
        try:
            await self._pending.flush()
            if self._pipeline is not None:
                await self._pipeline.drain()
        finally:
            await self.client.aclose()

    async def __aenter__(self) -> RedisCheckpointSaver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _keys(self, thread_id: str) -> ThreadKeys:
        return ThreadKeys(self.prefix, thread_id)

    # -- writes --------------------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), str(conf.get("checkpoint_ns", ""))
        self._absent.pop(thread_id, None)
        keys = self._keys(thread_id)
        values: dict[str, Any] = checkpoint["channel_values"]
        saved = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        ctype, cbytes = self.serde.dumps_typed(saved)
        mtype, mbytes = self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))
        record = ormsgpack.packb([ctype, cbytes, mtype, mbytes, conf.get("checkpoint_id")])
        # One server: the thread's first checkpoint registers it in the same script (a round trip less).
        register = thread_id not in self._registered and not self._cluster
        args: list[Any] = [ns, checkpoint["id"], record, len(new_versions), thread_id if register else ""]
        for channel, version in new_versions.items():
            typed = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
            args += [f"{channel}\x00{version}", ormsgpack.packb(list(typed))]
        script_keys = [keys.records(ns), keys.index(ns), keys.blobs(ns), keys.namespaces]
        parent = (thread_id, ns, str(conf.get("checkpoint_id")))
        held = self._pending.take(parent) if conf.get("checkpoint_id") else None
        if held is not None:  # the parent's writes, stored with their successor
            script_keys += [keys.writes(ns, parent[2]), keys.writes_keys]
            args += held.args
        if register:
            script_keys.append(registry_key(self.prefix))
        self._writing[thread_id] += 1
        try:
            if self._cluster:
                await self._register(thread_id)
            await self._script("put_checkpoint", script_keys, args)
            self._registered.add(thread_id)
            self._stored_now(thread_id, checkpoint["id"])
        except BaseException:
            if held is not None:  # the writes' fate is their own: they are stored alone
                self._pending.store_alone(parent, held)
            raise
        finally:
            self._writing[thread_id] -= 1
            if not self._writing[thread_id]:
                del self._writing[thread_id]
        if held is not None:
            held.settle(None)
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}
        }

    def _stored_now(self, thread_id: str, checkpoint_id: str) -> None:
        if checkpoint_id > self._stored.get(thread_id, ""):
            self._stored[thread_id] = checkpoint_id
        self._stored.move_to_end(thread_id)
        if len(self._stored) > STORED_LIMIT:
            self._stored.popitem(last=False)  # a thread long quiet: its writes just linger

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if not writes:
            return
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), str(conf.get("checkpoint_ns", ""))
        args: list[Any] = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            vtype, vbytes = self.serde.dumps_typed(value)
            packed = ormsgpack.packb([task_id, channel, vtype, vbytes, task_path, idx])
            args += ["nx" if idx >= 0 else "set", f"{task_id}\x00{idx}", packed]
        await self._pending.hold((thread_id, ns, str(conf["checkpoint_id"])), args)

    async def _put_writes(self, key: Key, args: list[Any]) -> None:
        """Held writes whose checkpoint did not follow in time, stored on their own."""
        thread_id, ns, checkpoint_id = key
        keys = self._keys(thread_id)
        await self._register(thread_id)
        await self._script("put_writes", [keys.writes(ns, checkpoint_id), keys.writes_keys], args)

    async def _register(self, thread_id: str) -> None:
        if thread_id not in self._registered:
            await self._r.sadd(registry_key(self.prefix), thread_id)
            self._registered.add(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._pending.flush(thread_id)  # else a held write would recreate a key after the delete
        self._absent.pop(thread_id, None)
        self._stored.pop(thread_id, None)
        keys = self._keys(thread_id)
        namespaces = [_text(n) for n in await self._r.smembers(keys.namespaces)]
        writes = [_text(k) for k in await self._r.smembers(keys.writes_keys)]
        doomed = [keys.namespaces, keys.writes_keys, *writes]
        for ns in namespaces:
            doomed += [keys.records(ns), keys.index(ns), keys.blobs(ns)]
        await self._script("delete_keys", doomed, [])
        await self._r.srem(registry_key(self.prefix), thread_id)
        self._registered.discard(thread_id)

    # -- reads ---------------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), str(conf.get("checkpoint_ns", ""))
        await self._pending.flush(thread_id)  # read what this process wrote, held writes included
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            read_empty = self._absent.pop(thread_id, None)
            if read_empty is not None and time.monotonic() - read_empty < ABSENT_MEMO_SECONDS:
                return None
            latest = await self._r.zrevrangebylex(self._keys(thread_id).index(ns), "+", "-", 0, 1)
            if not latest:
                if len(self._absent) >= ABSENT_MEMO_LIMIT:
                    del self._absent[next(iter(self._absent))]
                self._absent[thread_id] = time.monotonic()
                return None
            checkpoint_id = _text(latest[0])
        found = await self._load(thread_id, ns, checkpoint_id)
        if found is not None:  # a run resumed from it: its writes wait for its successor, not for it
            self._stored_now(thread_id, checkpoint_id)
        return found

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # noqa: A002 (the base class names it)
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        await self._pending.flush(str(config["configurable"]["thread_id"]) if config is not None else None)
        if config is not None:
            threads = [str(config["configurable"]["thread_id"])]
        else:
            registry = await self._r.smembers(registry_key(self.prefix))
            threads = sorted(_text(t) for t in registry)
        wanted_ns = config["configurable"].get("checkpoint_ns") if config else None
        wanted_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        remaining = limit
        for thread_id in threads:
            keys = self._keys(thread_id)
            if wanted_ns is not None:
                namespaces = [str(wanted_ns)]
            else:
                namespaces = sorted(_text(n) for n in await self._r.smembers(keys.namespaces))
            for ns in namespaces:
                upper = f"({before_id}" if before_id else "+"
                ids = [_text(i) for i in await self._r.zrevrangebylex(keys.index(ns), upper, "-")]
                for checkpoint_id in ids:
                    if wanted_id and checkpoint_id != wanted_id:
                        continue
                    if remaining is not None and remaining <= 0:
                        return
                    found = await self._load(thread_id, ns, checkpoint_id, filter)
                    if found is None:
                        continue
                    if remaining is not None:
                        remaining -= 1
                    yield found

    async def _load(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        filter: dict[str, Any] | None = None,  # noqa: A002
    ) -> CheckpointTuple | None:
        keys = self._keys(thread_id)
        raw = await self._r.hget(keys.records(ns), checkpoint_id)
        if raw is None:
            return None
        ctype, cbytes, mtype, mbytes, parent_id = ormsgpack.unpackb(raw)
        metadata = self.serde.loads_typed((mtype, mbytes))
        if filter and not all(metadata.get(k) == v for k, v in filter.items()):
            return None
        checkpoint: Checkpoint = self.serde.loads_typed((ctype, cbytes))
        versions = checkpoint["channel_versions"]
        channels = list(versions)
        blob_fields = [f"{ch}\x00{versions[ch]}" for ch in channels]
        blobs, raw_writes = await asyncio.gather(
            self._r.hmget(keys.blobs(ns), blob_fields) if blob_fields else _no_blobs(),
            self._r.hgetall(keys.writes(ns, checkpoint_id)),
        )
        values: dict[str, Any] = {}
        for channel, blob in zip(channels, blobs, strict=True):
            if blob is None:
                continue
            btype, bbytes = ormsgpack.unpackb(blob)
            if btype != "empty":
                values[channel] = self.serde.loads_typed((btype, bbytes))
        writes = sorted(
            (ormsgpack.unpackb(w) for w in raw_writes.values()),
            key=lambda w: writes_sort_key(w[4], w[0], w[5]),
        )

        def conf(cid: str) -> RunnableConfig:
            return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

        return CheckpointTuple(
            config=conf(checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=conf(parent_id) if parent_id else None,
            pending_writes=[(w[0], w[1], self.serde.loads_typed((w[2], w[3]))) for w in writes],
        )

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions sort as strings (as InMemorySaver's do): a zero-padded counter, a random tie-breaker."""
        current_v = 0 if current is None else int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"


async def _no_blobs() -> list[bytes | None]:
    return []
