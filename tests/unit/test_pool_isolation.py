"""Isolation (README, "Multi-tenancy"): the AgentPool's access list, the agent pods' own Redis identity (env,
mounted Secret, no admin credentials), the ACL rules, and the operator settings that turn them on."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolSpec, grants_access
from codeforge.controller.agentpool import builders, identity
from codeforge.controller.config import AgentDefaults, OperatorConfig
from codeforge.controller.env import ConfigError
from codeforge.queue.keys import glob_escape, pool_key_patterns
from codeforge.redis import acl
from codeforge.redis.url import parse_url, redact_credentials

REF = builders.PoolRef(namespace="team-a", name="research", uid="uid-1")
ADMIN_URL = "redis://:admin-secret@redis:6379/0"
ACL_ON = AgentDefaults(
    queue_url=ADMIN_URL, redis_acl=True, redis_password_secret=("codeforge-redis", "password")
)


def spec(**extra: Any) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate({"role": "research", "handler": {"kind": "echo"}, **extra})


def pod(defaults: AgentDefaults, pool: AgentPoolSpec | None = None) -> dict[str, Any]:
    body = builders.build_deployment(REF, pool or spec(), 1, defaults)
    result: dict[str, Any] = body["spec"]["template"]["spec"]
    return result


def test_access_lists_namespaces_bounded_and_valid() -> None:
    pool = spec(access={"namespaces": ["team-b"]})
    assert grants_access(pool, "team-a", "team-a")
    assert grants_access(pool, "team-a", "team-b")
    assert not grants_access(pool, "team-a", "team-c")
    assert not grants_access(spec(), "team-a", "team-b")
    with pytest.raises(ValidationError, match="pattern"):
        spec(access={"namespaces": ["Team_B"]})
    with pytest.raises(ValidationError, match="256"):
        spec(access={"namespaces": [f"ns-{i}" for i in range(257)]})


def test_agents_get_their_pools_user_and_a_mounted_password_never_the_admins() -> None:
    p = pod(ACL_ON)
    container = p["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["CODEFORGE_QUEUE_URL"]["value"] == "redis://redis:6379/0"
    assert env["CODEFORGE_REDIS_USERNAME"]["value"] == "codeforge-pool:team-a/research"
    assert env["CODEFORGE_REDIS_PASSWORD_FILE"]["value"] == "/var/run/secrets/codeforge/redis/password"
    assert "CODEFORGE_REDIS_PASSWORD" not in env  # the shared admin Secret is not referenced
    assert "admin-secret" not in str(p)
    volume = next(v for v in p["volumes"] if v["name"] == builders.REDIS_IDENTITY_VOLUME)
    assert volume["secret"] == {"secretName": "research-agent-redis", "defaultMode": 0o440}
    mount = next(m for m in container["volumeMounts"] if m["name"] == builders.REDIS_IDENTITY_VOLUME)
    assert mount["readOnly"] is True
    assert p["securityContext"]["fsGroup"] == builders.AGENT_GID


def test_without_acl_the_pods_keep_the_shared_password() -> None:
    shared = AgentDefaults(
        queue_url="redis://redis:6379/0", redis_password_secret=("codeforge-redis", "password")
    )
    env = {e["name"]: e for e in pod(shared)["containers"][0]["env"]}
    assert env["CODEFORGE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "codeforge-redis"
    assert "CODEFORGE_REDIS_USERNAME" not in env


def test_workspace_and_identity_volumes_together() -> None:
    p = pod(ACL_ON, spec(workspace={"credentialsSecret": "git"}))
    assert [v["name"] for v in p["volumes"]] == ["workspace", "git-credentials", "redis-identity"]
    assert len(p["containers"][0]["volumeMounts"]) == 3


def test_handler_settings_cannot_set_the_identity() -> None:
    with pytest.raises(ValueError, match="operator manages"):
        builders.handler_env(spec(handler={"kind": "echo", "settings": {"redisUsername": "x"}}))


def test_the_secret_is_owned_by_the_pool_and_immutable() -> None:
    secret = identity.build_secret(REF, "research", "pw")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["immutable"] is True
    assert base64.b64decode(secret["data"]["password"]) == b"pw"


def test_acl_rules_reset_hash_keys_channels_and_an_allow_list() -> None:
    rules = identity.user_rules(REF, "pw", AgentDefaults(queue_url="", acl_key_patterns=("cf:rl:*",)))
    assert rules[:3] == ["reset", "on", f"#{acl.password_hash('pw')}"]
    assert "pw" not in rules
    assert ">pw" not in rules
    assert "~cf:{team-a/research}:*" in rules
    assert "~cf:rl:*" in rules
    assert "&cf:{team-a/research}:*" in rules
    assert "-@all" in rules
    for dangerous in ("+keys", "+scan", "+flushall", "+flushdb", "+config", "+acl", "+monitor", "+@all"):
        assert dangerous not in rules
    with pytest.raises(ValueError, match="key pattern"):
        acl.agent_rules("pw", [], [])


def test_glob_metacharacters_are_escaped() -> None:
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    assert pool_key_patterns("ns/p") == ["cf:{ns/p}:*"]


def test_cluster_node_addresses_include_replicas_and_skip_failed_nodes() -> None:
    reply = {
        "10.0.0.1:6379@16379": {"flags": "myself,master", "hostname": ""},
        "10.0.0.2:6379@16379": {"flags": "slave", "hostname": "redis-1.redis"},
        "10.0.0.3:6379@16379": {"flags": "master,fail", "hostname": ""},
    }
    assert acl.cluster_node_addresses(reply) == [("10.0.0.1", 6379), ("redis-1.redis", 6379)]


def test_operator_settings() -> None:
    config = OperatorConfig.from_env(
        {
            "CODEFORGE_QUEUE_URL": ADMIN_URL,
            "CODEFORGE_AGENT_REDIS_ACL": "true",
            "CODEFORGE_AGENT_REDIS_ACL_KEYS": "cf:rl:*, cf:usage:*",
        }
    )
    assert config.agents.redis_acl
    assert config.agents.acl_key_patterns == ("cf:rl:*", "cf:usage:*")
    assert not OperatorConfig.from_env({}).agents.redis_acl
    with pytest.raises(ConfigError, match="CODEFORGE_AGENT_REDIS_ACL"):
        OperatorConfig.from_env({"CODEFORGE_AGENT_REDIS_ACL": "maybe"})


def test_username_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEFORGE_REDIS_USERNAME", "codeforge-pool:team-a/research")
    assert parse_url("redis://redis:6379/0").options["username"] == "codeforge-pool:team-a/research"
    assert parse_url("redis://other:pw@redis:6379/0").options["username"] == "other"
    assert redact_credentials("rediss://u:p@h:1/0?x=1") == "rediss://h:1/0?x=1"
