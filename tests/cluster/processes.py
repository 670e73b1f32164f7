"""Local processes the e2e suite and `bench/scale_burst.py` run against a cluster: the operator and agents.

Pods never run on the local control plane (kwok only writes their status), so the operator runs here as a
local process, exactly as `kopf run -m codeforge.controller` runs in its image, and agents are real
`codeforge-agent` processes on the same local Redis. Each process writes its output to a log file, so a
failing test can show what the operator or an agent did.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from cluster.control_plane import REPO_ROOT, Cluster

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy and return it; AssertionError after `timeout`.

    `detail` adds context to the failure (an object's status, a log tail), computed only on failure.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r}){extra}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalProcess:
    """A child process with its output in a log file; stop() and kill() wait for it to exit."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return f"---- {self.log_path} (last {lines} lines)\n{_tail(self.log_path, lines)}"

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appending keeps the output of earlier runs (an operator restarted after SIGKILL) in one log.
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup handler runs, as when a node dies or the OOM killer strikes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


def has_operator_command() -> bool:
    """Whether this checkout has the `codeforge operator` subcommand (else only `kopf run` starts it)."""
    return importlib.util.find_spec("codeforge.controller.command") is not None


class OperatorProcess(LocalProcess):
    """The operator against a cluster's kubeconfig and a queue URL, started as its image starts it
    (`kopf run -m codeforge.controller`: entrypoint "kopf") or as `codeforge operator` (entrypoint
    "codeforge").

    Leader election is off unless `env` turns it on (one operator; a restarted one must not wait for its dead
    predecessor's Lease to expire). The intervals are short so the tests and the benchmark observe changes
    quickly; `env` overrides.
    """

    def __init__(
        self,
        *,
        kubeconfig: Path,
        queue_url: str,
        namespaces: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        entrypoint: str = "kopf",
    ) -> None:
        self.liveness_port = _free_port()
        liveness = f"http://127.0.0.1:{self.liveness_port}/healthz"
        if entrypoint == "kopf":
            argv = [str(VENV_BIN / "kopf"), "run", "-m", "codeforge.controller", f"--liveness={liveness}"]
            for namespace in namespaces:
                argv += ["--namespace", namespace]
        elif entrypoint == "codeforge":
            argv = [str(VENV_BIN / "codeforge"), "operator", f"--liveness={liveness}"]
            argv += [f"--namespaces={','.join(namespaces)}"]
        else:
            raise ValueError(f"entrypoint {entrypoint!r}: use kopf or codeforge")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CODEFORGE_")}
        child_env.update(
            KUBECONFIG=str(kubeconfig),
            CODEFORGE_QUEUE_URL=queue_url,
            CODEFORGE_AUTOSCALE_INTERVAL="0.5",
            CODEFORGE_STATUS_INTERVAL="1",
            CODEFORGE_WORKFLOW_STATUS_INTERVAL="0.3",
            PYTHONUNBUFFERED="1",
        )
        child_env.update(env or {})
        super().__init__(argv, child_env, log_path)

    @classmethod
    def for_namespace(
        cls, cluster: Cluster, namespace: str, queue_url: str, log_path: Path, entrypoint: str = "kopf"
    ) -> OperatorProcess:
        """The operator of a test module: on `cluster`, watching its one `namespace`."""
        return cls(
            kubeconfig=cluster.kubeconfig,
            queue_url=queue_url,
            namespaces=[namespace],
            log_path=log_path,
            entrypoint=entrypoint,
        )

    def healthy(self) -> bool:
        return self.probe() is not None

    def probe(self) -> dict[str, Any] | None:
        """The liveness JSON (`{"leader": false, ...}` on a standby); None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                body = r.read()
                return (json.loads(body) if body.strip() else {}) if int(r.status) == 200 else None
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def start(self, timeout: float = 60.0) -> Self:
        """Launch it and wait until Kopf's liveness endpoint answers (startup handlers done, logged in)."""
        start_together([self], timeout)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_together(operators: Sequence[OperatorProcess], timeout: float = 60.0) -> None:
    """Launch the operators at once (replicas or shards starting together) and wait until each answers its
    liveness probe (a standby answers too); one that exits meanwhile fails with its log."""
    for operator in operators:
        operator.launch()

    def up() -> bool:
        for operator in operators:
            if not operator.alive:
                raise AssertionError(f"an operator exited during startup\n{operator.tail()}")
        return all(operator.healthy() for operator in operators)

    wait_until(
        up, timeout=timeout, interval=0.2, what="operator liveness",
        detail=lambda: "\n".join(operator.tail(30) for operator in operators),
    )  # fmt: skip


#: What a local agent process changes in a pod's environment: each pod has its own network namespace, local
#: processes share one (no fixed health port); text logs are what the tests read; a short claim wait makes
#: SIGTERM quick, keeping fixture teardown short.
LOCAL_AGENT_OVERRIDES = {
    "CODEFORGE_HEALTH_PORT": "off",
    "CODEFORGE_LOG_FORMAT": "text",
    "CODEFORGE_CLAIM_WAIT": "0.2",
}


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEFORGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pod_agent_env(deployment: Mapping[str, Any], agent_id: str) -> dict[str, str]:
    """The environment the operator gives an AgentPool's pods (its Deployment's agent container), resolved
    as the kubelet would: `value`s as they are, the pod-name fieldRef as `agent_id`. Secret references are
    not resolved (the e2e pools use none)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = agent_id
    return env


class AgentProcess(LocalProcess):
    """A real `codeforge-agent` serving one pool (`namespace/name`), configured the way the operator
    configures agent pods: through CODEFORGE_* variables."""

    def __init__(self, *, pool: str, queue_url: str, log_path: Path, **settings: str) -> None:
        env = _clean_env()
        env.update(CODEFORGE_POOL=pool, CODEFORGE_QUEUE_URL=queue_url, **LOCAL_AGENT_OVERRIDES)
        env.update({f"CODEFORGE_{key.upper()}": value for key, value in settings.items()})
        super().__init__([str(VENV_BIN / "codeforge-agent")], env, log_path)

    @classmethod
    def like_pod(
        cls,
        deployment: Mapping[str, Any],
        agent_id: str,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> AgentProcess:
        """An agent configured exactly like the pods of an AgentPool's Deployment (see `pod_agent_env`)."""
        pod_env = pod_agent_env(deployment, agent_id)
        agent = cls(
            pool=pod_env["CODEFORGE_POOL"], queue_url=pod_env["CODEFORGE_QUEUE_URL"], log_path=log_path
        )
        agent.env.update(pod_env)
        agent.env.update(LOCAL_AGENT_OVERRIDES)
        agent.env.update(extra_env or {})
        return agent

    def start(self, timeout: float = 60.0) -> Self:
        self.launch()
        self.wait_started(timeout)
        return self

    def wait_started(self, timeout: float = 60.0) -> None:
        def started() -> bool:
            if not self.alive:
                raise AssertionError(f"the agent exited during startup\n{self.tail()}")
            return "agent started" in self.log()

        wait_until(started, timeout=timeout, interval=0.1, what="agent start", detail=self.tail)


@contextlib.contextmanager
def running_agents(
    pool: str, queue_url: str, log_dir: Path, count: int = 1, **settings: str
) -> Iterator[list[AgentProcess]]:
    """`count` agents of one pool, started in parallel; each is stopped (SIGTERM, then SIGKILL) on exit."""
    safe = pool.replace("/", "_")
    agents = [
        AgentProcess(pool=pool, queue_url=queue_url, log_path=log_dir / f"agent-{safe}-{i}.log", **settings)
        for i in range(count)
    ]
    try:
        for agent in agents:
            agent.launch()
        for agent in agents:
            agent.wait_started()
        yield agents
    finally:
        for agent in agents:
            agent.stop(grace=10)
