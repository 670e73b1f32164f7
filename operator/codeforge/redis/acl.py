"""Redis ACL users of agents: one per AgentPool, limited to that pool's keys and channels (README,
"Multi-tenancy").

`agent_rules` is pure (the ACL SETUSER arguments); `set_user` and `delete_user` apply them on the server, or
on every node of a Redis Cluster (ACLs are per node and neither replicated nor moved by a failover, so each
master and replica gets them). The password is sent as its SHA-256 (`#<hex>`), so ACL LIST, the slow log
and MONITOR never show it. The caller is the operator with its admin connection; agents never run these.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from codeforge.redis.connect import Connection

#: What an agent's connection runs: the handshake and cluster discovery of redis-py, the queue's scripts
#: (EVALSHA, EVAL on NOSCRIPT) and the commands inside them, the blocking pop on the wake list, direct reads
#: of task hashes, and WAIT in durability=replicated. No command that lists or flushes keys (KEYS, SCAN,
#: FLUSH*), no CONFIG, no ACL, no SCRIPT FLUSH, no MONITOR: key patterns alone would not stop those. Data
#: commands are harmless beyond the user's key patterns; a new Lua script of the agent (e.g. a rate limiter)
#: that calls one not listed here gets NOPERM under a pool's user: add it here.
AGENT_COMMANDS: Final = (
    # connection and discovery
    "ping", "hello", "select", "readonly", "readwrite", "asking", "info", "command", "time",
    "client|setname", "client|id", "cluster|slots", "cluster|shards", "cluster|nodes",
    "cluster|info", "cluster|myid", "wait",
    # scripts
    "eval", "evalsha", "eval_ro", "evalsha_ro", "script|load", "script|exists",
    # data commands, on the permitted keys only
    "exists", "del", "expire", "pexpire", "ttl", "pttl", "type",
    "expireat", "pexpireat",
    "get", "mget", "set", "setnx", "setex", "psetex", "incr", "incrby", "incrbyfloat", "decr", "decrby",
    "hget", "hmget", "hgetall", "hset", "hsetnx", "hdel", "hincrby", "hincrbyfloat", "hexists", "hlen",
    "zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zremrangebyscore", "zpopmin", "zcount",
    "llen", "lrange", "lpush", "rpush", "lpop", "rpop", "ltrim", "blpop", "brpop",
    "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe",
)  # fmt: skip
#: ACL user names of pools: `codeforge-pool:<namespace>/<name>`.
USER_PREFIX: Final = "codeforge-pool:"


def user_name(pool: str) -> str:
    return USER_PREFIX + pool


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def agent_rules(
    password: str,
    key_patterns: Iterable[str],
    channel_patterns: Iterable[str],
    commands: Sequence[str] = AGENT_COMMANDS,
) -> list[str]:
    """ACL SETUSER arguments: a fresh user (reset) with this password only, these keys and channels only,
    and `commands` only. Patterns are Redis globs (`codeforge.queue.keys.glob_escape` for literal parts)."""
    keys = [f"~{p}" for p in key_patterns]
    channels = [f"&{p}" for p in channel_patterns]
    if not keys:
        raise ValueError("an agent user needs at least one key pattern")
    return [
        "reset",
        "on",
        f"#{password_hash(password)}",
        "resetkeys",
        *keys,
        "resetchannels",
        *channels,
        "-@all",
        *(f"+{c}" for c in commands),
    ]


def cluster_node_addresses(nodes: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """Every reachable node, masters and replicas, of a CLUSTER NODES reply as redis-py parses it
    ({"ip:port": {"flags": ..., "hostname": ...}}); a node announcing a hostname is reached by it."""
    found: list[tuple[str, int]] = []
    for address, info in nodes.items():
        if {"fail", "noaddr", "handshake"} & set(str(info.get("flags", "")).split(",")):
            continue
        host, _, port = address.split("@", 1)[0].rpartition(":")
        if port.isdigit() and (info.get("hostname") or host):
            found.append((info.get("hostname") or host, int(port)))
    return found


async def _nodes(conn: Connection) -> list[Any]:
    """Every node ACLs must be set on: the one server, or every master and replica of the cluster (the
    cluster client itself only tracks the masters)."""
    client = conn.client
    if not isinstance(client, RedisCluster):
        return [client]
    nodes = await client.execute_command("CLUSTER NODES", target_nodes=RedisCluster.RANDOM)
    return [conn.node(host, port) for host, port in cluster_node_addresses(nodes)]


async def _on_every_node(conn: Connection, *args: Any) -> None:
    for node in await _nodes(conn):
        try:
            await node.execute_command(*args)
        finally:
            if node is not conn.client:
                await node.aclose()


async def set_user(conn: Connection, user: str, rules: Sequence[str]) -> None:
    """Create or replace the user on every node (`reset` first, so nothing of an older user stays)."""
    await _on_every_node(conn, "ACL", "SETUSER", user, *rules)


async def delete_user(conn: Connection, user: str) -> None:
    """Remove the user from every node, and close its connections (Redis does on ACL DELUSER)."""
    await _on_every_node(conn, "ACL", "DELUSER", user)


async def save(conn: Connection) -> None:
    """ACL SAVE where the servers keep an aclfile (so users survive a restart); a no-op where they do not."""
    with contextlib.suppress(redis_errors.ResponseError):
        await _on_every_node(conn, "ACL", "SAVE")
