"""A system and its floor measured in turns (`codeforge bench queue`) share the server's durability settings
and, in `replicated`, one replica: the second does not start another, and closing them in turn puts the
server back as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from codeforge.benchmarks.codeforge_system import CodeforgeReplicated
from codeforge.benchmarks.raw_floor import RawReplicatedConfirmed
from codeforge.benchmarks.system import BenchContext
from codeforge.testing.redis_server import LocalRedis

pytestmark = pytest.mark.redis


def _replicas(client: Any) -> int:
    return int(client.info("replication")["connected_slaves"])


async def test_a_replicated_pair_shares_one_replica_and_restores_the_server(tmp_path: Path) -> None:
    server = LocalRedis().start()
    client: Any = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        before = client.config_get("append*")
        ctx = BenchContext(url=server.url, queue="cfbench-pair", record_key="cfbench:rec", logdir=tmp_path)
        floor, ours = RawReplicatedConfirmed(ctx), CodeforgeReplicated(ctx)
        await floor.open()
        await ours.open()
        assert _replicas(client) == 1
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        await ours.close()
        assert _replicas(client) == 1  # the floor's, still in use by it
        await floor.close()
        assert _replicas(client) == 0
        after = client.config_get("append*")
        assert (after["appendonly"], after["appendfsync"]) == (before["appendonly"], before["appendfsync"])
    finally:
        client.close()
        server.stop()
