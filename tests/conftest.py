"""Session-wide fixtures: private real Redis servers (single and 6-node cluster) on free local ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from codeforge.queue.local_server import LocalRedis, LocalRedisCluster


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One real redis-server for the whole session; tests isolate themselves with unique pool names."""
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster: 3 masters, 3 replicas."""
    cluster = LocalRedisCluster(masters=3, replicas=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    return redis_server.url


@pytest.fixture
def cluster_url(redis_cluster: LocalRedisCluster) -> str:
    return redis_cluster.url


@pytest.fixture
async def fresh_redis() -> AsyncIterator[LocalRedis]:
    """A private server for tests that kill or restart it; AOF with fsync always loses no write."""
    server = LocalRedis(appendonly=True, appendfsync="always").start()
    yield server
    server.stop()
