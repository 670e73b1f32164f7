"""Temporal under `codeforge bench workflow`: the dev server of the `temporal` CLI (Temporal server with
in-memory SQLite, built by hack/bench/build-temporal.sh), one Python SDK worker process at its defaults (the
workflow sandbox on, 100 concurrent activities), and the client in the harness (`execute_workflow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import temporalio
from temporalio.client import Client

from codeforge.benchmarks.peers import temporal_workflows as wf
from codeforge.benchmarks.system import WorkerGroup
from codeforge.benchmarks.workflow_engine import Unavailable, WorkflowEngine, free_port

#: Where the harness looks for the CLI first; then the build script's cache, then PATH.
ENV_TEMPORAL_BIN = "CODEFORGE_TEMPORAL_BIN"
VERSIONS_ENV = Path(__file__).resolve().parents[4] / "hack" / "bench" / "versions.env"
BUILD_HINT = "run `bash hack/bench/build-temporal.sh` (Go from the module proxy, up to ~30 min on 2 cores)"
START_TIMEOUT_S = 60.0
WORKFLOWS = {"chain": "Chain", "fanout": "FanOut"}


def pinned_version() -> str | None:
    try:
        for line in VERSIONS_ENV.read_text().splitlines():
            if line.startswith("TEMPORAL_CLI_VERSION="):
                return line.split("=", 1)[1].strip()
    except OSError:
        return None
    return None


def find_cli() -> Path | None:
    """The temporal CLI: $CODEFORGE_TEMPORAL_BIN, the build script's cached binary, or `temporal` on PATH."""
    if explicit := os.environ.get(ENV_TEMPORAL_BIN):
        return Path(explicit) if Path(explicit).is_file() else None
    cache = Path(os.environ.get("CODEFORGE_CACHE") or Path.home() / ".cache" / "codeforge")
    version = pinned_version()
    if version and (built := cache / f"temporal-{version}" / "bin" / "temporal").is_file():
        return built
    found = shutil.which("temporal")
    return Path(found) if found else None


class TemporalPeer(WorkflowEngine):
    name = "temporal"
    label = "Temporal (dev server)"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._cli = find_cli()
        self._server: subprocess.Popen[bytes] | None = None
        self._workers: WorkerGroup | None = None
        self._client: Client | None = None
        self._cli_version = "not built"

    def version(self) -> str:
        return f"CLI {self._cli_version}, SDK {temporalio.__version__}"

    def describe(self) -> str:
        return "temporal server start-dev (in-memory SQLite); 1 Python SDK worker process, defaults"

    async def start(self) -> None:
        if self._cli is None:
            raise Unavailable(f"the temporal CLI is not built: {BUILD_HINT}, or set {ENV_TEMPORAL_BIN}")
        port = free_port()
        self._server = await asyncio.to_thread(self._start_server, self._cli, port)
        address = f"127.0.0.1:{port}"
        self._client = await self._connect(address)
        self._task_queue = f"cfwfbench-{self.ctx.run_id}"
        self._workers = WorkerGroup(
            [["-m", wf.__name__, address, self._task_queue]],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            self.ctx.logdir,
            self.name,
        )
        self._workers.start()

    def _start_server(self, cli: Path, port: int) -> subprocess.Popen[bytes]:
        out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=30, check=False)
        self._cli_version = out.stdout.strip().removeprefix("temporal version ").split(" ")[0] or "unknown"
        argv = [str(cli), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        argv += ["--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "error"]
        with (self.ctx.logdir / "temporal-server.log").open("wb") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    async def _connect(self, address: str) -> Client:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._server is not None
            if self._server.poll() is not None:
                tail = (self.ctx.logdir / "temporal-server.log").read_text(errors="replace")[-2000:]
                raise Unavailable(f"temporal server start-dev exited with {self._server.returncode}: {tail}")
            try:
                client = await Client.connect(address)
                await client.count_workflows()  # the frontend answers only once the namespace is ready
                return client
            except Exception:
                if time.monotonic() > deadline:
                    why = f"the Temporal dev server did not answer in {START_TIMEOUT_S:g}s"
                    raise Unavailable(why) from None
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._workers is not None:
            await asyncio.to_thread(self._workers.stop)
        if self._server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, 15)
            try:
                await asyncio.to_thread(self._server.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, 9)
                await asyncio.to_thread(self._server.wait)

    async def run(self, shape: str, workflow_id: str) -> None:
        assert self._client is not None
        assert self._workers is not None
        self._workers.check_alive()
        await self._client.execute_workflow(WORKFLOWS[shape], id=workflow_id, task_queue=self._task_queue)
