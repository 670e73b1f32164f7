"""Kopf handlers of the Workflow kind: thin wrappers around `supervisor`, `registry` and `tracker`.

- create / resume / spec update: validate. A bad spec gives phase Failed and an `Invalid` condition whose
  message names each bad field (one status patch; the operator carries on). Fixing the spec of such a
  Workflow puts it back to Pending, and the run starts.
- a daemon per Workflow that is not finished: starts or resumes its LangGraph run (thread id = uid) and
  reports progress through the batched status writer. Kopf stops it when the Workflow is deleted, when the
  operator exits, or when it pauses for a peer (HA): the standby's daemon resumes from the checkpoint.
- `spec.suspend`: pauses dispatching (running tasks finish) and resuming continues.
- `spec.shutdown` (`codeforge stop | terminate`): ends the run early (`shutdown`).
- `spec.budget`: raising it lets a run the budget suspended go on (README, "Rate limits and budgets").
- delete (finalizer): cancels outstanding tasks and removes the Workflow's checkpoints and result copy.
- retry of a Failed Workflow from its failed step: `kubectl annotate workflow NAME
  codeforge.ai/retry="$(date +%s)" --overwrite` (see `retry`).
- approval decisions: the `approval.codeforge.ai/<step>` annotations, handed to the run when they change
  (`codeforge.api.approval`).
- a daemon per finished Workflow with a TTL: when it passes, the run's Redis data goes (`expiry`).
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from codeforge.api.agentpool import API_VERSION, GROUP, VERSION
from codeforge.api.usage import Budget
from codeforge.api.workflow import KIND, PLURAL, WorkflowSpecError, parse_workflow_spec
from codeforge.controller.kstatus import (
    EVENT_MESSAGE_LIMIT,
    EventType,
    KubeEvent,
    ObjectRef,
    condition_message,
    condition_true,
)
from codeforge.controller.kube import Kind
from codeforge.controller.services import Logger
from codeforge.controller.workflow import metrics as workflow_metrics
from codeforge.controller.workflow.access import check_access
from codeforge.controller.workflow.expiry import default_ttl, expire_when_due, expires_at
from codeforge.controller.workflow.registry import Unavailable, WorkflowRegistry
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.shutdown import request_shutdown
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.controller.workflow.supervisor import WorkflowObject, cleanup, supervise, wants_run
from codeforge.controller.workflow.tracker import ConditionType, invalid_status, pending_status

WORKFLOWS = Kind(API_VERSION, PLURAL)
#: CODEFORGE_WORKFLOW_TTL_SECONDS, read once: Kopf evaluates the daemon filter on every event.
DEFAULT_TTL = default_ttl()


def _ref(meta: kopf.Meta) -> ObjectRef:
    return ObjectRef(namespace=meta.namespace or "default", name=meta.name or "", uid=meta.uid or "")


@kopf.on.startup()
async def start_workflows(*, memo: Any, **_: Any) -> None:
    """The status writer and the run registry, shared by every Workflow's memo."""

    async def patch_status(ref: ObjectRef, body: dict[str, Any]) -> None:
        # `name/status` is the status subresource (the path keeps the slash).
        await memo.services.api().patch(WORKFLOWS, ref.namespace, f"{ref.name}/status", body)

    def post_event(ref: ObjectRef, transition: KubeEvent) -> None:
        target: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
        }
        kopf.event(
            kopf.Body(target),  # type: ignore[arg-type]  # an object reference is all Kopf reads
            type=transition.type,
            reason=transition.reason,
            message=transition.message,
        )

    settings = WorkflowSettings.from_env()
    writer = StatusWriter(
        patch_status,
        post_event,
        interval=settings.status_interval,
        writes_per_second=settings.writes_per_second,
    )
    memo.workflows = WorkflowRegistry(settings=settings, writer=writer)


@kopf.on.cleanup()
async def stop_workflows(*, memo: Any, **_: Any) -> None:
    workflows: WorkflowRegistry | None = getattr(memo, "workflows", None)
    if workflows is not None:
        await workflows.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def validate_workflow(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: Logger,
    **_: Any,
) -> None:
    """Report an invalid spec (or a pool of another namespace that grants no access); a spec fixed after it
    was reported invalid makes the Workflow Pending again. A valid Workflow's status is left to its run (one
    writer per object)."""
    generation = meta.get("generation")
    workflow_metrics.observe_phase(meta.uid or "", status.get("phase"))
    try:
        parsed = parse_workflow_spec(dict(spec))
        await check_access(memo.services.api(), meta.namespace or "default", parsed)
    except WorkflowSpecError as exc:
        message = str(exc)
        if condition_message(status.get("conditions"), ConditionType.INVALID) != message:  # not every resume
            kopf.event(
                body, type=EventType.WARNING, reason="InvalidSpec", message=message[:EVENT_MESSAGE_LIMIT]
            )
        logger.error("invalid Workflow spec:\n%s", message)
        patch.status.update(invalid_status(dict(status), message, generation))
        workflow_metrics.observe_phase(meta.uid or "", "Failed")
        return
    if condition_true(status.get("conditions"), ConditionType.INVALID):
        patch.status.update(pending_status(dict(status), len(parsed.steps), generation))


def _wants_run(annotations: kopf.Annotations, status: kopf.Status, **_: Any) -> bool:
    return wants_run(dict(annotations), dict(status))


@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    when=_wants_run,
    cancellation_backoff=5.0,  # graceful: the daemon reacts to `stopped` (cancels its tasks on deletion)
    cancellation_timeout=10.0,
)
async def run_workflow(
    *,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: Any,
    logger: Logger,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    obj = WorkflowObject(
        ref=_ref(meta),
        generation=meta.get("generation"),
        spec=dict(spec),
        status=dict(status),
        annotations=lambda: dict(body.metadata.annotations),  # the live body: fresh on every read
        labels=dict(meta.get("labels") or {}),
    )

    def deleted() -> bool:
        reason = stopped.reason
        return reason is not None and bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)

    await supervise(memo.workflows, memo.services, obj, stopped, deleted, logger)


@kopf.on.field(GROUP, VERSION, PLURAL, field="metadata.annotations")
def annotations_changed(*, meta: kopf.Meta, new: Any, memo: Any, logger: Logger, **_: Any) -> None:
    """An approval decision (or any annotation) changed: the run, if active here, sees the decisions now."""
    memo.workflows.set_approvals(meta.uid or "", dict(new or {}), logger)


def _expires(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return expires_at(spec, status, DEFAULT_TTL) is not None


@kopf.daemon(GROUP, VERSION, PLURAL, when=_expires, cancellation_timeout=10.0)
async def expire_workflow(
    *, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, memo: Any, logger: Logger,
    stopped: kopf.DaemonStopped, **_: Any,
) -> None:  # fmt: skip
    """Sleep until the finished Workflow's TTL passes, then remove its data (and it, if asked)."""
    await expire_when_due(
        memo.workflows, memo.services, _ref(meta), dict(spec), dict(status), meta.get("generation"),
        DEFAULT_TTL, stopped, logger,
    )  # fmt: skip


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.suspend")
def suspend_workflow(*, meta: kopf.Meta, new: Any, memo: Any, **_: Any) -> None:
    """A run not active here (yet) reads spec.suspend when it starts."""
    memo.workflows.set_suspended(meta.uid or "", bool(new))


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.shutdown")
def shutdown_workflow(*, meta: kopf.Meta, new: Any, memo: Any, logger: Logger, **_: Any) -> None:
    """`codeforge stop | terminate`: a run not active here (yet) reads spec.shutdown when it starts."""
    request_shutdown(memo.workflows, meta.uid or "", new, logger)


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.budget")
def budget_workflow(*, meta: kopf.Meta, new: Any, memo: Any, logger: Logger, **_: Any) -> None:
    """A run not active here (yet) reads spec.budget when it starts."""
    try:
        budget = Budget.model_validate(new, by_alias=True, by_name=False) if new else None
    except ValidationError as exc:  # the CRD schema refuses this; a stale schema must not crash us
        logger.warning("spec.budget ignored: %s", exc.errors()[0]["msg"])
        return
    memo.workflows.set_budget(meta.uid or "", budget)


@kopf.on.delete(GROUP, VERSION, PLURAL)
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
