"""The operator's Kopf handlers: `kopf run -m codeforge.controller` loads them all by importing this package.

Kopf handlers stay thin and call plain functions (`agentpool/reconcile`, `agentpool/builders`,
`workflow/supervisor`, ...).
Kopf runs startup and cleanup handlers in the order they were registered, so the import order matters:
`services` registers first (every handler module imports it), so the Workflow runs hand it their shutdown
(`OperatorServices.before_close`) to write their last statuses before it closes the API session;
`leader_handlers` comes last: its cleanup handler (releasing the leader Lease) must
run after the others.
"""

from codeforge.controller.workflow import handlers as workflow_handlers

# isort: split
from codeforge.controller import services
from codeforge.controller.agentpool import handlers as agentpool_handlers

# isort: split
from codeforge.controller import leader_handlers

__all__ = ["agentpool_handlers", "leader_handlers", "services", "workflow_handlers"]
