"""Open the checkpointer on the same URLs the task queue takes (redis://, rediss://, redis+cluster://).

Connecting is `codeforge.redis.connect`'s, so a cluster node behind a plain URL is used as a cluster, and a
wrong password or TLS file reads as the queue's errors do.
"""

from __future__ import annotations

from codeforge.orchestrator.checkpoint.redis_saver import DEFAULT_PREFIX, RedisCheckpointSaver, RedisClient
from codeforge.queue import QueueConfigError
from codeforge.queue.errors import queue_errors
from codeforge.queue.factory import check_url
from codeforge.redis import connect


async def connect_redis(url: str) -> RedisClient:
    """A client for checkpoints (binary replies: they are msgpack); the caller closes it."""
    if check_url(url) == "memory":
        raise QueueConfigError("checkpoints on Redis need a redis:// or redis+cluster:// URL, not memory://")
    with queue_errors():
        conn = await connect(url, decode_responses=False)
    return conn.client


async def open_checkpointer(url: str, *, prefix: str = DEFAULT_PREFIX) -> RedisCheckpointSaver:
    """The checkpointer on its own connection; close it with `await saver.aclose()`."""
    return RedisCheckpointSaver(await connect_redis(url), prefix=prefix)
