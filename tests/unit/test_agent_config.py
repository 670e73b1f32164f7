"""Agent configuration: flags and CODEFORGE_* variables, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeforge_agent.config import AgentConfig, ConfigError, options_table
from support.agent_procs import agent_config_error, agent_env

BASE = {"CODEFORGE_POOL": "research", "CODEFORGE_QUEUE_URL": "redis://redis:6379/0"}


def test_environment_configures_everything_the_operator_sets() -> None:
    env = {
        **BASE,
        "CODEFORGE_ROLE": "research",
        "CODEFORGE_CONCURRENCY": "4",
        "CODEFORGE_LEASE_SECONDS": "12.5",
        "CODEFORGE_TASK_TIMEOUT": "600",
        "CODEFORGE_HANDLER": "command",
        "CODEFORGE_COMMAND": '["python3", "-m", "my_agent"]',
        "CODEFORGE_COMMAND_ENV": "A=1,B=two",
        "CODEFORGE_LOG_FORMAT": "json",
        "CODEFORGE_HEALTH_PORT": "off",
    }
    config = AgentConfig.from_sources([], env)
    assert (config.pool, config.role, config.concurrency, config.lease_seconds) == (
        "research",
        "research",
        4,
        12.5,
    )
    assert config.task_timeout == 600
    assert config.handler.kind == "command"
    assert config.handler.command == ("python3", "-m", "my_agent")
    assert dict(config.handler.command_env) == {"A": "1", "B": "two"}
    assert (config.log_format, config.health_port) == ("json", None)


def test_flags_win_over_the_environment() -> None:
    config = AgentConfig.from_sources(
        ["--concurrency", "2", "--handler", "sleep"], {**BASE, "CODEFORGE_CONCURRENCY": "9"}
    )
    assert (config.concurrency, config.handler.kind) == (2, "sleep")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CODEFORGE_CONCURRENCY": "lots"}, "--concurrency / CODEFORGE_CONCURRENCY: expected a whole number"),
        ({"CODEFORGE_CONCURRENCY": "0"}, "--concurrency / CODEFORGE_CONCURRENCY must be >= 1"),
        ({"CODEFORGE_LEASE_SECONDS": "-1"}, "--lease-seconds / CODEFORGE_LEASE_SECONDS must be > 0"),
        ({"CODEFORGE_LEASE_SECONDS": "86401"}, "--lease-seconds / CODEFORGE_LEASE_SECONDS must be <= 86400"),
        ({"CODEFORGE_HANDLER": "magic"}, "--handler / CODEFORGE_HANDLER: expected one of echo, sleep"),
        ({"CODEFORGE_HANDLER": "python"}, "needs --python-function / CODEFORGE_PYTHON_FUNCTION"),
        ({"CODEFORGE_HANDLER": "http"}, "needs --http-url / CODEFORGE_HTTP_URL"),
        ({"CODEFORGE_POOL": "Bad_Pool"}, "--pool / CODEFORGE_POOL: invalid pool name 'Bad_Pool'"),
        ({"CODEFORGE_QUEUE_URL": "mysql://x"}, "--queue-url / CODEFORGE_QUEUE_URL: queue URL scheme 'mysql'"),
        ({"CODEFORGE_COMMAND_ENV": "novalue"}, "--command-env / CODEFORGE_COMMAND_ENV: expected KEY=VALUE"),
        ({"CODEFORGE_HEALTH_PORT": "99999"}, "--health-port / CODEFORGE_HEALTH_PORT: expected a TCP port"),
        ({"CODEFORGE_LOG_FORMAT": "xml"}, "--log-format / CODEFORGE_LOG_FORMAT: expected one of text, json"),
        (
            {"CODEFORGE_REDIS_CA_FILE": "/etc/ca.pem"},
            "CODEFORGE_REDIS_CA_FILE is set but the queue URL scheme",
        ),
    ],
)
def test_bad_values_name_the_setting_and_the_fix(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_sources([], {**BASE, **env})
    assert expected in str(info.value)


def test_pool_and_queue_are_required() -> None:
    with pytest.raises(ConfigError, match="set --pool or CODEFORGE_POOL"):
        AgentConfig.from_sources([], {})
    with pytest.raises(ConfigError, match="set --queue-url or CODEFORGE_QUEUE_URL"):
        AgentConfig.from_sources(["--pool", "p"], {})


def test_tls_ca_file_is_added_to_a_rediss_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**BASE, "CODEFORGE_QUEUE_URL": "rediss://redis:6380/0", "CODEFORGE_REDIS_CA_FILE": str(ca)}
    assert AgentConfig.from_sources([], env).queue_url == f"rediss://redis:6380/0?ssl_ca_certs={ca}"


def test_cli_reports_a_config_error_without_a_traceback() -> None:
    stderr = agent_config_error(agent_env("research", "redis://127.0.0.1:1/0", concurrency="lots"))
    assert (
        "configuration error: --concurrency / CODEFORGE_CONCURRENCY: expected a whole number, got 'lots'"
        in stderr
    )


def test_readme_documents_every_option() -> None:
    readme = (Path(__file__).parents[2] / "agent_image" / "README.md").read_text()
    stale = [row for row in options_table().splitlines() if row not in readme]
    assert not stale, (
        f"agent_image/README.md's table is stale; paste codeforge_agent.config.options_table(): {stale}"
    )
