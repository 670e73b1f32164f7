"""The operator's Kopf handlers: `kopf run -m codeforge.controller` loads them all by importing this package.

Kopf handlers stay thin and call plain functions (`*_reconcile`, `builders`, `autoscaler`, `conditions`).
`leader_handlers` comes last on purpose: its cleanup handler (releasing the leader Lease) must run after the
others.
"""

from codeforge.controller import agentpool_handlers, runtime, workflow_handlers

# isort: split
from codeforge.controller import leader_handlers

__all__ = ["agentpool_handlers", "leader_handlers", "runtime", "workflow_handlers"]
