"""The chart as users run it, in real pods: `helm install` with the locally built images, then kubectl only.

One session-wide control plane with one kwok node and one real node (tests/e2e/realnode/conftest.py). A
release with standalone Redis serves most tests (module-scoped, in install order); the Redis Cluster mode gets
a release of its own; the last test upgrades and uninstalls.

The example Workflows run as shipped (examples/workflows/*.yaml), their AgentPools only placed on the real
node: hello-world on the plain agent image; fan-out and the flagship feature-development on the agent image
plus the demo agents (demo-agents.Containerfile, a test-only layer). The flagship's repository is served from
the host by `git http-backend` with basic auth on the node's bridge address, the credentials in a Secret.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import LocalControlPlane
from cluster.processes import wait_until
from cluster.real_node import (
    REAL_NODE,
    Release,
    agent_pool,
    demo_agents_image,
    install,
    ready_operators,
    running_on_real_node,
    wait_pool_ready,
    wait_workflow,
)
from cluster.resources import EXAMPLES_DIR, documents, dump, sleep_workflow
from support.git_server import GitServer, git, make_bare_repo

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def standalone(
    real_cluster: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    yield from install(real_cluster, tmp_path_factory.mktemp("helm"), "rn-standalone", mode="standalone")


# --- the node -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # the session's control plane and real node start first
def test_the_real_node_joins_beside_kwok_and_pretend_pods_stay_off_it(
    real_cluster: LocalControlPlane,
) -> None:
    nodes = {n["metadata"]["name"]: n for n in real_cluster.kubectl_json("get", "nodes")["items"]}
    assert set(nodes) == {REAL_NODE, "kwok-node-0"}, sorted(nodes)
    real = nodes[REAL_NODE]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == real_cluster.info["KUBERNETES_VERSION"]
    assert real["metadata"]["labels"]["codeforge.io/node"] == "real"

    # The kubelet registers with node.kubernetes.io/not-ready too; the node lifecycle controller takes that
    # off a moment after the node is Ready, so wait for only ours to be left.
    def taints() -> list[dict[str, Any]]:
        return list(real_cluster.kubectl_json("get", "node", REAL_NODE)["spec"].get("taints", []))

    def only_our_taint() -> bool:
        return {t["key"] for t in taints()} == {"codeforge.io/real-node"}

    wait_until(only_our_taint, timeout=60, what="the real node tainted codeforge.io/real-node alone",
               detail=lambda: f"taints: {taints()}")  # fmt: skip
    addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
    assert addresses["InternalIP"] == real_cluster.info["NODE_IP"]

    # A pod that asks for nothing lands on kwok (the taint keeps it off the real node).
    pretend = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pretend", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "nothing-pulls-this:1"}]}}  # fmt: skip
    real_cluster.kubectl("apply", "-f", "-", input=dump([pretend]))
    try:

        def scheduled() -> dict[str, Any] | None:
            pod: dict[str, Any] = real_cluster.kubectl_json("get", "pod", "pretend", "-n", "default")
            return pod if pod["spec"].get("nodeName") else None

        pod = wait_until(scheduled, timeout=60, what="the pretend pod scheduled")
        assert pod["spec"]["nodeName"] == "kwok-node-0"
    finally:
        real_cluster.kubectl("delete", "pod", "pretend", "-n", "default", "--grace-period=0", "--force",
                             check=False)  # fmt: skip


# --- the chart with standalone Redis ------------------------------------------------------------------------


def test_helm_install_runs_the_operator_and_redis_in_real_pods(standalone: Release) -> None:
    operators = standalone.pods("app.kubernetes.io/component=operator")
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
    redis = standalone.pods("app.kubernetes.io/component=redis")
    assert len(redis) == 1
    for pod in operators + redis:
        assert running_on_real_node(pod), (
            pod["metadata"]["name"],
            pod["spec"].get("nodeName"),
            pod["status"],
        )
        for container in pod["spec"]["containers"]:
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, container["name"]
            assert security.get("allowPrivilegeEscalation") is False, container["name"]
    deployment = standalone.json("get", "deployment", "-l", "app.kubernetes.io/component=operator")["items"][
        0
    ]
    assert deployment["status"].get("readyReplicas") == 2


def test_agent_pods_run_the_example_workflow_to_succeeded_and_kubectl_logs_shows_them(
    standalone: Release,
) -> None:
    images = standalone.cluster.info
    # examples/workflows/hello-world.yaml as shipped, its `echo` pool placed on the real node with our image.
    docs = documents(EXAMPLES_DIR / "workflows" / "hello-world.yaml")
    for doc in docs:
        if doc["kind"] == "AgentPool":
            spec = agent_pool(doc["metadata"]["name"], images["AGENT_IMAGE"], "echo")["spec"]
            doc["spec"] = {**spec, **doc["spec"]}
    standalone.apply(*docs)
    done = wait_workflow(standalone, "hello-world")
    assert done["status"]["progress"] == "1/1"
    assert done["status"]["result"]["hello"]["input"] == "hello, world"  # the echo agent's answer

    # A chain of three steps on a `sleep` pool.
    standalone.apply(agent_pool("sleepy", images["AGENT_IMAGE"], "sleep"))
    standalone.apply(sleep_workflow("chain", "sleepy", ["plan", "build", "check"], seconds=1))
    chain = wait_workflow(standalone, "chain")
    assert [(s["name"], s["phase"], s["attempts"]) for s in chain["status"]["steps"]] == [
        ("plan", "Succeeded", 1), ("build", "Succeeded", 1), ("check", "Succeeded", 1),
    ]  # fmt: skip

    # `kubectl logs` of the agent pods (through the kubelet of the real node) shows the task they ran.
    uid = done["metadata"]["uid"]
    logs = "".join(
        standalone.kubectl("logs", pod["metadata"]["name"])
        for pod in standalone.pods("codeforge.ai/pool=echo")
    )
    assert uid in logs, logs[-2000:]


# --- the example workflows with the demo agents, the flagship on a Git server -----------------------------


@pytest.fixture(scope="module")
def demo_image(standalone: Release) -> str:
    """The agent image plus examples/workflows/demo_agents.py (a test-only layer), imported into the node."""
    return demo_agents_image(standalone.cluster.info)


@pytest.fixture(scope="module")
def git_server(standalone: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """`git http-backend` with basic auth on the host, listening on the node's bridge address (pods reach the
    host there: node-up.sh's CODEFORGE-NODE-IN lets the bridge in), serving examples/sample-project."""
    root = tmp_path_factory.mktemp("git")
    project = EXAMPLES_DIR / "sample-project"
    files = {
        str(f.relative_to(project)): f.read_bytes()
        for f in sorted(project.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    }
    make_bare_repo(root / "sample-project.git", files)
    with GitServer(root, host=standalone.cluster.info["NODE_IP"]) as server:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-credentials"},
                  "stringData": {"username": server.username, "password": server.password}}  # fmt: skip
        standalone.apply(secret)
        yield server


def example_on_the_real_node(name: str, image: str, **pool_spec: Any) -> list[dict[str, Any]]:
    """examples/workflows/<name> as shipped, its AgentPools placed on the real node with `image`."""
    docs = documents(EXAMPLES_DIR / "workflows" / name)
    for doc in docs:
        if doc["kind"] == "AgentPool":
            base = agent_pool(doc["metadata"]["name"], image, "echo", **pool_spec)["spec"]
            doc["spec"] = {**base, **doc["spec"]}
    return docs


def test_the_fan_out_example_runs_in_agent_pods_and_joins(standalone: Release, demo_image: str) -> None:
    standalone.apply(*example_on_the_real_node("fan-out.yaml", demo_image))
    done = wait_workflow(standalone, "fan-out", timeout=300)
    status = done["status"]
    steps = {s["name"]: s for s in status["steps"]}
    assert list(steps) == ["scan", "count", "summarize", "fastest-mirror"]
    assert all(s["phase"] == "Succeeded" for s in steps.values()), steps
    assert status["progress"] == "4/4"
    # forEach + join all: one count per file of the sample project (as the image holds it), in order.
    project = EXAMPLES_DIR / "sample-project"
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*.py")
                   if p.stat().st_size and "__pycache__" not in p.parts)  # fmt: skip
    result = status["result"]
    assert "textkit/words.py" in files
    assert steps["count"]["parts"] == len(files)
    assert [c["file"] for c in result["count"]] == files
    assert result["summarize"]["files"] == len(files)
    assert result["summarize"]["lines"] == sum(len((project / f).read_text().splitlines()) for f in files)
    # parallel: 3 + join firstSuccess: three copies ran, the first result won.
    assert steps["fastest-mirror"]["parts"] == 3
    assert result["fastest-mirror"]["slept"] == 0.2


@pytest.mark.timeout(600)
def test_the_flagship_feature_development_example_pushes_a_tested_feature(
    standalone: Release, demo_image: str, git_server: GitServer, tmp_path: Path
) -> None:
    docs = example_on_the_real_node(
        "feature-development.yaml", demo_image,
        workspace={"credentialsSecret": "git-credentials", "cacheSizeLimit": "256Mi"},
    )  # fmt: skip
    (workflow,) = (d for d in docs if d["kind"] == "Workflow")
    workflow["spec"]["workspace"]["git"]["url"] = git_server.url("sample-project.git")
    standalone.apply(*docs)
    done = wait_workflow(standalone, "feature-development", timeout=420)
    status = done["status"]
    steps = [(s["name"], s["phase"]) for s in status["steps"]]
    assert steps == [
        (n, "Succeeded") for n in ("assign", "research", "debate", "implement", "test", "review")
    ]
    result = status["result"]
    assert result["debate"]["votes"] == {"regex": 2, "translate": 1}
    assert {k: result["test"][k] for k in ("passed", "ran", "output")} == {
        "passed": True,
        "ran": 3,
        "output": "OK",
    }
    assert result["review"]["verdict"] == "approved"

    # The pushBranch on the Git server holds the feature; its tests pass in a fresh clone.
    bare = git_server.root / "sample-project.git"
    workspace = status["workspace"]
    assert workspace["branch"] == "codeforge/feature-development"
    head = git("rev-parse", "refs/heads/codeforge/feature-development", cwd=bare).strip()
    assert workspace["commit"] == head != workspace["base"]
    assert "textkit/words.py" in workspace["files"]
    clone = tmp_path / "clone"
    git("clone", "--quiet", "--branch", "codeforge/feature-development", str(bare), str(clone))
    assert "def slugify(text: str) -> str:" in (clone / "textkit" / "words.py").read_text()
    tests = subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
        cwd=clone, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stderr
    assert "Ran 3 tests" in tests.stderr, tests.stderr
    # The agents fetched over HTTP with the Secret's credentials; the password is nowhere in the status.
    assert git_server.upload_packs("sample-project.git")
    assert git_server.password not in str(done)


# --- scale-in and operator failover -------------------------------------------------------------------------


def claimed_by(release: Release, pool: str, uid: str) -> str | None:
    """The agent pod whose log shows it claimed a task of the Workflow with this uid (kubectl logs)."""
    for pod in release.pods(f"codeforge.ai/pool={pool}"):
        name = pod["metadata"]["name"]
        if uid in release.kubectl("logs", name, check=False):
            return str(name)
    return None


def test_scale_in_removes_idle_agents_first_and_the_busy_one_keeps_its_task(standalone: Release) -> None:
    image = standalone.cluster.info["AGENT_IMAGE"]
    # External mode: replicas follow spec.replicas (the scale subresource), as with an HPA or KEDA.
    standalone.apply(agent_pool("scaler", image, "sleep", autoscaling={"mode": "external"}, replicas=3))
    before = {p["metadata"]["name"] for p in wait_pool_ready(standalone, "scaler", 3)}

    standalone.apply(sleep_workflow("long", "scaler", ["work"], seconds=40))
    uid = standalone.json("get", "workflow", "long")["metadata"]["uid"]
    busy = wait_until(
        lambda: claimed_by(standalone, "scaler", uid), timeout=60, interval=1,
        what="an agent claiming the task", detail=standalone.diagnose,
    )  # fmt: skip

    standalone.kubectl("scale", "agentpool", "scaler", "--replicas=1")

    def scaled_in() -> list[str] | None:
        names = [p["metadata"]["name"] for p in standalone.pods("codeforge.ai/pool=scaler")]
        return names if len(names) == 1 else None

    remaining = wait_until(
        scaled_in, timeout=90, interval=1, what="the pool at 1 pod", detail=standalone.diagnose
    )
    assert remaining == [busy], f"busy {busy}, idle {sorted(before - {busy})}, left {remaining}"

    done = wait_workflow(standalone, "long", timeout=120)
    (step,) = done["status"]["steps"]
    assert (step["phase"], step["attempts"]) == ("Succeeded", 1), step


def test_force_deleting_the_active_operator_mid_workflow(standalone: Release) -> None:
    image = standalone.cluster.info["AGENT_IMAGE"]
    standalone.apply(agent_pool("sleepy", image, "sleep"))
    standalone.apply(sleep_workflow("failover", "sleepy", ["one", "two", "three", "four"], seconds=4))
    wait_until(
        lambda: standalone.json("get", "workflow", "failover").get("status", {}).get("phase") == "Running",
        timeout=60, interval=0.5, what="Workflow failover Running", detail=standalone.diagnose,
    )  # fmt: skip

    # The active replica is the one that handles the Workflow: its log names it.
    operators = [p["metadata"]["name"] for p in standalone.pods("app.kubernetes.io/component=operator")]
    active = [name for name in operators if "failover" in standalone.kubectl("logs", name, check=False)]
    assert len(active) == 1, {
        name: standalone.kubectl("logs", name, check=False)[-1500:] for name in operators
    }
    standalone.kubectl("delete", "pod", active[0], "--force", "--grace-period=0")

    done = wait_workflow(standalone, "failover", timeout=240)
    assert [(s["name"], s["phase"]) for s in done["status"]["steps"]] == [
        ("one", "Succeeded"), ("two", "Succeeded"), ("three", "Succeeded"), ("four", "Succeeded"),
    ]  # fmt: skip
    # The Deployment replaced the deleted pod: two replicas again, both on the real node.
    pods = wait_until(
        lambda: ready_operators(standalone), timeout=120, interval=1, what="two ready operators again"
    )
    assert active[0] not in {p["metadata"]["name"] for p in pods}
