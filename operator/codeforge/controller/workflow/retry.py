"""The retry annotation: how a user asks to retry a failed Workflow from its failed step.

The Kubernetes idiom of `kubectl rollout restart`, an annotation carrying a new value:

    kubectl annotate workflow my-wf codeforge.ai/retry="$(date +%s)" --overwrite

A Failed Workflow whose `codeforge.ai/retry` annotation differs from `status.retryToken` is retried once per
new value: the orchestrator rewinds its run (`WorkflowRunner.rewind`) to just before the step that failed, or
that its `timeoutSeconds` cut off (the deadline restarts), and the run continues on the same thread.

A request made while the Workflow is still running is consumed when the run ends (the status records the
token it saw), so an early annotation never triggers a surprise rerun later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from codeforge.api.workflow_status import WorkflowPhase
from codeforge.controller.kstatus import condition_true
from codeforge.controller.workflow.tracker import ConditionType

RETRY_ANNOTATION: Final = "codeforge.ai/retry"


def retry_requested(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """A Failed (not invalid) Workflow whose retry annotation carries a token not acted upon yet."""
    token = annotations.get(RETRY_ANNOTATION)
    if not token or token == status.get("retryToken") or status.get("phase") != WorkflowPhase.FAILED:
        return False
    return not condition_true(status.get("conditions"), ConditionType.INVALID)
