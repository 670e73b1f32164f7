"""Fleet-wide rate limits by key (e.g. `openai/gpt-4.1`): requests and tokens per minute, and 429 pauses.

Every agent of every pool that names a key in one scope shares one state, kept in Redis under its own hash
tag (`cf:{rl:<key>}` for a fleet-wide key the platform declares, `cf:{rl@<namespace>:<key>}` for a key of
one namespace; one Redis Cluster slot whatever pools use it) and changed only by one Lua script
(`lua/ratelimit.lua`), so limits hold across processes and nodes. The memory backend does the same
arithmetic in-process for embedded runs and unit tests.

The model (README, "Rate limits and budgets"):
- requests: GCRA, one slot every 60/rpm s, at most `burst_seconds` worth (at least one) at once;
- tokens: a bucket refilling at tpm/60 per second up to `burst_seconds` worth. A slot reserves the key's
  average tokens per call (a moving average of what calls really used) and is only granted while the
  bucket holds that much; after the call the reservation is settled against the provider's `usage`, so
  the bucket may run into debt, which later slots wait out. Until a first call is settled a slot reserves
  the whole bucket (one call at a time), so a cold start cannot overshoot;
- a slot not used (the claim found no task) is given back, with its tokens;
- `pause(seconds)` stops every grant of the key until then (a provider's 429 and its Retry-After).
Measured over any window of W seconds, a key grants at most rpm*(W+burst)/60 requests and its calls use
at most tpm*(W+burst)/60 tokens plus one average call's estimation error.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import exceptions as redis_errors

from codeforge.api.usage import RATE_LIMIT_KEY_PATTERN
from codeforge.queue.errors import QueueError, QueueUnavailableError, queue_errors
from codeforge.redis import TRANSIENT, Connection, Script, connect

_KEY_RE = re.compile(RATE_LIMIT_KEY_PATTERN)
#: A rate limit's scope: a namespace (a DNS label), or "" for the fleet.
_SCOPE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Longest pause a 429 can ask for: a broken or hostile Retry-After must not stop a fleet for a day.
MAX_PAUSE_SECONDS = 600.0
SCRIPT = Script.from_package("codeforge.queue", "ratelimit")


def rate_key(key: str, scope: str = "") -> str:
    """The Redis hash of a rate-limit key: a hash tag of its own, never a pool's. A namespace's keys
    (`rl@<namespace>:`) never meet the fleet's (`rl:`): a namespace cannot contain '@' or ':'."""
    return f"cf:{{rl@{scope}:{key}}}" if scope else f"cf:{{rl:{key}}}"


def namespace_rate_prefix(namespace: str) -> str:
    """What every rate-limit key of one namespace starts with (its pools' ACL users may use them all)."""
    return f"cf:{{rl@{namespace}:"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One key's limits; 0 means no limit of that kind."""

    key: str
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    burst_seconds: float = 1.0
    #: The namespace whose pools share the key, or "" for the fleet (README, "Multi-tenancy").
    scope: str = ""

    def __post_init__(self) -> None:
        if self.scope and not _SCOPE_RE.match(self.scope):
            raise ValueError(
                f"rate-limit scope {self.scope!r} must be a namespace name (or empty: fleet-wide)"
            )
        if not _KEY_RE.match(self.key):
            raise ValueError(
                f"rate-limit key {self.key!r} must be 1-200 characters of letters, digits and ._:/@+- "
                "starting with a letter or digit, e.g. 'openai/gpt-4.1'"
            )
        if self.requests_per_minute < 0 or self.tokens_per_minute < 0:
            raise ValueError("requests and tokens per minute must be >= 0 (0: no limit)")
        if not self.requests_per_minute and not self.tokens_per_minute:
            raise ValueError(f"rate limit {self.key!r} sets neither requests nor tokens per minute")
        if not 0.001 <= self.burst_seconds <= 60:
            raise ValueError(f"burst seconds must be between 0.001 and 60, got {self.burst_seconds}")

    @property
    def burst_ms(self) -> int:
        return max(1, round(self.burst_seconds * 1000))


@dataclass(frozen=True, slots=True)
class Grant:
    """What `acquire` gave: `slots` request slots (each reserving `tokens_each` tokens); when none, `wait`
    seconds until the next one, `paused` when a 429 pause is the reason."""

    slots: int
    wait: float
    tokens_each: int
    paused: bool


class RateLimiter(Protocol):
    async def acquire(self, limit: RateLimit, n: int = 1) -> Grant: ...

    async def give_back(self, limit: RateLimit, slots: int, tokens_each: int) -> None: ...

    async def settle(self, limit: RateLimit, tokens_each: int, used: int | None) -> None: ...

    async def pause(self, limit: RateLimit, seconds: float) -> float:
        """Pause the key for everyone; returns how long it is now paused for (seconds)."""
        ...

    async def state(self, limit: RateLimit) -> dict[str, float]: ...

    async def close(self) -> None: ...


def pause_ms(seconds: float) -> int:
    if not math.isfinite(seconds):
        seconds = MAX_PAUSE_SECONDS
    return max(1, round(min(max(seconds, 0.0), MAX_PAUSE_SECONDS) * 1000))


class RedisRateLimiter:
    """The shared limiter: one Lua call per operation on the key's own slot."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._r: Any = conn.client

    @classmethod
    async def connect(cls, url: str) -> RedisRateLimiter:
        with queue_errors():
            return cls(await connect(url))

    async def _run(self, limit: RateLimit, op: str, *args: Any) -> Any:
        base = (op, limit.requests_per_minute, limit.tokens_per_minute, limit.burst_ms)
        try:
            return await SCRIPT.run(self._r, [rate_key(limit.key, limit.scope)], (*base, *args))
        except TRANSIENT as exc:
            raise QueueUnavailableError(f"rate limiter: Redis at {self._conn.url.safe}: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise QueueError(f"rate limiter: Redis at {self._conn.url.safe} answered: {exc}") from exc

    async def acquire(self, limit: RateLimit, n: int = 1) -> Grant:
        granted, wait_ms, each, paused = await self._run(limit, "acquire", max(1, n))
        return Grant(int(granted), int(wait_ms) / 1000.0, int(each), bool(int(paused)))

    async def give_back(self, limit: RateLimit, slots: int, tokens_each: int) -> None:
        if slots > 0:
            await self._run(limit, "giveback", slots, tokens_each)

    async def settle(self, limit: RateLimit, tokens_each: int, used: int | None) -> None:
        await self._run(limit, "settle", tokens_each, -1 if used is None else max(0, used))

    async def pause(self, limit: RateLimit, seconds: float) -> float:
        (remaining_ms,) = await self._run(limit, "pause", pause_ms(seconds))
        return int(remaining_ms) / 1000.0

    async def state(self, limit: RateLimit) -> dict[str, float]:
        tat, lvl, avg, paused, now = (float(v) for v in await self._run(limit, "peek"))
        return {"tat": tat, "level": lvl, "average": avg, "pause": paused, "now": now}

    async def close(self) -> None:
        await self._conn.aclose()


@dataclass
class _Key:
    tat: float = 0.0
    level: float | None = None
    ts: float = 0.0
    average: float | None = None
    pause: float = 0.0


@dataclass
class MemoryRateLimiter:
    """The same model in one process (embedded runs share it between their in-process agents)."""

    clock: Any = field(default=time.time)
    _keys: dict[str, _Key] = field(default_factory=dict)

    def _now(self) -> float:
        return float(self.clock()) * 1000.0

    def _load(self, limit: RateLimit) -> tuple[_Key, float, float, float, float]:
        """The key's state refilled to now, and (now, T, tau, capacity)."""
        now = self._now()
        k = self._keys.setdefault(rate_key(limit.key, limit.scope), _Key(tat=now, ts=now))
        k.tat = max(k.tat, now)
        period = tau = cap = 0.0
        if limit.requests_per_minute:
            period = 60000 / limit.requests_per_minute
            burst = max(1, math.floor(limit.requests_per_minute * limit.burst_ms / 60000))
            tau = period * (burst - 1)
        if limit.tokens_per_minute:
            rate = limit.tokens_per_minute / 60000
            cap = max(1.0, limit.tokens_per_minute * limit.burst_ms / 60000)
            level = cap if k.level is None else k.level
            k.level = min(cap, level + (now - k.ts) * rate)
            k.ts = now
        return k, now, period, tau, cap

    async def acquire(self, limit: RateLimit, n: int = 1) -> Grant:
        k, now, period, tau, cap = self._load(limit)
        if k.pause > now:
            return Grant(0, math.ceil(k.pause - now) / 1000.0, 0, True)
        each = math.floor((k.average or 0.0) + 0.5)
        if limit.tokens_per_minute and k.average is None:
            each = math.ceil(cap)
        need = max(1.0, min(each, cap))
        granted, wait = 0, 0.0
        while granted < max(1, n):
            if period and k.tat - now > tau:
                wait = k.tat - tau - now
                break
            if limit.tokens_per_minute and (k.level or 0.0) < need:
                wait = max(wait, (need - (k.level or 0.0)) / (limit.tokens_per_minute / 60000))
                break
            granted += 1
            k.tat += period
            if limit.tokens_per_minute:
                k.level = (k.level or 0.0) - each
        return Grant(granted, 0.0 if granted else math.ceil(wait) / 1000.0, each, False)

    async def give_back(self, limit: RateLimit, slots: int, tokens_each: int) -> None:
        k, now, period, _, cap = self._load(limit)
        k.tat = max(now, k.tat - slots * period)
        if limit.tokens_per_minute:
            k.level = min(cap, (k.level or 0.0) + slots * tokens_each)

    async def settle(self, limit: RateLimit, tokens_each: int, used: int | None) -> None:
        if used is None:
            return
        k, _, _, _, cap = self._load(limit)
        if limit.tokens_per_minute:
            k.level = min(cap, (k.level or 0.0) + tokens_each - max(0, used))
        k.average = float(used) if k.average is None else k.average + (used - k.average) / 5

    async def pause(self, limit: RateLimit, seconds: float) -> float:
        k, now, *_ = self._load(limit)
        k.pause = max(k.pause, now + pause_ms(seconds))
        return (k.pause - now) / 1000.0

    async def state(self, limit: RateLimit) -> dict[str, float]:
        k, now, *_ = self._load(limit)
        level = k.level if k.level is not None else 0.0
        return {"tat": k.tat, "level": level, "average": k.average or 0.0, "pause": k.pause, "now": now}

    async def close(self) -> None:
        return None


async def open_rate_limiter(url: str) -> RateLimiter:
    """The limiter on the queue's Redis (`redis://...`), or an in-process one (`memory://`)."""
    if url.startswith("memory://"):
        return MemoryRateLimiter()
    return await RedisRateLimiter.connect(url)
