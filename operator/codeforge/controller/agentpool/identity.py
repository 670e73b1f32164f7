"""The Redis identity of an AgentPool's agents (CODEFORGE_AGENT_REDIS_ACL): a Secret with a random password,
owned by the pool, and a Redis ACL user limited to the pool's keys and channels.

- The Secret `<pool>-agent-redis` is created once per pool object: it is never rewritten, and goes with the
  pool (owner reference), so deleting and recreating a pool rotates the password. A Secret of that name left
  by an earlier pool object of the same name (its garbage collection still pending) is replaced.
- The ACL user `codeforge-pool:<namespace>/<name>` is (re)set from the Secret on every full reconcile and
  every extras check (a restarted Redis or a new cluster node has lost it), on every node, and removed when
  the pool is deleted (`forget`).

The operator keeps its own (admin) connection for this; agents only ever get their pool's user.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from redis import exceptions as redis_errors

from codeforge.api.agentpool import KIND
from codeforge.controller import ratelimits
from codeforge.controller.agentpool import builders
from codeforge.controller.config import AgentDefaults
from codeforge.controller.kube import SECRETS, KubeApi, KubeApiError
from codeforge.queue.keys import glob_escape, pool_channel_patterns, pool_key_patterns
from codeforge.queue.ratelimit import namespace_rate_prefix, rate_key
from codeforge.redis import acl
from codeforge.redis.connect import Connection

JSON = dict[str, Any]
#: Random bytes of a password (as URL-safe base64: 43 characters).
PASSWORD_BYTES = 32


class IdentityError(Exception):
    """The pool's Redis identity cannot be set up; the message says why and what to do."""


def build_secret(ref: builders.PoolRef, role: str, password: str) -> JSON:
    name = builders.names(ref.name)["redis"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,  # rotation is a new Secret (a new pool object), never an edit
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": builders.labels(ref.name, role),
            "ownerReferences": [builders.owner_reference(ref)],
        },
        "data": {
            builders.REDIS_PASSWORD_KEY: base64.b64encode(password.encode()).decode(),
            "username": base64.b64encode(acl.user_name(ref.queue).encode()).decode(),
        },
    }


def _left_by_earlier_pool(live: JSON, ref: builders.PoolRef) -> bool:
    """A Secret we made for an earlier AgentPool of the same name (its GC has not run yet)."""
    owners = live.get("metadata", {}).get("ownerReferences", [])
    return any(
        o.get("kind") == KIND and o.get("name") == ref.name and o.get("uid") != ref.uid for o in owners
    )


async def ensure_secret(kube: KubeApi, ref: builders.PoolRef, role: str) -> str:
    """The pool's password: from its Secret, created with a fresh random password when missing."""
    name = builders.names(ref.name)["redis"]
    for _ in range(3):
        live = await kube.get(SECRETS, ref.namespace, name)
        if live is not None and _left_by_earlier_pool(live, ref):
            await kube.delete(SECRETS, ref.namespace, name)
            live = None
        if live is None:
            try:
                live = await kube.create(build_secret(ref, role, secrets.token_urlsafe(PASSWORD_BYTES)))
            except KubeApiError as exc:
                if exc.status == 409:  # created meanwhile (or not yet gone): read it again
                    continue
                raise
        owners = live.get("metadata", {}).get("ownerReferences", [])
        if not any(o.get("uid") == ref.uid for o in owners):
            raise IdentityError(
                f"Secret {ref.namespace}/{name} exists and is not owned by this AgentPool: rename the pool "
                "or delete that Secret (the operator keeps the pool's Redis password there)"
            )
        encoded = live.get("data", {}).get(builders.REDIS_PASSWORD_KEY, "")
        password = base64.b64decode(encoded).decode() if encoded else ""
        if not password:
            key = builders.REDIS_PASSWORD_KEY
            raise IdentityError(f"Secret {ref.namespace}/{name} has no {key!r}: delete it")
        return password
    raise IdentityError(f"Secret {ref.namespace}/{name} keeps changing; retrying")


def rate_limit_patterns(ref: builders.PoolRef, limit: ratelimits.Resolved | None) -> list[str]:
    """The rate-limit keys the pool's agents may touch: every key of its namespace, and the one fleet-wide
    key its spec names (never another fleet key: a tenant's agent cannot pause or drain those)."""
    patterns = [glob_escape(namespace_rate_prefix(ref.namespace)) + "*"]
    if limit is not None and limit.fleet:
        patterns.append(glob_escape(rate_key(limit.limit.key)))
    return patterns


def user_rules(
    ref: builders.PoolRef, password: str, agents: AgentDefaults, limit: ratelimits.Resolved | None = None
) -> list[str]:
    """The pool's ACL: its own keys and channels, its rate-limit keys, and the patterns the operator grants
    to all."""
    return acl.agent_rules(
        password,
        [*pool_key_patterns(ref.queue), *rate_limit_patterns(ref, limit), *agents.acl_key_patterns],
        [*pool_channel_patterns(ref.queue), *agents.acl_channel_patterns],
    )


async def ensure_identity(
    kube: KubeApi,
    redis: Connection,
    ref: builders.PoolRef,
    role: str,
    agents: AgentDefaults,
    limit: ratelimits.Resolved | None = None,
) -> None:
    """The Secret exists and Redis (every node) knows the pool's user with its password."""
    password = await ensure_secret(kube, ref, role)
    try:
        await acl.set_user(redis, acl.user_name(ref.queue), user_rules(ref, password, agents, limit))
        await acl.save(redis)
    except redis_errors.RedisError as exc:
        raise IdentityError(f"cannot set the pool's Redis ACL user: {exc}") from exc


async def forget(redis: Connection, ref: builders.PoolRef) -> None:
    """Remove the pool's user from Redis (its Secret goes with the pool); its agents' connections close."""
    await acl.delete_user(redis, acl.user_name(ref.queue))
    await acl.save(redis)


async def reconcile_identity(
    kube: KubeApi,
    redis: Connection | None,
    ref: builders.PoolRef,
    role: str,
    agents: AgentDefaults,
    limit: ratelimits.Resolved | None = None,
) -> str | None:
    """`ensure_identity`, with what went wrong as a message for the pool's conditions (None: all set).
    Retryable Kubernetes errors propagate (the handler retries the reconcile)."""
    if redis is None:
        return "the operator is not connected to Redis yet: the pool's Redis user is not set"
    try:
        await ensure_identity(kube, redis, ref, role, agents, limit)
    except IdentityError as exc:
        return str(exc)
    except KubeApiError as exc:
        if exc.retryable:
            raise
        return f"cannot keep the pool's Redis Secret: {exc.message}"
    return None
