"""Who may declare a rate limit (README, "Multi-tenancy"): a pool's key is its namespace's own unless the
platform declares it fleet-wide; the platform's numbers win; conflicting declarations are reported on the
pool, naming both declarers; the agents' env and Redis user follow. Real Redis: test_rate_limit_scopes.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from codeforge.api.agentpool import AgentPoolSpec
from codeforge.api.usage import RateLimitSpec
from codeforge.controller import ratelimits
from codeforge.controller.agentpool import builders, conditions, identity
from codeforge.controller.agentpool.reconcile import SpecError, parse_spec
from codeforge.controller.config import AgentDefaults, OperatorConfig
from codeforge.controller.env import ConfigError
from codeforge.queue.ratelimit import RateLimit, rate_key

KEY = "openai/gpt-4.1"
PLATFORM = {KEY: RateLimitSpec(key=KEY, requests_per_minute=500, tokens_per_minute=30000)}
FLEET = AgentDefaults(queue_url="", fleet_rate_limits=PLATFORM)
REF = builders.PoolRef(namespace="team-a", name="research", uid="u1")


def spec(**rate: Any) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate({"role": "r", "handler": {"kind": "echo"}, "rateLimit": rate})


def agent_env(pool: AgentPoolSpec, defaults: AgentDefaults = FLEET) -> dict[str, str]:
    body = builders.build_deployment(REF, pool, 1, defaults)
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "") for e in env if e["name"].startswith("CODEFORGE_RATE_LIMIT")}


def test_a_key_the_platform_does_not_declare_is_the_namespaces_own() -> None:
    env = agent_env(spec(key=KEY, requestsPerMinute=5), AgentDefaults(queue_url=""))
    assert env["CODEFORGE_RATE_LIMIT_SCOPE"] == "team-a"
    assert env["CODEFORGE_RATE_LIMIT_RPM"] == "5"
    assert rate_key(KEY, "team-a") == "cf:{rl@team-a:openai/gpt-4.1}" != rate_key(KEY)


def test_a_fleet_key_gets_the_platforms_numbers_whatever_the_pool_says() -> None:
    for pool in (spec(key=KEY), spec(key=KEY, requestsPerMinute=100000)):
        env = agent_env(pool)
        assert env["CODEFORGE_RATE_LIMIT_SCOPE"] == ""
        assert (env["CODEFORGE_RATE_LIMIT_RPM"], env["CODEFORGE_RATE_LIMIT_TPM"]) == ("500", "30000")


def test_a_key_without_numbers_that_the_platform_does_not_declare_is_an_invalid_spec() -> None:
    with pytest.raises(
        SpecError, match=r"'anthropic/claude'.*not one the platform declares.*openai/gpt-4\.1"
    ):
        parse_spec({"role": "r", "handler": {"kind": "echo"}, "rateLimit": {"key": "anthropic/claude"}},
                   REF, FLEET)  # fmt: skip


def test_spec_env_cannot_set_the_rate_limit_variables() -> None:
    pool = AgentPoolSpec.model_validate(
        {
            "role": "r",
            "handler": {"kind": "echo"},
            "rateLimit": {"key": KEY},
            "env": [{"name": "CODEFORGE_RATE_LIMIT_SCOPE", "value": ""}],
        }
    )
    with pytest.raises(ValueError, match="CODEFORGE_RATE_LIMIT_SCOPE is set by the operator"):
        builders.build_deployment(REF, pool, 1, FLEET)


def test_the_pool_and_the_platform_disagreeing_is_a_conflict_naming_both() -> None:
    resolved = ratelimits.resolve(
        RateLimitSpec(key=KEY, requests_per_minute=9000), "team-a", "research", PLATFORM
    )
    assert resolved.scope == ""
    assert resolved.limit == PLATFORM[KEY]
    assert resolved.conflict is not None
    assert "the platform (CODEFORGE_FLEET_RATE_LIMITS, chart rateLimits.fleet): 500 rpm" in resolved.conflict
    assert "AgentPool team-a/research: 9000 rpm" in resolved.conflict
    same = RateLimitSpec(key=KEY, requests_per_minute=500, tokens_per_minute=30000)
    assert ratelimits.resolve(same, "team-a", "research", PLATFORM).conflict is None


def test_two_pools_of_a_namespace_disagreeing_is_a_conflict_naming_both() -> None:
    declared = ratelimits.Declarations()

    def declare(namespace: str, pool: str, rpm: int) -> str | None:
        limit = RateLimitSpec(key="team/model", requests_per_minute=rpm)
        return declared.declare(namespace, pool, ratelimits.resolve(limit, namespace, pool, {}))

    assert declare("team-a", "writer", 60) is None
    assert declare("team-a", "reviewer", 60) is None  # the same numbers: fine
    assert declare("team-b", "writer", 1) is None  # another namespace's key of the same name: no conflict
    conflict = declare("team-a", "tester", 600)
    assert conflict is not None
    assert "AgentPool team-a/tester: 600 rpm" in conflict
    assert "AgentPool team-a/reviewer: 60 rpm" in conflict
    assert "1 more pools" in conflict
    declared.forget("team-a", "reviewer")
    declared.declare("team-a", "writer", None)  # its rateLimit was removed
    assert declare("team-a", "tester", 600) is None


def test_a_declaration_not_renewed_is_forgotten() -> None:
    """A pool deleted while the operator missed it stops conflicting once it stops renewing."""
    declared = ratelimits.Declarations()
    old, new = (
        ratelimits.resolve(RateLimitSpec(key="k", requests_per_minute=n), "ns", "p", {}) for n in (1, 2)
    )
    assert declared.declare("ns", "gone", old, now=0.0) is None
    assert declared.declare("ns", "live", new, now=10.0) is not None
    assert declared.declare("ns", "live", new, now=ratelimits.STALE_SECONDS + 1) is None


def test_the_rate_limit_condition_and_its_warning_event() -> None:
    resolved = ratelimits.resolve(
        RateLimitSpec(key=KEY, requests_per_minute=1), "team-a", "research", PLATFORM
    )
    value = conditions.describe_rate_limit(resolved, resolved.conflict)
    assert value is not None
    assert (value.status, value.reason) == (False, conditions.Reason.CONFLICT)
    values = conditions.evaluate(conditions.Observation(desired=1, ready=1, rate_limit=value))
    assert [v.type for v in values][-1] == conditions.ConditionType.RATE_LIMIT
    new = [{"type": "RateLimit", "status": "False", "reason": "Conflict", "message": value.message}]
    events = conditions.rate_limit_events([], new)
    assert [(e.type, e.reason) for e in events] == [("Warning", "RateLimitConflict")]
    assert conditions.rate_limit_events(new, new) == []  # once per conflict, not per reconcile
    fine = conditions.describe_rate_limit(
        ratelimits.resolve(RateLimitSpec(key=KEY), "team-a", "p", PLATFORM), None
    )
    assert fine is not None
    assert (fine.status, fine.reason) == (True, conditions.Reason.FLEET_WIDE)
    assert conditions.describe_rate_limit(None, None) is None


def test_the_pools_redis_user_gets_its_namespaces_keys_and_its_one_fleet_key() -> None:
    fleet = identity.user_rules(REF, "pw", FLEET, builders.rate_limit(REF, spec(key=KEY), FLEET))
    assert "~cf:{rl@team-a:*" in fleet
    assert "~cf:{rl:openai/gpt-4.1}" in fleet
    own = identity.user_rules(
        REF, "pw", FLEET, builders.rate_limit(REF, spec(key="x", tokensPerMinute=1), FLEET)
    )
    assert "~cf:{rl@team-a:*" in own
    assert not [r for r in own if r.startswith("~cf:{rl:")]  # no fleet key it does not use


def test_the_platforms_limits_from_the_operators_environment() -> None:
    raw = json.dumps([{"key": KEY, "requestsPerMinute": 500}, {"key": "b", "tokensPerMinute": 9}])
    config = OperatorConfig.from_env({ratelimits.FLEET_ENV: raw})
    assert set(config.agents.fleet_rate_limits) == {KEY, "b"}
    for bad, message in (
        ("not json", "not JSON"),
        ('{"key": "a"}', "must be a list"),
        ('[{"key": "a"}]', r"\[0\]: rateLimit 'a': set requestsPerMinute"),
        ('[{"key": "{x}", "requestsPerMinute": 1}]', r"\[0\]\.key"),
        ('[{"key": "a", "rpm": 1}]', r"\[0\]\.rpm"),
        # Typed as the chart's values schema types them (Helm renders numbers unquoted): "500" is no 500.
        ('[{"key": "a", "requestsPerMinute": "500"}]', r"\[0\]\.requestsPerMinute: .*write a whole number"),
        ('[{"key": "a", "requestsPerMinute": 1, "burstSeconds": true}]', r"\[0\]\.burstSeconds: .*a number"),
        ('[{"key": "a", "requestsPerMinute": 1}, {"key": "a", "requestsPerMinute": 2}]', "declared twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            OperatorConfig.from_env({ratelimits.FLEET_ENV: bad})


def test_an_agent_refuses_a_scope_that_is_not_a_namespace() -> None:
    assert RateLimit(KEY, 1, scope="team-a").scope == "team-a"
    with pytest.raises(ValueError, match="namespace name"):
        RateLimit(KEY, 1, scope="a:b")


def test_an_embedded_run_needs_the_numbers_it_has_no_platform_to_give() -> None:
    from codeforge.embedded.manifest import ManifestError, _pool

    doc: dict[str, Any] = {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": "p"},
        "spec": {"role": "r", "handler": {"kind": "echo"}, "rateLimit": {"key": KEY}},
    }
    with pytest.raises(ManifestError, match=r"spec\.rateLimit 'openai/gpt-4\.1': set requestsPerMinute"):
        _pool(doc, "pools.yaml")
    doc["spec"]["rateLimit"]["requestsPerMinute"] = 5
    assert _pool(doc, "pools.yaml").rate_limit == RateLimitSpec(key=KEY, requests_per_minute=5)
