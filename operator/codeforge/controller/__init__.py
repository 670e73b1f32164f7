"""The operator's Kopf handlers: `kopf run -m codeforge.controller` loads them all by importing this package.

Kopf handlers stay thin and call plain functions (`agentpool/reconcile`, `agentpool/builders`,
`workflow/supervisor`, ...).
`leader_handlers` comes last on purpose: its cleanup handler (releasing the leader Lease) must run after the
others.
"""

from codeforge.controller import services
from codeforge.controller.agentpool import handlers as agentpool_handlers
from codeforge.controller.workflow import handlers as workflow_handlers

# isort: split
from codeforge.controller import leader_handlers

__all__ = ["agentpool_handlers", "leader_handlers", "services", "workflow_handlers"]
