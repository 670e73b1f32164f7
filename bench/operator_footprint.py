"""Operator footprint: memory (RSS) and CPU of `codeforge operator` with 20 AgentPools and 200 running
Workflows, and the time from a queue burst to the Deployment's new replica count.

Setup, all on this machine: a private redis-server; kmock's Kubernetes emulator (in this process) as the API
server; the operator as its own process (`codeforge operator`, whole cluster, like in a pod), so its RSS and
CPU are its own; one in-process `sleep` agent per pool (in this process, not the operator's). Each Workflow is
a chain of `--steps` steps that each sleep `--step-seconds`, so all of them are running during the window.

Measured:
- RSS idle (pools only) and peak RSS while the Workflows run (VmRSS from /proc);
- CPU of the operator over the window (utime + stime from /proc, % of one core);
- status patches per second the operator sends for Workflows (kmock's request log): the writer's cap at work;
- burst -> replicas: 40 tasks land in the queue of a pool without agents; seconds until its Deployment asks
  for ceil(40 / targetTasksPerAgent) replicas (the autoscaler's interval is 1 s).

    PYTHONPATH=tests .venv/bin/python bench/operator_footprint.py [--pools 20] [--workflows 200] [--json PATH]

Targets (README, "Benchmarks"): RSS under 150 MiB; burst to replicas under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from cluster.metrics import cpu_seconds, rss_mib
from codeforge.api.task import Task
from codeforge.embedded.manifest import PoolSpec
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis
from codeforge_agent.config import AgentConfig
from codeforge_agent.loop import run_agent
from support.kopf_harness import GROUP_API, manifest, register, write_kubeconfig

NS = "bench"
TARGET_RSS_MIB = 150.0
TARGET_BURST_SECONDS = 2.0
BURST_TASKS = 40
TASKS_PER_AGENT = 2
PAGE = os.sysconf("SC_PAGE_SIZE")


def find(emulator: kmock.KubernetesEmulator, plural: str, name: str) -> dict[str, Any] | None:
    for (resource, namespace, obj_name), obj in emulator.objects.items():
        if resource.plural == plural and namespace == NS and obj_name == name and not obj.deleted:
            raw: dict[str, Any] = obj.raw
            return raw
    return None


def phases(emulator: kmock.KubernetesEmulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (resource, _, _), obj in emulator.objects.items():
        if resource.plural == "workflows" and not obj.deleted:
            phase = (obj.raw.get("status") or {}).get("phase") or "(none)"
            counts[phase] = counts.get(phase, 0) + 1
    return counts


def is_status_patch(request: Any) -> bool:
    path = str(request.url.path)
    return bool(request.method == "PATCH" and path.endswith("/status") and "/workflows/" in path)


class RequestLog:
    """kmock keeps every request and scans the whole log for each new one (O(n^2) over a run): this load
    test keeps only the latest requests, counting the Workflow status patches it drops."""

    KEEP = 200

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.emulator = emulator
        self.dropped_patches = 0

    def trim(self) -> None:
        requests = self.emulator._requests  # no public way to forget old requests
        old = requests[: -self.KEEP]
        self.dropped_patches += sum(1 for r in old if is_status_patch(r))
        del requests[: -self.KEEP]
        for payload in self.emulator._payloads:
            del payload._requests[: -self.KEEP]

    def status_patches(self) -> int:
        return self.dropped_patches + sum(1 for r in self.emulator._requests if is_status_patch(r))

    async def keep_trimming(self) -> None:
        while True:
            self.trim()
            await asyncio.sleep(0.5)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def wait_for(check: Any, timeout: float, what: str, every: float = 0.2) -> float:
    started = time.monotonic()
    progress(f"waiting for {what}")
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    redis = LocalRedis().start()
    tmp = Path(tempfile.mkdtemp(prefix="cf-footprint-"))
    stop_agents = asyncio.Event()
    agents: list[asyncio.Task[None]] = []
    process = None
    try:
        async with (
            kmock.KubernetesEmulator() as emulator,
            kmock.Server(emulator),
            aiohttp.ClientSession() as http,
        ):
            register(emulator, extra={"coordination.k8s.io/v1/leases": "Lease"})
            log_of_requests = RequestLog(emulator)
            trimmer = asyncio.create_task(log_of_requests.keep_trimming())
            base = str(emulator.url).rstrip("/")
            kubeconfig = write_kubeconfig(emulator, tmp / "kubeconfig", token="bench")
            queue = await open_queue(redis.url)
            per_pool = math.ceil(args.workflows / args.pools)
            for i in range(args.pools):
                env = {
                    **PoolSpec(f"{NS}/pool-{i}", "sleep", {}, concurrency=per_pool + 2).agent_env(redis.url),
                    "CODEFORGE_CLAIM_WAIT": "0.5",
                }
                agents.append(
                    asyncio.create_task(run_agent(queue, AgentConfig.from_sources([], env), stop_agents))
                )

            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "CODEFORGE_QUEUE_URL": redis.url,
                "CODEFORGE_WATCH_NAMESPACES": "",
                "CODEFORGE_LIVENESS_ENDPOINT": "off",
                "CODEFORGE_LOG_FORMAT": "json",
            }
            env.pop("KUBERNETES_SERVICE_HOST", None)
            codeforge = Path(sys.executable).parent / "codeforge"
            log = (tmp / "operator.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                str(codeforge), "operator", env=env, stdout=log, stderr=log
            )

            async def post(path: str, body: dict[str, Any]) -> None:
                async with http.post(base + path, json=body) as response:
                    if response.status >= 400:
                        raise RuntimeError(f"POST {path}: {response.status} {await response.text()}")

            pool_spec = {
                "role": "bench",
                "image": "agent:1",
                "handler": {"kind": "sleep"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 50, "targetTasksPerAgent": TASKS_PER_AGENT},
            }
            names = [f"pool-{i}" for i in range(args.pools)] + ["burst"]
            for name in names:
                await post(
                    GROUP_API.format(namespace=NS, plural="agentpools"),
                    manifest("AgentPool", name, pool_spec, NS),
                )
            await wait_for(
                lambda: all(find(emulator, "deployments", n) for n in names), 60, "pool Deployments"
            )
            await asyncio.sleep(3)
            rss_idle = rss_mib(process.pid)

            steps = [{"name": f"s{j}", "params": {"seconds": args.step_seconds}} for j in range(args.steps)]
            started = time.monotonic()
            for w in range(args.workflows):
                pool = f"pool-{w % args.pools}"
                spec = {
                    "steps": [{**s, "pool": pool} for s in steps],
                    "edges": [{"from": f"s{j}", "to": f"s{j + 1}"} for j in range(args.steps - 1)],
                }
                await post(
                    GROUP_API.format(namespace=NS, plural="workflows"),
                    manifest("Workflow", f"wf-{w}", spec, NS, uid=f"uid-wf-{w}"),
                )
            all_running = await wait_for(
                lambda: phases(emulator).get("Running", 0) >= args.workflows, 120, "Workflows running"
            )

            # The window: every Workflow running; sample RSS and CPU, then send a burst to an idle pool.
            patches_before, cpu_before, window_start = (
                log_of_requests.status_patches(),
                cpu_seconds(process.pid),
                time.monotonic(),
            )
            peak = rss_mib(process.pid)
            await queue.enqueue_many([Task(id=f"burst-{i}", pool=f"{NS}/burst") for i in range(BURST_TASKS)])
            burst_at = time.monotonic()
            expected = min(50, math.ceil(BURST_TASKS / TASKS_PER_AGENT))
            burst_seconds = None
            while time.monotonic() - window_start < args.window:
                peak = max(peak, rss_mib(process.pid))
                deployment = find(emulator, "deployments", "burst") or {}
                if burst_seconds is None and deployment.get("spec", {}).get("replicas") == expected:
                    burst_seconds = time.monotonic() - burst_at
                await asyncio.sleep(0.05)
            window = time.monotonic() - window_start
            cpu = (cpu_seconds(process.pid) - cpu_before) / window * 100
            patches = (log_of_requests.status_patches() - patches_before) / window
            running_in_window = phases(emulator).get("Running", 0)

            await wait_for(
                lambda: phases(emulator).get("Succeeded", 0) >= args.workflows,
                args.steps * args.step_seconds * 4 + 120,
                "Workflows succeeded",
            )
            total = time.monotonic() - started
            peak = max(peak, rss_mib(process.pid))
            await stop_operator(process)  # while the API server still answers, so it exits cleanly
            trimmer.cancel()
            return {
                "pools": args.pools,
                "workflows": args.workflows,
                "steps": args.steps,
                "step_seconds": args.step_seconds,
                "rss_idle_mib": round(rss_idle, 1),
                "rss_peak_mib": round(peak, 1),
                "cpu_percent_one_core": round(cpu, 1),
                "workflow_status_patches_per_s": round(patches, 1),
                "running_during_window": running_in_window,
                "seconds_to_all_running": round(all_running, 2),
                "burst_to_replicas_seconds": None if burst_seconds is None else round(burst_seconds, 2),
                "wall_seconds_for_all": round(total, 1),
                "window_seconds": round(window, 1),
                "phases": phases(emulator),
            }
    finally:
        if process is not None:
            await stop_operator(process)
        stop_agents.set()
        await asyncio.gather(*agents, return_exceptions=True)
        redis.stop()


async def stop_operator(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()


def table(result: dict[str, Any]) -> str:
    burst = result["burst_to_replicas_seconds"]
    burst_ok = burst is not None and burst < TARGET_BURST_SECONDS
    rows = [
        (f"RSS, {result['pools']} pools idle (MiB)", f"{result['rss_idle_mib']}", ""),
        (
            f"RSS peak, {result['workflows']} running Workflows (MiB)",
            f"{result['rss_peak_mib']}",
            f"< {TARGET_RSS_MIB:g} {'ok' if result['rss_peak_mib'] < TARGET_RSS_MIB else 'MISSED'}",
        ),
        ("CPU during the window (% of one core)", f"{result['cpu_percent_one_core']}", ""),
        ("Workflow status patches / s", f"{result['workflow_status_patches_per_s']}", "cap 20/s"),
        ("Workflows running in the window", f"{result['running_during_window']}", ""),
        (
            "queue burst -> Deployment replicas (s)",
            "not reached" if burst is None else f"{burst}",
            f"< {TARGET_BURST_SECONDS:g} {'ok' if burst_ok else 'MISSED'}",
        ),
        ("all Workflows succeeded after (s)", f"{result['wall_seconds_for_all']}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>10}  target", "-" * (width + 26)]
    lines += [f"{name:<{width}}  {value:>10}  {target}" for name, value, target in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=6.0)
    parser.add_argument("--window", type=float, default=5.0, help="Seconds of sampling while all run.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
