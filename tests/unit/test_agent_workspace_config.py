"""The agent's workspace options: sizes as Kubernetes quantities, author checks, defaults, the wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeforge_agent.config import AgentConfig, ConfigError, byte_size
from codeforge_agent.handlers.workspace import commit_message, merge_result
from codeforge_agent.loop import workspace_settings

BASE = {"CODEFORGE_POOL": "impl", "CODEFORGE_QUEUE_URL": "memory://"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5Gi", 5 * 2**30),
        ("500Mi", 500 * 2**20),
        ("2G", 2 * 10**9),
        ("1024", 1024),
        ("1.5Gi", 3 * 2**29),
        ("off", None),
    ],
)
def test_sizes_are_kubernetes_quantities(raw: str, expected: int | None) -> None:
    assert byte_size(raw) == expected


def test_workspace_options_from_the_environment(tmp_path: Path) -> None:
    config = AgentConfig.from_sources(
        [],
        {
            **BASE,
            "CODEFORGE_WORKSPACE_DIR": str(tmp_path),
            "CODEFORGE_WORKSPACE_SIZE_LIMIT": "5Gi",
            "CODEFORGE_GIT_CREDENTIALS_DIR": "/var/run/secrets/codeforge/git",
            "CODEFORGE_GIT_AUTHOR_NAME": "Forge Bot",
            "CODEFORGE_GIT_AUTHOR_EMAIL": "bot@example.com",
            "CODEFORGE_GIT_TIMEOUT": "30",
        },
    )
    settings = workspace_settings(config)
    assert settings.root == tmp_path
    assert settings.size_limit == 5 * 2**30
    assert settings.credentials_dir == Path("/var/run/secrets/codeforge/git")
    assert (settings.author_name, settings.author_email, settings.network_timeout) == (
        "Forge Bot",
        "bot@example.com",
        30.0,
    )


def test_the_default_cache_is_under_the_temp_dir() -> None:
    config = AgentConfig.from_sources([], BASE)
    assert config.workspace_root.name == "codeforge-workspaces"
    assert workspace_settings(config).credentials_dir is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"CODEFORGE_WORKSPACE_SIZE_LIMIT": "huge"},
            "--workspace-size-limit / CODEFORGE_WORKSPACE_SIZE_LIMIT",
        ),
        ({"CODEFORGE_GIT_AUTHOR_EMAIL": "not an address"}, "--git-author-email / CODEFORGE_GIT_AUTHOR_EMAIL"),
        ({"CODEFORGE_GIT_AUTHOR_NAME": "Evil <x@y>"}, "--git-author-name / CODEFORGE_GIT_AUTHOR_NAME"),
        ({"CODEFORGE_GIT_TIMEOUT": "0"}, "--git-timeout / CODEFORGE_GIT_TIMEOUT"),
    ],
)
def test_bad_workspace_options_name_the_flag(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("-", r"\-")):
        AgentConfig.from_sources([], {**BASE, **env})


def test_results_keep_the_handlers_keys_and_get_the_workspace() -> None:
    workspace = {"commit": "c"}
    assert merge_result({"a": 1, "workspace": "theirs"}, workspace) == {"a": 1, "workspace": workspace}
    assert merge_result("text", workspace) == {"output": "text", "workspace": workspace}
    assert merge_result(None, workspace) == {"output": None, "workspace": workspace}
    assert commit_message({"commit_message": "fix: x"}) == "fix: x"
    assert commit_message({"commit_message": "  "}) is None
    assert commit_message(["commit_message"]) is None
