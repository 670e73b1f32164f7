"""Run a manifest's AgentPools: in this process (memory queue) or as `codeforge-agent` processes (Redis).

Both are configured the way the operator configures agent pods, through `CODEFORGE_*` variables built from
the AgentPool's `spec.handler`, so a pool behaves the same in a pod, in a subprocess and in-process. This
package sits beside the CLI, outside the orchestrator layer: it is the one place that wires the orchestrator
to `codeforge_agent`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable
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
        from codeforge_agent.config import AgentConfig, ConfigError
        from codeforge_agent.loop import run_agent

        if self.directory is not None and str(self.directory) not in sys.path:
            sys.path.insert(0, str(self.directory))  # `pythonFunction: demo_agents:run` beside the manifest
        for pool in self.pools:
            try:
                env = {**pool.agent_env("memory://"), "CODEFORGE_CLAIM_WAIT": IN_PROCESS_CLAIM_WAIT}
                config = AgentConfig.from_sources([], env)
            except ConfigError as exc:
                raise ManifestError(f"AgentPool {pool.name!r}: {exc}") from None
            self._tasks.append(asyncio.create_task(run_agent(self.queue, config, self._stop)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AgentProcesses:
    """One `codeforge-agent` process per pool against a Redis queue (`codeforge run --queue redis://...`)."""

    def __init__(self, queue_url: str, pools: Iterable[PoolSpec], directory: Path | None = None) -> None:
        self.queue_url = queue_url
        self.pools = list(pools)
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> AgentProcesses:
        pythonpath = os.pathsep.join(
            p for p in (str(self.directory or ""), os.environ.get("PYTHONPATH", "")) if p
        )
        for pool in self.pools:
            env = {**os.environ, **pool.agent_env(self.queue_url), "PYTHONPATH": pythonpath}
            self.processes.append(
                subprocess.Popen([sys.executable, "-m", "codeforge_agent"], env=env, stdin=subprocess.DEVNULL)
            )
        return self

    async def died(self) -> str:
        """Wait until an agent process exits on its own (bad handler settings exit 2 at start); say which."""
        while True:
            for pool, process in zip(self.pools, self.processes, strict=True):
                if process.poll() is not None:
                    return (
                        f"the codeforge-agent process of pool {pool.name!r} exited with code "
                        f"{process.returncode} (its message is above)"
                    )
            await asyncio.sleep(0.5)  # checks our child processes, not the queue

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
