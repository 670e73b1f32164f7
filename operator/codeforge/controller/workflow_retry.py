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

from typing import Final

from codeforge.api.workflow import WorkflowSpec
from codeforge.orchestrator import RewindError, WorkflowRunner

RETRY_ANNOTATION: Final = "codeforge.ai/retry"

#: A refused retry: the status message says why (e.g. no step failed).
RetryError = RewindError


async def rewind_to_failed_step(runner: WorkflowRunner, thread_id: str, spec: WorkflowSpec) -> str | None:
    """The step the retry starts from (None: from the start); the orchestrator owns the rewind itself."""
    return await runner.rewind(thread_id, spec)
