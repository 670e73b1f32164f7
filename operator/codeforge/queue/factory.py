"""Pick a TaskQueue backend from a URL.

- `memory://`                          in-process queue (embedded mode, unit tests)
- `redis://[:password@]host:port[/db]`  one Redis server; a cluster node is detected and used as a cluster
- `rediss://...`                        the same over TLS, verified against the system CAs or
                                        `?ssl_ca_certs=/path/ca.pem` (`?ssl_cert_reqs=none` opts out)
- `redis+cluster://host:port[,host:port...]`, `rediss+cluster://...`   a Redis Cluster, explicitly

`?durability=fast|fsync|replicated` on a Redis URL says what an acknowledged write survives (README,
"Durability"): `fast` (the default) nothing is waited for; `fsync` the server must fsync every write
(appendfsync always), checked at connect; `replicated` that too, and every write call returns only once a
replica has the write (WAIT).

The password may also come from `CODEFORGE_REDIS_PASSWORD` or a file named by
`CODEFORGE_REDIS_PASSWORD_FILE` (a mounted Secret), so it never has to sit in a URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from codeforge.queue.base import TaskQueue
from codeforge.queue.errors import QueueConfigError

SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
#: What an acknowledged queue write survives, weakest first (README, "Durability").
DURABILITY_MODES = ("fast", "fsync", "replicated")


def durability_of(url: str, explicit: str | None = None) -> str:
    """The durability mode: `explicit` if given, else the URL's `?durability=`, else `fast`."""
    mode = explicit or dict(parse_qsl(urlsplit(url).query)).get("durability") or "fast"
    if mode not in DURABILITY_MODES:
        raise QueueConfigError(
            f"queue durability {mode!r} is not a mode: use one of {', '.join(DURABILITY_MODES)} "
            "(e.g. redis://host:6379/0?durability=fsync)"
        )
    return mode


def password_from_env(env: dict[str, str] | None = None) -> str | None:
    env = dict(os.environ) if env is None else env
    if env.get("CODEFORGE_REDIS_PASSWORD"):
        return env["CODEFORGE_REDIS_PASSWORD"]
    path = env.get("CODEFORGE_REDIS_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise QueueConfigError(
                f"CODEFORGE_REDIS_PASSWORD_FILE={path!r} cannot be read ({exc.strerror}): "
                "point it at the mounted Secret's file"
            ) from exc
    return None


def check_url(url: str) -> str:
    """Return the scheme of a valid queue URL, or raise QueueConfigError saying what to fix."""
    if not isinstance(url, str) or "://" not in url:
        raise QueueConfigError(
            f"queue URL {url!r} is not a URL: use memory://, redis://host:6379/0, rediss://host:6380/0 "
            "or redis+cluster://host:6379"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise QueueConfigError(
            f"queue URL scheme {scheme!r} is not supported: use one of {', '.join(SCHEMES)}"
        )
    if scheme != "memory":
        try:
            hosts = parts.netloc.rsplit("@", 1)[-1]
            for host in hosts.split(","):
                if ":" in host:
                    int(host.rsplit(":", 1)[1])
        except ValueError:
            raise QueueConfigError(f"queue URL {url!r} has a port that is not a number") from None
        if not parts.hostname:
            raise QueueConfigError(f"queue URL {url!r} names no host: use e.g. redis://localhost:6379/0")
        durability_of(url)
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
