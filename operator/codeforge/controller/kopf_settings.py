"""Kopf settings for the CodeForge operator.

- Kopf's own bookkeeping (handler progress, the last-handled spec) lives in `codeforge.ai/*` annotations, so
  the status schema of our CRDs stays strict and holds only what users read.
- Workflows keep no last-handled configuration at all (`KindDiffBaseStorage`): their only change-detecting
  handler is the deletion handler, which Kopf finds by `deletionTimestamp`, and the dispatcher compares specs
  itself. Storing it cost a PATCH per new Workflow, and building and comparing it a deep copy of the object
  on every watch event.
- High availability is leader election on a Lease (`controller/leader.py`): only the replica holding it runs
  Kopf's watchers at all, so Kopf's own peering is off (standalone) and needs no peering CRD or object.
- Kopf's watcher hands each new object to its own worker through `Scheduler.spawn`, which ends with
  `await asyncio.sleep(0)` (there, Kopf's comment says, for its own tests' timing): a whole loop turn per new
  object, so on a busy loop the watcher read one new Workflow per turn and the rest waited unread in the
  watch stream. `spawn_in_batches` gives the turn up once per `SPAWNS_PER_TURN` new objects instead.
- Kopf logs "Handler '...' succeeded." at INFO for every watch event an `@kopf.on.event` handler sees: with
  thousands of Workflows a line per status write of each, and nothing a user acts on. `QuietHandlers` drops
  those lines for the handlers in `QUIET_HANDLERS` (their failures are still logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Final

import kopf
from kopf._cogs.aiokits import aiotasks

from codeforge.api.agentpool import GROUP
from codeforge.api.workflow import KIND as WORKFLOW_KIND
from codeforge.api.workflow import PLURAL as WORKFLOW_PLURAL
from codeforge.controller.sharding import Shard

ANNOTATIONS_PREFIX: Final = "codeforge.ai"
FINALIZER: Final = "codeforge.ai/finalizer"
#: New objects Kopf's watcher hands to their workers per loop turn (`spawn_in_batches`): enough that the
#: watcher keeps up with thousands of creates a second; bounded, so that an operator starting on 10,000
#: existing Workflows (one listing) does not start all their workers in one turn.
SPAWNS_PER_TURN: Final = 64
#: `@kopf.on.event` handlers whose every successful call Kopf would log at INFO.
QUIET_HANDLERS: Final = ("watch_workflow",)


class KindDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's last-handled configuration in annotations, except for the kinds in `stateless`: for those it
    is always empty (never written), so Kopf sees no change on any event but a deletion."""

    def __init__(self, *, stateless: Iterable[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stateless = frozenset(stateless)  # (API group, kind)

    def _keeps_none(self, body: kopf.Body) -> bool:
        group = str(body.get("apiVersion", "")).partition("/")[0]
        return (group, str(body.get("kind", ""))) in self.stateless

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if self._keeps_none(body):
            return {}
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> Any:
        if self._keeps_none(body):
            return {}
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        if not self._keeps_none(body):
            super().store(body=body, patch=patch, essence=essence)


class QuietHandlers(logging.Filter):
    """Drops Kopf's per-call success line of the named handlers."""

    def __init__(self, handlers: Iterable[str]) -> None:
        super().__init__()
        self.lines = frozenset(f"Handler {name!r} succeeded." for name in handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.msg not in self.lines


_QUIET: Final = QuietHandlers(QUIET_HANDLERS)


log = logging.getLogger(__name__)


def spawn_in_batches(per_turn: int = SPAWNS_PER_TURN) -> bool:
    """Make Kopf's `Scheduler.spawn` (the watcher's only caller: one per new object) give up the loop's turn
    once per `per_turn` calls instead of on every one. Kopf's own version queues the worker's coroutine for
    its spawner task, then sleeps 0: with a turn lasting 5-30 ms on a busy loop, the watcher read about one
    new object per turn, slower than 10,000 Workflows were created, and a created Workflow waited unread in
    the watch stream 1.9-5.3 s (p50) before its handler saw it (bench/README.md, s18, "What the agents'
    side sees"). Idempotent; False (Kopf's own spawn kept, with a warning) when this Kopf's scheduler is not
    the one this was written for (its pinned version in uv.lock, 1.45)."""
    scheduler = aiotasks.Scheduler
    if getattr(scheduler.spawn, "codeforge_per_turn", None) == per_turn:
        return True
    if not all(hasattr(aiotasks, name) for name in ("SchedulerJob", "cancel_coro")) or not all(
        name in scheduler.__init__.__code__.co_names for name in ("_closed", "_condition", "_pending_coros")
    ):
        log.warning("Kopf's scheduler is not the one expected: its spawn gives up a loop turn per new object")
        return False
    spawned = 0
    kopfs = getattr(scheduler.spawn, "kopf_spawn", scheduler.spawn)  # Kopf's own, if patched before

    async def spawn(
        self: aiotasks.Scheduler, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> None:
        nonlocal spawned
        if self._closed:
            await aiotasks.cancel_coro(coro=coro, name=name)
            raise RuntimeError("Cannot add new coroutines to a closed and inactive scheduler.")
        async with self._condition:
            await self._pending_coros.put(aiotasks.SchedulerJob(coro=coro, name=name))
            self._condition.notify_all()  # -> the scheduler's spawner task
        spawned += 1
        if spawned % per_turn == 0:
            await asyncio.sleep(0)

    spawn.codeforge_per_turn = per_turn  # type: ignore[attr-defined]
    spawn.kopf_spawn = kopfs  # type: ignore[attr-defined]
    scheduler.spawn = spawn  # type: ignore[method-assign]
    return True


def configure(settings: kopf.OperatorSettings, shard: Shard | None = None) -> None:
    spawn_in_batches()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = KindDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration", stateless=[(GROUP, WORKFLOW_KIND)]
    )
    settings.persistence.finalizer = FINALIZER
    # Without this, Kopf looks for peering objects (of a release installed with an older chart, say).
    settings.peering.standalone = True

    # Our Events carry the scale decisions and health changes; Kopf's per-handler ones are noise.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "codeforge-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30)
    if shard is not None and shard.sharded:
        # Only this shard's Workflows (the API server's ShardedListAndWatch); a server that sends others
        # stops the shard (controller/sharding.py).
        settings.watching.shard_selectors[GROUP, WORKFLOW_PLURAL] = shard.selector()
    objects = logging.getLogger("kopf.objects")
    if _QUIET not in objects.filters:  # idempotent: tests start several operators in one process
        objects.addFilter(_QUIET)
