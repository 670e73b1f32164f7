"""Operator configuration from its environment (the Deployment of the operator sets these).

- CODEFORGE_QUEUE_URL: the queue the operator reads (stats) and workflows write; default memory://
- CODEFORGE_AGENT_QUEUE_URL: the queue URL given to agent pods; default CODEFORGE_QUEUE_URL
- CODEFORGE_AGENT_IMAGE: image of pools whose spec names none; default ghcr.io/codeforge/agent:latest
- CODEFORGE_AGENT_REDIS_PASSWORD_SECRET: `secret/key` mounted into agents as their Redis password (without
  CODEFORGE_AGENT_REDIS_ACL only)
- CODEFORGE_AGENT_REDIS_ACL: true gives each AgentPool its own Redis ACL user and password Secret, limited to
  the pool's keys (README, "Multi-tenancy"); default false
- CODEFORGE_AGENT_REDIS_ACL_KEYS, CODEFORGE_AGENT_REDIS_ACL_CHANNELS: extra Redis glob patterns (comma
  separated) every pool's user may use besides its own keys
- CODEFORGE_FLEET_RATE_LIMITS: the platform's fleet-wide rate limits, JSON `[{key, requestsPerMinute,
  tokensPerMinute, burstSeconds}]` (chart `rateLimits.fleet`; controller/controller/ratelimits.py)
- CODEFORGE_AGENT_LOG_FORMAT: the agents' log format, text or json; default json
- CODEFORGE_AUTOSCALE_INTERVAL: seconds between autoscaling reconciles of each pool; default 1
- CODEFORGE_METRICS_PORT: port of the operator's Prometheus /metrics; unset: not served
- CODEFORGE_STATUS_INTERVAL: seconds between status writes that only refresh queue gauges; default 5
- CODEFORGE_SHARDS, CODEFORGE_SHARD: the Workflows split over this many operator processes, and which share
  this one runs (0 to CODEFORGE_SHARDS - 1); default 1 and 0 (controller/sharding.py)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from codeforge.api.usage import RateLimitSpec
from codeforge.controller.env import ConfigError, flag, port, seconds
from codeforge.controller.ratelimits import FLEET_ENV, parse_fleet
from codeforge.controller.sharding import Shard

DEFAULT_AGENT_IMAGE: Final = "ghcr.io/codeforge/agent:latest"


@dataclass(frozen=True, slots=True)
class AgentDefaults:
    """Operator-wide settings every agent pod receives (from the operator's own environment)."""

    queue_url: str
    #: Image for pools that name none: the agent image released with this operator.
    image: str = DEFAULT_AGENT_IMAGE
    #: Secret (name, key) holding the Redis password; mounted as CODEFORGE_REDIS_PASSWORD.
    redis_password_secret: tuple[str, str] | None = None
    log_format: str = "json"
    #: Each pool gets a Redis ACL user of its own (controller/agentpool/identity.py), not the shared password.
    redis_acl: bool = False
    #: Key and channel patterns granted to every pool's user besides the pool's own (fleet-wide keys).
    acl_key_patterns: tuple[str, ...] = ()
    acl_channel_patterns: tuple[str, ...] = ()
    #: The platform's fleet-wide rate limits by key; any other key a pool names is its namespace's own.
    fleet_rate_limits: Mapping[str, RateLimitSpec] = field(default_factory=dict)


def _patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())
    for item in items:
        if any(c.isspace() for c in item) or len(item) > 512:
            raise ConfigError(f"{name}: {item[:60]!r} is not a Redis glob pattern (no spaces, <= 512 chars)")
    return items


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    queue_url: str = "memory://"
    agents: AgentDefaults = field(default_factory=lambda: AgentDefaults(queue_url="memory://"))
    autoscale_interval: float = 1.0
    status_interval: float = 5.0
    metrics_port: int | None = None
    shard: Shard = field(default_factory=Shard)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        queue_url = env.get("CODEFORGE_QUEUE_URL", "").strip() or "memory://"
        secret = None
        if raw := env.get("CODEFORGE_AGENT_REDIS_PASSWORD_SECRET", "").strip():
            name, sep, key = raw.partition("/")
            if not sep or not name or not key:
                raise ConfigError(f"CODEFORGE_AGENT_REDIS_PASSWORD_SECRET={raw!r}: use `secret-name/key`")
            secret = (name, key)
        try:
            fleet = parse_fleet(env.get(FLEET_ENV, ""))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        log_format = env.get("CODEFORGE_AGENT_LOG_FORMAT", "json").strip() or "json"
        if log_format not in ("text", "json"):
            raise ConfigError(f"CODEFORGE_AGENT_LOG_FORMAT={log_format!r}: use text or json")
        agents = AgentDefaults(
            queue_url=env.get("CODEFORGE_AGENT_QUEUE_URL", "").strip() or queue_url,
            image=env.get("CODEFORGE_AGENT_IMAGE", "").strip() or DEFAULT_AGENT_IMAGE,
            redis_password_secret=secret,
            log_format=log_format,
            redis_acl=flag(env, "CODEFORGE_AGENT_REDIS_ACL"),
            acl_key_patterns=_patterns(env, "CODEFORGE_AGENT_REDIS_ACL_KEYS"),
            acl_channel_patterns=_patterns(env, "CODEFORGE_AGENT_REDIS_ACL_CHANNELS"),
            fleet_rate_limits=fleet,
        )
        return cls(
            queue_url=queue_url,
            agents=agents,
            autoscale_interval=seconds(env, "CODEFORGE_AUTOSCALE_INTERVAL", 1.0),
            status_interval=seconds(env, "CODEFORGE_STATUS_INTERVAL", 5.0),
            metrics_port=port(env, "CODEFORGE_METRICS_PORT"),
            shard=Shard.from_env(env),
        )
