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
#: FLUSH*), no CONFIG, no ACL, no SCRIPT FLUSH, no MONITOR: key patterns alone would not stop those.
AGENT_COMMANDS: Final = (
    # connection and discovery
    "ping", "hello", "select", "readonly", "readwrite", "asking", "info", "command", "time",
    "client|setname", "client|setinfo", "client|id", "cluster|slots", "cluster|shards", "cluster|nodes",
    "cluster|info", "cluster|myid", "wait",
    # scripts
    "eval", "evalsha", "eval_ro", "evalsha_ro", "script|load", "script|exists",
    # data commands, on the permitted keys only
    "exists", "del", "expire", "pexpire", "ttl", "pttl", "type",
    "get", "set", "incr", "incrby", "decrby",
    "hget", "hmget", "hgetall", "hset", "hdel", "hincrby", "hexists", "hlen",
    "zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zpopmin", "zcount",
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


def _nodes(conn: Connection) -> list[Any]:
    """Every node ACLs must be set on: the one server, or every master and replica of the cluster."""
    client = conn.client
    if isinstance(client, RedisCluster):
        return [conn.node(n.host, n.port) for n in client.get_nodes()]
    return [client]


async def _on_every_node(conn: Connection, *args: Any) -> None:
    for node in _nodes(conn):
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
