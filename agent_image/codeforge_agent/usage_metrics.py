"""Token, cost and rate-limit metrics of one agent, by namespace, pool and model (in the agent's registry)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter

from codeforge.api.usage import Usage

#: Model names a handler reports become a label; bounded so a handler cannot explode the series count.
MAX_MODELS = 32
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry, pool: str) -> None:
        self.namespace, _, self.pool = pool.rpartition("/")
        labels = ("namespace", "pool", "model")
        self.tokens = Counter(
            "codeforge_agent_tokens",
            "Tokens used by tasks as their handlers report (direction: in or out).",
            (*labels, "direction"),
            registry=registry,
        )
        self.cost = Counter(
            "codeforge_agent_cost", "Cost of tasks as their handlers report.", labels, registry=registry
        )
        self.rate_wait = Counter(
            "codeforge_agent_rate_limit_wait_seconds",
            "Time spent waiting for capacity of the pool's rate-limit key.",
            ("namespace", "pool", "key"),
            registry=registry,
        )
        self.rate_limited = Counter(
            "codeforge_agent_rate_limited",
            "Provider 429 answers; each paused the key for the whole fleet and gave the task back.",
            ("namespace", "pool", "key"),
            registry=registry,
        )
        self._models: set[str] = set()

    def model_label(self, model: object) -> str:
        if not isinstance(model, str) or not _MODEL_RE.match(model):
            return "other" if model else ""
        if model not in self._models and len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(model)
        return model

    def record(self, usage: Usage, model: object) -> None:
        label = self.model_label(model)
        self.tokens.labels(self.namespace, self.pool, label, "in").inc(usage.tokens_in)
        self.tokens.labels(self.namespace, self.pool, label, "out").inc(usage.tokens_out)
        self.cost.labels(self.namespace, self.pool, label).inc(usage.cost)
