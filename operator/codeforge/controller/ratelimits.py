"""Who may declare a rate limit, and which state a pool's agents share (README, "Multi-tenancy").

- A key the platform declares fleet-wide (the operator's CODEFORGE_FLEET_RATE_LIMITS, chart
  `rateLimits.fleet`) is shared by every pool naming it, in every namespace, with the platform's numbers:
  a tenant can use that capacity but cannot change it. A pool's own numbers for such a key are a conflict:
  reported on the pool (condition RateLimit, reason Conflict, naming both declarers), never applied.
- Any other key is the pool's namespace's own (`cf:{rl@<namespace>:<key>}` in Redis), shared by that
  namespace's pools only, with the pool's numbers: one team's limit never throttles another team's agents.
  Two pools of one namespace declaring different numbers for one key are a conflict too (each agent applies
  its own pool's numbers to the shared state), reported on both, naming both.

Pure but for `Declarations`, the operator's in-memory view of which pool declared what (filled as pools
reconcile; an operator restart refills it as every pool is resumed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pydantic import ValidationError

from codeforge.api.usage import RateLimitSpec
from codeforge.api.workflow import format_validation_error

#: Where the platform declares fleet-wide limits (the chart's `rateLimits.fleet`, as JSON).
FLEET_ENV: Final = "CODEFORGE_FLEET_RATE_LIMITS"
PLATFORM: Final = f"the platform ({FLEET_ENV}, chart rateLimits.fleet)"
#: Fleet-wide keys the platform may declare: enough for every model of every provider it pays for.
MAX_FLEET_LIMITS: Final = 200
#: A declaration not renewed for this long is forgotten: every pool renews its own on each autoscaler tick
#: (every few seconds), and a pool deleted while its delete handler did not run must not leave a conflict.
STALE_SECONDS: Final = 300.0


@dataclass(frozen=True, slots=True)
class Resolved:
    """The limit a pool's agents apply: its numbers and its scope (a namespace; "" for the fleet)."""

    limit: RateLimitSpec
    scope: str
    #: The pool's own numbers differ from the platform's (named both): reported, not applied.
    conflict: str | None = None

    @property
    def fleet(self) -> bool:
        return not self.scope

    def to_env(self) -> dict[str, str]:
        return self.limit.to_env(self.scope)


def parse_fleet(raw: str) -> dict[str, RateLimitSpec]:
    """The platform's fleet-wide limits from JSON `[{key, requestsPerMinute, tokensPerMinute, ...}]`;
    ValueError naming the entry and the fix."""
    if not raw.strip():
        return {}
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{FLEET_ENV}: not JSON ({exc.msg}); use a list of {{key, requestsPerMinute, ...}}"
        ) from None
    if not isinstance(items, list) or len(items) > MAX_FLEET_LIMITS:
        raise ValueError(f"{FLEET_ENV}: must be a list of at most {MAX_FLEET_LIMITS} rate limits")
    fleet: dict[str, RateLimitSpec] = {}
    for i, item in enumerate(items):
        try:
            spec = RateLimitSpec.model_validate(item, by_alias=True, by_name=False)
            spec.require_numbers("a fleet-wide limit needs numbers")
        except ValidationError as exc:
            raise ValueError(
                format_validation_error(exc, prefix=f"{FLEET_ENV}[{i}]").splitlines()[0]
            ) from None
        except ValueError as exc:
            raise ValueError(f"{FLEET_ENV}[{i}]: {exc}") from None
        if spec.key in fleet:
            raise ValueError(f"{FLEET_ENV}[{i}]: key {spec.key!r} is declared twice")
        fleet[spec.key] = spec
    return fleet


def resolve(spec: RateLimitSpec, namespace: str, pool: str, fleet: Mapping[str, RateLimitSpec]) -> Resolved:
    """The limit the pool `namespace/pool` applies for its `spec.rateLimit`; ValueError (a spec error) when
    it names a key that is neither the platform's nor given numbers."""
    platform = fleet.get(spec.key)
    if platform is not None:
        conflict = None
        if spec.declares_numbers and spec.numbers() != platform.numbers():
            conflict = (
                f"rate limit {spec.key!r} is declared fleet-wide by {PLATFORM}: {platform.describe()}, "
                f"and by AgentPool {namespace}/{pool}: {spec.describe()}; the platform's numbers apply (omit "
                "requestsPerMinute/tokensPerMinute on the pool, or ask the platform team)"
            )
        return Resolved(platform, "", conflict)
    declared = ", ".join(sorted(fleet)[:10]) or "none"
    spec.require_numbers(
        f"key {spec.key!r} is not one the platform declares fleet-wide (declared: {declared}), so it is a "
        f"limit of namespace {namespace} and needs the pool's numbers"
    )
    return Resolved(spec, namespace)


@dataclass
class Declarations:
    """Which pool of a namespace declared which numbers for which namespace key, to find conflicts."""

    #: (namespace, key) -> pool name -> (its numbers, when it last declared them)
    _by_key: dict[tuple[str, str], dict[str, tuple[tuple[int, int, float], float]]] = field(
        default_factory=dict
    )
    #: (namespace, pool) -> the key it declared
    _of_pool: dict[tuple[str, str], str] = field(default_factory=dict)

    def declare(
        self, namespace: str, pool: str, resolved: Resolved | None, now: float | None = None
    ) -> str | None:
        """Record what the pool declares now (None: nothing of its namespace's); the conflict to report,
        naming the pool and another of the namespace declaring other numbers for the same key."""
        now = time.monotonic() if now is None else now
        self.forget(namespace, pool)
        if resolved is None or resolved.fleet:
            return None
        key = resolved.limit.key
        others = self._by_key.setdefault((namespace, key), {})
        for name in [n for n, (_, at) in others.items() if at < now - STALE_SECONDS]:
            self.forget(namespace, name)
        others = self._by_key.setdefault((namespace, key), {})
        mine = resolved.limit.numbers()
        others[pool] = (mine, now)
        self._of_pool[(namespace, pool)] = key
        differing = sorted(name for name, (numbers, _) in others.items() if numbers != mine)
        if not differing:
            return None
        other = differing[0]
        rpm, tpm, burst = others[other][0]
        theirs = RateLimitSpec(key=key, requests_per_minute=rpm, tokens_per_minute=tpm, burst_seconds=burst)
        more = f" (and {len(differing) - 1} more pools)" if len(differing) > 1 else ""
        return (
            f"rate limit {key!r} of namespace {namespace} is declared by AgentPool {namespace}/{pool}: "
            f"{resolved.limit.describe()}, and by AgentPool {namespace}/{other}: {theirs.describe()}{more}; "
            "each pool's agents apply their own numbers to the shared state: declare the same numbers"
        )

    def forget(self, namespace: str, pool: str) -> None:
        key = self._of_pool.pop((namespace, pool), None)
        if key is None:
            return
        others = self._by_key.get((namespace, key), {})
        others.pop(pool, None)
        if not others:
            self._by_key.pop((namespace, key), None)
