"""What a task's run cost (tokens in and out, and money, as handlers report it in their result), and the
limits on it: an AgentPool's fleet-wide `spec.rateLimit`, a Workflow's `spec.budget`.

A handler reports usage by putting a `usage` object in its JSON result (README, "Rate limits and budgets"):
`{"usage": {"input_tokens": 1200, "output_tokens": 300, "cost": 0.0042}}`. OpenAI's names
(`prompt_tokens`, `completion_tokens`) are read too, so the `openai` handler passes the provider's object
on as it is; `total_tokens` alone counts as output. The agent charges the rate limit from it and the
orchestrator adds it up per step and per Workflow, where budgets are checked.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

#: A rate-limit key: the provider and model it stands for, e.g. `openai/gpt-4.1` (no braces: it becomes a
#: Redis hash tag of its own).
RATE_LIMIT_KEY_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
#: Bounds on one report: more than any call can use, small enough that sums stay exact.
MAX_TOKENS: int = 10**12
MAX_COST: float = 10.0**9


class Usage(BaseModel):
    """Tokens and cost, of one task or summed over a step or a Workflow."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    tokens_in: int = Field(default=0, ge=0, alias="tokensIn")
    tokens_out: int = Field(default=0, ge=0, alias="tokensOut")
    cost: float = Field(default=0.0, ge=0)

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            cost=round(self.cost + other.cost, 9),
        )

    def to_status(self) -> dict[str, Any]:
        return {"tokensIn": self.tokens_in, "tokensOut": self.tokens_out, "cost": self.cost}


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"usage.{name} must be a number of tokens, got {type(value).__name__}")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"usage.{name} must be between 0 and {MAX_TOKENS}, got {value}")
    return int(value)


def parse_usage(raw: Any) -> Usage | None:
    """The `usage` object of a result as Usage; None when absent; ValueError naming the bad field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(
            f"usage must be an object like {{input_tokens, output_tokens, cost}}, got {raw!r:.60}"
        )
    tokens_in = tokens_out = 0
    for name in ("input_tokens", "prompt_tokens"):
        if raw.get(name) is not None:
            tokens_in = _count(raw[name], name)
            break
    for name in ("output_tokens", "completion_tokens"):
        if raw.get(name) is not None:
            tokens_out = _count(raw[name], name)
            break
    else:
        if raw.get("total_tokens") is not None and not tokens_in:
            tokens_out = _count(raw["total_tokens"], "total_tokens")
    cost = raw.get("cost", 0.0)
    if cost is None:
        cost = 0.0
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost):
        raise ValueError(f"usage.cost must be a number (money), got {cost!r:.60}")
    if not 0 <= cost <= MAX_COST:
        raise ValueError(f"usage.cost must be between 0 and {MAX_COST:g}, got {cost}")
    return Usage(tokens_in=tokens_in, tokens_out=tokens_out, cost=float(cost))


def usage_of_result(result: Any) -> Usage | None:
    """The usage a task's result reports (its `usage` key), None when it reports none or a bad one.

    The agent has already refused a malformed report (the task failed naming the field), so the orchestrator
    reading results never has to fail on one; a foreign writer's garbage counts as nothing.
    """
    if not isinstance(result, dict) or "usage" not in result:
        return None
    try:
        return parse_usage(result["usage"])
    except ValueError:
        return None


class BudgetAction(enum.StrEnum):
    FAIL = "Fail"  # the Workflow fails with reason BudgetExceeded
    SUSPEND = "Suspend"  # the Workflow suspends (reason BudgetExceeded) until the budget is raised


class Budget(BaseModel):
    """`spec.budget` of a Workflow: once its tasks have used this much, nothing new is dispatched."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.maxTokens) || has(self.maxCost)", "message": "set maxTokens or maxCost"}
            ]
        },
    )

    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS,
        strict=True,
        description="Tokens in and out of all tasks, as handlers report.",
    )
    max_cost: float | None = Field(
        default=None,
        gt=0,
        le=MAX_COST,
        strict=True,
        description="Cost of all tasks, in the unit handlers report.",
    )
    on_exceed: BudgetAction = Field(
        default=BudgetAction.FAIL,
        description="Fail: the Workflow fails (reason BudgetExceeded); Suspend: it suspends until the "
        "budget is raised. Either way the status names the step whose task crossed it.",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.max_tokens is None and self.max_cost is None:
            raise ValueError("set maxTokens or maxCost (or both)")
        return self

    def reached(self, used: Usage) -> bool:
        return (self.max_tokens is not None and used.tokens >= self.max_tokens) or (
            self.max_cost is not None and used.cost >= self.max_cost
        )

    def describe(self, used: Usage) -> str:
        limits = []
        if self.max_tokens is not None:
            limits.append(f"{used.tokens} of maxTokens {self.max_tokens}")
        if self.max_cost is not None:
            limits.append(f"cost {used.cost:g} of maxCost {self.max_cost:g}")
        return ", ".join(limits)


class RateLimitSpec(BaseModel):
    """A rate limit by key: AgentPool `spec.rateLimit`, or one of the platform's fleet-wide limits (the
    operator's CODEFORGE_FLEET_RATE_LIMITS, chart `rateLimits.fleet`).

    On a pool, a key the platform declares fleet-wide is shared by every pool of every namespace naming it,
    with the platform's numbers (the pool may omit its own); any other key is the pool's namespace's own,
    shared by that namespace's pools only, with the pool's numbers (README, "Multi-tenancy"). Agents wait
    for capacity before they claim a task; a provider's 429 pauses the key for all of its agents.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        allow_inf_nan=False,
    )

    key: str = Field(
        min_length=1,
        max_length=200,
        pattern=RATE_LIMIT_KEY_PATTERN,
        description="What the limit is for, e.g. openai/gpt-4.1: a fleet-wide key of the platform's, or "
        "else a key of this namespace.",
    )
    requests_per_minute: int = Field(
        default=0,
        ge=0,
        le=10**9,
        strict=True,
        description="0: no request limit. Omit both for a fleet-wide key.",
    )
    tokens_per_minute: int = Field(
        default=0,
        ge=0,
        le=MAX_TOKENS,
        strict=True,
        description="0: no token limit. Tokens as handlers report them.",
    )
    burst_seconds: float = Field(
        default=1.0,
        ge=0.001,
        le=60,
        strict=True,
        description="How many seconds' worth of the limits may be used at once (in any W seconds at most "
        "rate * (W + burstSeconds)).",
    )

    @property
    def declares_numbers(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    def numbers(self) -> tuple[int, int, float]:
        return self.requests_per_minute, self.tokens_per_minute, self.burst_seconds

    def describe(self) -> str:
        parts = [f"{self.requests_per_minute} rpm"] if self.requests_per_minute else []
        parts += [f"{self.tokens_per_minute} tpm"] if self.tokens_per_minute else []
        return ", ".join(parts or ["no numbers"]) + f", burst {self.burst_seconds:g} s"

    def require_numbers(self, why: str) -> RateLimitSpec:
        """Self, when it sets a limit; else ValueError saying `why` it must."""
        if not self.declares_numbers:
            raise ValueError(
                f"rateLimit {self.key!r}: set requestsPerMinute or tokensPerMinute (or both) above 0 ({why})"
            )
        return self

    def to_env(self, scope: str = "") -> dict[str, str]:
        """The agent's CODEFORGE_RATE_LIMIT_* variables (the operator's pods and embedded runs alike);
        `scope`: the namespace owning the key, "" for a fleet-wide key."""
        return {
            "CODEFORGE_RATE_LIMIT_KEY": self.key,
            "CODEFORGE_RATE_LIMIT_RPM": str(self.requests_per_minute),
            "CODEFORGE_RATE_LIMIT_TPM": str(self.tokens_per_minute),
            "CODEFORGE_RATE_LIMIT_BURST_SECONDS": f"{self.burst_seconds:g}",
            "CODEFORGE_RATE_LIMIT_SCOPE": scope,
        }
