"""Which AgentPools a Workflow may use (README, "Multi-tenancy"): those of its own namespace, and another
namespace's pool only where that AgentPool lists the Workflow's namespace in `spec.access.namespaces`.

Checked when the Workflow is created, changed or resumed (the validate handler marks it Invalid, naming the
step and the pool) and again before its run starts, so no task reaches a foreign queue in between. A pool of
another namespace that does not exist is refused the same way: the message does not tell a tenant whether
another namespace has a pool of that name.
"""

from __future__ import annotations

from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolSpec, grants_access
from codeforge.api.workflow import WorkflowSpec, WorkflowSpecError
from codeforge.controller.kube import AGENTPOOLS, KubeApi, KubeApiError


async def access_problems(kube: KubeApi, namespace: str, spec: WorkflowSpec) -> list[tuple[str, str]]:
    """(field, message) per step whose pool the Workflow's namespace may not use (empty: all allowed)."""
    problems: list[tuple[str, str]] = []
    granted: dict[str, bool] = {}
    for index, step in enumerate(spec.steps):
        if "/" not in step.pool:
            continue
        pool_namespace, name = step.pool.split("/", 1)
        if pool_namespace == namespace:
            continue
        if step.pool not in granted:
            granted[step.pool] = await _grants(kube, pool_namespace, name, namespace)
        if not granted[step.pool]:
            problems.append(
                (
                    f"spec.steps[{index}].pool",
                    f"step {step.name!r}: pool {step.pool!r} is in another namespace and does not "
                    f"grant access to namespace {namespace!r}: use a pool of namespace {namespace!r}, "
                    f"or ask the owners of {pool_namespace!r} to add {namespace!r} to the AgentPool's "
                    "spec.access.namespaces",
                )
            )
    return problems


async def _grants(kube: KubeApi, pool_namespace: str, name: str, namespace: str) -> bool:
    body = await kube.get(AGENTPOOLS, pool_namespace, name)
    if body is None:
        return False
    try:
        spec = AgentPoolSpec.model_validate(body.get("spec", {}))
    except ValidationError:
        return False  # an invalid pool runs nothing and grants nothing
    return grants_access(spec, pool_namespace, namespace)


async def check_access(kube: KubeApi, namespace: str, spec: WorkflowSpec) -> None:
    """WorkflowSpecError listing the steps whose pools are not granted; TemporaryError-worthy
    KubeApiErrors (the API server is down) propagate."""
    try:
        problems = await access_problems(kube, namespace, spec)
    except KubeApiError as exc:
        if exc.retryable:
            raise
        raise WorkflowSpecError(
            [("spec.steps", f"cannot check the access to the Workflow's pools: {exc.message}")]
        ) from exc
    if problems:
        raise WorkflowSpecError(problems)
