"""Workflows split over several operator processes (shards), each running the Workflows of its own range.

One Python process runs every step of its Workflows on one event loop, so one core bounds it. With
CODEFORGE_SHARDS=N (chart: `operator.shards`), N operator Deployments split the Workflows by a hash of their
uid, the way Kubernetes' server-side sharded list and watch does (KEP-5866, alpha since 1.36): FNV-1a 64
of `metadata.uid`, shard i owning [i * 2^64 / N, (i + 1) * 2^64 / N).

- The API server sends each shard its own range only (Kopf's `shardSelector`): Kubernetes 1.36+ with the
  `ShardedListAndWatch` feature gate. A server without it ignores the selector and sends every Workflow,
  and a shard cannot simply skip the others' (Kopf removes its finalizer from an object no handler of
  this process takes, and the owner adds it again, and so on): the first Workflow of another range a shard
  receives stops it with the reason in its log (`Refusal`), so a misconfigured Deployment crash-loops
  saying why instead of fighting. The handlers' filter (`owns`) uses the server's hash, so nothing of
  another shard is handled meanwhile. A Workflow's uid never changes, so it stays with its shard for its life
  (across its operator's restarts and failovers).
- AgentPools (autoscaling, their Redis users, rate-limit declarations) stay with shard 0, whose handlers the
  other shards do not even register (`controller/__init__.py`): pools are few, and fleet-wide checks
  (conflicting rate limits) need to see them all.
- Each shard elects its own leader on the Lease `<CODEFORGE_LEASE_NAME>-<i>` (`codeforge-operator-<i>` by
  default), so a shard's standby takes over that shard only.

Shards share the queue and the agents: only the orchestration is split.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from codeforge.controller.env import ConfigError, count, text

log = logging.getLogger(__name__)

#: Upper bound of CODEFORGE_SHARDS: each shard is a Deployment; more than this is a configuration mistake.
MAX_SHARDS: Final = 64
#: The hash space: 64-bit FNV-1a values, as the API server computes them.
SPACE: Final = 1 << 64
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MASK: Final = SPACE - 1
#: The operator's settings of its shard (`Shard.from_env`, `Shard.environment`).
SHARDS_ENV: Final = "CODEFORGE_SHARDS"
SHARD_ENV: Final = "CODEFORGE_SHARD"


def fnv1a64(value: str) -> int:
    """FNV-1a, 64 bits, over the UTF-8 bytes: Go's `hash/fnv.New64a`, which the API server's shard
    selector hashes `metadata.uid` with (k8s.io/apimachinery/pkg/sharding)."""
    digest = _FNV_OFFSET
    for byte in value.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & _MASK
    return digest


def _hex(bound: int) -> str:
    # 16 hex digits, or 2^64 as the API server's one 17-digit upper bound
    return f"0x{bound:016x}"


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's share of the Workflows: shard `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"CODEFORGE_SHARDS={self.count}: expected 1 to {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"CODEFORGE_SHARD={self.index}: expected 0 to {self.count - 1} "
                f"(CODEFORGE_SHARDS={self.count})"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Shard:
        shards = count(env, SHARDS_ENV, 1)
        raw = text(env, SHARD_ENV, "0")
        if not raw.isdigit():
            raise ConfigError(f"CODEFORGE_SHARD={raw!r}: expected the shard's index, 0 to {shards - 1}")
        return cls(index=int(raw), count=shards)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def runs_pools(self) -> bool:
        """AgentPools are shard 0's (see the module doc)."""
        return self.index == 0

    @property
    def bounds(self) -> tuple[int, int]:
        """[start, end) of this shard's hash range."""
        return self.index * SPACE // self.count, (self.index + 1) * SPACE // self.count

    def owns(self, uid: str) -> bool:
        if not self.sharded:
            return True
        start, end = self.bounds
        return start <= fnv1a64(uid) < end

    def selector(self) -> str:
        """The API server's shard selector for this range (`shardSelector` of list and watch)."""
        start, end = self.bounds
        return f"shardRange(object.metadata.uid, '{_hex(start)}', '{_hex(end)}')"

    def lease_name(self, base: str) -> str:
        """This shard's leader Lease: one per shard, so a standby takes over its own shard only."""
        return f"{base}-{self.index}" if self.sharded else base

    def environment(self) -> dict[str, str]:
        """The variables that make an operator process this shard (none unsharded): what `from_env` reads."""
        return {SHARDS_ENV: str(self.count), SHARD_ENV: str(self.index)} if self.sharded else {}

    def describe(self) -> str:
        return f"shard {self.index} of {self.count}" if self.sharded else "unsharded"


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # Kopf's graceful stop: runs end, the Lease is released


@dataclass
class Refusal:
    """Stops the operator, once, when the API server sent a Workflow of another shard (see the module doc)."""

    stop: Callable[[], None] = _terminate
    stopped: bool = False

    def __call__(self, shard: Shard, workflow: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        log.error(
            "%s received Workflow %s, which is another shard's: the API server ignores the shard selector. "
            "Sharding needs Kubernetes 1.36+ with the ShardedListAndWatch feature gate on the API server "
            "(--feature-gates=ShardedListAndWatch=true); without it, run one shard "
            "(chart: operator.shards: 1, or unset CODEFORGE_SHARDS). Stopping.",
            shard.describe(),
            workflow,
        )
        self.stop()
