"""The fair-share identity of a run's tasks, from `spec.fairShare` (README, "Fair share").

The key is evaluated once per run: `concurrencyKey` over `workflow` ({name, namespace, uid, labels}) and
`input`. Its value is scoped to the Workflow's namespace (`team-a/<value>`), so a Workflow can never join
another namespace's key to take its turns or fill its maxConcurrency. A key that cannot be evaluated (a
missing label, a value that is not a string or number) falls back to the Workflow itself, with a warning:
the run goes on, fairly, just on its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from codeforge.api.cel_sandbox import EvaluationLimit
from codeforge.api.limits import MAX_FAIR_KEY, clip, clip_text
from codeforge.api.task import validate_fair_key
from codeforge.api.workflow import WorkflowSpec
from codeforge.orchestrator.conditions import EVALUATION_ERRORS, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FairShare:
    """What each task of the run carries: empty key = the run's own (the queue uses the task's workflow)."""

    key: str = ""
    weight: int = 1
    max_concurrency: int = 0


async def fair_share_of(
    spec: WorkflowSpec,
    run_id: str,
    *,
    name: str = "",
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> FairShare:
    share = spec.fair_share
    key = ""
    if share.concurrency_key is not None:
        labels = dict(labels or {})
        workflow = {"name": name or run_id, "namespace": namespace, "uid": run_id, "labels": labels}
        variables = {"workflow": workflow, "input": spec.input}
        key = await _evaluated_key(share.concurrency_key, variables, namespace)
    return FairShare(key=key, weight=share.weight, max_concurrency=share.max_concurrency or 0)


async def _evaluated_key(expression: str, variables: dict[str, object], namespace: str) -> str:
    try:
        value = await evaluate(expression, variables)
    except (*EVALUATION_ERRORS, EvaluationLimit) as exc:
        log.warning(
            "spec.fairShare.concurrencyKey %s cannot be evaluated (%s): the Workflow is its own key",
            clip(expression),
            clip_text(str(exc), 200),
        )
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        log.warning(
            "spec.fairShare.concurrencyKey %s gave %s, not a non-empty string: the Workflow is its own key",
            clip(expression),
            clip(value),
        )
        return ""
    key = f"{namespace}/{value}"
    try:
        return validate_fair_key(key, "concurrencyKey")
    except ValueError:
        # Too long or with control characters: a digest keeps Workflows of one value together.
        return f"{namespace}/sha256:{hashlib.sha256(str(value).encode()).hexdigest()}"[:MAX_FAIR_KEY]
