"""Per-pool priority task queues with leases: the `TaskQueue` protocol and its memory and Redis backends."""

from codeforge.queue.base import (
    DEFAULT_RESULT_TTL_SECONDS,
    HANDLER_BUDGET_SPENT,
    LOST_LEASE_BUDGET_SPENT,
    Lease,
    TaskQueue,
)
from codeforge.queue.errors import (
    LeaseLostError,
    QueueConfigError,
    QueueError,
    QueueUnavailableError,
    ReplicationTimeoutError,
    TaskCancelledError,
    TaskNotFoundError,
)
from codeforge.queue.factory import open_queue

__all__ = [
    "DEFAULT_RESULT_TTL_SECONDS",
    "HANDLER_BUDGET_SPENT",
    "LOST_LEASE_BUDGET_SPENT",
    "Lease",
    "LeaseLostError",
    "QueueConfigError",
    "QueueError",
    "QueueUnavailableError",
    "ReplicationTimeoutError",
    "TaskCancelledError",
    "TaskNotFoundError",
    "TaskQueue",
    "open_queue",
]
