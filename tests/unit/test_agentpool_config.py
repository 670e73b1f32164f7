"""The operator's configuration from its environment."""

from __future__ import annotations

import pytest

from codeforge.controller.config import DEFAULT_AGENT_IMAGE, OperatorConfig
from codeforge.controller.env import ConfigError


def test_defaults_need_no_environment() -> None:
    config = OperatorConfig.from_env({})
    assert (config.queue_url, config.agents.queue_url, config.agents.image) == (
        "memory://",
        "memory://",
        DEFAULT_AGENT_IMAGE,
    )
    assert (config.autoscale_interval, config.metrics_port, config.agents.redis_password_secret) == (
        1.0,
        None,
        None,
    )


def test_agents_inherit_the_queue_url_and_get_the_password_secret() -> None:
    config = OperatorConfig.from_env(
        {
            "CODEFORGE_QUEUE_URL": "redis://redis:6379/0",
            "CODEFORGE_AGENT_REDIS_PASSWORD_SECRET": "redis-auth/password",
            "CODEFORGE_AGENT_IMAGE": "registry.local/agent:2",
            "CODEFORGE_METRICS_PORT": "9102",
            "CODEFORGE_AUTOSCALE_INTERVAL": "0.5",
        }
    )
    assert config.agents.queue_url == "redis://redis:6379/0"
    assert config.agents.redis_password_secret == ("redis-auth", "password")
    assert (config.agents.image, config.metrics_port, config.autoscale_interval) == (
        "registry.local/agent:2",
        9102,
        0.5,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CODEFORGE_AGENT_REDIS_PASSWORD_SECRET", "no-key"),
        ("CODEFORGE_AUTOSCALE_INTERVAL", "0"),
        ("CODEFORGE_STATUS_INTERVAL", "soon"),
        ("CODEFORGE_STATUS_INTERVAL", "nan"),
        ("CODEFORGE_AUTOSCALE_INTERVAL", "inf"),
        ("CODEFORGE_METRICS_PORT", "70000"),
        ("CODEFORGE_AGENT_LOG_FORMAT", "xml"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        OperatorConfig.from_env({name: value})
