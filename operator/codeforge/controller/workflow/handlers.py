"""Kopf handlers of the Workflow kind: thin wrappers around `dispatcher`, `supervisor` and `expiry`.

- every watch event (`dispatcher.observe`): validate once per generation (a bad spec gives phase Failed and
  an `Invalid` condition whose message names each bad field; fixing it puts the Workflow back to Pending and
  the run starts); start or resume the run of a Workflow that is not finished (thread id = uid) as a task of
  the operator's registry, which reports progress through the batched status writer; hand a live run its
  approval decisions (`approval.codeforge.ai/<step>` annotations), `spec.suspend` (pauses dispatching,
  running tasks finish) and `spec.budget` (raising it lets a run the budget suspended go on); a retry of a
  Failed Workflow from its failed step: `kubectl annotate workflow NAME codeforge.ai/retry="$(date +%s)"
  --overwrite` (see `retry`); `spec.shutdown` (`codeforge stop | terminate`) ends the run early
  (`shutdown`). No Kopf daemon and no handler progress per Workflow: with 10,000 Workflows,
  those were most of the operator's memory and of its API requests while starting them.
- operator exit (or losing the lead, which exits the process): the runs stop waiting; the next operator
  resumes them from their checkpoints.
- delete (finalizer): cancels the run and its outstanding tasks, and removes the Workflow's checkpoints and
  result copy.
- a finished Workflow with a TTL: when it passes, the run's Redis data goes (`expiry.schedule_expiry`, from
  every watch event: a task per such Workflow, not a Kopf daemon, for which Kopf would keep every Workflow's
  latest full object).
"""

from __future__ import annotations

from typing import Any

import kopf

from codeforge.api.agentpool import API_VERSION, GROUP, VERSION
from codeforge.api.workflow import KIND, PLURAL
from codeforge.controller.kstatus import (
    EVENT_MESSAGE_LIMIT,
    EventType,
    KubeEvent,
    ObjectRef,
)
from codeforge.controller.kube import Kind
from codeforge.controller.services import CONFIG, Logger, OperatorServices
from codeforge.controller.sharding import Refusal
from codeforge.controller.workflow.dispatcher import WatchedWorkflow, observe
from codeforge.controller.workflow.expiry import default_ttl, schedule_expiry
from codeforge.controller.workflow.registry import Unavailable, WorkflowRegistry
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.controller.workflow.supervisor import cleanup

WORKFLOWS = Kind(API_VERSION, PLURAL)
#: CODEFORGE_WORKFLOW_TTL_SECONDS, read once: every watch event looks at the expiry.
DEFAULT_TTL = default_ttl()


#: Stops this shard when the API server sends another shard's Workflow (controller/sharding.py).
REFUSE = Refusal()


def owned(meta: kopf.Meta, **_: Any) -> bool:
    """This shard's Workflows (all of them unsharded). Another shard's means the API server does not
    filter: the operator stops, saying so."""
    if CONFIG.shard.owns(meta.uid or ""):
        return True
    REFUSE(CONFIG.shard, f"{meta.namespace}/{meta.name}")
    return False


def _ref(meta: kopf.Meta) -> ObjectRef:
    return ObjectRef(namespace=meta.namespace or "default", name=meta.name or "", uid=meta.uid or "")


@kopf.on.startup()
async def start_workflows(*, memo: Any, **_: Any) -> None:
    """The status writer and the run registry, shared by every Workflow's memo."""

    async def patch_status(ref: ObjectRef, body: dict[str, Any]) -> None:
        # `name/status` is the status subresource (the path keeps the slash).
        await memo.services.api().patch(WORKFLOWS, ref.namespace, f"{ref.name}/status", body, result=False)

    def post_event(ref: ObjectRef, transition: KubeEvent) -> None:
        target: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
        }
        kopf.event(
            # A plain mapping: an object reference is all Kopf reads from it, and a `kopf.Body` (a cycle
            # with its own views) would be garbage for the cyclic collector, one per Event posted.
            target,  # type: ignore[arg-type]
            type=transition.type,
            reason=transition.reason,
            message=transition.message,
        )

    settings = WorkflowSettings.from_env()
    writer = StatusWriter(
        patch_status,
        post_event,
        interval=settings.status_interval,
        # a cap on the API server's load from all shards together: each shard writes its share
        writes_per_second=settings.writes_per_second / CONFIG.shard.count,
        step_events=settings.step_events,
    )
    memo.workflows = WorkflowRegistry(settings=settings, writer=writer)
    services: OperatorServices | None = getattr(memo, "services", None)
    if services is not None:  # the runs write their last statuses before the API session closes
        services.before_close.append(memo.workflows.close)


@kopf.on.cleanup()
async def stop_workflows(*, memo: Any, **_: Any) -> None:
    workflows: WorkflowRegistry | None = getattr(memo, "workflows", None)
    if workflows is not None:
        await workflows.close()


@kopf.on.event(GROUP, VERSION, PLURAL, when=owned)
async def watch_workflow(
    *,
    type: str | None,  # noqa: A002  (Kopf's name for the watch event's type)
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    logger: Logger,
    **_: Any,
) -> None:
    """Every watch event (and the initial listing): validation, starting runs, and handing a live run its
    approvals, spec.suspend and spec.budget (`dispatcher.observe`). No per-object state is stored in the
    Workflow (no progress annotations), so this costs no API request unless the status must change."""
    seen = WatchedWorkflow(
        ref=_ref(meta),
        generation=meta.get("generation"),
        spec=dict(spec),
        status=dict(status),
        annotations=dict(meta.annotations),
        labels=dict(meta.get("labels") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        gone=type == "DELETED",
    )
    schedule_expiry(memo.workflows, memo.services, seen, DEFAULT_TTL, logger)
    reaction = await observe(memo.workflows, memo.services, seen, logger)
    if reaction.invalid is not None:
        kopf.event(
            body, type=EventType.WARNING, reason="InvalidSpec", message=reaction.invalid[:EVENT_MESSAGE_LIMIT]
        )
    if reaction.status is not None:
        patch.status.update(reaction.status)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=owned)
async def delete_workflow(
    *, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, memo: Any, logger: Logger, **_: Any
) -> None:
    try:
        kept = await cleanup(memo.workflows, memo.services, _ref(meta), dict(status), logger)
    except Unavailable as exc:
        # The finalizer holds the Workflow until its keys can be removed: nothing is left behind in Redis.
        raise kopf.TemporaryError(f"cannot clean up the Workflow's Redis keys yet: {exc}", delay=5) from exc
    if kept:  # the cleanup task stays queued; the Event tells the user where the refs are
        kopf.warn(body, reason="WorkspaceRefsKept", message=kept[:EVENT_MESSAGE_LIMIT])
