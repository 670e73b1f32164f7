"""AgentPool spec.workspace: the agent pods get the Git cache volume and the credentials Secret as files."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolSpec
from codeforge.controller.agentpool import builders
from codeforge.controller.config import AgentDefaults
from codeforge_agent.config import AgentConfig

REF = builders.PoolRef(namespace="team-a", name="implement", uid="uid-1")
DEFAULTS = AgentDefaults(queue_url="redis://redis:6379/0")


def spec(**workspace: Any) -> AgentPoolSpec:
    raw: dict[str, Any] = {
        "role": "implement",
        "handler": {"kind": "command", "settings": {"command": "aider"}},
    }
    if workspace or workspace == {}:
        raw["workspace"] = workspace
    return AgentPoolSpec.model_validate(raw)


def pod_of(pool: AgentPoolSpec) -> dict[str, Any]:
    pod: dict[str, Any] = builders.build_deployment(REF, pool, 1, DEFAULTS)["spec"]["template"]["spec"]
    return pod


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}


def test_a_pool_without_workspace_has_no_volumes() -> None:
    pod = pod_of(AgentPoolSpec.model_validate({"role": "r", "handler": {"kind": "echo"}}))
    assert "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]
    assert not any(name.startswith(("CODEFORGE_WORKSPACE", "CODEFORGE_GIT")) for name in env_of(pod))


def test_workspace_mounts_the_cache_emptydir_and_the_secret_read_only() -> None:
    pod = pod_of(spec(credentialsSecret="git-credentials", cacheSizeLimit="20Gi"))
    assert pod["volumes"] == [
        {"name": "workspace", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "git-credentials", "secret": {"secretName": "git-credentials", "defaultMode": 0o440}},
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "workspace", "mountPath": builders.WORKSPACE_MOUNT},
        {"name": "git-credentials", "mountPath": builders.GIT_CREDENTIALS_MOUNT, "readOnly": True},
    ]
    assert pod["securityContext"]["fsGroup"] == builders.AGENT_GID
    env = env_of(pod)
    assert env["CODEFORGE_WORKSPACE_DIR"] == builders.WORKSPACE_MOUNT
    assert env["CODEFORGE_WORKSPACE_SIZE_LIMIT"] == "20Gi"
    assert env["CODEFORGE_GIT_CREDENTIALS_DIR"] == builders.GIT_CREDENTIALS_MOUNT
    # The agent accepts what the operator sets.
    config = AgentConfig.from_sources([], {**env, "CODEFORGE_COMMAND": "aider"})
    assert config.workspace_size_limit == 20 * 2**30
    assert str(config.workspace_root) == builders.WORKSPACE_MOUNT


def test_empty_workspace_gives_the_default_volume_and_no_secret() -> None:
    pod = pod_of(spec())
    assert pod["volumes"] == [{"name": "workspace", "emptyDir": {"sizeLimit": "5Gi"}}]
    assert "CODEFORGE_GIT_CREDENTIALS_DIR" not in env_of(pod)
    assert "fsGroup" not in pod["securityContext"]


@pytest.mark.parametrize(
    ("workspace", "field"),
    [
        ({"cacheSizeLimit": "lots"}, "cacheSizeLimit"),
        ({"cacheSizeLimit": "1" * 40}, "cacheSizeLimit"),
        ({"credentialsSecret": "Not_A_Name"}, "credentialsSecret"),
        ({"credentialsSecret": "x" * 254}, "credentialsSecret"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_workspace_settings_name_the_field(workspace: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**workspace)
    assert field in str(info.value)


def test_handler_settings_cannot_override_the_workspace_variables() -> None:
    pool = AgentPoolSpec.model_validate(
        {
            "role": "r",
            "handler": {"kind": "echo", "settings": {"workspaceDir": "/elsewhere"}},
            "workspace": {},
        }
    )
    with pytest.raises(ValueError, match="CODEFORGE_WORKSPACE_DIR"):
        builders.build_deployment(REF, pool, 1, DEFAULTS)
