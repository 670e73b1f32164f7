"""The agent reaches a password-protected TLS Redis with the password and CA from mounted files."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis
from support.agent_procs import agent_env, run_to_exit, running_agents
from support.tls import TLS_PASSWORD

pytestmark = pytest.mark.redis
PASSWORD = TLS_PASSWORD  # the conftest `tls_redis` server's


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    (tmp_path / "password").write_text(PASSWORD + "\n")  # Secret files often end with a newline
    return tmp_path


async def test_password_file_and_ca_file_reach_tls_redis(
    tls_redis: LocalRedis, tls_files: tuple[Path, Path, Path], secret_dir: Path
) -> None:
    pool = f"agent-{uuid.uuid4().hex[:8]}"
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"  # no password in the URL
    env = agent_env(pool, url)
    env["CODEFORGE_REDIS_PASSWORD_FILE"] = str(secret_dir / "password")
    env["CODEFORGE_REDIS_CA_FILE"] = str(tls_files[2])
    queue = await open_queue(f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_files[2]}")
    try:
        async with running_agents(env) as [agent]:
            await queue.enqueue(Task(id="s1", pool=pool, payload={"ok": True}))
            outcome = await queue.wait_result(pool, "s1", timeout=30)
            log = agent.log
    finally:
        await queue.close()
    assert outcome.state is TaskState.SUCCEEDED
    assert PASSWORD not in log


async def test_wrong_password_exits_2_with_a_clear_message(
    tls_redis: LocalRedis, tls_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "password").write_text("not-the-password")
    env = agent_env("agent-wrong", f"rediss://127.0.0.1:{tls_redis.port}/0")
    env["CODEFORGE_REDIS_PASSWORD_FILE"] = str(tmp_path / "password")
    env["CODEFORGE_REDIS_CA_FILE"] = str(tls_files[2])
    code, log = await run_to_exit(env)
    assert code == 2
    assert "configuration error" in log
    assert "refused the password" in log
    assert "Traceback" not in log
    assert "not-the-password" not in log
