"""What `codeforge bench workflow` needs from each workflow engine, and the two workflows it runs.

Both workflows have no-op steps, so what is measured is the engine: dispatch, hand-over between steps,
state persistence and the client seeing the end.
- `chain`: three steps one after the other (Celery `chain`, Temporal: three activities in sequence);
- `fanout`: three parallel steps, then a join step that runs once all three are done (Celery `chord`,
  Temporal: three activities gathered, then a fourth).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import ClassVar

SHAPES = ("chain", "fanout")
#: Steps (tasks run) per workflow of each shape.
STEPS = {"chain": 3, "fanout": 4}


@dataclass(frozen=True)
class EngineContext:
    url: str  # redis://... of the server every Redis-based engine shares in this run
    logdir: Path  # worker and server stdout/stderr go here
    run_id: str  # unique per bench run: queue, pool and key names include it


class Unavailable(Exception):
    """The engine cannot run here; the message says exactly why (it becomes the row's note)."""


class WorkflowEngine(abc.ABC):
    """One engine under test: starts its workers (and server), runs workflows and waits for their end."""

    name: ClassVar[str]
    #: What the row calls it (system column): the library and how it is deployed.
    label: ClassVar[str]

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def version(self) -> str: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """How it is run (workers, concurrency, storage), for the row's notes."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start servers and workers; raise Unavailable when the engine cannot run here."""

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def run(self, shape: str, workflow_id: str) -> None:
        """Start one workflow of `shape` and return once the client has seen it succeed."""

    async def run_many(self, shape: str, workflow_ids: list[str]) -> None:
        """Start all these workflows at once and return when every one has succeeded."""
        await asyncio.gather(*(self.run(shape, wid) for wid in workflow_ids))

    async def overhead_probe(self) -> dict[str, float] | None:
        """Extra figures (e.g. the queue round trip under each step) for the JSON; None by default."""
        return None


def package_version(name: str) -> str:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return "dev" if name == "codeforge" else "not installed"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
