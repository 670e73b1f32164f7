"""The Redis checkpointer against langgraph-checkpoint-conformance, on one server and on a 6-node cluster,
plus the properties the suite does not check: hash-tagged keys, one slot per thread."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from redis.asyncio.cluster import RedisCluster

from codeforge.orchestrator.checkpoint import RedisCheckpointSaver, connect_redis

pytestmark = [pytest.mark.redis]


async def conformance(url: str) -> None:
    prefix = f"cf:cp:test-{uuid.uuid4().hex[:8]}"  # isolates this run's keys on the shared server

    @checkpointer_test(name=f"RedisCheckpointSaver@{url.split('://')[0]}")
    async def saver() -> AsyncIterator[RedisCheckpointSaver]:
        client = await connect_redis(url)
        try:
            yield RedisCheckpointSaver(client, prefix=prefix)
        finally:
            await client.aclose()

    report = await validate(saver)
    failures = {name: result.failures for name, result in report.results.items() if result.passed is False}
    assert not failures, failures
    base = {"put", "put_writes", "get_tuple", "list", "delete_thread"}
    assert {name for name, r in report.results.items() if r.passed} >= base


async def test_conformance_single_server(redis_url: str) -> None:
    await conformance(redis_url)


@pytest.mark.cluster
async def test_conformance_cluster(cluster_url: str) -> None:
    await conformance(cluster_url)


@pytest.mark.cluster
async def test_one_thread_lives_in_one_cluster_slot(cluster_url: str) -> None:
    client = await connect_redis(cluster_url)
    assert isinstance(client, RedisCluster)
    prefix = f"cf:cp:slot-{uuid.uuid4().hex[:8]}"
    saver = RedisCheckpointSaver(client, prefix=prefix)
    config: RunnableConfig = {"configurable": {"thread_id": "wf-1234", "checkpoint_ns": ""}}
    try:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"a": 1, "b": [1, 2]}
        checkpoint["channel_versions"] = {"a": "1", "b": "1"}
        saved = await saver.aput(config, checkpoint, {"source": "input", "step": -1}, {"a": "1", "b": "1"})
        await saver.aput_writes(saved, [("a", 2), ("b", [3])], task_id="t1")
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        thread_keys = [k for k in keys if b"{wf-1234}" in k]
        assert len(thread_keys) >= 5, keys  # records, index, blobs, namespaces, writes, writes registry
        assert len({client.keyslot(k) for k in thread_keys}) == 1
        loaded = await saver.aget_tuple(config)
        assert loaded is not None
        assert loaded.checkpoint["channel_values"] == {"a": 1, "b": [1, 2]}
        assert [(w[1], w[2]) for w in loaded.pending_writes or []] == [("a", 2), ("b", [3])]
    finally:
        await saver.adelete_thread("wf-1234")
        assert [k async for k in client.scan_iter(match=f"{prefix}:{{wf-1234}}*")] == []
        await client.aclose()
