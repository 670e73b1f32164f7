"""Leader election (`codeforge.controller.leader`) against a real API server: several candidates in one
process, each with its own client, competing for one `coordination.k8s.io/v1` Lease.

Short timings (a 3 s lease, 2 s renew deadline, 0.5 s retry period) keep the tests quick; the bounds are
stated in those terms, so the same rules hold at the defaults (15 / 10 / 2 s). The operator processes'
failover with the default timings is tests/e2e/test_operator_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cluster import Cluster
from cluster.resources import temporary_namespace
from codeforge.controller.kube import LEASES, KubeApi
from codeforge.controller.leader import JITTER_FACTOR, ElectionConfig, LeaderElector, Leadership

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LEASE = 3
DEADLINE = 2.0
RETRY = 0.5
#: Slack for the API round trips and a busy 2-core machine.
SLACK = 1.5


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    with temporary_namespace(control_plane, "e2e-lease") as name:
        yield name


def client(cluster: Cluster) -> KubeApi:
    from kubernetes import client as k8s
    from kubernetes import config

    configuration = k8s.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    return KubeApi.from_kubernetes_config(configuration)


@pytest.fixture
async def lease_name() -> str:
    return f"lease-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def candidates(
    control_plane: Cluster, namespace: str, lease_name: str
) -> AsyncIterator[list[LeaderElector]]:
    """Three candidates for one Lease, each with its own connection (as separate pods would have)."""
    electors = [
        LeaderElector(
            client(control_plane),
            ElectionConfig(
                enabled=True,
                lease_name=lease_name,
                namespace=namespace,
                identity=f"op-{i}_{uuid.uuid4().hex[:4]}",
                lease_duration=LEASE,
                renew_deadline=DEADLINE,
                retry_period=RETRY,
            ),
        )
        for i in range(3)
    ]
    yield electors
    for elector in electors:
        await elector.api.close()


async def lease(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    found = await api.get(LEASES, namespace, name)
    assert found is not None
    spec: dict[str, Any] = found["spec"]
    return spec


async def first(tasks: dict[asyncio.Task[Any], LeaderElector], timeout: float) -> LeaderElector:
    done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, f"{len(done)} candidates acquired the Lease"
    task = done.pop()
    task.result()
    return tasks.pop(task)


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_candidate_leads_and_the_others_stand_by_while_it_renews(
    candidates: list[LeaderElector], namespace: str, lease_name: str
) -> None:
    # All three start together: the Lease does not exist yet, so they race to create it.
    tasks = {asyncio.create_task(c.acquire()): c for c in candidates}
    try:
        leader = await first(tasks, timeout=10)
        standbys = list(tasks.values())
        spec = await lease(leader.api, namespace, lease_name)
        assert spec["holderIdentity"] == leader.identity
        assert (spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (LEASE, 0)
        assert leader.is_leader
        assert not any(s.is_leader for s in standbys)

        # While the leader renews, nobody takes over, however long they wait (here two lease durations).
        async with background(leader.keep()) as (keeper,):
            await asyncio.sleep(2 * LEASE)
            assert not keeper.done()
            assert not any(task.done() for task in tasks), "a standby took a Lease that is being renewed"
            renewed = await lease(leader.api, namespace, lease_name)
            assert renewed["holderIdentity"] == leader.identity
            assert renewed["renewTime"] > spec["renewTime"]
            assert renewed["acquireTime"] == spec["acquireTime"]
            assert all(s.holder == leader.identity for s in standbys)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_standby_takes_over_one_lease_duration_after_the_leader_dies(
    candidates: list[LeaderElector], namespace: str, lease_name: str
) -> None:
    leader, standby, _ = candidates
    await leader.acquire()
    async with background(leader.keep(), standby.acquire()) as (keeper, waiting):
        await asyncio.sleep(LEASE)  # the standby has watched the leader renew for a while
        assert not waiting.done()
        keeper.cancel()  # the leader dies (SIGKILL): no more renewals, no release
        killed = time.monotonic()
        await asyncio.wait_for(asyncio.shield(waiting), timeout=LEASE + 3 * RETRY * JITTER_FACTOR + SLACK)
        took = time.monotonic() - killed
    print(f"\ntakeover {took:.2f}s after the leader stopped renewing (lease {LEASE}s, retry {RETRY}s)")
    # Not before the Lease ran out: the last renewal was at most one retry period before the kill.
    assert took >= LEASE - RETRY
    # At most a poll (to see the last renewal) after it ran out: the standby wakes when the Lease expires.
    assert took <= LEASE + RETRY * JITTER_FACTOR + SLACK
    spec = await lease(standby.api, namespace, lease_name)
    assert spec["holderIdentity"] == standby.identity
    assert spec["leaseTransitions"] == 1


async def test_a_released_lease_is_taken_over_at_once_and_events_say_so(
    control_plane: Cluster, namespace: str, lease_name: str
) -> None:
    def leadership(i: int) -> tuple[Leadership, list[str]]:
        lost: list[str] = []
        config = ElectionConfig(
            enabled=True,
            lease_name=lease_name,
            namespace=namespace,
            identity=f"op-{i}_{uuid.uuid4().hex[:4]}",
            lease_duration=LEASE,
            renew_deadline=DEADLINE,
            retry_period=RETRY,
        )
        return Leadership(LeaderElector(client(control_plane), config), on_lost=lost.append), lost

    (first_, first_lost), (second, second_lost) = leadership(0), leadership(1)
    await first_.wait()
    async with background(second.wait()) as (waiting,):
        await asyncio.sleep(LEASE)  # longer than a lease: only renewals keep the first one leading
        assert not waiting.done()
        started = time.monotonic()
        await first_.resign()  # SIGTERM: Kopf stopped, then the cleanup handler releases the Lease
        await asyncio.wait_for(asyncio.shield(waiting), timeout=RETRY * JITTER_FACTOR + SLACK)
        took = time.monotonic() - started
    print(f"\nhandover {took:.2f}s after the release (retry {RETRY}s)")
    assert took < LEASE - RETRY, "a release must not wait for the Lease to run out"
    assert second.elector.is_leader
    spec = await lease(second.elector.api, namespace, lease_name)
    assert spec["holderIdentity"] == second.elector.identity
    await second.resign()
    assert first_lost == second_lost == []

    events = control_plane.kubectl_json(
        "get", "events", "--namespace", namespace, "--field-selector", f"involvedObject.name={lease_name}"
    )["items"]
    messages = sorted(e["message"] for e in events if e["reason"] == "LeaderElection")
    ids = (first_.elector.identity, second.elector.identity)
    assert [m.split(" ", 1)[0] for m in messages if "became leader" in m] == sorted(ids), messages
    assert sum("stopped leading" in m for m in messages) == 2, messages


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An address that accepts connections and never answers: a leader cut off from the API server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_leader_cut_off_from_the_api_stops_within_the_renew_deadline_before_a_standby_takes_over(
    candidates: list[LeaderElector], black_hole: str
) -> None:
    import aiohttp

    leader, standby, _ = candidates
    await leader.acquire()
    async with background(standby.acquire()) as (waiting,):
        await asyncio.sleep(RETRY * 2)
        # Every later request of the leader hangs (a partition); the standby still reaches the API server.
        real = leader.api
        leader.api = KubeApi(black_hole, aiohttp.ClientSession())
        try:
            cut = time.monotonic()
            reason = await asyncio.wait_for(leader.keep(), timeout=DEADLINE + RETRY + SLACK)
            stopped = time.monotonic()
        finally:
            await leader.api.close()
            leader.api = real
        assert "renew deadline" in reason, reason
        assert not leader.is_leader
        # The leader stopped (the operator exits here) before the standby could take over.
        assert not waiting.done(), "the standby took over while the old leader still counted as leader"
        await asyncio.wait_for(asyncio.shield(waiting), timeout=LEASE + 2 * RETRY * JITTER_FACTOR + SLACK)
        took_over = time.monotonic()
    print(f"\nthe cut-off leader stopped after {stopped - cut:.2f}s, the standby led {took_over - cut:.2f}s")
    assert stopped - cut <= DEADLINE + SLACK
    assert took_over > stopped


async def test_a_leader_whose_lease_was_taken_steps_down_at_the_next_renewal(
    candidates: list[LeaderElector], namespace: str, lease_name: str
) -> None:
    leader, other, _ = candidates
    await leader.acquire()
    current = await leader.api.get(LEASES, namespace, lease_name)
    assert current is not None
    current["spec"]["holderIdentity"] = other.identity  # e.g. an administrator hands it over
    await other.api.replace(current)
    started = time.monotonic()
    reason = await asyncio.wait_for(leader.keep(), timeout=RETRY + SLACK)
    assert reason == f"the Lease is held by {other.identity}"
    assert time.monotonic() - started <= RETRY + SLACK
    assert not leader.is_leader


async def test_of_candidates_racing_for_an_expired_lease_exactly_one_wins(
    candidates: list[LeaderElector], namespace: str, lease_name: str
) -> None:
    """Writes carry the resourceVersion they read: the losers of a race get 409 Conflict."""
    owner = candidates[0]
    await owner.acquire()
    assert await owner.release()
    racers = [*candidates[1:], owner]
    for _ in range(5):
        results = await asyncio.gather(*(c.try_acquire_or_renew() for c in racers))
        assert sum(results) == 1, results
        winner = racers[results.index(True)]
        spec = await lease(owner.api, namespace, lease_name)
        assert spec["holderIdentity"] == winner.identity
        assert await winner.release()
