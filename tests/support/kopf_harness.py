"""Run the real CodeForge operator (Kopf) against kmock's Kubernetes emulator, for Workflow tests.

The same workarounds as `tests/unit/test_agentpool_handlers_kmock.py`: objects get a `resourceVersion`
(Kopf's JSON patches test it; kmock sets none), Namespaces and CRDs are discoverable (Kopf waits for them),
scanning is off, and the operator runs in the caller's task: when Kopf stops it cancels every task created
after it started, so agents that must survive an operator restart are started before it. Events are read
from kmock's request log (kmock has no `generateName`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest

import codeforge.controller  # noqa: F401  (registers the handlers in Kopf's default registry)
from codeforge.controller import runtime
from codeforge.controller.config import OperatorConfig
from codeforge.controller.workflow_runs import WorkflowRuntime
from codeforge.queue import TaskQueue

NS = "team-a"
WORKFLOWS = "codeforge.ai/v1alpha1/workflows"
API = f"/apis/codeforge.ai/v1alpha1/namespaces/{NS}/workflows"


def prepare(
    emulator: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_url: str
) -> None:
    """Resources, a kubeconfig for Kopf's login, and the operator's configuration."""
    emulator.resources[WORKFLOWS] = kmock.ResourceInfo(
        kind="Workflow", namespaced=True, subresources={"status"}, verbs={"list", "watch", "patch"}
    )
    emulator.resources["codeforge.ai/v1alpha1/agentpools"] = kmock.ResourceInfo(
        kind="AgentPool", namespaced=True, subresources={"status", "scale"}, verbs={"list", "watch", "patch"}
    )
    for resource, kind in [
        ("apps/v1/deployments", "Deployment"),
        ("v1/events", "Event"),
        ("v1/namespaces", "Namespace"),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
    ]:
        emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs={"list", "watch"})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
                "users": [{"name": "kmock", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "current-context": "kmock",
            }
        )
    )
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("CODEFORGE_PEERING", "standalone")
    monkeypatch.setenv("CODEFORGE_WORKFLOW_STATUS_INTERVAL", "0.2")
    monkeypatch.setattr(runtime, "CONFIG", OperatorConfig(queue_url=queue_url))


class Cluster:
    def __init__(self, emulator: kmock.KubernetesEmulator, memo: Any) -> None:
        self.k8s = emulator
        self.memo = memo
        self.session = aiohttp.ClientSession(base_url=str(emulator.url))

    @property
    def queue(self) -> TaskQueue:
        queue: TaskQueue = self.memo.runtime.queue
        return queue

    @property
    def workflows(self) -> WorkflowRuntime:
        workflows: WorkflowRuntime = self.memo.workflows
        return workflows

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, path, json=body, headers=headers) as response:
            assert response.status < 400, await response.text()
            return await response.json()

    async def create(self, name: str, spec: dict[str, Any], uid: str | None = None) -> str:
        uid = uid or f"uid-{name}"
        body = {
            "apiVersion": "codeforge.ai/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        }
        await self.request("POST", API, body)
        return uid

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", f"{API}/{name}", body)

    async def delete(self, name: str) -> None:
        await self.request("DELETE", f"{API}/{name}")

    def get(self, name: str) -> dict[str, Any] | None:
        for (res, namespace, obj_name), obj in self.k8s.objects.items():
            if res.plural == "workflows" and (namespace, obj_name) == (NS, name) and not obj.deleted:
                copied: dict[str, Any] = json.loads(json.dumps(obj.raw))
                return copied
        return None

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = (self.get(name) or {}).get("status") or {}
        return status

    def phase(self, name: str) -> str | None:
        phase: str | None = self.status(name).get("phase")
        return phase

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        """Events posted about a Workflow, read from the request log: kmock does not implement
        `generateName`, so it keeps only the first Event object of a namespace and refuses the others."""
        found = []
        for request in self.k8s:
            if request.resource is None or request.resource.plural != "events" or request.method != "POST":
                continue
            data = request.data if isinstance(request.data, dict) else {}
            if data.get("involvedObject", {}).get("name") == name and reason in (None, data.get("reason")):
                found.append(data)
        return found

    async def eventually(self, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(emulator: kmock.KubernetesEmulator) -> AsyncIterator[Cluster]:
    """`async with running(kmock) as cluster:` one operator process, stopped (like SIGTERM) on exit."""
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    memo = kopf.Memo()
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=kopf.get_default_registry(),
            settings=settings,
            memo=memo,
            namespaces=[NS],
            standalone=True,
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    cluster = Cluster(emulator, memo)
    try:
        await cluster.eventually(lambda: getattr(memo, "runtime", None) and memo.runtime.queue)
        yield cluster
    finally:
        await cluster.session.close()
        stop.set()
        await asyncio.wait_for(operator, 20)


@contextlib.asynccontextmanager
async def agents(queue_url: str, pools: dict[str, tuple[str, dict[str, Any]]]) -> AsyncIterator[None]:
    """In-process `codeforge_agent` agents, one per queue: {queue: (handler, settings)}."""
    from codeforge.embedded.manifest import PoolSpec
    from codeforge.queue import open_queue
    from codeforge_agent.config import AgentConfig
    from codeforge_agent.loop import run_agent

    queue = await open_queue(queue_url)
    stop = asyncio.Event()
    tasks = []
    for name, (handler, settings) in pools.items():
        env = {**PoolSpec(name, handler, settings).agent_env(queue_url), "CODEFORGE_CLAIM_WAIT": "0.2"}
        tasks.append(asyncio.create_task(run_agent(queue, AgentConfig.from_sources([], env), stop)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await queue.close()
