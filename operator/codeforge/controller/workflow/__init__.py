"""The Workflow controller: Kopf handlers (thin), the per-Workflow supervisor, the registry of live
Workflows, status tracking and the batched status writer."""
