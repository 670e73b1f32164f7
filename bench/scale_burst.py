"""Queue burst -> 500 Ready agent pods, on the local Kubernetes control plane (target: <= 30 s).

What runs: the local control plane of hack/cluster/ (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok with 3 fake nodes), a private redis-server, and the operator as a local process
(`kopf run -m codeforge.controller`, autoscaling every 0.5 s). One AgentPool (min 3, max 500, 4 tasks per
agent, no scale-up stabilization) starts at 3 Ready agents. Each run then:

1. enqueues the burst (2,000 tasks by default) in one `enqueue_many` call: t = 0 once it returns;
2. deployment: the Deployment's spec.replicas reaches 500 (the operator's decision, applied);
3. first-ready: the first new pod is Ready; ready-500: all 500 are Ready (kwok plays the kubelet);
4. pool-status: the AgentPool's status says 500 ready (what `kubectl get agentpools` shows);
5. drains the queue through the queue API (claim and complete every task) and times the way back to 3.

Pods never run on this control plane (kwok writes their status), so this measures the operator, the API
server, the Deployment/ReplicaSet controllers and the scheduler: the part of a scale-up that CodeForge owns,
not image pulls or container starts.

    PYTHONPATH=tests .venv/bin/python bench/scale_burst.py [--runs 3] [--tasks 2000] \\
        [--json bench/results/scale_burst.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cluster import Cluster, ExistingCluster, LocalControlPlane
from cluster.processes import OperatorProcess
from cluster.resources import dump, install_crds, label_agent_nodes, temporary_namespace
from codeforge.api.task import Task
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis

POOL = "burst"
POLL_SECONDS = 0.05
TARGET_READY_SECONDS = 30.0
TARGET_DEPLOYMENT_SECONDS = 2.0


def pool_manifest(max_replicas: int, min_replicas: int, tasks: int) -> dict[str, Any]:
    per_agent = max(1, tasks // max_replicas)  # the burst asks for exactly max_replicas agents
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": POOL},
        "spec": {
            "role": "research",
            "image": "registry.invalid/codeforge/agent:bench",
            "handler": {"kind": "echo"},
            "autoscaling": {
                "mode": "queue",
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "targetTasksPerAgent": per_agent,
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 5},
            },
        },
    }


class Watcher:
    """Reads the Deployment and the AgentPool through one API client (polling is cheaper than a kubectl
    process per look on 2 cores)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.api_client: Any = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.apps = k8s.AppsV1Api(self.api_client)
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.namespace = namespace

    def deployment(self) -> tuple[int, int]:
        dep: Any = self.apps.read_namespaced_deployment(POOL, self.namespace)
        return int(dep.spec.replicas or 0), int(dep.status.ready_replicas or 0)

    def pods(self) -> int:
        """Pods of the pool, terminating ones included (a run starts once the last scale-in has settled)."""
        pods: Any = self.core.list_namespaced_pod(self.namespace, label_selector=f"codeforge.ai/pool={POOL}")
        return len(pods.items)

    def pool_ready(self) -> int:
        pool: Any = self.custom.get_namespaced_custom_object(
            "codeforge.ai", "v1alpha1", self.namespace, "agentpools", POOL
        )
        return int(pool.get("status", {}).get("readyReplicas", 0))

    def close(self) -> None:
        self.api_client.close()


def wait_for(probe: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `probe` holds; returns the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    return time.monotonic()


async def drain(queue: TaskQueue, pool: str) -> int:
    done = 0
    while True:
        leases = await queue.claim_many(pool, "bench-drain", 500)
        if not leases:
            stats = await queue.stats(pool)
            if stats.queued == 0 and stats.in_flight == 0:
                return done
            await asyncio.sleep(0.05)
            continue
        await queue.complete_many([(lease, None) for lease in leases])
        done += len(leases)


def one_run(
    run: int, watcher: Watcher, queue_url: str, namespace: str, args: argparse.Namespace
) -> dict[str, Any]:
    pool = f"{namespace}/{POOL}"
    wait_for(lambda: watcher.deployment() == (args.min, args.min), 120, f"run {run}: {args.min} Ready agents")
    wait_for(lambda: watcher.pods() == args.min, 120, f"run {run}: the last scale-in's pods gone")

    async def burst() -> float:
        queue = await open_queue(queue_url)
        try:
            tasks = [Task(id=f"r{run}-{i}", pool=pool) for i in range(args.tasks)]
            await queue.enqueue_many(tasks)
            return time.monotonic()
        finally:
            await queue.close()

    t0 = asyncio.run(burst())
    first_ready = None
    deployment_at = None
    while True:
        spec, ready = watcher.deployment()
        now = time.monotonic()
        if deployment_at is None and spec >= args.replicas:
            deployment_at = now
        if first_ready is None and ready > args.min:
            first_ready = now
        if ready >= args.replicas:
            ready_at = now
            break
        if now - t0 > args.timeout:
            raise TimeoutError(f"run {run}: {ready}/{args.replicas} Ready after {args.timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    pool_at = wait_for(lambda: watcher.pool_ready() >= args.replicas, 60, "AgentPool status at 500 ready")

    async def drain_all() -> float:
        queue = await open_queue(queue_url)
        try:
            await drain(queue, pool)
            return time.monotonic()
        finally:
            await queue.close()

    drained_at = asyncio.run(drain_all())
    back_at = wait_for(lambda: watcher.deployment() == (args.min, args.min), 180, f"back to {args.min}")
    assert deployment_at is not None
    assert first_ready is not None
    return {
        "run": run,
        "tasks": args.tasks,
        "replicas": args.replicas,
        "deployment_s": round(deployment_at - t0, 2),
        "first_ready_s": round(first_ready - t0, 2),
        "ready_500_s": round(ready_at - t0, 2),
        "pool_status_s": round(pool_at - t0, 2),
        "back_to_min_after_drain_s": round(back_at - drained_at, 2),
    }


def bench(cluster: Cluster, args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    install_crds(cluster)
    label_agent_nodes(cluster)
    redis = LocalRedis().start()
    try:
        with temporary_namespace(cluster, "bench-burst") as namespace:
            operator = OperatorProcess(
                kubeconfig=cluster.kubeconfig,
                queue_url=redis.url,
                namespaces=[namespace],
                log_path=log_dir / "operator.log",
            )
            with operator:
                manifest = pool_manifest(args.replicas, args.min, args.tasks)
                cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=dump([manifest]))
                watcher = Watcher(cluster.kubeconfig, namespace)
                try:
                    results = []
                    for run in range(1, args.runs + 1):
                        row = one_run(run, watcher, redis.url, namespace, args)
                        print(f"run {run}: {row}", file=sys.stderr, flush=True)
                        results.append(row)
                    return results
                finally:
                    watcher.close()
    finally:
        redis.stop()


COLUMNS = [
    ("run", "run"),
    ("deployment_s", "burst -> Deployment at max (s)"),
    ("first_ready_s", "first new pod Ready (s)"),
    ("ready_500_s", "all Ready (s)"),
    ("pool_status_s", "AgentPool status all ready (s)"),
    ("back_to_min_after_drain_s", "drained -> back to min (s)"),
]


def print_table(results: list[dict[str, Any]], command: str, replicas: int) -> None:
    print(f"$ {command}")
    print(f"queue burst -> {replicas} Ready pods (kwok), target <= {TARGET_READY_SECONDS:.0f} s")
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in results:
        print("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |")
    if len(results) > 1:
        medians = {key: round(statistics.median(r[key] for r in results), 2) for key, _ in COLUMNS[1:]}
        print("| median | " + " | ".join(str(medians[key]) for key, _ in COLUMNS[1:]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks in each burst")
    parser.add_argument("--replicas", type=int, default=500, help="the pool's maxReplicas")
    parser.add_argument("--min", type=int, default=3, help="the pool's minReplicas")
    parser.add_argument("--nodes", type=int, default=3, help="kwok nodes of the local control plane")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="give up on a run after this many seconds"
    )
    parser.add_argument(
        "--existing-cluster",
        action="store_true",
        help="use the cluster of KUBECONFIG instead of starting one",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    command = " ".join(["bench/scale_burst.py", *sys.argv[1:]])

    with tempfile.TemporaryDirectory(prefix="codeforge-scale-burst-") as tmp:
        log_dir = Path(tmp)
        if args.existing_cluster:
            results = bench(ExistingCluster.from_env(), args, log_dir)
            versions = {}
        else:
            plane = LocalControlPlane(state_dir=log_dir / "control-plane", nodes=args.nodes)
            if not plane.is_built():
                sys.exit(f"the local control plane is not built: run `make cluster-build` ({plane.bin_dir})")
            started = time.monotonic()
            plane.start()
            print(f"control plane up in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
            try:
                results = bench(plane, args, log_dir)
                versions = {k: v for k, v in plane.info.items() if k.endswith("_VERSION")}
            finally:
                plane.stop()

    print_table(results, command, args.replicas)
    if args.json:
        machine = {
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            **versions,
        }
        summary = {
            "targets": {"ready_500_s": TARGET_READY_SECONDS, "deployment_s": TARGET_DEPLOYMENT_SECONDS},
            "median_ready_500_s": statistics.median(r["ready_500_s"] for r in results),
            "median_deployment_s": statistics.median(r["deployment_s"] for r in results),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(
                {"machine": machine, "command": command, "summary": summary, "results": results},
                out,
                indent=2,
            )
            out.write("\n")


if __name__ == "__main__":
    main()
