"""Kopf handlers of the AgentPool kind: thin wrappers around `reconcile.reconcile`.

- create / update / resume: a full reconcile, including the metrics Service and the PodDisruptionBudget;
- a timer (every CODEFORGE_AUTOSCALE_INTERVAL seconds): autoscaling from the queue, Deployment drift
  correction (the Deployment is read from an in-memory index, not from the API), status refresh;
- an index of the Deployments the operator manages, kept up to date by Kopf's watch.

With the Workflows sharded over several operator processes, pools are shard 0's alone: the other shards do
not import this module (controller/__init__.py, controller/sharding.py).

Each reconcile ends in one status patch (through Kopf's `patch`) and posts Events for scale changes and
health transitions. Timer ticks write the status only when it changed (queue gauges at most every
CODEFORGE_STATUS_INTERVAL seconds), so 20 busy pools do not flood the API server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from redis.exceptions import RedisError

from codeforge.api.agentpool import GROUP, PLURAL, VERSION
from codeforge.controller import metrics
from codeforge.controller.agentpool import builders, identity
from codeforge.controller.agentpool.autoscaler import AutoscalerState
from codeforge.controller.agentpool.reconcile import Deps, Outcome, PoolObject, reconcile, status_needs_write
from codeforge.controller.kstatus import now_rfc3339
from codeforge.controller.kube import KubeApiError
from codeforge.controller.services import CONFIG, Logger, OperatorServices

#: How often owned Services and PDBs are re-checked by the timer (they change rarely; each check is a GET).
EXTRAS_CHECK_SECONDS = 60.0
MANAGED = {"app.kubernetes.io/managed-by": builders.MANAGED_BY}


@dataclass
class PoolMemory:
    """Per-pool state kept between reconciles (lost on restart: the autoscaler then starts afresh)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    autoscaler: AutoscalerState = field(default_factory=AutoscalerState)
    desired: int | None = None  # last replicas applied: what "current" means to the autoscaler
    extras_checked_at: float = float("-inf")
    gauges_written_at: float = float("-inf")
    identity_error: str | None = None  # last check of the pool's Redis user (redis_acl)


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def agent_deployments(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], Any]:
    """The managed Deployments by (namespace, name), so timer ticks need no GET."""
    return {
        (namespace, name): {
            "metadata": dict(body.metadata),
            "spec": dict(body.spec),
            "status": dict(body.status),
        }
    }


def _memory(memo: Any) -> PoolMemory:
    if "pool" not in memo:
        memo.pool = PoolMemory()
    pool: PoolMemory = memo.pool
    return pool


def _indexed(
    index: kopf.Index[tuple[str, str], Any] | None, namespace: str, name: str
) -> dict[str, Any] | None:
    store = index.get((namespace, name)) if index is not None else None
    return next(iter(store), None) if store is not None else None


async def _reconcile_and_report(
    *,
    body: kopf.Body,
    memo: Any,
    logger: Logger,
    deployments: kopf.Index[tuple[str, str], Any] | None,
    check_extras: bool,
) -> Outcome:
    services: OperatorServices = memo.services
    pool = _memory(memo)
    meta = body.metadata
    ref = builders.PoolRef(namespace=meta.namespace or "default", name=meta.name or "", uid=meta.uid or "")
    async with pool.lock:
        queue = await services.connected_queue(logger)
        deps = Deps(
            kube=services.api(),
            queue=queue,
            agents=services.config.agents,
            queue_error=services.queue_error,
            redis=await services.admin_redis(logger) if services.config.agents.redis_acl else None,
            rate_limits=services.rate_limits,
        )
        try:
            outcome = await reconcile(
                PoolObject(ref, meta.get("generation"), dict(body.spec), dict(body.status)),
                deps,
                deployment=_indexed(deployments, ref.namespace, builders.names(ref.name)["deployment"]),
                autoscaler=pool.autoscaler,
                now=time.monotonic(),
                timestamp=now_rfc3339(),
                check_extras=check_extras,
                last_desired=pool.desired,
                identity_error=pool.identity_error,
            )
        except KubeApiError as exc:  # only retryable ones reach here
            metrics.RECONCILE_ERRORS.labels(pool=ref.queue).inc()
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=5) from exc
        pool.autoscaler = outcome.autoscaler
        pool.identity_error = outcome.identity_error
        if outcome.desired is not None:
            pool.desired = outcome.desired
        if check_extras:
            pool.extras_checked_at = time.monotonic()
    metrics.observe_status(ref.queue, outcome.status)
    metrics.observe_spec(ref.queue, body.spec)
    for event in outcome.events:
        if event.reason in ("ScaledUp", "ScaledDown"):
            direction = "up" if event.reason == "ScaledUp" else "down"
            metrics.SCALE_DECISIONS.labels(pool=ref.queue, direction=direction).inc()
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        logger.info("%s: %s", event.reason, event.message)
    return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_pool(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: Logger,
    agent_deployments: kopf.Index[tuple[str, str], Any] | None = None,  # injected by Kopf
    **_: Any,
) -> None:
    outcome = await _reconcile_and_report(
        body=body, memo=memo, logger=logger, deployments=agent_deployments, check_extras=True
    )
    patch.status.update(outcome.status)
    _memory(memo).gauges_written_at = time.monotonic()


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=CONFIG.autoscale_interval, initial_delay=CONFIG.autoscale_interval
)
async def autoscale_pool(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: Logger,
    agent_deployments: kopf.Index[tuple[str, str], Any] | None = None,  # injected by Kopf
    **_: Any,
) -> None:
    pool = _memory(memo)
    due = time.monotonic() - pool.extras_checked_at >= EXTRAS_CHECK_SECONDS
    outcome = await _reconcile_and_report(
        body=body, memo=memo, logger=logger, deployments=agent_deployments, check_extras=due
    )
    gauges_due = time.monotonic() - pool.gauges_written_at >= memo.services.config.status_interval
    if status_needs_write(dict(body.status), outcome.status, gauges_due):
        patch.status.update(outcome.status)
        pool.gauges_written_at = time.monotonic()


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=not CONFIG.agents.redis_acl, retries=60)
async def forget_pool(*, meta: kopf.Meta, memo: Any, logger: Logger, **_: Any) -> None:
    """Owned objects (Deployment, Secret...) go with the pool (owner references); its metric series and,
    with per-pool Redis users, its ACL user are ours to remove: a finalizer holds the pool until Redis has
    forgotten the user (retried while Redis is down, for at most 60 attempts)."""
    ref = builders.PoolRef(meta.namespace or "default", meta.name or "", meta.uid or "")
    metrics.forget(ref.queue)
    services: OperatorServices = memo.services
    services.rate_limits.forget(ref.namespace, ref.name)
    if not services.config.agents.redis_acl:
        return
    redis = await services.admin_redis(logger)
    if redis is None:
        why = services.queue_error
        raise kopf.TemporaryError(f"cannot remove the Redis user of {ref.queue} yet: {why}", delay=5)
    try:
        await identity.forget(redis, ref)
    except RedisError as exc:
        raise kopf.TemporaryError(f"cannot remove the Redis user of {ref.queue} yet: {exc}", delay=5) from exc
