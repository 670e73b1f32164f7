{{/* Names, labels and the values every template derives from. */}}

{{- define "codeforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "codeforge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "codeforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "codeforge.labels" -}}
helm.sh/chart: {{ include "codeforge.chart" .ctx }}
{{ include "codeforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: codeforge
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "codeforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codeforge.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "codeforge.operator.fullname" -}}
{{- printf "%s-operator" (include "codeforge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A shard's Deployment (and PDB): the operator's name, suffixed by the shard's index when operator.shards > 1;
pass (dict "ctx" $ "shard" N). */}}
{{- define "codeforge.operator.shardName" -}}
{{- $name := include "codeforge.operator.fullname" .ctx -}}
{{- if gt (int .ctx.Values.operator.shards) 1 -}}
{{- printf "%s-%d" ($name | trunc 60 | trimSuffix "-") (int .shard) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/* The leader Leases: one, or one per shard (the operator suffixes the name with the shard's index). */}}
{{- define "codeforge.leaseNames" -}}
{{- $name := include "codeforge.leaseName" . -}}
{{- $shards := int .Values.operator.shards -}}
{{- if gt $shards 1 -}}
{{- range $shard := until $shards }}{{ if $shard }}, {{ end }}{{ printf "%s-%d" $name $shard | quote }}{{ end -}}
{{- else -}}
{{- $name | quote -}}
{{- end -}}
{{- end -}}

{{- define "codeforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "codeforge.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "codeforge.leaseName" -}}
{{- default (include "codeforge.operator.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/* The namespaces the operator watches: the list, or the release namespace in namespaced scope. */}}
{{- define "codeforge.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- join "," .Values.operator.watchNamespaces -}}
{{- else if eq .Values.rbac.scope "namespaced" -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "codeforge.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* ---------------------------------------------------------------- Redis */}}

{{- define "codeforge.redis.fullname" -}}
{{- printf "%s-redis" (include "codeforge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "codeforge.redis.headless" -}}
{{- printf "%s-redis-headless" (include "codeforge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the Redis password ("" when an external Redis has none). */}}
{{- define "codeforge.redis.secretName" -}}
{{- if eq .Values.redis.mode "external" -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- default (include "codeforge.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "codeforge.redis.secretKey" -}}
{{- if eq .Values.redis.mode "external" -}}
{{- .Values.redis.external.existingSecretPasswordKey -}}
{{- else -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/* redis.durability, or its default: replicated for a cluster with replicas, fsync for one server, empty
for an external Redis (its URL says). */}}
{{- define "codeforge.redis.durability" -}}
{{- $r := .Values.redis -}}
{{- $replicas := and (eq $r.mode "cluster") (gt (int $r.cluster.replicasPerMaster) 0) -}}
{{- $mode := $r.durability | default (ternary "replicated" (ternary "" "fsync" (eq $r.mode "external")) $replicas) -}}
{{- if and (eq $mode "replicated") (ne $r.mode "external") (not $replicas) -}}
{{- fail "redis.durability replicated needs replicas: use redis.mode cluster with redis.cluster.replicasPerMaster >= 1, or redis.durability fsync" -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* The queue URL the operator and the agents get, derived from redis.mode and redis.durability (the password is
never in it). */}}
{{- define "codeforge.queueUrl" -}}
{{- $host := printf "%s.%s.svc.%s" (include "codeforge.redis.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- $url := "" -}}
{{- if eq .Values.redis.mode "cluster" -}}
{{- $url = printf "redis+cluster://%s:6379" $host -}}
{{- else if eq .Values.redis.mode "standalone" -}}
{{- $url = printf "redis://%s:6379/0" $host -}}
{{- else -}}
{{- $url = required "redis.external.url is required when redis.mode is external" .Values.redis.external.url -}}
{{- end -}}
{{- $durability := include "codeforge.redis.durability" . -}}
{{- if $durability -}}
{{- $url = printf "%s%sdurability=%s" $url (ternary "&" "?" (contains "?" $url)) $durability -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root filesystem, no capabilities. */}}
{{- define "codeforge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "codeforge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Checks across values that the schema cannot express; rendered (empty) by the operator Deployment. */}}
{{- define "codeforge.validate" -}}
{{- if eq .Values.redis.mode "cluster" -}}
{{- $nodes := int .Values.redis.cluster.nodes -}}
{{- $per := add1 (int .Values.redis.cluster.replicasPerMaster) -}}
{{- if or (ne (mod $nodes $per) 0) (lt (div $nodes $per) 3) -}}
{{- fail (printf "redis.cluster.nodes (%d) must be a multiple of 1 + redis.cluster.replicasPerMaster (%d) with at least 3 masters" $nodes $per) -}}
{{- end -}}
{{- end -}}
{{- $le := .Values.operator.leaderElection -}}
{{- if and (not $le.enabled) (gt (int .Values.operator.replicas) 1) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: without it every replica would be active" -}}
{{- end -}}
{{- if $le.enabled -}}
{{- if le (float64 $le.leaseDuration) (float64 $le.renewDeadline) -}}
{{- fail "operator.leaderElection.renewDeadline must be less than leaseDuration: a cut-off leader must stop before a standby takes over" -}}
{{- end -}}
{{- if le (float64 $le.renewDeadline) (mulf 1.2 (float64 $le.retryPeriod)) -}}
{{- fail "operator.leaderElection.renewDeadline must be more than 1.2 x retryPeriod" -}}
{{- end -}}
{{- end -}}
{{- end -}}
