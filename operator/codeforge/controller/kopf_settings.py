"""Kopf settings for the CodeForge operator.

- Kopf's own bookkeeping (handler progress, the last-handled spec) lives in `codeforge.ai/*` annotations, so
  the status schema of our CRDs stays strict and holds only what users read.
- Workflows keep no last-handled configuration at all (`KindDiffBaseStorage`): their only change-detecting
  handler is the deletion handler, which Kopf finds by `deletionTimestamp`, and the dispatcher compares specs
  itself. Storing it cost a PATCH per new Workflow, and building and comparing it a deep copy of the object
  on every watch event.
- High availability is leader election on a Lease (`controller/leader.py`): only the replica holding it runs
  Kopf's watchers at all, so Kopf's own peering is off (standalone) and needs no peering CRD or object.
- Kopf logs "Handler '...' succeeded." at INFO for every watch event an `@kopf.on.event` handler sees: with
  thousands of Workflows a line per status write of each, and nothing a user acts on. `QuietHandlers` drops
  those lines for the handlers in `QUIET_HANDLERS` (their failures are still logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

import kopf

from codeforge.api.agentpool import GROUP
from codeforge.api.workflow import KIND as WORKFLOW_KIND
from codeforge.api.workflow import PLURAL as WORKFLOW_PLURAL
from codeforge.controller.sharding import Shard

ANNOTATIONS_PREFIX: Final = "codeforge.ai"
FINALIZER: Final = "codeforge.ai/finalizer"
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


def configure(settings: kopf.OperatorSettings, shard: Shard | None = None) -> None:
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
