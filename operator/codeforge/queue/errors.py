"""Errors the task queue raises; each message says what happened and what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_errors

from codeforge.queue.keys import pool_prefix
from codeforge.redis.errors import RedisConfigError, RedisStoreError, RedisUnavailableError


class QueueError(Exception):
    """Base class of every task-queue error."""


class QueueConfigError(QueueError, ValueError):
    """A queue URL or option is wrong; the message names it and the fix."""


class QueueUnavailableError(QueueError, ConnectionError):
    """The backend cannot be reached (after retries)."""


class ReplicationTimeoutError(QueueUnavailableError):
    """durability=replicated: the write reached the master, but no replica confirmed it in time.

    The write may be lost if the master fails over now. Retry the call: every queue call is idempotent
    (a complete with the same fence records once), so a retry either finds the write or makes it again.
    """


class LeaseLostError(QueueError):
    """The caller's lease is gone (expired and redelivered, or a newer claim holds the task).

    The fencing token is stale, so the call was refused and nothing was recorded: another consumer owns
    the task now. Stop working on it.
    """


class TaskCancelledError(LeaseLostError):
    """The task was cancelled while the caller held it; nothing was recorded."""


class TaskNotFoundError(QueueError, KeyError):
    """No task with that id exists in that pool (it never did, or its record expired)."""


@contextlib.contextmanager
def queue_errors() -> Iterator[None]:
    """Raise the Redis package's errors as the queue's own (same message), so callers catch QueueError."""
    try:
        yield
    except RedisConfigError as exc:
        raise QueueConfigError(str(exc)) from None
    except RedisUnavailableError as exc:
        raise QueueUnavailableError(str(exc)) from None
    except RedisStoreError as exc:
        raise QueueError(str(exc)) from None


#: What Redis says when a script meets a key of the wrong type or a counter that is no number: values no
#: codeforge client writes under a pool's prefix.
_FOREIGN_VALUE = ("WRONGTYPE", "not an integer", "not a valid float")


def script_refused(pool: str, script: str, exc: redis_errors.ResponseError) -> QueueError:
    """A queue script Redis refused (not a moved slot or a lost master, which are retried): what it said,
    without the script's SHA and line, and for a key no codeforge client wrote, how to find it."""
    said = str(exc).split(" script: ", 1)[0]
    error = f"pool {pool}: Redis refused the queue's {script} script: {said}"
    if any(sign in said for sign in _FOREIGN_VALUE):
        prefix = pool_prefix(pool)
        error += (
            f". A key under {prefix} holds a value no codeforge client writes (another client wrote it): "
            f"find it with redis-cli --scan --pattern '{prefix}*' and TYPE, then delete or repair it"
        )
    return QueueError(error)
