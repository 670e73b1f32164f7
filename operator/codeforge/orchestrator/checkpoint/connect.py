"""Open a Redis client for checkpoints from the same URLs the task queue takes (redis://, redis+cluster://).

A `redis://` URL that points at a cluster node is used as a cluster, as the queue does.
"""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from codeforge.orchestrator.checkpoint.redis_saver import DEFAULT_PREFIX, RedisCheckpointSaver, RedisClient
from codeforge.queue import QueueConfigError, QueueUnavailableError
from codeforge.queue.factory import check_url, password_from_env
from codeforge.queue.redis_backend import client_options  # one URL grammar for queue and checkpoints


async def connect_redis(url: str) -> RedisClient:
    if check_url(url) == "memory":
        raise QueueConfigError("checkpoints on Redis need a redis:// or redis+cluster:// URL, not memory://")
    hosts, options, cluster = client_options(url, password_from_env())
    options["decode_responses"] = False  # checkpoints are binary (msgpack)
    try:
        if not cluster:
            single = Redis(host=hosts[0][0], port=hosts[0][1], **options)
            info: dict[str, Any] = await single.info("cluster")
            if not info.get("cluster_enabled"):
                return single
            await single.aclose()
        options.pop("db", None)
        client: RedisCluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts], **options)
        await client.initialize()
        return client
    except (OSError, redis_errors.RedisError) as exc:
        raise QueueUnavailableError(
            f"cannot reach Redis for checkpoints at {hosts[0][0]}:{hosts[0][1]}: {exc}"
        ) from None


async def open_checkpointer(url: str, *, prefix: str = DEFAULT_PREFIX) -> RedisCheckpointSaver:
    return RedisCheckpointSaver(await connect_redis(url), prefix=prefix)
