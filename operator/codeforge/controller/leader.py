"""Leader election on a `coordination.k8s.io/v1` Lease, with controller-runtime's semantics and timings.

Only the replica that holds the Lease runs the operator: the startup handler (`services.start`) waits here
until it holds it, and Kopf starts no watcher before its startup handlers are done. A standby serves only
its liveness endpoint (`{"leader": false}`) and `/metrics` (`codeforge_leader 0`).

The rules are client-go's leaderelection, which controller-runtime uses (defaults 15 s / 10 s / 2 s):

- acquire: create the Lease, or take it over when its holder is empty (released) or when the record has not
  changed for its `leaseDurationSeconds`, measured on this replica's clock from when it last saw the record
  change (so the nodes' clocks need not agree). Every write carries the resourceVersion it read, so of two
  replicas racing for the Lease exactly one wins; the other gets 409 Conflict and stays a standby. A standby
  polls every retry period, and once more right when the holder's Lease runs out;
- renew every retry period; when no renewal has succeeded for the renew deadline, or another replica holds
  the Lease, leadership is lost and `on_lost` runs at once: the operator process exits non-zero (as
  controller-runtime does) and Kubernetes restarts it as a standby. The deadline is shorter than the lease,
  so a leader cut off from the API server has stopped before any standby may take over;
- release on a graceful shutdown (SIGTERM): after Kopf has stopped, the holder is cleared, so a standby
  takes over at its next poll instead of waiting for the lease to run out.

Not a library: `kubernetes.leaderelection` blocks in threads and never releases the Lease, and
kubernetes-asyncio would add a second full client for this one object; this rides on `controller.kube`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp

from codeforge.controller.env import ConfigError, flag, seconds
from codeforge.controller.kstatus import EventType, micro_time, now_rfc3339
from codeforge.controller.kube import JSON, LEASES, KubeApi, KubeApiError
from codeforge.controller.metrics import LEADER
from codeforge.controller.sharding import Shard
from codeforge.controller.standby import StandbyProbe

logger = logging.getLogger(__name__)

DEFAULT_LEASE_NAME: Final = "codeforge-operator"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: client-go's JitterFactor: the renew deadline must exceed this many retry periods.
JITTER_FACTOR: Final = 1.2
#: Errors of one election round; any other exception is a bug and propagates.
TRANSIENT: Final = (KubeApiError, aiohttp.ClientError, TimeoutError, OSError)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _default_namespace(env: Mapping[str, str]) -> str:
    if namespace := env.get("CODEFORGE_NAMESPACE", "").strip():
        return namespace
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    return "default"


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """CODEFORGE_LEADER_ELECTION (true/false, default false: this replica always acts), CODEFORGE_LEASE_NAME
    (codeforge-operator), CODEFORGE_LEASE_NAMESPACE (default CODEFORGE_NAMESPACE, else the pod's own),
    CODEFORGE_LEASE_DURATION (15, whole seconds), CODEFORGE_LEASE_RENEW_DEADLINE (10),
    CODEFORGE_LEASE_RETRY_PERIOD (2). The identity is the pod name (POD_ID, else the host name) plus a
    random suffix, so a restarted process never mistakes its predecessor's Lease for its own."""

    enabled: bool = False
    lease_name: str = DEFAULT_LEASE_NAME
    namespace: str = "default"
    identity: str = ""
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not _DNS_SUBDOMAIN.match(self.lease_name):
            raise ConfigError(
                f"CODEFORGE_LEASE_NAME={self.lease_name!r}: use a DNS name (a-z, 0-9, '-', '.')"
            )
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError(
                f"CODEFORGE_LEASE_DURATION={self.lease_duration} must be greater than "
                f"CODEFORGE_LEASE_RENEW_DEADLINE={self.renew_deadline}: a cut-off leader must stop before "
                "a standby may take over"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ConfigError(
                f"CODEFORGE_LEASE_RENEW_DEADLINE={self.renew_deadline} must be greater than "
                f"{JITTER_FACTOR} x CODEFORGE_LEASE_RETRY_PERIOD={self.retry_period}: leave room for retries"
            )

    def for_shard(self, shard: Shard) -> ElectionConfig:
        """The Lease of this process's shard: the configured name, suffixed by the shard's index when the
        Workflows are sharded, so each shard has its own leader and standbys."""
        return replace(self, lease_name=shard.lease_name(self.lease_name))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ElectionConfig:
        env = os.environ if env is None else env
        raw_duration = env.get("CODEFORGE_LEASE_DURATION", "").strip() or "15"
        if not raw_duration.isdigit() or int(raw_duration) < 1:
            raise ConfigError(
                f"CODEFORGE_LEASE_DURATION={raw_duration!r}: expected whole seconds (1 or more)"
            )
        pod = env.get("POD_ID", "").strip() or socket.gethostname()
        return cls(
            enabled=flag(env, "CODEFORGE_LEADER_ELECTION"),
            lease_name=env.get("CODEFORGE_LEASE_NAME", "").strip() or DEFAULT_LEASE_NAME,
            namespace=env.get("CODEFORGE_LEASE_NAMESPACE", "").strip() or _default_namespace(env),
            identity=f"{pod}_{uuid.uuid4().hex[:8]}",
            lease_duration=int(raw_duration),
            renew_deadline=seconds(env, "CODEFORGE_LEASE_RENEW_DEADLINE", 10.0),
            retry_period=seconds(env, "CODEFORGE_LEASE_RETRY_PERIOD", 2.0),
        )


class LeaderElector:
    """One replica's view of the Lease: `acquire()` until held, then `keep()` until lost; `release()`."""

    def __init__(
        self,
        api: KubeApi,
        config: ElectionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.config = config
        self._clock = clock
        self._wall = wall
        self._observed: dict[str, Any] | None = None  # the Lease's spec as last seen
        self._observed_at = 0.0  # when it last changed, on our clock
        self._renewed_at: float | None = None  # start of the request that last renewed; None: not leader
        self.lease: JSON | None = None

    @property
    def identity(self) -> str:
        return self.config.identity

    @property
    def is_leader(self) -> bool:
        return self._renewed_at is not None

    @property
    def holder(self) -> str:
        """The holder as last seen ("" when released or never seen)."""
        return str((self._observed or {}).get("holderIdentity") or "")

    def _observe(self, lease: JSON, at: float) -> None:
        self.lease = lease
        spec = dict(lease.get("spec") or {})
        if spec != self._observed:
            self._observed, self._observed_at = spec, at

    def _spec(self, previous: Mapping[str, Any], now: datetime) -> JSON:
        ours = previous.get("holderIdentity") == self.identity
        transitions = int(previous.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.config.lease_duration,
            "acquireTime": previous.get("acquireTime") if ours else micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions if ours or not previous else transitions + 1,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards (created, taken over or renewed)."""
        started = self._clock()
        lease = await self.api.get(LEASES, self.config.namespace, self.config.lease_name)
        if lease is None:
            body: JSON = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.lease_name, "namespace": self.config.namespace},
                "spec": self._spec({}, self._wall()),
            }
            try:
                created = await self.api.create(body)
            except KubeApiError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            self._observe(created, started)
            self._renewed_at = started
            return True
        self._observe(lease, self._clock())
        spec: Mapping[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
        if holder and holder != self.identity and self._clock() < self._observed_at + duration:
            self._renewed_at = None
            return False
        try:
            updated = await self.api.replace({**lease, "spec": self._spec(spec, self._wall())})
        except KubeApiError as exc:
            if exc.status == 409:  # changed since our read: someone else renewed or took it
                return False
            raise
        self._observe(updated, started)
        self._renewed_at = started
        return True

    async def _round(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self.try_acquire_or_renew()
        except TRANSIENT as exc:
            logger.warning("leader election: %s/%s: %s", self.config.namespace, self.config.lease_name, exc)
            return False

    def expires_in(self) -> float | None:
        """Seconds until another holder's Lease runs out, as this replica sees it; None when not held."""
        if not self._observed or self.holder in ("", self.identity):
            return None
        duration = float(self._observed.get("leaseDurationSeconds") or self.config.lease_duration)
        return self._observed_at + duration - self._clock()

    async def acquire(self) -> None:
        """Return once this replica holds the Lease; poll every retry period (with jitter) until then, and
        once more right when the holder's Lease runs out (rather than up to a retry period later)."""
        while True:
            if await self._round(self.config.renew_deadline):
                return
            delay = self.config.retry_period * random.uniform(1.0, JITTER_FACTOR)
            if (left := self.expires_in()) is not None:
                delay = min(delay, max(left, 0.0) + 0.05)
            await asyncio.sleep(delay)

    async def keep(self) -> str:
        """Renew every retry period while leading; return why leadership was lost (the caller must stop
        acting at once)."""
        while True:
            await asyncio.sleep(self.config.retry_period)
            while True:
                if self._renewed_at is None:
                    return f"the Lease is held by {self.holder or 'nobody'}"
                remaining = self._renewed_at + self.config.renew_deadline - self._clock()
                if remaining <= 0:
                    self._renewed_at = None
                    return f"no renewal succeeded within the renew deadline ({self.config.renew_deadline:g}s)"
                if await self._round(remaining):
                    break
                if self.holder not in ("", self.identity):
                    self._renewed_at = None
                    return f"the Lease is held by {self.holder}"
                # Retry, but wake by the deadline: the round itself may have used most of what was left.
                deadline = (self._renewed_at or 0.0) + self.config.renew_deadline
                await asyncio.sleep(max(0.0, min(self.config.retry_period, deadline - self._clock())))

    async def release(self) -> bool:
        """Give the Lease up (holder cleared) if this replica holds it; True when it was released."""
        if self._renewed_at is None:
            return False
        self._renewed_at = None  # stop counting as leader before the write: never act on a released Lease
        lease = await self.api.get(LEASES, self.config.namespace, self.config.lease_name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        now = micro_time(self._wall())
        spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
        spec.update(acquireTime=now, renewTime=now)
        try:
            self._observe(await self.api.replace({**lease, "spec": spec}), self._clock())
        except KubeApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True


def exit_at_once(reason: str) -> None:
    """controller-runtime's reaction to a lost Lease: stop acting now, by ending the process (non-zero, so
    Kubernetes restarts the container, which comes back as a standby). No graceful stop: that would let
    handlers keep writing while another replica may already lead."""
    logger.critical("leader election lost: %s; exiting so this replica restarts as a standby", reason)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


async def post_event(api: KubeApi, lease: JSON | None, identity: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the Lease (best effort: leadership never waits for it)."""
    if lease is None:
        return
    meta = lease["metadata"]
    stamp = now_rfc3339()
    event: JSON = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message,
        "type": EventType.NORMAL.value,
        "source": {"component": "codeforge-operator"},
        "reportingComponent": "codeforge-operator",
        "reportingInstance": identity[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        async with asyncio.timeout(5):
            await api.create(event)
    except TRANSIENT as exc:
        logger.warning("leader election: could not post the %s Event: %s", reason, exc)


class Leadership:
    """This process's part in the election: `wait()` until it leads (serving the standby probe meanwhile),
    then renew in the background until `resign()` (graceful shutdown) or a loss (`on_lost`)."""

    def __init__(self, elector: LeaderElector, *, on_lost: Callable[[str], None] = exit_at_once) -> None:
        self.elector = elector
        self._on_lost = on_lost
        self._keeper: asyncio.Task[None] | None = None

    async def wait(self, probe_endpoint: str | None = None) -> None:
        config = self.elector.config
        LEADER.set(0)
        probe = StandbyProbe(probe_endpoint, lambda: self.elector.holder) if probe_endpoint else None
        if probe is not None:
            await probe.start()
        lease = f"{config.namespace}/{config.lease_name}"
        logger.info("leader election: %s waits for the Lease %s", config.identity, lease)
        waited = time.monotonic()
        try:
            await self.elector.acquire()
        finally:
            if probe is not None:
                await probe.stop()
        LEADER.set(1)
        message = f"{config.identity} became leader after {time.monotonic() - waited:.1f}s"
        logger.info("leader election: %s (Lease %s)", message, lease)
        self._keeper = asyncio.create_task(self._keep(), name="codeforge leader lease")  # renew from now on
        await post_event(self.elector.api, self.elector.lease, config.identity, "LeaderElection", message)

    async def _keep(self) -> None:
        reason = await self.elector.keep()
        LEADER.set(0)
        self._on_lost(reason)

    async def resign(self) -> None:
        """Stop renewing and release the Lease, so a standby takes over at once; then close the client."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        config = self.elector.config
        try:
            async with asyncio.timeout(config.renew_deadline):
                released = await self.elector.release()
        except TRANSIENT as exc:
            logger.warning("leader election: could not release the Lease (it expires by itself): %s", exc)
            released = False
        LEADER.set(0)
        if released:
            message = f"{config.identity} stopped leading and released the Lease"
            logger.info("leader election: %s %s/%s", message, config.namespace, config.lease_name)
            await post_event(self.elector.api, self.elector.lease, config.identity, "LeaderElection", message)
        await self.elector.api.close()


def load_credentials() -> None:
    """What Kopf's own login does (in-cluster service account, else kubeconfig), needed earlier: the Lease
    is acquired in a startup handler, before Kopf logs in."""
    import kubernetes.config

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


async def lead(config: ElectionConfig, *, probe_endpoint: str | None) -> Leadership | None:
    """Return once this process may act: at once when election is off, else when it holds the Lease."""
    if not config.enabled:
        LEADER.set(1)
        return None
    load_credentials()
    leadership = Leadership(LeaderElector(KubeApi.from_kubernetes_config(), config))
    try:
        await leadership.wait(probe_endpoint)
    except BaseException:  # cancelled while standing by (SIGTERM): nothing is held
        await leadership.elector.api.close()
        raise
    return leadership
