"""Run a manifest's AgentPools: in this process (memory queue) or as `codeforge-agent` processes (Redis).

Both are configured the way the operator configures agent pods, through `CODEFORGE_*` variables built from
the AgentPool's `spec.handler`, so a pool behaves the same in a pod, in a subprocess and in-process. This
package sits beside the CLI, outside the orchestrator layer: it is the one place that wires the orchestrator
to `codeforge_agent`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from codeforge.embedded.manifest import ManifestError, PoolSpec
from codeforge.queue import TaskQueue

#: In-process agents wake on enqueue anyway; a short blocking claim only makes them stop quickly.
IN_PROCESS_CLAIM_WAIT = "0.2"


class InProcessAgents:
    """One `codeforge_agent` Agent per pool in this event loop (the embedded default)."""

    def __init__(self, queue: TaskQueue, pools: Iterable[PoolSpec], directory: Path | None = None) -> None:
        self.queue = queue
        self.pools = list(pools)
        self.directory = directory
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> InProcessAgents:
        from codeforge.queue.ratelimit import MemoryRateLimiter
        from codeforge_agent.config import AgentConfig, ConfigError
        from codeforge_agent.loop import run_agent

        limiter = MemoryRateLimiter()  # one per process: the pools naming a rate-limit key share it

        if self.directory is not None and str(self.directory) not in sys.path:
            sys.path.insert(0, str(self.directory))  # `pythonFunction: demo_agents:run` beside the manifest
        if self.directory is not None:  # `command: python3 -m demo_agents ...` too (commands inherit it)
            paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if str(self.directory) not in paths:
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(self.directory), *paths] if p)
        for pool in self.pools:
            try:
                env = {**pool.agent_env("memory://"), "CODEFORGE_CLAIM_WAIT": IN_PROCESS_CLAIM_WAIT}
                config = AgentConfig.from_sources([], env)
            except ConfigError as exc:
                raise ManifestError(f"AgentPool {pool.name!r}: {exc}") from None
            self._tasks.append(
                asyncio.create_task(run_agent(self.queue, config, self._stop, limiter=limiter))
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


#: `codeforge-agent` exits with this code on a configuration error: restarting it would fail the same way.
AGENT_EXIT_CONFIG = 2
#: Restarts of one pool's agent process in a row before `codeforge run` gives up (`--agent-restarts`).
DEFAULT_AGENT_RESTARTS = 5
#: The wait before a restart: doubles per restart in a row, capped; a process that ran this long (stable)
#: starts a fresh row.
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_CAP_SECONDS = 8.0
STABLE_SECONDS = 60.0
#: How often the supervisor looks at its own child processes (not the queue).
SUPERVISE_INTERVAL = 0.2


class AgentProcesses:
    """One `codeforge-agent` process per pool against a Redis queue (`codeforge run --queue redis://...`),
    supervised: a process that dies is restarted with backoff, like a Deployment restarts its pods."""

    def __init__(
        self,
        queue_url: str,
        pools: Iterable[PoolSpec],
        directory: Path | None = None,
        *,
        max_restarts: int = DEFAULT_AGENT_RESTARTS,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.pools = list(pools)
        self.directory = directory
        self.max_restarts = max_restarts
        self.notify = notify or (lambda message: print(message, file=sys.stderr, flush=True))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts: list[int] = []  # restarts in a row, per pool
        self._started: list[float] = []

    def __enter__(self) -> AgentProcesses:
        for index in range(len(self.pools)):
            self.processes.append(self._spawn(index))
            self._started.append(time.monotonic())
            self.restarts.append(0)
        return self

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        pythonpath = os.pathsep.join(
            p for p in (str(self.directory or ""), os.environ.get("PYTHONPATH", "")) if p
        )
        env = {**os.environ, **self.pools[index].agent_env(self.queue_url), "PYTHONPATH": pythonpath}
        return subprocess.Popen([sys.executable, "-m", "codeforge_agent"], env=env, stdin=subprocess.DEVNULL)

    async def supervise(self) -> str:
        """Restart agent processes that die; return (only) why it gave up: a configuration error, or one
        pool's process died more than `max_restarts` times in a row."""
        while True:
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code is None:
                    continue
                pool = self.pools[index].name
                what = f"the codeforge-agent process of pool {pool!r} exited with {_exit_text(code)}"
                if code == AGENT_EXIT_CONFIG:
                    return f"{what}: a configuration error (its message is above); not restarting it"
                if time.monotonic() - self._started[index] >= STABLE_SECONDS:
                    self.restarts[index] = 0
                if self.restarts[index] >= self.max_restarts:
                    return (
                        f"{what}; gave up after {self.restarts[index]} restart(s) in a row "
                        f"(--agent-restarts {self.max_restarts}); its messages are above"
                    )
                self.restarts[index] += 1
                delay = min(
                    RESTART_BACKOFF_SECONDS * 2 ** (self.restarts[index] - 1), RESTART_BACKOFF_CAP_SECONDS
                )
                self.notify(
                    f"codeforge run: {what}; restarting it in {delay:g}s "
                    f"(restart {self.restarts[index]} of {self.max_restarts})"
                )
                await asyncio.sleep(delay)
                self.processes[index] = self._spawn(index)
                self._started[index] = time.monotonic()
            await asyncio.sleep(SUPERVISE_INTERVAL)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
