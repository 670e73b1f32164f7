"""Retry a failed Workflow from its failed step, on the same LangGraph thread (thread id = Workflow uid).

How a user asks (the Kubernetes idiom of `kubectl rollout restart`: an annotation carrying a new value):

    kubectl annotate workflow my-wf codeforge.ai/retry="$(date +%s)" --overwrite

A Failed Workflow whose `codeforge.ai/retry` annotation differs from `status.retryToken` is retried once per
new value. The run is rewound to just before its failed step: the checkpointed state keeps every result of
the steps that succeeded, the failed step gets a new visit (visit + 1), so its task ids are new and the
queue, which is idempotent on task ids, runs it again instead of returning the old failure; then the graph
continues as usual. The rewind is one LangGraph `aupdate_state` "as the failed step's join node", a new
checkpoint on top of the old ones: the history of the failed attempt stays readable.

A request made while the Workflow is still running is consumed when the run ends (the status records the
token it saw), so an early annotation never triggers a surprise rerun later.
"""

from __future__ import annotations

from typing import Any, Final

from langchain_core.runnables import RunnableConfig

from codeforge.api.workflow import WorkflowSpec
from codeforge.orchestrator import WorkflowRunner

RETRY_ANNOTATION: Final = "codeforge.ai/retry"


class RetryError(Exception):
    """The failed run cannot be rewound (the message says why)."""


async def rewind_to_failed_step(runner: WorkflowRunner, thread_id: str, spec: WorkflowSpec) -> str | None:
    """Prepare the thread so that `runner.run` re-runs the failed step; returns its name.

    None when there is nothing to rewind: the run never started, or it stopped mid-way (a restart resumes it).
    """
    graph = runner.graph(spec)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    snapshot = await graph.aget_state(config)
    values: dict[str, Any] = dict(snapshot.values or {})
    if not values or snapshot.next:
        return None
    failed = next((r for r in reversed(values.get("history") or []) if r.get("status") == "failed"), None)
    if failed is None:
        raise RetryError(f"nothing to retry: no step failed ({values.get('error') or 'the run succeeded'})")
    step, visit = str(failed["step"]), int(failed["visit"])
    payloads, base = None, None
    async for earlier in graph.aget_state_history(config):
        route = (earlier.values or {}).get("route") or {}
        if route.get("to") == step and route.get("visit") == visit and "payloads" in route:
            payloads, base = route["payloads"], route.get("base")
            break
    if payloads is None:
        raise RetryError(f"the checkpoint history of step {step!r} is gone: cannot retry it")
    route = {"to": step, "visit": visit + 1, "payloads": payloads}
    if base is not None:  # spec.workspace: the retry starts from the commit the failed visit was given
        route["base"] = base
    await graph.aupdate_state(config, {"error": None, "route": route}, as_node=step)
    return step
