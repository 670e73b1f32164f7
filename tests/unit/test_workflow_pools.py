"""PoolLookup: one GET per pool for Workflows started together, a pool seen is remembered for a while, a
missing one is asked for every time."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from codeforge.api.workflow import parse_workflow_spec
from codeforge.controller.kube import Kind, KubeApi
from codeforge.controller.workflow.pools import PoolLookup


class Pools:
    """The API server's side: which AgentPools exist; each GET takes a moment (concurrent callers overlap)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.gets = 0

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        await asyncio.sleep(0.01)
        return {"metadata": {"name": name}} if f"{namespace}/{name}" in self.names else None


def spec(*pools: str) -> Any:
    steps = [{"name": f"s{i}", "pool": pool} for i, pool in enumerate(pools)]
    edges = [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(len(pools) - 1)]
    return parse_workflow_spec({"steps": steps, "edges": edges})


async def test_workflows_started_together_share_one_lookup_and_a_seen_pool_is_remembered() -> None:
    now = [0.0]
    server = Pools("ns/work")
    lookup = PoolLookup(ttl=10, clock=lambda: now[0])
    api = cast(KubeApi, server)
    results = await asyncio.gather(*(lookup.missing(api, spec("ns/work")) for _ in range(100)))
    assert results == [[]] * 100
    assert server.gets == 1
    assert await lookup.missing(api, spec("ns/work")) == []
    assert server.gets == 1  # remembered
    now[0] = 11.0
    assert await lookup.missing(api, spec("ns/work")) == []
    assert server.gets == 2  # looked up again once the time passed


async def test_a_missing_pool_is_looked_up_every_time_and_found_once_it_exists() -> None:
    server = Pools()
    lookup = PoolLookup()
    api = cast(KubeApi, server)
    assert await lookup.missing(api, spec("ns/later", "ns/work")) == ["ns/later", "ns/work"]
    assert await lookup.missing(api, spec("ns/later")) == ["ns/later"]
    assert server.gets == 3
    server.names.add("ns/later")
    assert await lookup.missing(api, spec("ns/later")) == []


async def test_a_cancelled_waiter_does_not_cancel_the_lookup_of_the_others() -> None:
    server = Pools("ns/work")
    lookup = PoolLookup()
    api = cast(KubeApi, server)
    first = asyncio.ensure_future(lookup.exists(api, "ns/work"))
    second = asyncio.ensure_future(lookup.exists(api, "ns/work"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second
    assert server.gets == 1
