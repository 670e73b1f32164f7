"""The operator's Kopf handlers: `kopf run -m codeforge.controller` loads them all by importing this package.

Kopf handlers stay thin and call plain functions (`*_reconcile`, `builders`, `autoscaler`, `conditions`).
The Workflow handlers join here (`from codeforge.controller import workflow_handlers`) once written.
"""

from codeforge.controller import agentpool_handlers, runtime, workflow_handlers

__all__ = ["agentpool_handlers", "runtime", "workflow_handlers"]
