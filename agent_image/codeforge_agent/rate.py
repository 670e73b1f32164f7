"""The agent's side of a fleet-wide rate limit (its pool's `spec.rateLimit`): wait for capacity, never
hold a claim it cannot use, charge what calls used, and pause the whole key on a provider's 429.

Two modes, so that neither idle agents hoard capacity nor busy ones hold tasks they cannot run:
- idle (the key had capacity last time): a blocking claim as usual, then a slot per task; tasks without a
  slot are given back at once, unstarted (same place in the queue, no attempt spent), and the agent turns
- saturated: it waits for a slot (sleeping until the limiter says one is free, or a 429 pause ends),
  then claims without blocking; a claim that finds nothing gives the slots back and turns idle again.
After each call the slot's token reservation is settled against the `usage` in the result; a 429 (the
handler raises RateLimitedError) pauses the key for every agent for Retry-After and the task goes back
unstarted, so no task fails or spends a retry because of the provider's limits.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from codeforge.queue import Lease
from codeforge.queue.ratelimit import RateLimit, RateLimiter

#: Longest single sleep while waiting for capacity: the limiter is asked again after it (a pause may have
#: been lifted early by nobody, but a stop must be noticed and a long wait re-checked).
MAX_SLEEP = 2.0


class RateGate:
    def __init__(
        self,
        limiter: RateLimiter,
        limit: RateLimit,
        release: Callable[[list[Lease]], Awaitable[None]],
    ) -> None:
        self.limiter = limiter
        self.limit = limit
        #: Gives claimed tasks back unstarted (the loop's own release: nothing spent, counted, logged).
        self.release = release
        self.saturated = False
        #: Tokens each claimed task reserved, settled when its run ends.
        self.reserved: dict[str, int] = {}
        #: Seconds spent waiting for capacity, and 429 pauses seen (for metrics and tests).
        self.waited = 0.0
        self.pauses = 0

    async def claim(
        self,
        claim_many: Callable[[int, float], Awaitable[list[Lease]]],
        free: int,
        claim_wait: float,
        stop: asyncio.Event,
    ) -> list[Lease]:
        """Up to `free` leases, each with a slot of the key."""
        if not self.saturated:
            leases = await claim_many(free, claim_wait)
            if not leases:
                return []
            grant = await self.limiter.acquire(self.limit, len(leases))
            keep, back = leases[: grant.slots], leases[grant.slots :]
            if back:
                self.saturated = True
                await self.release(back)
            for lease in keep:
                self.reserved[lease.id] = grant.tokens_each
            return keep
        slots, each = await self._wait_for_slots(free, stop)
        if not slots:
            return []
        try:
            leases = await claim_many(slots, 0.0)
        except BaseException:
            await self.limiter.give_back(self.limit, slots, each)
            raise
        if len(leases) < slots:
            await self.limiter.give_back(self.limit, slots - len(leases), each)
        if not leases:
            self.saturated = False
        for lease in leases:
            self.reserved[lease.id] = each
        return leases

    async def _wait_for_slots(self, n: int, stop: asyncio.Event) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while not stop.is_set():
                grant = await self.limiter.acquire(self.limit, n)
                if grant.slots:
                    return grant.slots, grant.tokens_each
                # A little jitter spreads the agents that were all told the same time over one interval.
                interval = 60.0 / self.limit.requests_per_minute if self.limit.requests_per_minute else 0.05
                delay = min(grant.wait + random.uniform(0, min(interval, 0.25)), MAX_SLEEP)
                try:
                    await asyncio.wait_for(stop.wait(), max(delay, 0.001))
                except TimeoutError:
                    pass
            return 0, 0
        finally:
            self.waited += loop.time() - started

    async def settle(self, task_id: str, used: int | None) -> None:
        """Charge a finished call's tokens (None: unknown, the reservation stands)."""
        each = self.reserved.pop(task_id, 0)
        await self.limiter.settle(self.limit, each, used)

    async def rate_limited(self, task_id: str, retry_after: float) -> float:
        """The provider said 429: pause the key for everyone; the call used no tokens."""
        self.pauses += 1
        self.saturated = True
        await self.settle(task_id, 0)
        return await self.limiter.pause(self.limit, retry_after)

    def forget(self, task_id: str) -> None:
        self.reserved.pop(task_id, None)
