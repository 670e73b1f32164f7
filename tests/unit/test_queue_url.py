"""Queue URLs and passwords: a wrong or unreachable URL is a clear error that says what to fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from codeforge.queue import QueueConfigError, QueueUnavailableError, TaskQueue, open_queue
from codeforge.queue.factory import check_url, durability_of, password_from_env
from codeforge.testing.redis_server import free_port

#: An unreachable server must be reported within this, retries included, not hang an agent's start-up.
UNREACHABLE_BOUND = 30.0


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("memory://", "memory"),
        ("redis://localhost:6379/0", "redis"),
        ("REDIS://localhost", "redis"),
        ("rediss://:secret@redis.example:6380/1", "rediss"),
        ("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", "redis+cluster"),
        ("rediss+cluster://node:7000", "rediss+cluster"),
    ],
)
def test_valid_urls(url: str, scheme: str) -> None:
    assert check_url(url) == scheme


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("http://localhost:6379", ["scheme 'http' is not supported", "memory", "redis+cluster"]),
        ("amqp://guest@rabbit", ["scheme 'amqp' is not supported", "rediss"]),
        ("localhost:6379", ["is not a URL", "redis://host:6379/0"]),
        ("", ["is not a URL", "memory://"]),
        ("redis://localhost:port/0", ["has a port that is not a number"]),
        ("redis://localhost:99999999/0", ["has a port that is not a number from 1 to 65535"]),
        ("redis://localhost:0/0", ["not a number from 1 to 65535"]),
        ("redis://localhost:" + "9" * 5000 + "/0", ["not a number from 1 to 65535"]),
        ("redis://localhost:\u00b2/0", ["not a number from 1 to 65535"]),
        ("redis://u:hunter2@localhost:x/0", ["'redis://***@localhost:x/0' has a port"]),
        ("redis://" + "x" * 100_000 + ":1:x/0", ["(100014 characters) has a port"]),
        ("x" * 100_000, ["(100000 characters) is not a URL"]),
        ("redis+cluster://a:7000,b:seven", ["has a port that is not a number"]),
        ("redis://:6379/0", ["names no host", "redis://localhost:6379/0"]),
        ("redis:///0", ["names no host"]),
    ],
)
async def test_wrong_url_is_refused_with_the_fix(url: str, fragments: list[str]) -> None:
    with pytest.raises(QueueConfigError) as info:
        await open_queue(url)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert isinstance(info.value, ValueError), (
        "config errors are ValueErrors, so CLIs can report them plainly"
    )


async def test_memory_url_opens_a_working_queue() -> None:
    queue = await open_queue("memory://")
    try:
        assert isinstance(queue, TaskQueue)
        await queue.ping()
    finally:
        await queue.close()


@pytest.mark.redis
async def test_unreachable_url_is_a_clear_error() -> None:
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - start < UNREACHABLE_BOUND
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message, f"the error must name the address it tried: {message}"
    assert isinstance(info.value, ConnectionError)


@pytest.mark.redis
async def test_unreachable_cluster_url_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue(f"redis+cluster://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.redis
async def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(QueueUnavailableError) as info:
        await open_queue("redis://no-such-host.invalid:6379/0")
    assert "no-such-host.invalid" in str(info.value)


# --- passwords from the environment ---------------------------------------------------------------------


def test_password_from_env_variable_wins() -> None:
    env = {"CODEFORGE_REDIS_PASSWORD": "from-env", "CODEFORGE_REDIS_PASSWORD_FILE": "/nonexistent"}
    assert password_from_env(env) == "from-env"


def test_password_from_a_mounted_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")  # Secrets often end in a newline; it is not part of the password
    assert password_from_env({"CODEFORGE_REDIS_PASSWORD_FILE": str(secret)}) == "from-file"


def test_no_password_configured() -> None:
    assert password_from_env({}) is None
    assert password_from_env({"CODEFORGE_REDIS_PASSWORD": ""}) is None


def test_unreadable_password_file_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with pytest.raises(QueueConfigError) as info:
        password_from_env({"CODEFORGE_REDIS_PASSWORD_FILE": str(missing)})
    message = str(info.value)
    assert f"CODEFORGE_REDIS_PASSWORD_FILE={str(missing)!r} cannot be read" in message
    assert "mounted Secret" in message


@pytest.mark.parametrize(
    ("url", "explicit", "mode"),
    [
        ("redis://h:6379/0", None, "fast"),
        ("redis://h:6379/0?durability=fsync", None, "fsync"),
        ("rediss+cluster://h:7000?ssl_cert_reqs=none&durability=replicated", None, "replicated"),
        ("redis://h:6379/0?durability=fsync", "replicated", "replicated"),
    ],
)
def test_durability_comes_from_the_url_unless_given(url: str, explicit: str | None, mode: str) -> None:
    assert durability_of(url, explicit) == mode


def test_an_unknown_durability_is_refused_with_the_modes() -> None:
    with pytest.raises(QueueConfigError) as info:
        check_url("redis://h:6379/0?durability=paranoid")
    assert "'paranoid'" in str(info.value)
    assert "fast, fsync, replicated" in str(info.value)
