"""What the harness needs from each benchmarked system, and the worker processes it launches for it."""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from codeforge.benchmarks.recorder import ENV_CONSUMERS, ENV_QUEUE, ENV_RECORD_KEY, ENV_URL

#: With this many consumers per CPU or more, one process per CPU runs them as threads/asyncio tasks:
#: hundreds of processes do not fit on a small machine (and are not how these libraries scale).
THREADS_FROM_CONSUMERS_PER_CPU = 4


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_consumers(consumers: int) -> tuple[int, int]:
    """(processes, consumers per process) for systems that run many consumers as threads or tasks."""
    cpus = cpu_count()
    if consumers >= THREADS_FROM_CONSUMERS_PER_CPU * cpus and consumers % cpus == 0:
        return cpus, consumers // cpus
    return 1, consumers


@dataclass(frozen=True)
class BenchContext:
    url: str  # redis://... of the server every system shares in this run
    queue: str  # queue / key name, unique per worker session
    record_key: str  # Redis list the workers' Recorders push to
    logdir: Path  # worker stdout/stderr go here
    owns_server: bool = True  # a private redis-server, whose configuration a system may change for its run


class System(abc.ABC):
    """A task queue under test: launches its workers and enqueues stamped tasks."""

    name: ClassVar[str]

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def version(self) -> str: ...

    def unsupported(self, consumers: int) -> str | None:
        """Why this system cannot run with `consumers` consumers here, or None."""
        return None

    @abc.abstractmethod
    def describe(self, consumers: int) -> str:
        """How `consumers` consumers are run (for the JSON notes)."""

    @abc.abstractmethod
    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        """The worker processes to launch (argv after `sys.executable`); `throughput` may pick batching."""

    async def open(self) -> None:  # noqa: B027 - optional hook: most producers connect lazily
        """Connect the producer."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect the producer."""

    @abc.abstractmethod
    async def send(self, seq: int) -> None:
        """Enqueue one task carrying `seq` and `time.time_ns()` taken right before the enqueue call."""

    async def send_many(self, seqs: range) -> None:
        """Enqueue many tasks as fast as the library allows (its bulk API where it has one)."""
        for seq in seqs:
            await self.send(seq)

    def env(self, consumers: int) -> dict[str, str]:
        return {
            **os.environ,
            ENV_URL: self.ctx.url,
            ENV_QUEUE: self.ctx.queue,
            ENV_RECORD_KEY: self.ctx.record_key,
            ENV_CONSUMERS: str(consumers),
            "PYTHONUNBUFFERED": "1",
        }


class WorkerGroup:
    """Worker processes, each in its own session so stopping one also stops the children it forked."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], logdir: Path, label: str) -> None:
        self.commands = commands
        self.env = env
        self.logdir = logdir
        self.label = label
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        for index, argv in enumerate(self.commands):
            log = self.logdir / f"{self.label}-{index}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, *argv],
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.processes, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"{self.label} worker exited with status {proc.returncode}:\n{tail}")

    def pause(self) -> None:
        """Stop the workers' processes (SIGSTOP), so another system is measured without them running."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.processes:
            _signal_group(proc, signal.SIGCONT)

    def stop(self, grace: float = 5.0) -> None:
        self.resume()  # a paused process would not see SIGTERM
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            # SIGKILL the whole session: prefork children and work horses must not outlive the run.
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
