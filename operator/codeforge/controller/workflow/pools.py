"""A Workflow whose steps name AgentPools that do not exist waits, Pending, with the condition PoolNotFound
(and an Event), and starts once they appear: before, its tasks would have queued for agents nobody runs."""

from __future__ import annotations

from typing import Final

from codeforge.api import agentpool
from codeforge.api.workflow import WorkflowSpec
from codeforge.controller.kube import Kind, KubeApi

AGENTPOOLS: Final = Kind(agentpool.API_VERSION, agentpool.PLURAL)
#: How often a waiting Workflow looks for its pools again (first wait, then doubling to the cap).
RECHECK_SECONDS: Final = 1.0
RECHECK_CAP_SECONDS: Final = 10.0


async def missing_pools(api: KubeApi, spec: WorkflowSpec) -> list[str]:
    """The pools (`namespace/name`, as the qualified spec names them) no AgentPool object backs."""
    missing = []
    for pool in spec.task_pools:
        namespace, _, name = pool.rpartition("/")
        if await api.get(AGENTPOOLS, namespace, name) is None:
            missing.append(pool)
    return missing
