"""A queue with in-process agents and a checkpointer on one backend (memory, a redis-server, the 6-node
cluster), for orchestrator tests parametrized over the three."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import TaskQueue, open_queue

BACKENDS = ["memory", "redis", "cluster"]


@contextlib.asynccontextmanager
async def queue_with_agents(
    request: pytest.FixtureRequest, pools: Sequence[PoolSpec], prefix: str
) -> AsyncIterator[tuple[TaskQueue, Any]]:
    """The queue of backend `request.param` with agents for `pools` running, and a checkpointer (None on
    memory: LangGraph's in-memory one); the Redis servers start only when a test of theirs runs."""
    saver: Any = None
    if request.param == "memory":
        queue = await open_queue("memory://")
    else:
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
        queue = await open_queue(url)
        saver = await open_checkpointer(url, prefix=f"{prefix}:{uuid.uuid4().hex[:8]}")
    try:
        async with InProcessAgents(queue, list(pools)):
            yield queue, saver
    finally:
        await queue.close()
        if saver is not None:
            await saver.aclose()
