"""Operator scale: 1,000 / 3,000 / 10,000 running Workflows of three steps on one `codeforge operator`
(or on `--shards N` of them, the Workflows split by uid: `controller/sharding.py`).

What runs, all on this machine: the local control plane of hack/cluster/ (a real etcd and kube-apiserver, plus
the controllers, scheduler and kwok, which this benchmark does not use); a private redis-server; the operator
as its own process (`codeforge operator`, one namespace, default settings: status writes of one patch per
Workflow per 2 s and at most 20 patches per second in total, autoscaling every 1 s); the agents as their own
`codeforge-agent` processes (`sleep` handler). Per size, in a fresh namespace:

1. start: the Workflows (a chain s0 -> s1 -> s2, each sleeping `--step-seconds`, or with `--step-jitter J` a
   time drawn from [1 - J, 1 + J] times it; each Workflow's durations in its own input) are created through
   the API, `--create-concurrency` requests in flight (one aiohttp session, as a CI system submitting runs
   would), as fast as the API server takes them or, with `--create-rate R`, at most R per second. No agent
   runs yet, so a Workflow has started once its first task is in the queue: start time = first create -> the
   queue holds one task per Workflow (the queue's own count);
2. run: `--agents` agent processes start and work the 3 x N tasks; the window ends when every run has ended
   in the operator (`codeforge_workflow_duration_seconds_count`: observed when the run returns, before its
   final status is written);
3. measured over start + run: the operator's peak RSS (VmRSS) and CPU (utime + stime, % of one core); the API
   server's requests per second by verb and resource (`apiserver_request_total`, delta of two scrapes);
   step dispatch latency p50/p99 (the step became ready -> its task's enqueue returned:
   `codeforge_workflow_step_dispatch_latency_seconds`, bucket-interpolated like histogram_quantile) and the
   notification latency before it (a task's end -> its run woken:
   `codeforge_result_notification_latency_seconds`) and a woken or new run's wait for its turn to go on
   (`codeforge_workflow_admission_wait_seconds`, `orchestrator/admission.py`): together most of a later
   step's wait after its predecessor's task ended (the resume between a run's turn and its next step
   becoming ready is in none of them); and how late the operator's event loop runs a timer due
   (`codeforge_operator_event_loop_lag_seconds`, `controller/loop_lag.py`), while starting and while running;
   and, from the task hashes once every run has ended (`task_timings`: the enqueue and finish scripts' server
   clock against the creating client's and the operator's, one machine), what the agents' side sees: each
   step ready -> its task in Redis (claimable: the dispatch without the operator's turns after the script's
   reply), a Workflow's create returned -> its first task in Redis, and a step's task finished -> the next
   step's task in Redis;
With `--shards N`, the operator figures are the shards' together: RSS and CPU summed, histograms and gauges
merged (the API server has ShardedListAndWatch on, so each shard receives its own Workflows only), plus
each shard's share of the CPU.
4. then, up to `--status-timeout` more seconds, until the operator counts every Workflow Succeeded in the
   statuses it wrote (`codeforge_workflows`): status writes are capped at 20/s, so at 10,000 Workflows this
   trails the runs by minutes by design.

    PYTHONPATH=tests .venv/bin/python bench/operator_scale.py --sizes 1000,3000 [--agents 4] \\
        [--json bench/results/operator_scale.json]

Goals (issue 15): RSS under 1 GiB at 10,000; dispatch p99 under 50 ms; at least 100 Workflows started per s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_client
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from cluster import Cluster, LocalControlPlane
from cluster.metrics import (
    bucket_delta,
    cpu_seconds,
    gauge_values,
    histogram_buckets,
    quantile,
    rate_by_key,
    request_counts,
    rss_mib,
)
from cluster.processes import AgentProcess, OperatorProcess, start_together
from cluster.resources import install_crds, sleep_workflow, temporary_namespace
from codeforge.api.agentpool import API_VERSION
from codeforge.api.workflow import PLURAL
from codeforge.benchmarks.stats import percentile
from codeforge.controller.kube import Kind, KubeApi
from codeforge.controller.sharding import Shard
from codeforge.queue import open_queue
from codeforge.queue.keys import glob_escape, pool_prefix
from codeforge.testing.redis_server import LocalRedis

POOL = "scale"
STEPS = ["s0", "s1", "s2"]
DISPATCH = "codeforge_workflow_step_dispatch_latency_seconds"
NOTIFIED = "codeforge_result_notification_latency_seconds"
ADMITTED = "codeforge_workflow_admission_wait_seconds"  # absent from operators before admission: no figure
LAG = "codeforge_operator_event_loop_lag_seconds"  # absent from operators before s11: no figure
ENDED = "codeforge_workflow_duration_seconds"
GC = "codeforge_operator_gc_pause_seconds"  # absent from operators before s12 (a counter then): 0, no pauses
WORKFLOWS = Kind(API_VERSION, PLURAL)
GOAL_RSS_MIB = 1024.0
GOAL_P99_MS = 50.0
GOAL_START_RATE = 100.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def waiting_seconds(pids: list[int]) -> float:
    """Time the operators' main threads (their event loops) were runnable but waiting for a CPU
    (/proc/PID/schedstat): on a loaded machine, how much of the window the machine, not the operator,
    decided."""
    return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9 for pid in pids)


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_of(pids: list[int]) -> float:
    return sum(rss_mib(pid) for pid in pids)


class RssSampler(threading.Thread):
    """The peak RSS of the operator processes together, sampled every `every` seconds until stopped."""

    def __init__(self, pids: list[int], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.every, self.peak = pids, every, 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, rss_of(self.pids))
            except OSError:
                return
            self.halt.wait(self.every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def queue_depth(url: str, pool: str) -> int:
    async def read() -> int:
        queue = await open_queue(url)
        try:
            stats = await queue.stats(pool)
            return stats.queued + stats.delayed + stats.in_flight
        finally:
            await queue.close()

    return asyncio.run(read())


def create_pool(kubeconfig: Path, namespace: str) -> None:
    """The AgentPool the steps name (a Workflow whose pool does not exist waits, PoolNotFound); external
    autoscaling at 0 replicas: the agents are this benchmark's own processes, not the pool's pods."""
    api_client: Any = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    body = {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": POOL},
        "spec": {
            "role": POOL,
            "image": "agent:1",
            "handler": {"kind": "sleep"},
            "replicas": 0,
            "autoscaling": {"mode": "external"},
        },
    }
    try:
        k8s.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "codeforge.ai", "v1alpha1", namespace, "agentpools", body
        )
    finally:
        api_client.close()


def step_durations(count: int, steps: int, seconds: float, jitter: float) -> list[list[float]]:
    """Each Workflow's step durations: `seconds`, or with `jitter` each drawn uniformly from
    [seconds * (1 - jitter), seconds * (1 + jitter)], seeded so runs of one size are alike. Without jitter
    every run's steps end together (the agents start once all are started), one wave of `count` step ends
    at a time; real agents' steps vary, and spread the same load over the step's length."""
    if not jitter:
        return [[seconds] * steps for _ in range(count)]
    rng = random.Random(count)
    low, high = seconds * (1 - jitter), seconds * (1 + jitter)
    return [[round(rng.uniform(low, high), 3) for _ in range(steps)] for _ in range(count)]


def timed_workflow(name: str, seconds: list[float]) -> dict[str, Any]:
    """The chain s0 -> s1 -> s2 of the `sleep` handler, each step's duration in the run's own input (as a real
    run's input differs from the next one's; the steps select theirs: `input.seconds[i]`), so every Workflow
    has its own spec and all share one graph (`orchestrator/compiler.graph_spec`)."""
    body = sleep_workflow(name, POOL, STEPS, 0)
    body["spec"]["input"] = {"run": name, "seconds": seconds}
    for index, step in enumerate(body["spec"]["steps"]):
        step["params"] = {}
        step["input"] = f"input.seconds[{index}]"
    return body


def create_all(
    kubeconfig: Path, namespace: str, durations: list[list[float]], concurrency: int, rate: float = 0.0
) -> dict[str, float]:
    """Create `count` Workflows, `concurrency` requests in flight on one aiohttp session (the Python client's
    thread pool managed ~14 creates/s on this machine under load: it alone capped the start rate shown);
    with `rate` > 0, the i-th create is not sent before i / rate seconds (an offered load below the
    operator's capacity, rather than as fast as the API server takes them).
    Returns each Workflow's uid -> the Unix time its create returned (the Workflow existed)."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]

    created: dict[str, float] = {}

    async def run() -> None:
        api = KubeApi.from_kubernetes_config(configuration)
        count = len(durations)
        names = iter(range(count))
        done = 0
        loop = asyncio.get_running_loop()
        begin = loop.time()

        async def worker() -> None:
            nonlocal done
            for i in names:
                if rate > 0:
                    await asyncio.sleep(max(begin + i / rate - loop.time(), 0.0))
                body = timed_workflow(f"wf-{i}", durations[i])
                body["metadata"]["namespace"] = namespace
                made = await api.create(body, WORKFLOWS)
                created[made["metadata"]["uid"]] = time.time()
                done += 1
                if done % 1000 == 0:
                    progress(f"created {done}/{count}")

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await api.close()

    asyncio.run(run())
    return created


def exact_ms(samples: list[float], q: float) -> float | None:
    """The q-quantile of samples in seconds (the samples themselves, not a histogram's buckets), in ms; None
    without any."""
    if not samples:
        return None
    return round(percentile(sorted(samples), q * 100) * 1000, 1)


def task_timings(url: str, pool: str, created: dict[str, float]) -> dict[str, list[float]]:
    """What the agents' side sees, read from the task hashes once every run has ended (an ended task's hash
    is kept for the queue's result TTL, a week by default): `enq` and `fin` are the enqueue and finish
    scripts' server clock (ms), the task's `created_at` the operator's clock as it built the task, i.e. as
    its step became ready; one machine, one clock. Per first attempt's task: start (the Workflow's create
    returned -> its first task in Redis), in_redis (its step ready -> its task in Redis: the dispatch
    without the operator's own bookkeeping turns after the script's reply) and next (the previous step's
    task finished -> this one in Redis: all the operator adds between two steps, the notification, the
    run's turn and the dispatch together)."""
    client = redis_client.Redis.from_url(url)
    prefix = pool_prefix(pool) + "t:"
    rows: dict[tuple[str, int], tuple[float, float | None, float]] = {}
    try:
        keys = [key.decode() for key in client.scan_iter(match=glob_escape(prefix) + "*", count=2000)]
        for start in range(0, len(keys), 2000):
            chunk = keys[start : start + 2000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hmget(key, ["enq", "fin", "data"])
            for key, (enq, fin, data) in zip(chunk, pipe.execute(), strict=True):
                workflow, step, visit, part, attempt = key.removeprefix(prefix).rsplit("/", 4)
                if enq is None or data is None or (visit, part, attempt) != ("v1", "p0", "a0"):
                    continue
                rows[(workflow, STEPS.index(step))] = (
                    int(enq) / 1000,
                    int(fin) / 1000 if fin else None,
                    float(json.loads(data)["created_at"]),
                )
    finally:
        client.close()
    timings: dict[str, list[float]] = {"start": [], "in_redis_first": [], "in_redis_later": [], "next": []}
    for (workflow, index), (enq, _, ready) in rows.items():
        timings["in_redis_later" if index else "in_redis_first"].append(max(enq - ready, 0.0))
        if not index and workflow in created:
            timings["start"].append(enq - created[workflow])
        before = rows.get((workflow, index - 1)) if index else None
        if before is not None and before[1] is not None:
            timings["next"].append(max(enq - before[1], 0.0))
    return timings


def scrape(urls: list[str]) -> str:
    """The operators' /metrics pages, one after the other: the readers here sum a metric's samples, so
    the shards' figures add up (histograms' buckets, gauges, GC seconds)."""
    texts = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=30) as response:
            texts.append(response.read().decode())
    return "\n".join(texts)


def wait(probe: Any, timeout: float, what: str, every: float = 1.0) -> float:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic()


def gc_seconds(text: str, of: str = "sum") -> dict[str, float]:
    """The operator's time in the cyclic garbage collector so far (or, of="count", its collections), by
    generation ("all": their sum)."""
    by_generation: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == GC:
            for sample in family.samples:
                if sample.name == f"{GC}_{of}":
                    generation = sample.labels["generation"]
                    by_generation[generation] = by_generation.get(generation, 0.0) + sample.value
    return {**by_generation, "all": sum(by_generation.values())}


def gc_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}


def one_size(cluster: Cluster, count: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    redis = LocalRedis().start()
    metrics_ports = [free_port() for _ in range(args.shards)]
    try:
        with temporary_namespace(cluster, f"scale-{count}") as namespace:
            operators = [
                OperatorProcess(
                    kubeconfig=cluster.kubeconfig,
                    queue_url=redis.url,
                    namespaces=[namespace],
                    log_path=log_dir / f"operator-{count}{f'-{shard}' if args.shards > 1 else ''}.log",
                    entrypoint="codeforge",
                    env={
                        "CODEFORGE_METRICS_PORT": str(metrics_ports[shard]),
                        **Shard(index=shard, count=args.shards).environment(),
                        # the defaults, not the e2e suite's short intervals
                        "CODEFORGE_WORKFLOW_STATUS_INTERVAL": "2",
                        "CODEFORGE_AUTOSCALE_INTERVAL": "1",
                        "CODEFORGE_STATUS_INTERVAL": "5",
                        "CODEFORGE_LOG_FORMAT": "json",
                        # another checkout's operator (`--operator-source`), for a before/after on one machine
                        **({"PYTHONPATH": str(args.operator_source)} if args.operator_source else {}),
                        # e.g. CODEFORGE_GC_TUNING=off: Python's collector defaults, for a before/after
                        **dict(item.split("=", 1) for item in args.operator_env),
                    },
                )
                for shard in range(args.shards)
            ]
            metrics_urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]
            create_pool(cluster.kubeconfig, namespace)
            pool = f"{namespace}/{POOL}"
            start_together(operators, timeout=300)  # imports alone take long on a loaded machine
            pids = [operator.pid for operator in operators]
            profile = log_dir / f"profile-{count}.txt"
            profiler = start_profiler(args.py_spy, args.py_spy_rate, pids[0], profile)
            try:
                time.sleep(2)
                rss_idle = rss_of(pids)
                sampler = RssSampler(pids)
                sampler.start()
                api_before = request_counts(cluster.kubectl("get", "--raw", "/metrics").stdout)
                cpu_each_before = [cpu_seconds(pid) for pid in pids]
                cpu_before, t0 = sum(cpu_each_before), time.monotonic()
                before_text = scrape(metrics_urls)
                gc_before = gc_seconds(before_text)
                pauses_before = histogram_buckets(before_text, GC)
                collections_before = gc_seconds(before_text, "count")
                lag_before = histogram_buckets(before_text, LAG)
                wait_before = waiting_seconds(pids)
                progress(f"{count}: creating Workflows")
                durations = step_durations(count, len(STEPS), args.step_seconds, args.step_jitter)
                created = create_all(
                    cluster.kubeconfig, namespace, durations, args.create_concurrency, args.create_rate
                )
                created_at = time.monotonic()
                progress(f"{count}: created in {created_at - t0:.1f}s; waiting for every first task")
                started_at = wait(
                    lambda: queue_depth(redis.url, pool) >= count, args.timeout, "every Workflow started"
                )
                cpu_start = cpu_of(pids) - cpu_before
                waited_start = waiting_seconds(pids) - wait_before
                rss_started = rss_of(pids)
                started_text = scrape(metrics_urls)
                start_dispatch = histogram_buckets(started_text, DISPATCH)
                start_lag = histogram_buckets(started_text, LAG)
                gc_start = gc_delta(gc_seconds(started_text), gc_before)
                # What a first step's dispatch can sit through (the run's longest pauses come as runs end).
                pauses_start = bucket_delta(pauses_before, histogram_buckets(started_text, GC))
                progress(f"{count}: all started after {started_at - t0:.1f}s; starting {args.agents} agents")
                agents = [
                    AgentProcess(
                        pool=pool,
                        queue_url=redis.url,
                        log_path=log_dir / f"agent-{count}-{i}.log",
                        handler="sleep",
                        concurrency=str(args.concurrency),
                        log_format="json",
                    )
                    for i in range(args.agents)
                ]
                try:
                    for agent in agents:
                        agent.launch()

                    def ended() -> bool:
                        text = scrape(metrics_urls)
                        finished = histogram_buckets(text, ENDED)
                        dispatched = histogram_buckets(text, DISPATCH)
                        runs = int(finished[-1][1]) if finished else 0
                        steps = int(dispatched[-1][1]) if dispatched else 0
                        progress(f"{count}: {steps} steps dispatched, {runs} runs ended")
                        return runs >= count

                    done_at = wait(ended, args.timeout, "every run ended", every=2.0)
                finally:
                    for agent in agents:
                        agent.stop(grace=10)
                window = done_at - t0
                cpu_each = [
                    cpu_seconds(pid) - before for pid, before in zip(pids, cpu_each_before, strict=True)
                ]
                cpu = sum(cpu_each)
                waited = waiting_seconds(pids) - wait_before
                api_after = request_counts(cluster.kubectl("get", "--raw", "/metrics").stdout)
                done_text = scrape(metrics_urls)
                dispatch = histogram_buckets(done_text, DISPATCH)
                notified = histogram_buckets(done_text, NOTIFIED)
                admitted = histogram_buckets(done_text, ADMITTED)
                lag = histogram_buckets(done_text, LAG)
                gc_all = gc_delta(gc_seconds(done_text), gc_before)
                pauses = bucket_delta(pauses_before, histogram_buckets(done_text, GC))
                rss_peak = sampler.peak

                def written() -> bool:
                    phases = gauge_values(scrape(metrics_urls), "codeforge_workflows", "phase")
                    return phases.get("Succeeded", 0) >= count

                statuses_seconds: float | None = None
                try:
                    statuses_seconds = round(
                        wait(written, args.status_timeout, "every status written", every=2.0) - done_at, 1
                    )
                except TimeoutError:
                    pass
                succeeded_written = int(
                    gauge_values(scrape(metrics_urls), "codeforge_workflows", "phase").get("Succeeded", 0)
                )
                sampler.halt.set()
                sampler.join()
                timings = task_timings(redis.url, pool, created)
                in_redis = timings["in_redis_first"] + timings["in_redis_later"]
                running = bucket_delta(start_dispatch, dispatch)
                lag_starting, lag_running = bucket_delta(lag_before, start_lag), bucket_delta(start_lag, lag)
                rates = rate_by_key(api_before, api_after, window)
                status_key = "PATCH workflows/status"

                def ms(value: float | None) -> float | None:
                    return None if value is None else round(value * 1000, 1)

                return {
                    "workflows": count,
                    "shards": args.shards,
                    "steps": len(STEPS),
                    "step_seconds": args.step_seconds,
                    "step_jitter": args.step_jitter,
                    "create_rate": args.create_rate,
                    "agents": args.agents,
                    "agent_concurrency": args.concurrency,
                    "rss_idle_mib": round(rss_idle, 1),
                    "rss_all_started_mib": round(rss_started, 1),
                    "rss_peak_mib": round(rss_peak, 1),
                    "rss_peak_mib_incl_status_catch_up": round(sampler.peak, 1),
                    "cpu_percent_start": round(cpu_start / (started_at - t0) * 100, 1),
                    "cpu_percent_overall": round(cpu / window * 100, 1),
                    "cpu_percent_overall_by_shard": [round(c / window * 100, 1) for c in cpu_each],
                    "cpu_ms_per_workflow_start": round(cpu_start / count * 1000, 1),
                    "cpu_ms_per_workflow_overall": round(cpu / count * 1000, 1),
                    "gc_percent_of_cpu_start": round(gc_start["all"] / cpu_start * 100, 1)
                    if cpu_start
                    else None,
                    "gc_percent_of_cpu_overall": round(gc_all["all"] / cpu * 100, 1) if cpu else None,
                    "gc_seconds_by_generation_start": gc_start,
                    "gc_seconds_by_generation_overall": gc_all,
                    "gc_pauses": int(pauses[-1][1]) if pauses else None,
                    "gc_pauses_by_generation": gc_delta(gc_seconds(done_text, "count"), collections_before),
                    "gc_pause_p50_ms": ms(quantile(pauses, 0.5)),
                    "gc_pause_p99_ms": ms(quantile(pauses, 0.99)),
                    "gc_pauses_start": int(pauses_start[-1][1]) if pauses_start else None,
                    "gc_pause_p50_ms_start": ms(quantile(pauses_start, 0.5)),
                    "gc_pause_p99_ms_start": ms(quantile(pauses_start, 0.99)),
                    "waiting_for_cpu_percent_start": round(waited_start / (started_at - t0) * 100, 1),
                    "waiting_for_cpu_percent_overall": round(waited / window * 100, 1),
                    "create_seconds": round(created_at - t0, 1),
                    "start_seconds": round(started_at - t0, 1),
                    "start_rate_per_s": round(count / (started_at - t0), 1),
                    "run_seconds": round(done_at - started_at, 1),
                    "statuses_all_succeeded_after_run_seconds": statuses_seconds,
                    "statuses_succeeded_written": succeeded_written,
                    "dispatch_p50_ms": ms(quantile(dispatch, 0.5)),
                    "dispatch_p99_ms": ms(quantile(dispatch, 0.99)),
                    "dispatch_p50_ms_start": ms(quantile(start_dispatch, 0.5)),
                    "dispatch_p99_ms_start": ms(quantile(start_dispatch, 0.99)),
                    "dispatch_p50_ms_running": ms(quantile(running, 0.5)),
                    "dispatch_p99_ms_running": ms(quantile(running, 0.99)),
                    "dispatches": int(dispatch[-1][1]) if dispatch else 0,
                    "created_to_first_task_p50_ms": exact_ms(timings["start"], 0.5),
                    "created_to_first_task_p99_ms": exact_ms(timings["start"], 0.99),
                    "in_redis_p50_ms": exact_ms(in_redis, 0.5),
                    "in_redis_p99_ms": exact_ms(in_redis, 0.99),
                    "in_redis_p99_ms_first": exact_ms(timings["in_redis_first"], 0.99),
                    "in_redis_p99_ms_later": exact_ms(timings["in_redis_later"], 0.99),
                    "step_end_to_next_task_p50_ms": exact_ms(timings["next"], 0.5),
                    "step_end_to_next_task_p99_ms": exact_ms(timings["next"], 0.99),
                    "tasks_timed": len(in_redis),
                    "notification_p50_ms": ms(quantile(notified, 0.5)),
                    "notification_p99_ms": ms(quantile(notified, 0.99)),
                    "admission_wait_p50_ms": ms(quantile(admitted, 0.5)),
                    "admission_wait_p99_ms": ms(quantile(admitted, 0.99)),
                    "loop_lag_p50_ms_start": ms(quantile(lag_starting, 0.5)),
                    "loop_lag_p99_ms_start": ms(quantile(lag_starting, 0.99)),
                    "loop_lag_p50_ms_running": ms(quantile(lag_running, 0.5)),
                    "loop_lag_p99_ms_running": ms(quantile(lag_running, 0.99)),
                    "api_requests_per_s": round(sum(rates.values()), 1),
                    "status_patches_per_s": round(rates.get(status_key, 0.0), 1),
                    "api_requests_per_s_by_kind": {k: round(v, 2) for k, v in rates.items() if v >= 0.05},
                    "load_average_1m": round(os.getloadavg()[0], 1),
                }
            finally:
                stop_profiler(profiler)
                for operator in operators:
                    operator.stop(grace=60)
    finally:
        redis.stop()


def start_profiler(py_spy: str | None, rate: int, pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the operator (collapsed stacks in `out`) until `stop_profiler`; None without it."""
    if not py_spy:
        return None
    progress(f"profiling the operator into {out}")
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "-o", str(out)]
    return subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        profiler.wait(60)
    except subprocess.TimeoutExpired:
        profiler.kill()


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def pair(row: dict[str, Any], first: str, second: str) -> str:
    return f"{fmt(row.get(first))} / {fmt(row.get(second))}"


def print_table(results: list[dict[str, Any]], command: str) -> None:
    rows: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        (
            "RSS idle / all started / peak (MiB)",
            lambda r: f"{r['rss_idle_mib']} / {r['rss_all_started_mib']} / {r['rss_peak_mib']}",
            f"< {GOAL_RSS_MIB:g} at 10,000",
        ),
        (
            "operator CPU, start / overall (% of a core)",
            lambda r: f"{r['cpu_percent_start']} / {r['cpu_percent_overall']}",
            "",
        ),
        (
            "  each shard, overall (% of a core)",
            lambda r: " / ".join(fmt(c) for c in r.get("cpu_percent_overall_by_shard", [])) or "-",
            "",
        ),
        (
            "operator CPU per Workflow, start / overall (ms)",
            lambda r: f"{r['cpu_ms_per_workflow_start']} / {r['cpu_ms_per_workflow_overall']}",
            "",
        ),
        (
            "of which garbage collection, start / overall (%)",
            lambda r: f"{fmt(r.get('gc_percent_of_cpu_start'))} / {fmt(r.get('gc_percent_of_cpu_overall'))}",
            "",
        ),
        (
            "GC pauses: count, p50 / p99 (ms)",
            lambda r: f"{fmt(r.get('gc_pauses'))}, {pair(r, 'gc_pause_p50_ms', 'gc_pause_p99_ms')}",
            "",
        ),
        (
            "  while starting",
            lambda r: (
                f"{fmt(r.get('gc_pauses_start'))}, "
                + pair(r, "gc_pause_p50_ms_start", "gc_pause_p99_ms_start")
            ),
            "",
        ),
        (
            "operator loop runnable but waiting for a CPU, start / overall (%)",
            lambda r: f"{r['waiting_for_cpu_percent_start']} / {r['waiting_for_cpu_percent_overall']}",
            "",
        ),
        ("create / start all (s)", lambda r: f"{r['create_seconds']} / {r['start_seconds']}", ""),
        ("start rate (Workflows/s)", lambda r: fmt(r["start_rate_per_s"]), f">= {GOAL_START_RATE:g}"),
        (
            "dispatch p50 / p99, all (ms)",
            lambda r: f"{fmt(r['dispatch_p50_ms'])} / {fmt(r['dispatch_p99_ms'])}",
            f"p99 < {GOAL_P99_MS:g}",
        ),
        (
            "  while starting (ms)",
            lambda r: f"{fmt(r['dispatch_p50_ms_start'])} / {fmt(r['dispatch_p99_ms_start'])}",
            "",
        ),
        (
            "  while running (ms)",
            lambda r: f"{fmt(r['dispatch_p50_ms_running'])} / {fmt(r['dispatch_p99_ms_running'])}",
            "",
        ),
        (
            "  its task in Redis, p50 / p99 all, p99 first / later steps (ms)",
            lambda r: (
                f"{pair(r, 'in_redis_p50_ms', 'in_redis_p99_ms')}, "
                f"{pair(r, 'in_redis_p99_ms_first', 'in_redis_p99_ms_later')}"
            ),
            "",
        ),
        (
            "a Workflow created -> its first task in Redis, p50 / p99 (ms)",
            lambda r: pair(r, "created_to_first_task_p50_ms", "created_to_first_task_p99_ms"),
            "",
        ),
        (
            "a step's task finished -> the next step's in Redis, p50 / p99 (ms)",
            lambda r: pair(r, "step_end_to_next_task_p50_ms", "step_end_to_next_task_p99_ms"),
            "",
        ),
        (
            "a task end -> its run woken, p50 / p99 (ms)",
            lambda r: f"{fmt(r.get('notification_p50_ms'))} / {fmt(r.get('notification_p99_ms'))}",
            "",
        ),
        (
            "a run's wait for its turn to start or go on, p50 / p99 (ms)",
            lambda r: f"{fmt(r.get('admission_wait_p50_ms'))} / {fmt(r.get('admission_wait_p99_ms'))}",
            "",
        ),
        (
            "the operator's event loop late, p50 / p99, while starting (ms)",
            lambda r: f"{fmt(r.get('loop_lag_p50_ms_start'))} / {fmt(r.get('loop_lag_p99_ms_start'))}",
            "",
        ),
        (
            "  while running (ms)",
            lambda r: f"{fmt(r.get('loop_lag_p50_ms_running'))} / {fmt(r.get('loop_lag_p99_ms_running'))}",
            "",
        ),
        (
            "API requests/s (Workflow status patches/s)",
            lambda r: f"{r['api_requests_per_s']} ({r['status_patches_per_s']})",
            "patches <= 20",
        ),
        ("every run ended, after the start (s)", lambda r: fmt(r["run_seconds"]), ""),
        (
            "every status Succeeded, after that (s)",
            lambda r: (
                fmt(r["statuses_all_succeeded_after_run_seconds"])
                + f" ({r['statuses_succeeded_written']:,} written)"
            ),
            "",
        ),
        ("load average (1 min) at the end", lambda r: fmt(r["load_average_1m"]), ""),
    ]
    print(f"$ {command}")
    columns = [
        f"{r['workflows']:,} Workflows" + (f", {r['shards']} shards" if r.get("shards", 1) > 1 else "")
        for r in results
    ]
    print("| measure | " + " | ".join(columns) + " | goal |")
    print("|---|" + "---|" * len(results) + "---|")
    for title, value, goal in rows:
        print(f"| {title} | " + " | ".join(value(r) for r in results) + f" | {goal} |")


def jitter_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 0.9")
    return value


def create_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a rate: give creates per second, or 0 for unpaced")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", "--workflows", dest="sizes", default="1000,3000,10000", help="sizes, comma-separated"
    )
    parser.add_argument("--agents", type=int, default=4, help="agent processes")
    parser.add_argument(
        "--shards", type=int, choices=range(1, 9), default=1, metavar="1-8",
        help="operator processes, the Workflows split between them by uid (CODEFORGE_SHARDS)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=100, help="tasks each agent runs at once")
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument(
        "--step-jitter", type=jitter_fraction, default=0.0, metavar="0-0.9",
        help="each step sleeps --step-seconds times a factor drawn from [1 - J, 1 + J] (0: all alike)",
    )  # fmt: skip
    parser.add_argument("--create-concurrency", type=int, default=64, help="creates in flight")
    parser.add_argument(
        "--create-rate", type=create_rate, default=0.0, metavar="R",
        help="creates per second at most (0: as fast as the API server takes them, the operator saturated)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800.0, help="per phase of a size")
    parser.add_argument(
        "--status-timeout", type=float, default=300.0, help="wait for every Succeeded status, after the run"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--py-spy", default=None, help="py-spy binary: profile the operator per size")
    parser.add_argument(
        "--operator-source",
        type=Path,
        default=None,
        help="run the operator from this source tree (another checkout's operator/ directory)",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the operator (repeatable)",
    )
    parser.add_argument("--py-spy-rate", type=int, default=20, help="py-spy samples per second")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    command = " ".join(["bench/operator_scale.py", *sys.argv[1:]])
    results: list[dict[str, Any]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="codeforge-operator-scale-"))  # kept: the operator's logs
    progress(f"logs under {log_dir}")
    plane = LocalControlPlane(state_dir=log_dir / "control-plane", nodes=1)
    if not plane.is_built():
        sys.exit(f"the local control plane is not built: run `make cluster-build` ({plane.bin_dir})")
    plane.start()
    try:
        install_crds(plane)
        for count in sizes:
            try:
                row = one_size(plane, count, args, log_dir)
            except (TimeoutError, AssertionError) as exc:
                row = {"workflows": count, "error": str(exc)}
            progress(f"{count}: {json.dumps(row)}")
            results.append(row)
            if "error" in row:
                break
        versions = {k: v for k, v in plane.info.items() if k.endswith("_VERSION")}
    finally:
        plane.stop()
        shutil.rmtree(log_dir / "control-plane", ignore_errors=True)
    measured = [r for r in results if "error" not in r]
    print_table(measured, command)
    for row in results:
        if "error" in row:
            print(f"{row['workflows']:,} Workflows: not measured: {row['error']}")
    if args.json is not None:
        machine = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            **versions,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "command": command, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
