"""The TaskQueue contract shared by the memory and Redis backends (DESIGN.md section 3).

Semantics every backend keeps:
- priorities CRITICAL(1) > HIGH(2) > MEDIUM(3) > LOW(4), FIFO within a priority;
- `enqueue` is idempotent on the task id within a pool;
- `claim` is atomic and gives a lease with a fencing token; `heartbeat` extends it;
- an expired lease puts the task back with one more attempt; past `max_attempts` the task goes to the
  dead-letter queue with the reason; nothing is silently dropped;
- `complete`/`fail`/`heartbeat`/`release` carry the fencing token; a stale one raises LeaseLostError,
  so a result is recorded exactly once;
- idle consumers block and are woken by an enqueue, never by a sleep-polling loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from codeforge.api.task import QueueStats, Task, TaskOutcome, TaskState
from codeforge.queue.errors import LeaseLostError

#: How long a finished task's record (and result) stays readable; idempotent re-enqueues find it meanwhile.
DEFAULT_RESULT_TTL_SECONDS = 7 * 24 * 3600


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

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def pool(self) -> str:
        return self.task.pool


@runtime_checkable
class TaskQueue(Protocol):
    """An async task queue with per-pool priority queues, leases and a dead-letter queue."""

    async def enqueue(self, task: Task) -> bool:
        """Queue a task; returns False (and changes nothing) when a task with this id already exists."""
        ...

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Queue several tasks in as few round trips as the backend allows; one bool per task."""
        ...

    async def claim(self, pool: str, consumer: str, timeout: float | None = 0.0) -> Lease | None:
        """Claim the most urgent task of a pool, waiting up to `timeout` seconds (None: forever)."""
        ...

    async def claim_many(
        self, pool: str, consumer: str, max_tasks: int, timeout: float | None = 0.0
    ) -> list[Lease]:
        """Claim up to `max_tasks` tasks at once, waiting up to `timeout` for the first."""
        ...

    async def heartbeat(self, lease: Lease) -> Lease:
        """Extend a lease by the task's lease_seconds; raises LeaseLostError / TaskCancelledError."""
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
        """Report a failure. Retryable with attempts left: back to the queue (after retry_delay) and QUEUED;
        retryable without attempts left: DEAD (dead-letter queue); not retryable: FAILED."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give back a claimed task that was not started (shutdown); the attempt does not count."""
        ...

    async def cancel(self, pool: str, task_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running task; False when it had already finished or does not exist."""
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

    async def dead_letters(self, pool: str, limit: int = 100) -> list[TaskOutcome]:
        """The dead-letter queue, oldest first, with each task's last error."""
        ...

    async def requeue_dead(self, pool: str, task_id: str) -> bool:
        """Move a dead task back into the queue with a fresh set of attempts."""
        ...

    async def reap(self, pool: str) -> int:
        """Requeue (or dead-letter) tasks whose lease expired; safe to run from many processes at once."""
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
