"""Run the real CodeForge operator (Kopf) against kmock's Kubernetes emulator, for AgentPool and Workflow
tests (and, for its resources and kubeconfig, `bench/operator_footprint.py`).

The workarounds: objects get a `resourceVersion` (Kopf's JSON patches test it; kmock sets none), Namespaces
and CRDs are discoverable (Kopf waits for them), scanning is off, and the operator runs in the caller's task,
not a fixture's: when Kopf stops it cancels every task created after it started (which would include
pytest-asyncio's fixture-teardown task), so agents that must survive an operator restart are started before
it. kmock runs no Deployment controller, so pods and their states are created by the tests where needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import kmock
import kopf

import codeforge.controller  # noqa: F401  (registers the handlers in Kopf's default registry)
from codeforge.controller import services
from codeforge.controller.config import OperatorConfig
from codeforge.controller.workflow.registry import WorkflowRegistry
from codeforge.queue import TaskQueue

if TYPE_CHECKING:
    import pytest

NS = "team-a"
WORKFLOWS = "codeforge.ai/v1alpha1/workflows"
POOLS = "codeforge.ai/v1alpha1/agentpools"
DEPLOYMENTS = "apps/v1/deployments"
GROUP_API = "/apis/codeforge.ai/v1alpha1/namespaces/{namespace}/{plural}"
API = GROUP_API.format(namespace=NS, plural="workflows")
#: The built-in resources the operator reads and writes, and the two Kopf waits for to be discoverable.
BUILTINS = {
    DEPLOYMENTS: "Deployment",
    "v1/pods": "Pod",
    "v1/services": "Service",
    "v1/events": "Event",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
    "v1/namespaces": "Namespace",
    "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}


def register(emulator: kmock.KubernetesEmulator, extra: Mapping[str, str] | None = None) -> None:
    """Our resources (with their subresources) and `BUILTINS` (plus `extra`: {resource: kind})."""
    emulator.resources[WORKFLOWS] = kmock.ResourceInfo(
        kind="Workflow", namespaced=True, subresources={"status"}, verbs={"list", "watch", "patch"}
    )
    emulator.resources[POOLS] = kmock.ResourceInfo(
        kind="AgentPool", namespaced=True, subresources={"status", "scale"}, verbs={"list", "watch", "patch"}
    )
    for resource, kind in {**BUILTINS, **(extra or {})}.items():
        emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs={"list", "watch"})


def write_kubeconfig(emulator: kmock.KubernetesEmulator, path: Path, token: str = "test") -> Path:
    """A kubeconfig whose only cluster is the emulator."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
                "users": [{"name": "kmock", "user": {"token": token}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


def manifest(
    kind: str, name: str, spec: dict[str, Any], namespace: str = NS, uid: str | None = None
) -> dict[str, Any]:
    """An object of ours as kmock needs it: with a uid, a generation and a `resourceVersion`."""
    metadata = {
        "name": name,
        "namespace": namespace,
        # Uids are unique across kinds in a real cluster, and Kopf keys its per-object memory by uid alone: a
        # pool and a Workflow of the same name must not share one (a test named both "lonely").
        "uid": uid or (f"uid-{name}" if kind == "Workflow" else f"uid-{kind.lower()}-{name}"),
        "generation": 1,
        "resourceVersion": "1",  # Kopf patches with a JSON-patch test on it; kmock sets none
    }
    return {"apiVersion": "codeforge.ai/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def prepare(
    emulator: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_url: str
) -> None:
    """Resources, a kubeconfig for Kopf's login, and the operator's configuration."""
    register(emulator)
    kubeconfig = write_kubeconfig(emulator, tmp_path / "kubeconfig")
    # Kopf's login (login_via_client) loads it; the client read $KUBECONFIG at import, so patch the default.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("CODEFORGE_WORKFLOW_STATUS_INTERVAL", "0.2")
    monkeypatch.setattr(services, "CONFIG", OperatorConfig(queue_url=queue_url))


#: The AgentPools `create()` declares for a Workflow's steps: one fixed agent each (agents run in-process).
POOLS = "codeforge.ai/v1alpha1/agentpools"
POOL_SPEC: dict[str, Any] = {
    "image": "agent:1",
    "handler": {"kind": "echo"},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
}


class Cluster:
    """The emulator and the running operator's memo; `timeout` is the default of `eventually`."""

    def __init__(self, emulator: kmock.KubernetesEmulator, memo: Any, timeout: float = 15.0) -> None:
        self.k8s = emulator
        self.memo = memo
        self.timeout = timeout
        self.session = aiohttp.ClientSession(base_url=str(emulator.url))

    @property
    def queue(self) -> TaskQueue:
        queue: TaskQueue = self.memo.services.queue
        return queue

    @property
    def workflows(self) -> WorkflowRegistry:
        workflows: WorkflowRegistry = self.memo.workflows
        return workflows

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, path, json=body, headers=headers) as response:
            assert response.status < 400, await response.text()
            return await response.json()

    async def create(
        self, name: str, spec: dict[str, Any], uid: str | None = None, declare_pools: bool = True
    ) -> str:
        """Create a Workflow (first the AgentPools its steps name, as a user declares them, unless
        `declare_pools` is false: a Workflow on a missing pool waits with PoolNotFound); returns its uid."""
        for step in spec.get("steps") or [] if declare_pools else []:
            pool = step.get("pool") if isinstance(step, dict) else None
            if isinstance(pool, str) and pool and "/" not in pool and not self.find(POOLS, pool):
                await self.create_pool(pool, {**POOL_SPEC, "role": pool})
                # Settled (its Deployment made) before the Workflow: pool handling must not eat a step's time.
                await self.eventually(lambda p=pool: self.find("apps/v1/deployments", p))  # type: ignore[misc]
        body = manifest("Workflow", name, spec, uid=uid)
        await self.request("POST", API, body)
        created: str = body["metadata"]["uid"]
        return created

    async def create_pool(self, name: str, spec: dict[str, Any]) -> None:
        await self.request(
            "POST", GROUP_API.format(namespace=NS, plural="agentpools"), manifest("AgentPool", name, spec)
        )

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", f"{API}/{name}", body)

    async def delete(self, name: str) -> None:
        await self.request("DELETE", f"{API}/{name}")

    def find(self, resource: str, name: str) -> dict[str, Any] | None:
        """The object's current state (a copy), or None; `resource` is like "apps/v1/deployments"."""
        for (res, namespace, obj_name), obj in self.k8s.objects.items():
            path = "/".join(p for p in (res.group, res.version, res.plural) if p)
            if (path, namespace, obj_name) == (resource, NS, name) and not obj.deleted:
                copied: dict[str, Any] = json.loads(json.dumps(obj.raw))
                return copied
        return None

    def get(self, name: str) -> dict[str, Any] | None:
        """A Workflow (a copy), or None."""
        return self.find(WORKFLOWS, name)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = (self.get(name) or {}).get("status") or {}
        return status

    def phase(self, name: str) -> str | None:
        phase: str | None = self.status(name).get("phase")
        return phase

    def replicas(self, name: str) -> int | None:
        """A Deployment's spec.replicas, or None while it does not exist."""
        deployment = self.find(DEPLOYMENTS, name)
        return deployment["spec"]["replicas"] if deployment else None

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        """Events posted about an object, read from the request log: kmock does not implement
        `generateName`, so it keeps only the first Event object of a namespace and refuses the others."""
        found = []
        for request in self.k8s:
            if request.resource is None or request.resource.plural != "events" or request.method != "POST":
                continue
            data = request.data if isinstance(request.data, dict) else {}
            if data.get("involvedObject", {}).get("name") == name and reason in (None, data.get("reason")):
                found.append(data)
        return found

    def stored_events(self, reason: str) -> list[dict[str, Any]]:
        """The Event objects kmock kept (see `events`) with this reason."""
        return [
            obj.raw
            for (resource, _, _), obj in self.k8s.objects.items()
            if resource.plural == "events" and obj.raw.get("reason") == reason
        ]

    async def eventually(self, check: Callable[[], Any], timeout: float | None = None) -> Any:
        """Poll the emulator's state until `check` gives something truthy (the operator is asynchronous)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                keys = [(r.plural, ns, name) for r, ns, name in self.k8s.objects]
                # The Workflows' status says why (phase, conditions, steps): a bare timeout tells nothing.
                statuses = {
                    name: obj.raw.get("status")
                    for (r, _, name), obj in self.k8s.objects.items()
                    if r.plural == "workflows"
                }
                raise AssertionError(
                    f"condition not met within {timeout}s; objects: {keys}; workflow status: {statuses}"
                )
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    emulator: kmock.KubernetesEmulator, *, with_queue: bool = True, timeout: float = 15.0
) -> AsyncIterator[Cluster]:
    """`async with running(kmock) as cluster:` one operator process, stopped (like SIGTERM) on exit; it is
    up once its services have opened the queue (or, `with_queue=False`, once it has tried)."""
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
    cluster = Cluster(emulator, memo, timeout)
    try:
        await cluster.eventually(
            lambda: getattr(memo, "services", None) and (memo.services.queue or not with_queue)
        )
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
