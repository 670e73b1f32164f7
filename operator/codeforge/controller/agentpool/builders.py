"""Pure builders of the Kubernetes objects an AgentPool owns: agent Deployment, metrics Service, PDB.

Each takes the pool's identity and spec and returns a plain dict, so unit tests call them directly and the
handlers only send what they return. The agent pods are configured through `CODEFORGE_*` variables, the
interface of `codeforge-agent` (agent_image/codeforge_agent/config.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from codeforge.api.agentpool import API_VERSION, KIND, AgentPoolSpec, pool_queue_name
from codeforge.api.usage import RateLimitSpec
from codeforge.controller import ratelimits
from codeforge.controller.config import AgentDefaults
from codeforge.controller.kstatus import ObjectRef
from codeforge.redis.acl import user_name
from codeforge.redis.url import redact_credentials

JSON = dict[str, Any]

POOL_LABEL: Final = "codeforge.ai/pool"
ROLE_LABEL: Final = "codeforge.ai/role"
MANAGED_BY: Final = "codeforge-operator"
#: Read by the ReplicaSet controller on scale-in: pods with the lowest cost go first.
POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
CONTAINER_NAME: Final = "agent"
HEALTH_PORT_NAME: Final = "http"


@dataclass(frozen=True, slots=True)
class PoolRef(ObjectRef):
    """The identity of one AgentPool object (what owner references and names derive from)."""

    @property
    def queue(self) -> str:
        return pool_queue_name(self.namespace, self.name)


def rate_limit(ref: PoolRef, spec: AgentPoolSpec, defaults: AgentDefaults) -> ratelimits.Resolved | None:
    """The rate limit the pool's agents apply (the platform's for a fleet-wide key, else the namespace's);
    ValueError for a key that is neither declared fleet-wide nor given numbers."""
    if spec.rate_limit is None:
        return None
    return ratelimits.resolve(spec.rate_limit, ref.namespace, ref.name, defaults.fleet_rate_limits)


#: Variables only spec.rateLimit sets (neither handler settings nor spec.env).
RATE_LIMIT_ENV: Final = frozenset(RateLimitSpec(key="k", requests_per_minute=1).to_env())
# Variables the operator owns: handler settings may not override them.
RESERVED_ENV: Final = frozenset(
    {
        "CODEFORGE_POOL",
        "CODEFORGE_ROLE",
        "CODEFORGE_AGENT_ID",
        "CODEFORGE_QUEUE_URL",
        "CODEFORGE_REDIS_PASSWORD",
        "CODEFORGE_REDIS_PASSWORD_FILE",
        "CODEFORGE_REDIS_USERNAME",
        "CODEFORGE_CONCURRENCY",
        "CODEFORGE_LEASE_SECONDS",
        "CODEFORGE_TASK_TIMEOUT",
        "CODEFORGE_GRACE_SECONDS",
        "CODEFORGE_HANDLER",
        "CODEFORGE_HEALTH_PORT",
        "CODEFORGE_LOG_FORMAT",
        "CODEFORGE_WORKSPACE_DIR",
        "CODEFORGE_WORKSPACE_SIZE_LIMIT",
        "CODEFORGE_GIT_CREDENTIALS_DIR",
        "CODEFORGE_RATE_LIMIT_KEY",
        "CODEFORGE_RATE_LIMIT_RPM",
        "CODEFORGE_RATE_LIMIT_TPM",
        "CODEFORGE_RATE_LIMIT_BURST_SECONDS",
        "CODEFORGE_RATE_LIMIT_SCOPE",
    }
)
#: Where agent pods keep the Git cache and worktrees (an emptyDir) and find the Git credentials (a Secret).
WORKSPACE_VOLUME: Final = "workspace"
WORKSPACE_MOUNT: Final = "/var/lib/codeforge/workspaces"
GIT_CREDENTIALS_VOLUME: Final = "git-credentials"
GIT_CREDENTIALS_MOUNT: Final = "/var/run/secrets/codeforge/git"
#: The pool's own Redis identity (redis_acl): a Secret owned by the pool, its password mounted as a file.
REDIS_IDENTITY_VOLUME: Final = "redis-identity"
REDIS_IDENTITY_MOUNT: Final = "/var/run/secrets/codeforge/redis"
REDIS_PASSWORD_KEY: Final = "password"
#: The agent image's group: files of the mounted Secret are readable by it (mode 0440), nobody else.
AGENT_GID: Final = 10001
_SETTING_KEY: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Seconds between SIGTERM and the kubelet's SIGKILL that the agent keeps for handing tasks back.
GRACE_MARGIN_SECONDS: Final = 5


def names(pool: str) -> dict[str, str]:
    """Names of the owned objects; the Deployment carries the pool's own name, as users expect."""
    return {"deployment": pool, "service": f"{pool}-metrics", "pdb": pool, "redis": f"{pool}-agent-redis"}


def selector_labels(pool: str) -> dict[str, str]:
    """The immutable Deployment selector: only the pool name, so a role rename never orphans pods."""
    return {POOL_LABEL: pool}


def selector_string(pool: str) -> str:
    """The selector as the scale subresource publishes it (`status.selector`), for HPA and KEDA."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(pool).items())


def labels(pool: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "codeforge-agent",
        "app.kubernetes.io/instance": pool,
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/part-of": "codeforge",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        ROLE_LABEL: role,
        **selector_labels(pool),
    }


def owner_reference(ref: PoolRef) -> JSON:
    """Makes the object garbage-collected with its pool and lets `kubectl tree`/the GC find its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ref: PoolRef, name: str, role: str) -> JSON:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels(ref.name, role),
        "ownerReferences": [owner_reference(ref)],
    }


def _number(value: float) -> str:
    return format(value, "g")


def _env_name(key: str) -> str:
    """`pythonFunction` and `python_function` both become CODEFORGE_PYTHON_FUNCTION."""
    if not _SETTING_KEY.match(key):
        raise ValueError(f"spec.handler.settings: {key!r} is not a valid setting name (letters, digits, '_')")
    return "CODEFORGE_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()


def _env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def handler_env(spec: AgentPoolSpec) -> list[JSON]:
    env = [{"name": "CODEFORGE_HANDLER", "value": spec.handler.kind}]
    for key, value in sorted(spec.handler.settings.items()):
        name = _env_name(key)
        if name in RESERVED_ENV:
            raise ValueError(f"spec.handler.settings: {key!r} sets {name}, which the operator manages")
        if value is not None:
            env.append({"name": name, "value": _env_value(value)})
    return env


def agent_env(ref: PoolRef, spec: AgentPoolSpec, defaults: AgentDefaults) -> list[JSON]:
    """The environment that configures codeforge-agent; the pool's own `env` entries win on a clash."""
    env: list[JSON] = [
        {"name": "CODEFORGE_POOL", "value": ref.queue},
        {"name": "CODEFORGE_ROLE", "value": spec.role},
        # The pod name is the consumer name, so busy/idle reports map to pods for pod-deletion-cost.
        {"name": "CODEFORGE_AGENT_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if defaults.redis_acl:
        # The pool's own user; whatever credentials the operator's URL carries stay with the operator.
        env += [
            {"name": "CODEFORGE_QUEUE_URL", "value": redact_credentials(defaults.queue_url)},
            {"name": "CODEFORGE_REDIS_USERNAME", "value": user_name(ref.queue)},
            {
                "name": "CODEFORGE_REDIS_PASSWORD_FILE",
                "value": f"{REDIS_IDENTITY_MOUNT}/{REDIS_PASSWORD_KEY}",
            },
        ]
    else:
        env.append({"name": "CODEFORGE_QUEUE_URL", "value": defaults.queue_url})
    if defaults.redis_password_secret is not None and not defaults.redis_acl:
        secret, key = defaults.redis_password_secret
        env.append(
            {"name": "CODEFORGE_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        )
    env += [
        {"name": "CODEFORGE_CONCURRENCY", "value": str(spec.concurrency)},
        {"name": "CODEFORGE_LEASE_SECONDS", "value": _number(spec.queue.lease_seconds)},
        {
            "name": "CODEFORGE_GRACE_SECONDS",
            "value": str(max(0, spec.termination_grace_period_seconds - GRACE_MARGIN_SECONDS)),
        },
        {"name": "CODEFORGE_HEALTH_PORT", "value": str(spec.metrics_port)},
        {"name": "CODEFORGE_LOG_FORMAT", "value": defaults.log_format},
    ]
    if spec.queue.task_timeout_seconds is not None:
        env.append({"name": "CODEFORGE_TASK_TIMEOUT", "value": _number(spec.queue.task_timeout_seconds)})
    if spec.workspace is not None:
        env += [
            {"name": "CODEFORGE_WORKSPACE_DIR", "value": WORKSPACE_MOUNT},
            {"name": "CODEFORGE_WORKSPACE_SIZE_LIMIT", "value": spec.workspace.cache_size_limit},
        ]
        if spec.workspace.credentials_secret:
            env.append({"name": "CODEFORGE_GIT_CREDENTIALS_DIR", "value": GIT_CREDENTIALS_MOUNT})
    limit = rate_limit(ref, spec, defaults)
    if limit is not None:
        env += [{"name": k, "value": v} for k, v in limit.to_env().items()]
    env += handler_env(spec)
    user = [e.to_k8s() for e in spec.env]
    overridden = {e["name"] for e in user}
    if taken := sorted(overridden & RATE_LIMIT_ENV):
        # The agent would apply other numbers, or another namespace's or the fleet's key (its Redis user
        # refuses keys not granted, but the pool should say why at once).
        raise ValueError(f"spec.env: {taken[0]} is set by the operator from spec.rateLimit; remove it")
    return [e for e in env if e["name"] not in overridden] + user


def _probe(path: str, period: int, failures: int) -> JSON:
    return {
        "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def pod_template(ref: PoolRef, spec: AgentPoolSpec, defaults: AgentDefaults) -> JSON:
    container: JSON = {
        "name": CONTAINER_NAME,
        "image": spec.image or defaults.image,
        "env": agent_env(ref, spec, defaults),
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.env_from:
        container["envFrom"] = [e.to_k8s() for e in spec.env_from]
    resources = spec.resources.to_k8s()
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: v for k, v in resources.items() if v}
    pod: JSON = {
        "containers": [container],
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        # Hundreds of Services in a namespace would otherwise become thousands of env variables.
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.workspace is not None:
        _add_workspace_volumes(pod, container, spec)
    if defaults.redis_acl:
        _add_volume(
            pod,
            container,
            {
                "name": REDIS_IDENTITY_VOLUME,
                "secret": {"secretName": names(ref.name)["redis"], "defaultMode": 0o440},
            },
            {"name": REDIS_IDENTITY_VOLUME, "mountPath": REDIS_IDENTITY_MOUNT, "readOnly": True},
        )
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    metadata: JSON = {"labels": {**spec.pod_labels, **labels(ref.name, spec.role)}}
    if spec.pod_annotations:
        metadata["annotations"] = dict(spec.pod_annotations)
    return {"metadata": metadata, "spec": pod}


def _add_workspace_volumes(pod: JSON, container: JSON, spec: AgentPoolSpec) -> None:
    """The Git cache volume (emptyDir with the pool's sizeLimit) and the credentials Secret, read-only."""
    assert spec.workspace is not None
    volumes: list[JSON] = [
        {"name": WORKSPACE_VOLUME, "emptyDir": {"sizeLimit": spec.workspace.cache_size_limit}}
    ]
    mounts: list[JSON] = [{"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_MOUNT}]
    if spec.workspace.credentials_secret:
        volumes.append(
            {
                "name": GIT_CREDENTIALS_VOLUME,
                "secret": {"secretName": spec.workspace.credentials_secret, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": GIT_CREDENTIALS_VOLUME, "mountPath": GIT_CREDENTIALS_MOUNT, "readOnly": True})
    for volume, mount in zip(volumes, mounts, strict=True):
        _add_volume(pod, container, volume, mount)


def _add_volume(pod: JSON, container: JSON, volume: JSON, mount: JSON) -> None:
    pod.setdefault("volumes", []).append(volume)
    container.setdefault("volumeMounts", []).append(mount)
    if "secret" in volume:
        # Secret files belong to this group, so the agent reads them whatever user the image runs as.
        pod["securityContext"]["fsGroup"] = AGENT_GID


def build_deployment(ref: PoolRef, spec: AgentPoolSpec, replicas: int, defaults: AgentDefaults) -> JSON:
    """The agent Deployment at `replicas` (decided by the autoscaler or an external one)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ref, names(ref.name)["deployment"], spec.role),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(ref.name)},
            # New agents come up before old ones drain: a rollout never lowers capacity.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": pod_template(ref, spec, defaults),
        },
    }


def build_metrics_service(ref: PoolRef, spec: AgentPoolSpec) -> JSON:
    """A headless Service over the agents' health port: Prometheus (or a ServiceMonitor) scrapes every pod."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, names(ref.name)["service"], spec.role),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(ref.name),
            "ports": [{"name": "metrics", "port": spec.metrics_port, "targetPort": HEALTH_PORT_NAME}],
            "publishNotReadyAddresses": True,
        },
    }


def build_pdb(ref: PoolRef, spec: AgentPoolSpec) -> JSON | None:
    """Limits how many agents a node drain evicts at once; None when the pool opts out."""
    if not spec.pod_disruption_budget.enabled:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ref, names(ref.name)["pdb"], spec.role),
        "spec": {
            "maxUnavailable": spec.pod_disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector_labels(ref.name)},
            # Pods that never became ready (bad image) must not block a drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


# Deletion costs: the ReplicaSet removes the cheapest pods first on scale-in.
COST_UNREPORTED: Final = -100  # not reporting to the queue: starting, stuck or gone; remove first
COST_IDLE: Final = 0
COST_BUSY: Final = 1000  # running tasks: remove last


def deletion_cost(state: str | None) -> int:
    if state == "busy":
        return COST_BUSY
    if state == "idle":
        return COST_IDLE
    return COST_UNREPORTED


def deletion_cost_patches(pods: Mapping[str, str | None], agent_states: Mapping[str, str]) -> dict[str, JSON]:
    """Annotation patches for the pods whose deletion cost must change, by pod name.

    `pods` maps a pod name to its current annotation value (None when absent); `agent_states` maps an
    agent id (the pod name) to the state it last reported ("busy" or "idle").
    """
    patches: dict[str, JSON] = {}
    for pod, current in pods.items():
        wanted = str(deletion_cost(agent_states.get(pod)))
        if current != wanted:
            patches[pod] = {"metadata": {"annotations": {POD_DELETION_COST: wanted}}}
    return patches
