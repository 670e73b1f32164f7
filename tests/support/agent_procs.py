"""Run the real `codeforge-agent` console script as a subprocess against a test queue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

AGENT_BIN = Path(sys.executable).with_name("codeforge-agent")
TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if not self.alive:
                raise AssertionError(
                    f"agent exited ({self.process.returncode}) before logging {text!r}:\n{self.log}"
                )
            await asyncio.sleep(0.02)
        raise AssertionError(f"agent did not log {text!r} within {timeout}s:\n{self.log[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.alive:
            self.process.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def agent_env(pool: str, queue_url: str, **settings: str) -> dict[str, str]:
    """The environment the operator would give an agent pod; settings are CODEFORGE_<KEY> names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH", "")]))
    env.update(
        CODEFORGE_POOL=pool,
        CODEFORGE_QUEUE_URL=queue_url,
        CODEFORGE_HEALTH_PORT="off",
        CODEFORGE_CLAIM_WAIT="0.2",  # fast SIGTERM reaction keeps the tests short
        CODEFORGE_REAP_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"CODEFORGE_{key.upper()}": value for key, value in settings.items()})
    return env


def agent_config_error(env: Mapping[str, str]) -> str:
    """Run the agent with a configuration it must refuse: it exits 2 without a traceback; its stderr."""
    out = subprocess.run([str(AGENT_BIN)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


def start_agent(env: Mapping[str, str], *args: str) -> AgentProcess:
    fd, name = tempfile.mkstemp(prefix="codeforge-agent-", suffix=".log")
    with os.fdopen(fd, "wb") as sink:
        process = subprocess.Popen(
            [str(AGENT_BIN), *args], env=dict(env), stdout=sink, stderr=subprocess.STDOUT
        )
    return AgentProcess(process, Path(name))


@asynccontextmanager
async def running_agents(
    env: Mapping[str, str], count: int = 1, *args: str, ready_timeout: float = 60.0
) -> AsyncIterator[list[AgentProcess]]:
    """Start `count` agents and wait until each serves the pool; SIGKILL any still alive on exit."""
    agents: list[AgentProcess] = []
    try:
        for _ in range(count):
            agents.append(start_agent(env, *args))
        for agent in agents:
            await agent.wait_for_log("agent started", timeout=ready_timeout)
        yield agents
    finally:
        for agent in agents:
            agent.kill()
            with suppress(OSError):
                agent.log_path.unlink()


async def run_to_exit(env: Mapping[str, str], timeout: float = 60) -> tuple[int, str]:
    """Start an agent that is expected to stop by itself (a bad setting): its exit code and its log."""
    agent = start_agent(env)
    try:
        code = await agent.wait(timeout=timeout)
        return code, agent.log
    finally:
        agent.kill()
        agent.log_path.unlink()


def sigterm(agent: AgentProcess) -> None:
    agent.signal(signal.SIGTERM)
