{{/* The operator's permissions on namespaced resources; the same rules in a ClusterRole or in each Role. */}}
{{- define "codeforge.rbac.namespacedRules" -}}
# AgentPools and Workflows: watch them, keep Kopf's annotations and finalizer, write their status.
- apiGroups: ["codeforge.ai"]
  resources: ["agentpools", "workflows"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["codeforge.ai"]
  resources: ["agentpools/status", "workflows/status"]
  verbs: ["get", "patch", "update"]
# A finished Workflow whose spec.ttlDeletesWorkflow asks for it is deleted when its TTL passes.
- apiGroups: ["codeforge.ai"]
  resources: ["workflows"]
  verbs: ["delete"]
# What an AgentPool owns: its Deployment, metrics Service and PodDisruptionBudget.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- if .Values.agent.redisIdentity.enabled }}
# Each pool's Redis password Secret (agent.redisIdentity): created once, read to set the pool's ACL user,
# replaced when an earlier pool of the same name left it. No list or watch: it reads only the names it made.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
{{- end }}
# Agent pods: read their state, set pod-deletion-cost so scale-in removes idle agents first.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Events on scale changes and step transitions.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

