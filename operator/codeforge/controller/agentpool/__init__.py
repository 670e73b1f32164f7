"""The AgentPool controller: Kopf handlers (thin), reconcile, object builders, conditions, autoscaler."""
