"""Open a client on the Redis a URL names: one server, or a cluster (by scheme, or behind a plain URL)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from codeforge.redis.errors import TRANSIENT, RedisStoreError, RedisUnavailableError, auth_problem, sentence
from codeforge.redis.packing import hiredis_packed
from codeforge.redis.pool import plain_client
from codeforge.redis.url import RedisURL, parse_url

Client = Redis | RedisCluster


@dataclass
class Connection:
    """A connected client, and what it takes to open more plain clients on the same servers."""

    client: Client
    url: RedisURL

    @property
    def cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    def node(self, host: str, port: int) -> Redis:
        """A plain client on one node, with the URL's options (password, TLS, timeouts)."""
        options = dict(self.url.options)
        if self.cluster:
            options.pop("db", None)
        return plain_client(host, port, **options)

    async def any_node(self) -> Redis:
        """A plain client on the server, or on any node of the cluster that answers (for Pub/Sub: a
        classic PUBLISH reaches every node of a cluster)."""
        if not isinstance(self.client, RedisCluster):
            return self.node(*self.url.hosts[0])
        nodes = self.client.get_nodes() or [ClusterNode(h, p) for h, p in self.url.hosts]
        random.shuffle(nodes)
        last: Exception | None = None
        for node in nodes:
            candidate = self.node(node.host, node.port)
            try:
                await candidate.ping()
                return candidate
            except TRANSIENT as exc:
                last = exc
                await candidate.aclose()
        raise RedisUnavailableError(f"no Redis Cluster node answers: {last}")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


async def connect(url: str, *, durability: str | None = None, decode_responses: bool = True) -> Connection:
    """Connect and check that Redis answers: RedisConfigError for a wrong URL or password,
    RedisUnavailableError when nothing answers, RedisStoreError when it answers with an error."""
    target = parse_url(url, durability=durability, decode_responses=decode_responses)
    options = target.options
    if not target.cluster:
        single = plain_client(target.hosts[0][0], target.hosts[0][1], **options)
        try:
            info = await single.info("cluster")
        except (*TRANSIENT, redis_errors.RedisError) as exc:
            await single.aclose()
            auth = auth_problem(target.safe, exc, options.get("password"))
            if auth:
                raise auth from None
            if isinstance(exc, redis_errors.ResponseError):
                raise RedisStoreError(f"Redis at {target.safe} answered: {exc}") from None
            raise RedisUnavailableError(
                f"cannot reach Redis at {target.safe}: {sentence(exc)} Check the host and port, that "
                "redis-server runs there, and for TLS use rediss://"
            ) from None
        if not info.get("cluster_enabled"):
            return Connection(single, target)
        await single.aclose()  # a cluster node behind a plain URL: talk to the cluster
    cluster_options = {k: v for k, v in options.items() if k != "db"}
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        require_full_coverage=True,
        **cluster_options,
    )
    _pack_with_hiredis(client)
    try:
        await client.initialize()
    except (*TRANSIENT, redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
        await client.aclose()
        auth = auth_problem(target.safe, exc, options.get("password"))
        if auth:
            raise auth from None
        raise RedisUnavailableError(
            f"cannot reach Redis Cluster at {target.safe}: {sentence(exc)} Check the node addresses and "
            "that the cluster is formed (redis-cli --cluster check)"
        ) from None
    return Connection(client, target)


def _pack_with_hiredis(client: RedisCluster) -> None:
    """Every node connection of `client` packs its commands with hiredis (`redis/packing.py`). redis-py's
    cluster client takes no connection class: it sets its own in the options it shares with its nodes
    manager, which builds every node it discovers from them. Set before `initialize`, so the node
    connections opened from then on (discovered nodes, redirections) use it."""
    options = client.connection_kwargs
    options["connection_class"] = hiredis_packed(options["connection_class"])
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = options["connection_class"]
