"""What can go wrong talking to Redis, and how it reads to a user (one line naming the fix)."""

from __future__ import annotations

from redis import exceptions as redis_errors

#: Errors after which the same call is retried on a fresh connection.
TRANSIENT = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    ConnectionError,
    OSError,
)
#: Errors after which a cluster's slot map is stale (a failover moved the slot): refresh it, then retry.
TOPOLOGY = (redis_errors.MovedError, redis_errors.AskError, redis_errors.ReadOnlyError)


class RedisStoreError(Exception):
    """Redis answered a command with an error where it should not have (base of the two below)."""


class RedisConfigError(RedisStoreError, ValueError):
    """A Redis URL or option is wrong; the message names it and the fix."""


class RedisUnavailableError(RedisStoreError, ConnectionError):
    """Redis cannot be reached."""


def topology_changed(exc: redis_errors.ResponseError) -> bool:
    """A plain client talking to a cluster node gets MOVED/ASK/CLUSTERDOWN/TRYAGAIN as a bare ResponseError
    (the pipeline prefixes its own text): the slot moved, so refresh the map and retry."""
    text = str(exc)
    return any(
        f"'{code}" in text or text.startswith(code) for code in ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
    )


def auth_problem(url: str, exc: BaseException, password: str | None) -> RedisConfigError | None:
    """A clear configuration error when `exc` (or what it wraps: redis-py's cluster client wraps the
    first node's error) is an authentication failure; None otherwise."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(e) for e in chain)
    auth_markers = ("NOAUTH", "Authentication required", "WRONGPASS", "invalid username-password")
    if not any(isinstance(e, redis_errors.AuthenticationError) for e in chain) and not any(
        marker in text for marker in auth_markers
    ):
        return None
    where = (
        "set it in the URL (redis://:PASSWORD@host:port), CODEFORGE_REDIS_PASSWORD "
        "or CODEFORGE_REDIS_PASSWORD_FILE"
    )
    if not password or "required" in text.lower():
        return RedisConfigError(f"Redis at {url} requires a password: {where}")
    return RedisConfigError(f"Redis at {url} refused the password ({text}): {where}")


def sentence(exc: BaseException) -> str:
    """An error's text ending in exactly one full stop (redis-py's messages sometimes end in one)."""
    return str(exc).rstrip(". ") + "."
