"""The `codeforge` CLI against a cluster, through its real entry points (`codeforge ...` and, found by kubectl
on the PATH, `kubectl codeforge ...`): the local control plane, a real redis-server, the operator as a local
process and real `codeforge-agent` processes (see test_workflow_e2e.py for that set-up).

Every command's output is checked as a user reads it; the errors a user meets are one line, exit code 1.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, LocalControlPlane
from cluster.processes import VENV_BIN, AgentProcess, OperatorProcess, running_agents, wait_until
from cluster.resources import dump, install_crds, pool_doc, sleep_workflow, temporary_namespace
from codeforge.api.task import TaskState
from codeforge.queue import TaskQueue
from codeforge.testing.redis_server import LocalRedis
from support.tasks import make_task

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(900)]

#: Pools of this module: `sleepy` steps take a while, `failing` steps fail (a command exiting 3), nobody
#: serves `idle` (its dead letters are made by the test itself, acting as a failing agent).
POOLS = ("sleepy", "failing", "idle")


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-cli") as name:
        docs = [pool_doc("sleepy", "sleep"), pool_doc("failing", "command"), pool_doc("idle", "echo")]
        control_plane.kubectl("apply", "--namespace", name, "-f", "-", input=dump(docs))
        yield name


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-e2e")


@pytest.fixture(scope="module")
def agents(namespace: str, redis_server: LocalRedis, log_dir: Path) -> Iterator[dict[str, AgentProcess]]:
    failing = ["sh", "-c", "echo 'the linter found 3 errors' >&2; exit 3"]
    with (
        running_agents(
            f"{namespace}/sleepy", redis_server.url, log_dir, handler="sleep", concurrency="4"
        ) as s,
        running_agents(
            f"{namespace}/failing", redis_server.url, log_dir, handler="command", command=json.dumps(failing)
        ) as f,
    ):
        yield {"sleepy": s[0], "failing": f[0]}


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    namespace: str,
    redis_server: LocalRedis,
    log_dir: Path,
    agents: dict[str, AgentProcess],
) -> Iterator[OperatorProcess]:
    with OperatorProcess.for_namespace(
        control_plane, namespace, redis_server.url, log_dir / "operator.log", "codeforge"
    ) as process:
        yield process


def cli_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEFORGE_")}
    env.update(KUBECONFIG=str(cluster.kubeconfig), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def cli(
    cluster: Cluster, *args: str, ok: bool = True, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`codeforge ARGS` as a user runs it (stdin not a terminal); by default it must exit 0."""
    result = subprocess.run(
        [str(VENV_BIN / "codeforge"), *args],
        env=env or cli_env(cluster),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if ok:
        assert result.returncode == 0, (
            f"codeforge {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
        )
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A user-facing failure: exit 1 and a single `error: ...` line, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def rows(output: str) -> list[dict[str, str]]:
    """A kubectl-style table as dicts keyed by header (columns split where the header's words start)."""
    lines = [line for line in output.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    return [
        dict(
            zip(
                names,
                [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)],
                strict=True,
            )
        )
        for line in lines[1:]
    ]


def workflow_file(tmp_path: Path, *docs: dict[str, Any]) -> Path:
    path = tmp_path / "workflow.yaml"
    path.write_text(dump(list(docs)))
    return path


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", "workflow", name, "--namespace", namespace)
    return dict(obj.get("status") or {})


# --- a cluster without the CRDs (first: the module's fixtures install them afterwards) -------------------


def test_without_the_crds_the_cli_says_how_to_install_them(control_plane: Cluster, tmp_path: Path) -> None:
    # A control plane of its own: deleting the shared one's CRDs leaves them terminating behind objects of
    # earlier tests whose finalizers no operator removes any more, which broke every later test.
    if not isinstance(control_plane, LocalControlPlane):
        pytest.skip("needs the local control plane (a second, bare one is started for this test)")
    bare = LocalControlPlane(state_dir=tmp_path / "bare", nodes=0)
    bare.start()
    try:
        line = one_error_line(cli(bare, "list", ok=False))
        assert line == (
            "error: the Workflow resource (workflows.codeforge.ai) is not installed in this cluster: install "
            "the chart (helm install codeforge helm/codeforge) or kubectl apply -f crds/"
        )
        line = one_error_line(cli(bare, "pools", "-A", ok=False))
        expected = "error: the AgentPool resource (agentpools.codeforge.ai) is not installed"
        assert line.startswith(expected), line
    finally:
        bare.stop()


# --- Workflows ------------------------------------------------------------------------------------------


def test_submit_watches_the_run_then_list_and_get_show_it(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    spec = sleep_workflow("shipped", "sleepy", ["plan", "build", "check"], 0.5)
    submitted = cli(
        control_plane, "submit", str(workflow_file(tmp_path, spec)), "-n", namespace, "--timeout", "90"
    )

    # Not a terminal: one plain line per change, in order, ending with the final phase and its duration.
    lines = submitted.stdout.splitlines()
    assert "workflow.codeforge.ai/shipped created" in submitted.stderr
    assert not any("\x1b[" in line for line in lines), "no screen control codes into a pipe"
    for step in ("plan", "build", "check"):
        running = next(i for i, text in enumerate(lines) if f"shipped step {step} Running" in text)
        done = next(i for i, text in enumerate(lines) if f"shipped step {step} Succeeded" in text)
        assert running < done, submitted.stdout
    assert re.search(r"shipped Succeeded 3/3 in \d+s$", lines[-1]), submitted.stdout

    listed = {r["NAME"]: r for r in rows(cli(control_plane, "list", "-n", namespace).stdout)}
    assert listed["shipped"]["PHASE"] == "Succeeded"
    assert listed["shipped"]["PROGRESS"] == "3/3"
    assert re.fullmatch(r"\d+s", listed["shipped"]["DURATION"]), listed
    assert re.fullmatch(r"\d+[sm]\S*", listed["shipped"]["AGE"]), listed

    everywhere = rows(cli(control_plane, "list", "-A").stdout)
    assert {"NAMESPACE": namespace, "NAME": "shipped"}.items() <= next(
        r for r in everywhere if r["NAME"] == "shipped"
    ).items()
    as_json = json.loads(cli(control_plane, "list", "-n", namespace, "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in as_json["items"]] == ["shipped"]
    wide = rows(cli(control_plane, "list", "-n", namespace, "-o", "wide").stdout)
    assert "MESSAGE" in wide[0]

    shown = cli(control_plane, "get", "shipped", "-n", namespace).stdout
    assert "Phase:       Succeeded" in shown
    assert "Progress:    3/3" in shown
    steps = rows(shown[shown.index("STEP") :])
    assert [(s["STEP"], s["PHASE"], s["ATTEMPTS"], s["NEXT"]) for s in steps] == [
        ("✔ plan", "Succeeded", "1", "build"),
        ("✔ build", "Succeeded", "1", "check"),
        ("✔ check", "Succeeded", "1", "-"),
    ]
    assert all(s["POOL"] == "sleepy" and s["AGENT"] not in ("", "-") for s in steps), steps
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", s["STARTED"]) for s in steps), steps
    yaml_out = cli(control_plane, "get", "shipped", "-n", namespace, "-o", "yaml").stdout
    assert "phase: Succeeded" in yaml_out

    # The kubectl plugin: kubectl finds `kubectl-codeforge` on the PATH and hands it the arguments.
    plugin = subprocess.run(
        [str(control_plane.kubectl_path), "codeforge", "get", "shipped", "-n", namespace],
        env=cli_env(control_plane), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert plugin.returncode == 0, plugin.stderr
    assert "Phase:       Succeeded" in plugin.stdout
    assert rows(plugin.stdout[plugin.stdout.index("STEP") :]) == steps


def test_watch_redraws_in_place_on_a_terminal(
    control_plane: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=dump([sleep_workflow("watched", "sleepy", ["a", "b"], 8)])
    )
    screen = run_on_terminal(
        [str(VENV_BIN / "codeforge"), "watch", "watched", "-n", namespace], cli_env(control_plane)
    )
    frames = screen.split("\x1b[H\x1b[2J")[1:]
    assert len(frames) >= 3, f"expected a redraw per change, got {len(frames)} frame(s)"
    assert "Phase:       Succeeded" in frames[-1]
    assert "✔ a" in frames[-1]
    assert "✔ b" in frames[-1]
    assert any("● " in frame for frame in frames), "a frame while a step ran"


def run_on_terminal(
    argv: Sequence[str], env: dict[str, str], *, typed: str = "", exit_code: int = 0, timeout: float = 90
) -> str:
    """Run a command on a pseudo-terminal (its stdin and stdout), type `typed`, and return all it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, env=env, stdout=follower, stderr=subprocess.PIPE, stdin=follower)
    os.close(follower)
    if typed:
        os.write(leader, typed.encode())
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the follower side closed: the command ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=10) == exit_code, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_suspend_and_resume(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    spec = sleep_workflow("paused", "sleepy", ["one", "two", "three"], 2)
    # The first step outlasts a CLI call on a loaded machine: the suspend must land before the run ends.
    spec["spec"]["steps"][0]["params"]["seconds"] = 25
    cli(control_plane, "submit", str(workflow_file(tmp_path, spec)), "-n", namespace, "--no-watch")
    wait_until(lambda: status_of(control_plane, namespace, "paused").get("phase") == "Running", timeout=60)

    assert cli(control_plane, "suspend", "paused", "-n", namespace).stdout.strip() == (
        "workflow.codeforge.ai/paused suspended"
    )
    obj = control_plane.kubectl_json("get", "workflow", "paused", "-n", namespace)
    assert obj["spec"]["suspend"] is True
    wait_until(lambda: status_of(control_plane, namespace, "paused").get("phase") == "Suspended", timeout=60)
    assert "already suspended" in cli(control_plane, "suspend", "paused", "-n", namespace).stdout

    cli(control_plane, "resume", "paused", "-n", namespace)
    watched = cli(control_plane, "watch", "paused", "-n", namespace, "--timeout", "90")
    assert "paused Succeeded 3/3" in watched.stdout
    line = one_error_line(cli(control_plane, "suspend", "paused", "-n", namespace, ok=False))
    assert line == "error: Workflow 'paused' is Succeeded: a finished Workflow cannot be suspended or resumed"


def test_a_failed_workflow_watches_to_exit_3_and_is_retried(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    spec = sleep_workflow("broken", "failing", ["lint"], 0)
    submitted = cli(control_plane, "submit", str(workflow_file(tmp_path, spec)), "-n", namespace, ok=False)
    assert submitted.returncode == 3, submitted.stderr
    assert "broken step lint Failed" in submitted.stdout
    assert "the linter found 3 errors" in submitted.stdout, submitted.stdout
    shown = cli(control_plane, "get", "broken", "-n", namespace).stdout
    assert "✖ lint" in shown
    assert "Phase:       Failed" in shown

    retried = cli(control_plane, "retry", "broken", "-n", namespace).stdout
    assert retried.startswith("workflow.codeforge.ai/broken retry requested (codeforge.ai/retry=")
    # The operator honours it: the run goes again from the failed step (and fails again, the agent is broken).
    wait_until(lambda: status_of(control_plane, namespace, "broken").get("retries") == 1, timeout=60)
    wait_until(lambda: status_of(control_plane, namespace, "broken").get("phase") == "Failed", timeout=60)

    cli(
        control_plane,
        "submit",
        str(workflow_file(tmp_path, sleep_workflow("fine", "sleepy", ["x"], 0))),
        "-n",
        namespace,
    )
    line = one_error_line(cli(control_plane, "retry", "fine", "-n", namespace, ok=False))
    assert line == "error: Workflow 'fine' is Succeeded: only a Failed Workflow can be retried"


# --- logs ---------------------------------------------------------------------------------------------


class KubeletLogs:
    """The log endpoint of a kubelet (`/containerLogs/NS/POD/CONTAINER`, HTTPS) serving one agent's log file.

    Pods never run on the local control plane; this node's "kubelet" hands the API server the log a real
    `codeforge-agent` process wrote, so `codeforge logs` goes the whole way a cluster's does: the CLI asks the
    API server for pods/log, which connects to the node's kubelet endpoint."""

    def __init__(self, log_file: Path, tls: tuple[Path, Path, Path]) -> None:
        import http.server
        import ssl
        import threading

        source = log_file

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                if not self.path.startswith("/containerLogs/"):
                    self.send_error(404)
                    return
                body = source.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_logs_show_the_agents_lines_about_one_workflow(
    control_plane: Cluster,
    namespace: str,
    operator: OperatorProcess,
    agents: dict[str, AgentProcess],
    tls_files: tuple[Path, Path, Path],
) -> None:
    both = [
        sleep_workflow("logged", "sleepy", ["fetch", "parse"], 0),
        sleep_workflow("other", "sleepy", ["x"], 0),
    ]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=dump(both))

    def succeeded() -> bool:
        return all(
            status_of(control_plane, namespace, n).get("phase") == "Succeeded" for n in ("logged", "other")
        )

    wait_until(succeeded, timeout=60)
    uid = control_plane.kubectl_json("get", "workflow", "logged", "-n", namespace)["metadata"]["uid"]
    other = control_plane.kubectl_json("get", "workflow", "other", "-n", namespace)["metadata"]["uid"]
    assert f"workflow={other}" in agents["sleepy"].log(), (
        "the agent's log holds the other Workflow's lines too"
    )

    kubelet = KubeletLogs(agents["sleepy"].log_path, tls_files)
    node, pod = f"cli-logs-{namespace}", "sleepy-agent-logs"
    try:
        control_plane.kubectl(
            "apply", "-f", "-", input=dump([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}])
        )
        control_plane.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}},
            }}),
        )  # fmt: skip
        control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-",
            input=dump([{
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "labels": {"codeforge.ai/pool": "sleepy"}},
                "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "registry.invalid/a"}]},
            }]),
        )  # fmt: skip
        every = cli(control_plane, "logs", "logged", "-n", namespace)
        mine = [line for line in every.stdout.splitlines() if line.startswith(f"{pod} ")]
        claimed = [line for line in mine if " claimed " in line]
        assert [re.search(r" step=(\S+)", line).group(1) for line in claimed] == ["fetch", "parse"], every  # type: ignore[union-attr]
        assert all(f"workflow={uid}" in line for line in mine), "only the lines about this Workflow"

        one_step = cli(control_plane, "logs", "logged", "parse", "-n", namespace).stdout
        steps = set(re.findall(r" step=(\S+)", one_step))
        assert steps == {"parse"}, one_step
    finally:
        control_plane.kubectl(
            "delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force", check=False
        )
        control_plane.kubectl("delete", "node", node, check=False)
        kubelet.close()
    line = one_error_line(cli(control_plane, "logs", "logged", "nope", "-n", namespace, ok=False))
    assert line == "error: Workflow 'logged' has no step 'nope' (steps: fetch, parse)"


# --- AgentPools and dead letters --------------------------------------------------------------------------


async def bury(queue: TaskQueue, pool: str, name: str, step: str) -> None:
    await queue.enqueue(make_task(pool, name, max_attempts=1, step=step, payload={"prompt": f"do {name}"}))
    lease = await queue.claim(pool, "agent-x", timeout=5)
    assert lease is not None
    assert await queue.fail(lease, f"{name}: model returned garbage", retryable=True) == TaskState.DEAD


async def test_pools_and_the_dead_letter_queue(
    control_plane: Cluster,
    namespace: str,
    operator: OperatorProcess,
    queue: TaskQueue,
    redis_server: LocalRedis,
) -> None:
    pool = f"{namespace}/idle"
    for name in ("dead-1", "dead-2", "dead-3"):
        await bury(queue, pool, name, "review")
    env = cli_env(control_plane, CODEFORGE_REDIS_URL=redis_server.url)

    def idle_row() -> dict[str, str] | None:
        found = {r["NAME"]: r for r in rows(cli(control_plane, "pools", "-n", namespace, env=env).stdout)}
        return found["idle"] if found["idle"]["DEAD"] == "3" else None

    idle = wait_until(idle_row, timeout=60, what="the pool status counting 3 dead letters")
    assert (idle["ROLE"], idle["QUEUED"], idle["IN-FLIGHT"], idle["EXPIRED"]) == ("idle", "0", "0", "0")
    assert set(rows(cli(control_plane, "pools", "-n", namespace, env=env).stdout)[0]) >= {
        "BUSY",
        "IDLE",
        "READY",
    }

    listed = cli(control_plane, "dlq", "list", "idle", "-n", namespace, env=env)
    letters = rows(listed.stdout)
    assert [(r["TASK"], r["STEP"], r["ATTEMPTS"]) for r in letters] == [
        ("dead-1", "review", "1"), ("dead-2", "review", "1"), ("dead-3", "review", "1"),
    ]  # fmt: skip
    assert letters[0]["ERROR"].startswith("dead-1: model returned garbage; handler budget spent")
    assert "3 dead letter(s) in pool" in listed.stderr
    assert "0 removed after the retention" in listed.stderr

    shown = cli(control_plane, "dlq", "show", "idle", "dead-2", "-n", namespace, env=env).stdout
    assert "prompt: do dead-2" in shown
    assert "diedAt: " in shown
    assert "consumer: agent-x" in shown

    # Destructive without a terminal and without --yes: refused, nothing deleted.
    refused = one_error_line(cli(control_plane, "dlq", "purge", "idle", "-n", namespace, env=env, ok=False))
    assert "refusing without confirmation" in refused
    assert "pass --yes" in refused
    assert (await queue.stats(pool)).dead == 3
    # On a terminal it asks; "n" changes nothing.
    argv = [str(VENV_BIN / "codeforge"), "dlq", "purge", "idle", "-n", namespace]
    asked = run_on_terminal(argv, env, typed="n\n", exit_code=1)
    assert f"Delete all 3 dead letter(s) of pool {pool} for good? [y/N]" in asked
    assert (await queue.stats(pool)).dead == 3

    assert (
        "requeued 1 task(s)"
        in cli(control_plane, "dlq", "requeue", "idle", "dead-1", "-n", namespace, env=env).stdout
    )
    assert (await queue.get(pool, "dead-1")).state == TaskState.QUEUED  # type: ignore[union-attr]
    missing = one_error_line(
        cli(control_plane, "dlq", "requeue", "idle", "nope", "-n", namespace, env=env, ok=False)
    )
    assert missing == f"error: not in the dead-letter queue of {pool}: nope"

    purged = cli(control_plane, "dlq", "purge", "idle", "dead-2", "--yes", "-n", namespace, env=env)
    assert "purged 1 dead letter(s)" in purged.stdout
    assert [d.id for d in await queue.dead_letters(pool)] == ["dead-3"]
    cli(control_plane, "dlq", "purge", "idle", "--yes", "-n", namespace, env=env)
    assert await queue.dead_letters(pool) == []
    assert await queue.get(pool, "dead-1") is not None, "purge leaves live tasks alone"


def test_the_redis_url_comes_from_the_operator_deployment(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis
) -> None:
    # As the chart installs it: a Deployment labelled as the operator, its CODEFORGE_QUEUE_URL in the env.
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "codeforge-operator",
            "labels": {"app.kubernetes.io/part-of": "codeforge", "app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "cf-op"}},
            "template": {
                "metadata": {"labels": {"app": "cf-op"}},
                "spec": {
                    "containers": [
                        {"name": "operator", "image": "registry.invalid/op", "env": [
                            {"name": "CODEFORGE_QUEUE_URL", "value": redis_server.url},
                        ]},
                    ]
                },
            },
        },
    }  # fmt: skip
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=dump([deployment]))
    try:
        listed = cli(control_plane, "dlq", "list", "idle", "-n", namespace)  # no --redis-url, no env
        assert "dead letter(s) in pool" in listed.stderr
    finally:
        control_plane.kubectl("delete", "deployment", "codeforge-operator", "-n", namespace)
    line = one_error_line(cli(control_plane, "dlq", "list", "idle", "-n", namespace, ok=False))
    assert line.startswith("error: no Redis URL: pass --redis-url or set CODEFORGE_REDIS_URL")


# --- the errors a user meets -------------------------------------------------------------------------------


def test_errors_are_one_clear_line(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, tmp_path: Path
) -> None:
    line = one_error_line(cli(control_plane, "get", "nope", "-n", namespace, ok=False))
    assert line == f"error: Workflow 'nope' not found in namespace '{namespace}'"
    line = one_error_line(cli(control_plane, "dlq", "list", "nope", "-n", namespace, ok=False))
    assert line == f"error: AgentPool 'nope' not found in namespace '{namespace}'"

    # Redis unreachable: the URL is named, its password is not.
    closed = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    line = one_error_line(
        cli(control_plane, "dlq", "list", "idle", "-n", namespace, "--redis-url", closed, ok=False)
    )
    assert "s3cret-pw" not in line
    assert f"redis://***@127.0.0.1:{closed.rsplit(':', 1)[1].split('/')[0]}" in line, line

    # No cluster reachable: an API server address where nothing listens.
    dead = tmp_path / "dead.kubeconfig"
    config = control_plane.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
    parsed = json.loads(config)
    parsed["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead.write_text(json.dumps(parsed))
    line = one_error_line(cli(control_plane, "list", "--kubeconfig", str(dead), ok=False))
    assert line.startswith("error: cannot reach the Kubernetes API server at https://127.0.0.1:"), line
    line = one_error_line(
        cli(control_plane, "list", env=cli_env(control_plane, KUBECONFIG=str(tmp_path / "none")), ok=False)
    )
    assert line.startswith("error: no usable kubeconfig"), line

    # A manifest that is no Workflow: the same message `codeforge run` gives, before anything is sent.
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: codeforge.ai/v1alpha1\nkind: Workflow\nmetadata: {name: x}\nsepc: {}\n")
    result = cli(control_plane, "submit", str(bad), "-n", namespace, ok=False)
    assert result.returncode == 1
    assert "sepc" in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
