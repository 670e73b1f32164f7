"""Session-wide fixtures: private real Redis servers (single, 6-node cluster, TLS) on free local ports; each
test starts with validation's regex budget full (`cel_check._regex_budget`: process-wide, so tests that
compile many regexes would otherwise change what later ones check)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from codeforge.api import cel_check
from codeforge.testing.redis_server import LocalRedis, LocalRedisCluster
from support.tls import TLS_PASSWORD, make_server_tls


@pytest.fixture(autouse=True)
def full_regex_budget() -> None:
    budget = cel_check._regex_budget
    budget.left = budget.burst


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


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(server cert, server key, CA cert) from a throw-away CA, for 127.0.0.1."""
    return make_server_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_redis(tls_files: tuple[Path, Path, Path]) -> Iterator[LocalRedis]:
    """A redis-server that speaks TLS only and wants the password `support.tls.TLS_PASSWORD`."""
    server = LocalRedis(tls=tls_files, password=TLS_PASSWORD).start()
    yield server
    server.stop()
