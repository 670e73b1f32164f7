"""A Workflow whose steps name AgentPools that do not exist waits, Pending, with the condition PoolNotFound
(and an Event), and starts once they appear: before, its tasks would have queued for agents nobody runs.

A pool seen to exist counts as existing for `SEEN_SECONDS` without asking the API server again, and
concurrent lookups of one pool share one request: 1,000 Workflows started at once on one pool cost one GET,
not 1,000. A pool not found is asked for again every time (a waiting Workflow starts as soon as it appears).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from codeforge.api import agentpool
from codeforge.api.workflow import WorkflowSpec
from codeforge.controller.kube import Kind, KubeApi

AGENTPOOLS: Final = Kind(agentpool.API_VERSION, agentpool.PLURAL)
#: How often a waiting Workflow looks for its pools again (first wait, then doubling to the cap).
RECHECK_SECONDS: Final = 1.0
RECHECK_CAP_SECONDS: Final = 10.0
#: How long a pool seen to exist is not looked up again.
SEEN_SECONDS: Final = 10.0


class PoolLookup:
    """Which of a spec's pools exist, with the pools seen recently remembered (one per operator)."""

    def __init__(self, ttl: float = SEEN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[str, float] = {}  # `namespace/name` -> until when it counts as existing
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self.requests = 0  # GETs sent, for tests

    async def missing(self, api: KubeApi, spec: WorkflowSpec) -> list[str]:
        """The pools (`namespace/name`, as the qualified spec names them) no AgentPool object backs."""
        return [pool for pool in spec.task_pools if not await self.exists(api, pool)]

    async def exists(self, api: KubeApi, pool: str) -> bool:
        if self._seen.get(pool, float("-inf")) > self._clock():
            return True
        lookup = self._pending.get(pool)
        if lookup is None:
            lookup = self._pending[pool] = asyncio.ensure_future(self._get(api, pool))
            lookup.add_done_callback(lambda done: self._done(pool, done))
        # Shielded: a waiter cancelled (its Workflow deleted) must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    async def _get(self, api: KubeApi, pool: str) -> bool:
        namespace, _, name = pool.rpartition("/")
        self.requests += 1
        found = await api.get(AGENTPOOLS, namespace, name) is not None
        if found:
            self._seen[pool] = self._clock() + self.ttl
        return found

    def _done(self, pool: str, lookup: asyncio.Future[bool]) -> None:
        if self._pending.get(pool) is lookup:
            del self._pending[pool]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: every waiter may have gone (their callers log it)
