"""The TaskQueue contract shared by the memory and Redis backends (README, "The task queue").

Semantics every backend keeps:
- priorities CRITICAL(1) > HIGH(2) > MEDIUM(3) > LOW(4), strictly; within a priority, fair share: the tasks'
  keys (`Task.fairness_key`: a Workflow, a team, ...) take turns (weighted by `fair_weight`), FIFO within a
  key, and a key with `max_concurrency` leases held waits until one of them ends (README, "Fair share");
- `enqueue` is idempotent on the task id within a pool;
- `claim` is atomic and gives a lease with a fencing token, as long as the consumer asks (its pool's
  setting; the task's `lease_seconds` when it names none); `heartbeat` extends it by as much;
- two budgets (README, "Retries and agent deaths"): a retryable `fail` spends one of the handler's
  `max_attempts` runs; a lost lease (expired: the agent died) or a `release` of a started task (a drain
  ran out of grace) spends one of `max_lost_leases`, and an expired one is redelivered after a backoff that
  doubles per loss; a `release` of an unstarted task spends nothing. When a budget runs out the task goes
  to the dead-letter queue, its error ending with the budget that ran out; nothing is silently dropped;
- `complete`/`fail`/`heartbeat`/`release` carry the fencing token; a stale one raises LeaseLostError,
  so a result is recorded exactly once;
- `cancel(..., only_if_queued=True)` (a Stop's withdrawal) cancels a task only while no consumer holds it
  (ready, held back by its key's cap, or waiting out a retry backoff); it is atomic with claims, so a task
  claimed at the same moment is either withdrawn before the claim or left running with its lease intact;
- idle consumers block and are woken by an enqueue, never by a sleep-polling loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from codeforge.api.task import (
    LOST_LEASE_BACKOFF_CAP_SECONDS,
    DeadLetter,
    QueueStats,
    Task,
    TaskOutcome,
    TaskState,
)
from codeforge.queue.errors import LeaseLostError

#: How long a finished task's record (and result) stays readable; idempotent re-enqueues find it meanwhile.
DEFAULT_RESULT_TTL_SECONDS = 7 * 24 * 3600
#: How long a dead letter is kept before `reap` removes it (and counts it in `QueueStats.dead_expired`);
#: CODEFORGE_DEAD_LETTER_RETENTION_SECONDS sets it for every process that reaps (0: keep them forever).
DEFAULT_DEAD_LETTER_RETENTION_SECONDS = 7 * 24 * 3600
MAX_DEAD_LETTER_RETENTION_SECONDS = 10 * 365 * 24 * 3600
#: Task ids per `purge_dead` call (one script call each 500), and dead letters per `dead_letters` page.
MAX_PURGE_IDS = 10000
MAX_DEAD_LETTERS_PAGE = 10000


#: The key tasks share once a pool tracks `MAX_FAIR_KEYS` keys (lua/lib.lua names it too).
OVERFLOW_KEY = "\x01overflow"

#: How a dead letter's error ends, per budget (the Redis scripts in lua/lib.lua write the same words).
HANDLER_BUDGET_SPENT = "handler budget spent"
LOST_LEASE_BUDGET_SPENT = "lost-lease budget spent"


def handler_budget_spent(error: str, failures: int, allowed: int) -> str:
    return f"{error}; {HANDLER_BUDGET_SPENT}: failed {failures} of {allowed} allowed times (max_attempts)"


def lost_lease_budget_spent(error: str, losses: int, allowed: int) -> str:
    return (
        f"{error}; {LOST_LEASE_BUDGET_SPENT}: lost {losses} of {allowed} allowed leases "
        "(max_lost_leases; its agents died or stopped heartbeating)"
    )


def lost_lease_backoff(base: float, losses: int) -> float:
    """Seconds before redelivering a task after its `losses`-th lost lease."""
    return float(min(base * 2 ** (losses - 1), LOST_LEASE_BACKOFF_CAP_SECONDS))


def claim_lease_ms(lease_seconds: float | None) -> int:
    """The lease a consumer asks for in a claim, in ms (0: the task's own `lease_seconds`)."""
    if lease_seconds is None:
        return 0
    if not 0 < lease_seconds <= 86400:
        raise ValueError(f"lease_seconds must be > 0 and <= 86400 (got {lease_seconds})")
    return max(int(lease_seconds * 1000), 1)


def check_retention(seconds: float) -> float:
    if not 0 <= seconds <= MAX_DEAD_LETTER_RETENTION_SECONDS:
        raise ValueError(
            f"dead-letter retention must be 0 (keep forever) to {MAX_DEAD_LETTER_RETENTION_SECONDS} seconds "
            f"(got {seconds!r})"
        )
    return float(seconds)


def check_page(limit: int) -> int:
    if not 1 <= limit <= MAX_DEAD_LETTERS_PAGE:
        raise ValueError(f"limit must be 1 to {MAX_DEAD_LETTERS_PAGE} (got {limit})")
    return limit


def check_purge_ids(task_ids: Sequence[str]) -> list[str]:
    if len(task_ids) > MAX_PURGE_IDS:
        raise ValueError(f"purge at most {MAX_PURGE_IDS} task ids at once (got {len(task_ids)})")
    return list(task_ids)


#: Longest consumer name (it names the consumer's handover list and its idle registration).
MAX_CONSUMER_NAME = 256


def check_consumer(consumer: str) -> None:
    if not consumer or len(consumer) > MAX_CONSUMER_NAME or "\0" in consumer:
        raise ValueError(
            f"consumer must be a non-empty name of at most {MAX_CONSUMER_NAME} characters without NUL "
            f"(got {consumer[:40]!r}{'...' if len(consumer) > 40 else ''})"
        )


def check_max_tasks(max_tasks: int) -> None:
    if max_tasks < 1:
        raise ValueError(f"max_tasks must be at least 1 (got {max_tasks}): claim_many takes one task or more")


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed task: the holder may work on it until `expires_at` (Unix time), renewable by heartbeat."""

    task: Task
    fence: int
    consumer: str
    expires_at: float
    #: How long the task waited ready to claim before this claim (enqueue, or its last return to the queue
    #: or end of a retry backoff, -> claim), by the queue's clock: the agents' queue-wait metric.
    queued_seconds: float = 0.0

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def pool(self) -> str:
        return self.task.pool


@runtime_checkable
class TaskQueue(Protocol):
    """An async task queue with per-pool priority queues, leases and a dead-letter queue."""

    def enqueue(self, task: Task) -> Awaitable[bool]:
        """Queue a task; returns False (and changes nothing) when a task with this id already exists. A
        backend may take the task on at the call, before the result is awaited (Redis: into the batch that
        goes out next turn)."""
        ...

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Queue several tasks in as few round trips as the backend allows; one bool per task."""
        ...

    async def claim(
        self, pool: str, consumer: str, timeout: float | None = 0.0, *, lease_seconds: float | None = None
    ) -> Lease | None:
        """Claim the most urgent task of a pool, waiting up to `timeout` seconds (None: forever), under a
        lease of `lease_seconds` (the consumer's pool setting; None: the task's own lease_seconds)."""
        ...

    async def claim_many(
        self,
        pool: str,
        consumer: str,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        lease_seconds: float | None = None,
    ) -> list[Lease]:
        """Claim up to `max_tasks` tasks at once, waiting up to `timeout` for the first."""
        ...

    async def heartbeat(self, lease: Lease) -> Lease:
        """Extend a lease by its claim's lease length; raises LeaseLostError / TaskCancelledError."""
        ...

    async def complete(self, lease: Lease, result: Any = None) -> None:
        """Record the result; raises LeaseLostError when the fence is stale (nothing recorded)."""
        ...

    async def complete_many(self, items: Sequence[tuple[Lease, Any]]) -> list[LeaseLostError | None]:
        """Complete several leases in one round trip; per item None or the refusal."""
        ...

    async def fail(
        self, lease: Lease, error: str, *, retryable: bool = True, retry_delay: float = 0.0
    ) -> TaskState:
        """Report a handler failure. Retryable: spends one of the handler's `max_attempts`; with some
        left, back to the queue (after retry_delay) and QUEUED, else DEAD (dead-letter queue).
        Not retryable: FAILED."""
        ...

    async def release(self, lease: Lease, *, started: bool = False, reason: str = "") -> TaskState:
        """Give back a claimed task on a drain. Not started: it keeps its place and nothing is spent. Started
        (the drain's grace ran out mid-task): one lost lease is spent (`reason` is recorded) and it is
        redelivered at once, or DEAD when that budget is spent. Returns QUEUED or DEAD."""
        ...

    async def cancel(
        self, pool: str, task_id: str, reason: str = "cancelled", *, only_if_queued: bool = False
    ) -> bool:
        """Cancel a queued or running task; False when it had already finished or does not exist.
        only_if_queued: only while no consumer holds it (never claimed since it last became ready, a retry
        backoff included); a claimed task is left running and False returned."""
        ...

    async def get(self, pool: str, task_id: str) -> TaskOutcome | None:
        """The task's current record, or None."""
        ...

    async def wait_result(self, pool: str, task_id: str, timeout: float | None = None) -> TaskOutcome:
        """Wait (without polling) until the task is terminal; raises TimeoutError, TaskNotFoundError."""
        ...

    async def stats(self, pool: str) -> QueueStats:
        """Queued, delayed, in-flight, dead counts and the oldest ready task's age."""
        ...

    async def dead_letters(self, pool: str, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter queue, oldest first, with each task's last error, the task and when it died."""
        ...

    async def dead_letter(self, pool: str, task_id: str) -> DeadLetter | None:
        """One dead letter, or None when the task is not in the dead-letter queue."""
        ...

    async def purge_dead(self, pool: str, task_ids: Sequence[str]) -> int:
        """Delete these dead letters (ids not in the dead-letter queue are skipped); returns how many went."""
        ...

    async def requeue_dead(self, pool: str, task_id: str) -> bool:
        """Move a dead task back into the queue with both budgets fresh."""
        ...

    async def forget(self, pool: str, task_ids: Sequence[str]) -> int:
        """Delete the records of these tasks that ended (succeeded, failed, cancelled): a finished Workflow's
        TTL clean-up. Queued, running and dead-lettered tasks (and unknown ids) are skipped; returns how many
        went."""
        ...

    async def reap(self, pool: str) -> int:
        """Requeue (after the lost-lease backoff) or dead-letter tasks whose lease expired, and remove dead
        letters older than the retention (counted in `stats().dead_expired`); safe to run from many
        processes at once. Returns how many leases had expired."""
        ...

    async def set_consumer_state(self, pool: str, consumer: str, state: str, ttl: float) -> None:
        """Record a consumer's state ("busy", "idle", ...) for `ttl` seconds (agents refresh it), so the
        operator can prefer idle agents when it scales in."""
        ...

    async def consumer_states(self, pool: str) -> dict[str, str]:
        """Live consumers of a pool and their last reported state."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailableError when the backend cannot be reached."""
        ...

    async def close(self) -> None: ...
