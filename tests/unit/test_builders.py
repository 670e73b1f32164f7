"""Pure builders of the AgentPool's Deployment, metrics Service and PodDisruptionBudget."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from codeforge.api.agentpool import AgentPoolSpec
from codeforge.controller.agentpool import builders
from codeforge.controller.agentpool.drift import differences
from codeforge.controller.config import AgentDefaults
from codeforge_agent.config import OPTIONS, AgentConfig

REF = builders.PoolRef(namespace="team-a", name="research", uid="uid-123")
DEFAULTS = AgentDefaults(
    queue_url="redis://redis:6379/0", redis_password_secret=("redis-auth", "password"), log_format="json"
)


def make_spec(**overrides: Any) -> AgentPoolSpec:
    raw: dict[str, Any] = {
        "role": "research",
        "image": "ghcr.io/example/agent:1.0",
        "handler": {"kind": "python", "settings": {"pythonFunction": "agents.research:run"}},
        "concurrency": 4,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "env": [{"name": "OPENAI_MODEL", "value": "gpt-4o"}],
        "envFrom": [{"secretRef": {"name": "llm-keys"}}],
        "nodeSelector": {"pool": "agents"},
        "tolerations": [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {}},
        "serviceAccountName": "agent",
    }
    raw.update(overrides)
    return AgentPoolSpec.model_validate(raw)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_deployment_carries_the_pod_settings_of_the_spec() -> None:
    deployment = builders.build_deployment(REF, make_spec(), 7, DEFAULTS)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 7
    assert container["image"] == "ghcr.io/example/agent:1.0"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    assert container["envFrom"] == [{"secretRef": {"name": "llm-keys"}}]
    assert pod["nodeSelector"] == {"pool": "agents"}
    assert pod["tolerations"] == [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"podAntiAffinity": {}}
    assert pod["serviceAccountName"] == "agent"
    assert pod["terminationGracePeriodSeconds"] == 120


def test_agent_env_configures_codeforge_agent() -> None:
    env = env_of(builders.build_deployment(REF, make_spec(), 1, DEFAULTS))
    assert env["CODEFORGE_POOL"] == "team-a/research"
    assert env["CODEFORGE_QUEUE_URL"] == "redis://redis:6379/0"
    assert env["CODEFORGE_AGENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CODEFORGE_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    assert env["CODEFORGE_CONCURRENCY"] == "4"
    assert env["CODEFORGE_LEASE_SECONDS"] == "30"
    assert env["CODEFORGE_GRACE_SECONDS"] == "115"  # below terminationGracePeriodSeconds
    assert env["CODEFORGE_HANDLER"] == "python"
    assert env["CODEFORGE_PYTHON_FUNCTION"] == "agents.research:run"
    assert env["OPENAI_MODEL"] == "gpt-4o"


def test_the_pools_lease_reaches_its_agents_claims() -> None:
    # spec.queue.leaseSeconds is the lease each claim of the pool's agents carries, not a heartbeat pace.
    env = env_of(builders.build_deployment(REF, make_spec(queue={"leaseSeconds": 7.5}), 1, DEFAULTS))
    assert env["CODEFORGE_LEASE_SECONDS"] == "7.5"
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    assert AgentConfig.from_sources([], plain).lease_seconds == 7.5


def test_the_pools_rate_limit_reaches_its_agents() -> None:
    spec = make_spec(rateLimit={"key": "openai/gpt-4.1", "requestsPerMinute": 500, "tokensPerMinute": 30000})
    env = env_of(builders.build_deployment(REF, spec, 1, DEFAULTS))
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    limit = AgentConfig.from_sources([], plain).rate_limit
    assert limit is not None
    assert (limit.key, limit.requests_per_minute, limit.tokens_per_minute) == ("openai/gpt-4.1", 500, 30000)
    assert limit.scope == REF.namespace  # not declared fleet-wide by the platform: the namespace's own key
    with pytest.raises(ValueError, match="operator manages"):  # a handler setting cannot bypass it
        builders.build_deployment(
            REF, make_spec(handler={"kind": "echo", "settings": {"rateLimitRpm": 10**9}}), 1, DEFAULTS
        )


def test_every_operator_set_variable_is_one_the_agent_reads() -> None:
    known = {option.env for option in OPTIONS} | {"CODEFORGE_REDIS_PASSWORD"}
    spec = make_spec(rateLimit={"key": "k", "requestsPerMinute": 1})
    env = env_of(builders.build_deployment(REF, spec, 1, DEFAULTS))
    assert {name for name in env if name.startswith("CODEFORGE_")} <= known


def test_the_agent_accepts_the_environment_the_operator_builds() -> None:
    env = env_of(builders.build_deployment(REF, make_spec(), 1, DEFAULTS))
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    plain["CODEFORGE_AGENT_ID"] = "research-abc-123"  # what the downward API fills in
    config = AgentConfig.from_sources([], plain)
    assert (config.pool, config.concurrency, config.handler.kind) == ("team-a/research", 4, "python")
    assert config.handler.python_function == "agents.research:run"
    assert config.agent_id == "research-abc-123"


def test_list_settings_become_json_and_user_env_overrides_ours() -> None:
    spec = make_spec(
        handler={
            "kind": "command",
            "settings": {"command": ["python3", "agent.py"], "commandEnv": {"A": "1"}},
        },
        env=[{"name": "CODEFORGE_LOG_FORMAT", "value": "text"}],
    )
    container = builders.build_deployment(REF, spec, 1, DEFAULTS)["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))  # no duplicates: the user's entry replaced ours
    env = env_of({"spec": {"template": {"spec": {"containers": [container]}}}})
    assert env["CODEFORGE_COMMAND"] == '["python3","agent.py"]'
    assert env["CODEFORGE_COMMAND_ENV"] == '{"A":"1"}'
    assert env["CODEFORGE_LOG_FORMAT"] == "text"


def test_handler_settings_cannot_override_operator_variables() -> None:
    spec = make_spec(handler={"kind": "echo", "settings": {"queueUrl": "redis://elsewhere"}})
    with pytest.raises(ValueError, match="CODEFORGE_QUEUE_URL"):
        builders.build_deployment(REF, spec, 1, DEFAULTS)


def test_owned_objects_have_owner_references_and_the_pool_selector() -> None:
    spec = make_spec()
    objects = [
        builders.build_deployment(REF, spec, 1, DEFAULTS),
        builders.build_metrics_service(REF, spec),
        builders.build_pdb(REF, spec),
    ]
    for obj in objects:
        assert obj is not None
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "codeforge.ai/v1alpha1",
            "kind": "AgentPool",
            "name": "research",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["labels"]["codeforge.ai/pool"] == "research"
    deployment, service, pdb = (obj or {} for obj in objects)
    assert deployment["spec"]["selector"] == {"matchLabels": {"codeforge.ai/pool": "research"}}
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels["codeforge.ai/pool"] == "research"
    assert service["spec"]["selector"] == {"codeforge.ai/pool": "research"}
    assert service["metadata"]["name"] == "research-metrics"
    assert pdb["spec"]["maxUnavailable"] == "10%"


def test_pod_labels_cannot_break_the_selector() -> None:
    spec = make_spec(podLabels={"codeforge.ai/pool": "other", "team": "a"})
    labels = builders.build_deployment(REF, spec, 1, DEFAULTS)["spec"]["template"]["metadata"]["labels"]
    assert labels["codeforge.ai/pool"] == "research"
    assert labels["team"] == "a"


def test_pdb_can_be_disabled() -> None:
    assert builders.build_pdb(REF, make_spec(podDisruptionBudget={"enabled": False})) is None


def test_scale_in_marks_idle_and_silent_agents_cheaper_than_busy_ones() -> None:
    pods = {"a": None, "b": None, "c": "1000", "d": "0"}
    states = {"a": "busy", "b": "idle", "c": "busy"}  # d reports nothing
    patches = builders.deletion_cost_patches(pods, states)
    costs = {pod: int(p["metadata"]["annotations"][builders.POD_DELETION_COST]) for pod, p in patches.items()}
    assert "c" not in patches  # already right: no needless patch
    assert costs["d"] < costs["b"] < costs["a"]


def test_drift_ignores_server_defaults_and_equal_quantities_but_sees_changes() -> None:
    wanted = builders.build_deployment(REF, make_spec(), 3, DEFAULTS)
    live = copy.deepcopy(wanted)
    live["metadata"].update(resourceVersion="42", generation=3)
    live["spec"]["progressDeadlineSeconds"] = 600
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "0.5"
    assert differences(wanted, live) == []
    live["spec"]["replicas"] = 10
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert differences(wanted, live) == [".spec.replicas", ".spec.template.spec.containers[0].image"]


def test_pools_without_an_image_get_the_operators_agent_image() -> None:
    spec = make_spec(image=None)
    defaults = AgentDefaults(queue_url="memory://", image="registry.local/agent:9")
    container = builders.build_deployment(REF, spec, 1, defaults)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/agent:9"
