"""The operator's issue-13 metrics, scraped from `codeforge operator` as its own process (against kmock's
Kubernetes emulator), running a Workflow on a real redis-server with a real `codeforge-agent` process:
workflow duration by phase, result-notification latency, agent busy time and coordination efficiency, the
pool's busy/idle agents, utilisation and max replicas, and the event loop's lag."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import kmock
import pytest

from support.agent_procs import agent_env, running_agents
from support.kopf_harness import GROUP_API, NS, manifest, prepare
from support.prom import Samples, scrape, value

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

POOL = "metrics-work"
QUEUE = f"{NS}/{POOL}"
STEP_SECONDS = (0.4, 3.0)  # the second step is long enough to see the agent busy from outside


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def scrape_until(url: str, check: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = await scrape(url)
            if check(samples):
                return samples
        except (aiohttp.ClientError, AssertionError, OSError):
            samples = {}
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched; last scrape: {sorted(samples)[:80]}")
        await asyncio.sleep(0.1)


def has(samples: Samples, name: str, target: float, **labels: str) -> bool:
    return samples.get((name, frozenset(labels.items()))) == target


async def test_workflow_and_pool_metrics_of_the_operator_process(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "CODEFORGE_QUEUE_URL": redis_url,
        "CODEFORGE_WATCH_NAMESPACES": "",  # see test_operator_workflow_redis: kmock cannot list Namespaces
        "CODEFORGE_METRICS_PORT": str(metrics_port),
        "CODEFORGE_WORKFLOW_STATUS_INTERVAL": "0.2",
        "CODEFORGE_AUTOSCALE_INTERVAL": "0.5",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    pool = manifest("AgentPool", POOL, {"role": "work", "image": "agent:1", "handler": {"kind": "sleep"}})
    pool["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 7}
    steps = [{"name": f"s{i}", "pool": POOL, "params": {"seconds": s}} for i, s in enumerate(STEP_SECONDS)]
    workflow = manifest("Workflow", "measured", {"steps": steps, "edges": [{"from": "s0", "to": "s1"}]})
    codeforge = Path(sys.executable).parent / "codeforge"
    agent = agent_env(QUEUE, redis_url, handler="sleep", concurrency="1")
    async with running_agents(agent), aiohttp.ClientSession(base_url=str(kmock.url)) as http:
        out = asyncio.subprocess
        process = await asyncio.create_subprocess_exec(
            str(codeforge), "operator", env=env, stdout=out.PIPE, stderr=out.STDOUT
        )
        try:
            for plural, body in (("agentpools", pool), ("workflows", workflow)):
                async with http.post(GROUP_API.format(namespace=NS, plural=plural), json=body) as response:
                    assert response.status < 400, await response.text()
            # The long step: the pool's one agent reports busy and the operator exports it.
            busy = await scrape_until(
                url, lambda s: has(s, "codeforge_agentpool_busy_agents", 1, pool=QUEUE), timeout=60
            )
            assert value(busy, "codeforge_agentpool_utilization_ratio", pool=QUEUE) == 1
            assert value(busy, "codeforge_agentpool_idle_agents", pool=QUEUE) == 0
            assert value(busy, "codeforge_agentpool_max_replicas", pool=QUEUE) == 7
            done = await scrape_until(
                url,
                lambda s: (
                    has(s, "codeforge_workflow_duration_seconds_count", 1, phase="Succeeded")
                    and has(s, "codeforge_agentpool_idle_agents", 1, pool=QUEUE)
                ),
                timeout=60,
            )
        finally:
            process.terminate()
            output, _ = await asyncio.wait_for(process.communicate(), 30)
    log = output.decode()[-3000:]
    assert process.returncode == 0, log

    work = sum(STEP_SECONDS)
    took = value(done, "codeforge_workflow_duration_seconds_sum", phase="Succeeded")
    assert work <= took < work + 30, log
    assert value(done, "codeforge_agentpool_utilization_ratio", pool=QUEUE) == 0
    assert value(done, "codeforge_agentpool_busy_agents", pool=QUEUE) == 0

    # Each task's end -> the run woken: the Pub/Sub path, milliseconds here, far under a second.
    assert value(done, "codeforge_result_notification_latency_seconds_count") == len(STEP_SECONDS)
    latency = value(done, "codeforge_result_notification_latency_seconds_sum")
    assert 0 <= latency < 1.0 * len(STEP_SECONDS)

    busy_seconds = value(done, "codeforge_workflow_agent_busy_seconds_total")
    assert work <= busy_seconds < work + 2
    assert value(done, "codeforge_workflow_coordination_efficiency_ratio_count") == 1
    efficiency = value(done, "codeforge_workflow_coordination_efficiency_ratio_sum")
    assert 0.3 < efficiency <= 1.0, "one agent at a time: busy time cannot exceed wall time"
    assert efficiency == pytest.approx(busy_seconds / took, rel=0.05)

    # The event loop's lag, a timer every 0.5 s over the whole run: an idle operator's loop is seldom late.
    timers = value(done, "codeforge_operator_event_loop_lag_seconds_count")
    assert timers >= work / 0.5 - 1
    assert 0 <= value(done, "codeforge_operator_event_loop_lag_seconds_sum") < 0.25 * timers
