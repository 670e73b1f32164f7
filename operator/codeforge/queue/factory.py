"""Pick a TaskQueue backend from a URL.

- `memory://`   in-process queue (embedded mode, unit tests)
- `redis://...`, `rediss://...`, `redis+cluster://...`, `rediss+cluster://...`   Redis, one server or a
  cluster, as `codeforge.redis.url` reads them (TLS, passwords from the environment, `?durability=`)

`?durability=fast|fsync|replicated` on a Redis URL says what an acknowledged write survives (README,
"Durability"): `fast` (the default) nothing is waited for; `fsync` the server must fsync every write
(appendfsync always), checked at connect; `replicated` that too, and every write call returns only once a
replica has the write (WAIT).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from codeforge.queue.base import TaskQueue
from codeforge.queue.errors import QueueConfigError, queue_errors
from codeforge.redis import url as redis_url

SCHEMES = ("memory", *redis_url.SCHEMES)
DURABILITY_MODES = redis_url.DURABILITY_MODES


def durability_of(url: str, explicit: str | None = None) -> str:
    """The durability mode: `explicit` if given, else the URL's `?durability=`, else `fast`."""
    with queue_errors():
        return redis_url.durability_of(url, explicit)


def password_from_env(env: dict[str, str] | None = None) -> str | None:
    """The Redis password from CODEFORGE_REDIS_PASSWORD or CODEFORGE_REDIS_PASSWORD_FILE."""
    with queue_errors():
        return redis_url.password_from_env(env)


def check_url(url: str) -> str:
    """Return the scheme of a valid queue URL, or raise QueueConfigError saying what to fix."""
    if not isinstance(url, str) or "://" not in url:
        raise QueueConfigError(
            f"queue URL {url!r} is not a URL: use memory://, redis://host:6379/0, rediss://host:6380/0 "
            "or redis+cluster://host:6379"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise QueueConfigError(
            f"queue URL scheme {scheme!r} is not supported: use one of {', '.join(SCHEMES)}"
        )
    if scheme != "memory":
        with queue_errors():
            redis_url.check_url(url)
    return scheme


async def open_queue(url: str, **options: Any) -> TaskQueue:
    """Connect to the queue a URL names and check that it answers (QueueUnavailableError if not)."""
    scheme = check_url(url)
    if scheme == "memory":
        from codeforge.queue.memory import MemoryTaskQueue

        options.pop("durability", None)  # one process: nothing outlives it anyway
        return MemoryTaskQueue(**options)
    from codeforge.queue.redis_backend import RedisTaskQueue

    return await RedisTaskQueue.connect(url, **options)
