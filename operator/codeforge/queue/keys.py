"""Redis key names in one place. Every key of a pool shares the hash tag `{pool}`, so each Lua script
touches a single Redis Cluster slot."""

from __future__ import annotations

KEY_PREFIX = "cf"


def pool_prefix(pool: str) -> str:
    return f"{KEY_PREFIX}:{{{pool}}}:"


def hand_key(pool: str, consumer: str) -> str:
    """The list a consumer blocked in a claim pops: leases handed over to it (lua/lib.lua, hand_out)."""
    return pool_prefix(pool) + "h:" + consumer


def task_key(pool: str, task_id: str) -> str:
    return pool_prefix(pool) + "t:" + task_id


def done_channel(pool: str) -> str:
    return pool_prefix(pool) + "done"


def pool_from_channel(channel: str) -> str:
    return channel[len(KEY_PREFIX) + 2 : channel.rindex("}")]


def sync_key(pool: str) -> str:
    """Written before each WAIT in durability=replicated, so the WAIT always follows a write of its own."""
    return pool_prefix(pool) + "sync"


def glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob (ACL key and channel patterns, SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def pool_key_patterns(pool: str) -> list[str]:
    """Redis ACL key patterns covering every key of the pool (its tasks, indexes, wake list)."""
    return [glob_escape(pool_prefix(pool)) + "*"]


def pool_channel_patterns(pool: str) -> list[str]:
    """Redis ACL channel patterns covering the pool's Pub/Sub channels (`done`)."""
    return [glob_escape(pool_prefix(pool)) + "*"]
