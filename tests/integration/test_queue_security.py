"""Password authentication and TLS (`rediss://`) against real redis-server processes.

The TLS certificates come from the `openssl` CLI: a throwaway CA and a server certificate for 127.0.0.1,
made in a temporary directory for this module only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from codeforge.api.task import TaskState
from codeforge.queue import QueueConfigError, QueueError, QueueUnavailableError, TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis, LocalRedisCluster, free_port
from support.tasks import make_task, unique_pool
from support.tls import TLS_PASSWORD, make_ca

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-Pw_0"
PASSWORD_VARS = ("CODEFORGE_REDIS_PASSWORD", "CODEFORGE_REDIS_PASSWORD_FILE")


@pytest.fixture(autouse=True)
def no_password_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the password variables it needs; none leak in from the developer's shell."""
    for name in PASSWORD_VARS:
        monkeypatch.delenv(name, raising=False)


async def round_trip(queue: TaskQueue) -> None:
    """Enqueue, claim, complete and await the result: proves commands and the result channel both work."""
    pool = unique_pool()
    await queue.enqueue(make_task(pool, "secure", payload={"q": "?"}))
    lease = await queue.claim(pool, "agent", timeout=2)
    assert lease is not None
    await queue.complete(lease, {"a": "!"})
    outcome = await queue.wait_result(pool, "secure", timeout=5)
    assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, {"a": "!"})


async def open_and_check(url: str) -> None:
    queue = await open_queue(url)
    try:
        await round_trip(queue)
    finally:
        await queue.close()


# --- passwords ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[LocalRedis]:
    server = LocalRedis(password=PASSWORD).start()
    yield server
    server.stop()


def plain_url(server: LocalRedis) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


async def test_password_in_the_url(locked_redis: LocalRedis) -> None:
    assert f":{PASSWORD}@" in locked_redis.url
    await open_and_check(locked_redis.url)


async def test_password_from_env_variable(locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", PASSWORD)
    await open_and_check(plain_url(locked_redis))


async def test_password_from_a_mounted_secret_file(
    locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD_FILE", str(secret))
    await open_and_check(plain_url(locked_redis))


async def test_password_in_the_url_wins_over_the_env(
    locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", "stale-password")
    await open_and_check(locked_redis.url)


async def test_missing_password_says_where_to_put_it(locked_redis: LocalRedis) -> None:
    with pytest.raises(QueueConfigError) as info:
        await open_queue(plain_url(locked_redis))
    message = str(info.value)
    assert "requires a password" in message
    for place in ("URL", *PASSWORD_VARS):
        assert place in message


async def test_wrong_password_is_refused_without_echoing_it(locked_redis: LocalRedis) -> None:
    with pytest.raises(QueueConfigError) as info:
        await open_queue(f"redis://:not-the-password@127.0.0.1:{locked_redis.port}/0")
    message = str(info.value)
    assert "refused the password" in message
    assert "not-the-password" not in message, "credentials must never reach logs"


async def test_wrong_password_from_env_is_refused(
    locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", "guess")
    with pytest.raises(QueueConfigError, match="refused the password"):
        await open_queue(plain_url(locked_redis))


async def test_unreadable_password_file_is_a_config_error(
    locked_redis: LocalRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(QueueConfigError, match=r"CODEFORGE_REDIS_PASSWORD_FILE=.* cannot be read"):
        await open_queue(plain_url(locked_redis))


async def test_unreachable_url_does_not_leak_its_password() -> None:
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    assert "hunter2-secret" not in str(info.value)


@pytest.mark.cluster
@pytest.mark.slow
async def test_password_on_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = LocalRedisCluster(masters=3, replicas=1, password=PASSWORD)
    try:
        cluster.start()
        await open_and_check(cluster.url)
        port = cluster.nodes[0].port
        with pytest.raises(QueueConfigError, match="password"):
            await open_queue(f"redis+cluster://127.0.0.1:{port}")
        monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", PASSWORD)
        await open_and_check(f"redis+cluster://127.0.0.1:{port}")
    finally:
        cluster.stop()


# --- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture
async def plain_redis() -> AsyncIterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.stop()


def tls_url(server: LocalRedis, ca: Path | None, password: str | None = TLS_PASSWORD) -> str:
    auth = f":{password}@" if password else ""
    query = f"?ssl_ca_certs={ca}" if ca else ""
    return f"rediss://{auth}127.0.0.1:{server.port}/0{query}"


async def test_tls_with_the_ca_verifies_and_works(
    tls_redis: LocalRedis, tls_files: tuple[Path, Path, Path]
) -> None:
    assert tls_redis.url.startswith("rediss://")
    await open_and_check(tls_url(tls_redis, tls_files[2]))


async def test_tls_with_password_from_env(
    tls_redis: LocalRedis, tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_PASSWORD", TLS_PASSWORD)
    await open_and_check(tls_url(tls_redis, tls_files[2], password=None))


async def test_tls_with_a_foreign_ca_is_refused(tls_redis: LocalRedis, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "somebody-else")
    start = time.monotonic()
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue(tls_url(tls_redis, other_ca))
    assert time.monotonic() - start < 15
    assert "certificate verify failed" in str(info.value)


async def test_tls_verifies_by_default(tls_redis: LocalRedis) -> None:
    # Without a CA the system trust store applies; a self-signed chain must not be accepted silently,
    # or anyone on the path could pose as Redis. Opting out is explicit: ?ssl_cert_reqs=none.
    with pytest.raises(QueueUnavailableError, match="certificate verify failed"):
        await open_queue(tls_url(tls_redis, None))
    await open_and_check(tls_url(tls_redis, None) + "?ssl_cert_reqs=none")


async def test_plain_url_to_a_tls_server_points_to_rediss(tls_redis: LocalRedis) -> None:
    start = time.monotonic()
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue(f"redis://:{TLS_PASSWORD}@127.0.0.1:{tls_redis.port}/0")
    assert time.monotonic() - start < 15
    assert "rediss://" in str(info.value)
    assert TLS_PASSWORD not in str(info.value)


async def test_rediss_to_a_plain_server_is_a_clear_error(
    plain_redis: LocalRedis, tls_files: tuple[Path, Path, Path]
) -> None:
    start = time.monotonic()
    with pytest.raises(QueueError) as info:
        await open_queue(f"rediss://127.0.0.1:{plain_redis.port}/0?ssl_ca_certs={tls_files[2]}")
    assert time.monotonic() - start < 15
    assert f"127.0.0.1:{plain_redis.port}" in str(info.value)


async def test_percent_encoded_password_in_the_url() -> None:
    """A password with URL-special characters is written percent-encoded and decoded before use."""
    special = "p@ss:w/rd%#?"
    server = LocalRedis(password=special).start()
    try:
        await open_and_check(f"redis://:{quote(special, safe='')}@127.0.0.1:{server.port}/0")
    finally:
        server.stop()


async def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(QueueConfigError, match=r"ssl_ca_certs=.*names no readable file"):
        await open_queue(f"rediss://127.0.0.1:{free_port()}/0?ssl_ca_certs={quote(str(missing), safe='')}")
