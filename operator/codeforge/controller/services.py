"""What the whole operator process shares: its configuration, one Kubernetes client and one queue connection.

The startup handler puts an `OperatorServices` into Kopf's operator-wide memo; every object's memo is a
shallow copy of it, so the AgentPool and Workflow handlers reach the same connections through
`memo.services`. The queue connection is retried with a pause when the queue is down, and the reason is kept
for the QueueUnreachable conditions. With CODEFORGE_LEADER_ELECTION on, the startup handler first waits until
this replica holds the leader Lease (`controller/leader.py`); a standby never gets past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import prometheus_client

from codeforge.controller import leader
from codeforge.controller.config import OperatorConfig
from codeforge.controller.kopf_settings import configure
from codeforge.controller.kube import KubeApi
from codeforge.controller.loop_lag import watch_loop_lag
from codeforge.controller.metrics import EVENT_LOOP_LAG
from codeforge.controller.ratelimits import Declarations
from codeforge.controller.shared_opening import SharedOpening
from codeforge.controller.standby import liveness_endpoint
from codeforge.orchestrator.gc_tuning import tune_gc
from codeforge.queue import TaskQueue, open_queue
from codeforge.redis.connect import Connection, connect

#: Read once at import: Kopf timers take their interval when the handlers are declared.
CONFIG = OperatorConfig.from_env()
#: Read at import too, so a bad lease setting stops the operator at once with its message; each shard
#: elects its own leader (controller/sharding.py).
ELECTION = leader.ElectionConfig.from_env().for_shard(CONFIG.shard)
#: Wait between attempts to (re)connect to the queue.
QUEUE_RETRY_SECONDS = 5.0
Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass
class OperatorServices:
    """Operator-wide connections, shared by every object's memo (memos are shallow copies of this one)."""

    config: OperatorConfig
    kube: KubeApi | None = None
    queue: TaskQueue | None = None
    queue_retry_at: float = 0.0
    queue_error: str = "the operator is not connected to the queue yet"
    leadership: leader.Leadership | None = None
    redis: Connection | None = None  # the admin connection for the pools' ACL users (redis_acl)
    redis_retry_at: float = 0.0
    #: each connection opened once for everything that asks while it opens (controller/shared_opening)
    queue_opening: SharedOpening[None] = field(default_factory=SharedOpening, repr=False)
    redis_opening: SharedOpening[None] = field(default_factory=SharedOpening, repr=False)
    #: Which pool declared which namespace rate limit, to report conflicting numbers (controller/ratelimits).
    rate_limits: Declarations = field(default_factory=Declarations)
    #: Run first by `close` (e.g. the Workflow runs writing their last statuses): Kopf runs cleanup handlers
    #: in registration order, and this module's registers before any handler module that imports it.
    before_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Observes the event loop's lag while metrics are served (controller/loop_lag).
    loop_lag: asyncio.Task[None] | None = None

    def api(self) -> KubeApi:
        # Created on first use: Kopf's login (which configures the client) runs after the startup handlers.
        if self.kube is None:
            self.kube = KubeApi.from_kubernetes_config()
        return self.kube

    async def connected_queue(self, logger: Logger) -> TaskQueue | None:
        if self.queue is None and time.monotonic() >= self.queue_retry_at:
            await self.queue_opening.join(lambda: self._open_queue(logger))
        return self.queue

    async def _open_queue(self, logger: Logger) -> None:
        try:
            self.queue = await open_queue(self.config.queue_url)
        except Exception as exc:  # any backend failure: retry later, report QueueUnreachable meanwhile
            self.queue_retry_at = time.monotonic() + QUEUE_RETRY_SECONDS
            self.queue_error = f"queue unreachable: {exc}"
            logger.warning(
                "queue %s unreachable, retrying in %ss: %s", self.config.queue_url, QUEUE_RETRY_SECONDS, exc
            )

    async def admin_redis(self, logger: Logger) -> Connection | None:
        """The operator's own Redis connection (its admin credentials), for ACL commands; None while down."""
        if self.redis is None and time.monotonic() >= self.redis_retry_at:
            await self.redis_opening.join(lambda: self._open_redis(logger))
        return self.redis

    async def _open_redis(self, logger: Logger) -> None:
        try:
            self.redis = await connect(self.config.queue_url)
        except Exception as exc:  # retried later; the pools report it meanwhile
            self.redis_retry_at = time.monotonic() + QUEUE_RETRY_SECONDS
            self.queue_error = f"Redis unreachable: {exc}"
            logger.warning("Redis unreachable for the pools' ACL users, retrying: %s", exc)

    async def close(self) -> None:
        for hook in self.before_close:
            try:
                await hook()
            except Exception:  # shutting down either way; the connections below must still close
                logging.getLogger(__name__).exception("a shutdown step failed")
        if self.loop_lag is not None:
            self.loop_lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_lag
        if self.redis is not None:
            await self.redis.aclose()
        if self.kube is not None:
            await self.kube.close()
        if self.queue is not None:
            await self.queue.close()


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    configure(settings, CONFIG.shard)
    if CONFIG.shard.sharded:
        logger.info("running the Workflows of %s (hash range of their uid)", CONFIG.shard.describe())
    if CONFIG.queue_url.startswith("memory://"):
        logger.warning("CODEFORGE_QUEUE_URL is unset: using an in-process queue that no agent pod can reach")
    memo.services = OperatorServices(config=CONFIG)
    if CONFIG.metrics_port is not None:
        prometheus_client.start_http_server(CONFIG.metrics_port)  # a daemon thread; exits with the process
        memo.services.loop_lag = asyncio.create_task(watch_loop_lag(EVENT_LOOP_LAG.observe))
    # A standby waits here (serving liveness and metrics): Kopf starts no watcher before this returns.
    probe = liveness_endpoint(os.environ, sys.argv)
    memo.services.leadership = await leader.lead(ELECTION, probe_endpoint=probe)
    await memo.services.connected_queue(logger)
    tune_gc()  # start-up is over: what it made lives as long as the process


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
    services: OperatorServices | None = getattr(memo, "services", None)
    if services is not None:
        await services.close()
