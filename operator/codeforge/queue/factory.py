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

import os
from typing import Any
from urllib.parse import urlsplit

from codeforge.api.limits import clip
from codeforge.queue.base import MAX_DEAD_LETTER_RETENTION_SECONDS, TaskQueue, check_retention
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
            f"queue URL {clip(url, 200)} is not a URL: use memory://, redis://host:6379/0, "
            "rediss://host:6380/0 or redis+cluster://host:6379"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise QueueConfigError(
            f"queue URL scheme {clip(scheme, 60)} is not supported: use one of {', '.join(SCHEMES)}"
        )
    if scheme != "memory":
        with queue_errors():
            redis_url.check_url(url)
    return scheme


RETENTION_ENV = "CODEFORGE_DEAD_LETTER_RETENTION_SECONDS"


def retention_from_env(env: dict[str, str] | None = None) -> float | None:
    """The dead-letter retention CODEFORGE_DEAD_LETTER_RETENTION_SECONDS sets (0: keep forever), or None."""
    raw = (dict(os.environ) if env is None else env).get(RETENTION_ENV, "").strip()
    if not raw:
        return None
    try:
        return check_retention(float(raw))
    except ValueError:
        raise QueueConfigError(
            f"{RETENTION_ENV}={raw[:40]!r}: expected seconds from 0 (keep forever) "
            f"to {MAX_DEAD_LETTER_RETENTION_SECONDS}"
        ) from None


async def open_queue(url: str, **options: Any) -> TaskQueue:
    """Connect to the queue a URL names and check that it answers (QueueUnavailableError if not).

    The dead-letter retention is `dead_letter_retention=` if given, else
    CODEFORGE_DEAD_LETTER_RETENTION_SECONDS, else 7 days."""
    scheme = check_url(url)
    if "dead_letter_retention" not in options and (retention := retention_from_env()) is not None:
        options["dead_letter_retention"] = retention
    if scheme == "memory":
        from codeforge.queue.memory import MemoryTaskQueue

        options.pop("durability", None)  # one process: nothing outlives it anyway
        return MemoryTaskQueue(**options)
    from codeforge.queue.redis_backend import RedisTaskQueue

    return await RedisTaskQueue.connect(url, **options)
