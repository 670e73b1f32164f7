"""Deleting a run's step refs (issue #11): a failed run leaves refs/codeforge/<run>/... for inspection; the
`cleanup` workspace action deletes exactly those refs, and the operator dispatches it when the Workflow is
deleted. Real parts only: `git http-backend` with basic auth, redis-server, `codeforge-agent` processes, and
the operator (Kopf against kmock) with its real delete path."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kmock
import pytest

from codeforge.api.task import Task, TaskOutcome, TaskState, TaskWorkspace, WorkspaceAction
from codeforge.queue import TaskQueue, open_queue
from support.agent_procs import agent_env, running_agents, sigterm
from support.git_server import GitServer, git, make_bare_repo
from support.kopf_harness import NS, prepare, running

pytestmark = pytest.mark.redis
EDIT = Path(__file__).parents[1] / "support" / "workspace_edit.py"
STEPS = f"{sys.executable} -m support.workspace_steps"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    yield q
    await q.close()


def credentials(tmp_path: Path, server: GitServer) -> Path:
    directory = tmp_path / "creds"
    directory.mkdir(exist_ok=True)
    (directory / "username").write_text(server.username + "\n")
    (directory / "password").write_text(server.password + "\n")
    return directory


def workspace_agent(
    pool: str, redis_url: str, command: str, tmp_path: Path, server: GitServer
) -> dict[str, str]:
    """An agent's environment as its pod would have it: a cache directory and the Secret's files."""
    cache, secret = str(tmp_path / "cache"), str(credentials(tmp_path, server))
    return agent_env(pool, redis_url, handler="command", command=command, workspace_dir=cache,
                     git_credentials_dir=secret)  # fmt: skip


def refs(bare: Path) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=bare)
    return dict(line.split(" ", 1) for line in out.splitlines())


async def run_task(
    queue: TaskQueue, pool: str, workspace: TaskWorkspace, payload: object = None
) -> TaskOutcome:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    task = Task(id=tid, pool=pool, workflow="run-a", step="implement", payload=payload, workspace=workspace)
    await queue.enqueue(task)
    return await queue.wait_result(pool, task.id, timeout=60)


async def test_cleanup_deletes_exactly_the_runs_step_refs(
    tmp_path: Path, redis_url: str, queue: TaskQueue, server: GitServer
) -> None:
    bare = server.root / "app.git"
    base = make_bare_repo(bare, {"README.md": "# app\n"})
    url = server.url("app.git")
    # Refs the cleanup of run-a must leave alone: its pushBranch, another run's refs (one whose name starts
    # like run-a's, one whose tail looks like run-a's prefix) and the default branch.
    keep = [
        "refs/heads/main",
        "refs/heads/codeforge/run-a",
        "refs/codeforge/run-ab/implement/v1/p0",
        "refs/codeforge/other/refs/codeforge/run-a/x",
        "refs/tags/refs/codeforge/run-a/v1",
    ]
    # Enough of run-a's refs that the deletion takes more than one push (chunks of 200).
    made = [f"refs/codeforge/run-a/fan/v1/p{i}" for i in range(230)]
    commands = "".join(f"create {ref} {base}\n" for ref in keep[1:] + made)
    git("update-ref", "--stdin", cwd=bare, stdin=commands.encode())
    pool = f"ws-{uuid.uuid4().hex[:10]}"
    env = workspace_agent(pool, redis_url, f"{sys.executable} {EDIT}", tmp_path, server)
    pushed = "refs/codeforge/run-a/implement/v1/p0"
    async with running_agents(env):
        step = await run_task(
            queue,
            pool,
            TaskWorkspace(url=url, base=base, push_ref=pushed),
            {"write": {"feature.py": "X = 1\n"}},
        )
        assert step.state is TaskState.SUCCEEDED, step.error
        assert pushed in refs(bare)  # the step's output is there to inspect until the cleanup
        cleanup = TaskWorkspace(url=url, action=WorkspaceAction.CLEANUP, push_ref="refs/codeforge/run-a/")
        first = await run_task(queue, pool, cleanup)
        after = refs(bare)
        again = await run_task(queue, pool, cleanup)
    assert first.state is TaskState.SUCCEEDED, first.error
    assert first.result == {"workspace": {"ref": "refs/codeforge/run-a/", "deleted": len(made) + 1}}
    assert sorted(after) == sorted(keep)
    assert again.state is TaskState.SUCCEEDED, again.error
    assert again.result == {"workspace": {"ref": "refs/codeforge/run-a/", "deleted": 0}}


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_deleting_a_workflow_deletes_its_step_refs_but_not_its_branch(
    kmock: kmock.KubernetesEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    server: GitServer,
) -> None:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    bare = server.root / "service.git"
    make_bare_repo(bare, {"README.md": "service\n"})
    other = "refs/codeforge/uid-other-run/write/v1/p0"
    git("update-ref", other, "refs/heads/main", cwd=bare)
    spec = {
        "workspace": {"git": {"url": server.url("service.git"), "ref": "main"}},
        "steps": [
            {"name": "write", "pool": "writer", "input": "{}", "params": {"write": {"feature.txt": "f\n"}}},
            {"name": "extend", "pool": "writer", "input": "{}", "params": {"write": {"more.txt": "m\n"}}},
        ],
        "edges": [{"from": "write", "to": "extend"}],
    }
    env = workspace_agent(f"{NS}/writer", redis_url, STEPS, tmp_path, server)
    async with running_agents(env), running(kmock, timeout=60) as cluster:
        await cluster.create("ws-clean", spec, uid="uid-ws-clean")
        await cluster.eventually(lambda: cluster.phase("ws-clean") in ("Succeeded", "Failed"))
        assert cluster.phase("ws-clean") == "Succeeded", cluster.status("ws-clean")
        before = refs(bare)
        await cluster.delete("ws-clean")
        await cluster.eventually(lambda: cluster.get("ws-clean") is None)
        after = refs(bare)
    steps = {r for r in before if r.startswith("refs/codeforge/uid-ws-clean/")}
    assert steps == {"refs/codeforge/uid-ws-clean/write/v1/p0", "refs/codeforge/uid-ws-clean/extend/v1/p0"}
    branch = "refs/heads/codeforge/ws-clean"
    assert branch in before
    # The run's step refs are gone; its result branch, the default branch and another run's refs stay.
    assert sorted(after) == sorted(set(before) - steps)
    assert after[branch] == before[branch]
    assert other in after


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_deletion_without_agents_goes_on_and_leaves_the_cleanup_queued(
    kmock: kmock.KubernetesEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    server: GitServer,
) -> None:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    monkeypatch.setenv("CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT", "1")
    bare = server.root / "lonely.git"
    make_bare_repo(bare, {"README.md": "x\n"})
    spec = {
        "workspace": {"git": {"url": server.url("lonely.git"), "ref": "main"}},
        "steps": [{"name": "write", "pool": "lonely", "input": "{}", "params": {"write": {"a.txt": "a\n"}}}],
    }
    pool = f"{NS}/lonely"
    env = workspace_agent(pool, redis_url, STEPS, tmp_path, server)
    async with running_agents(env) as agents, running(kmock, timeout=60) as cluster:
        await cluster.create("lonely", spec, uid="uid-lonely")
        await cluster.eventually(lambda: cluster.phase("lonely") == "Succeeded")
        # Stopped, not killed: a killed agent's wait for work stays registered until it would have ended,
        # and a task enqueued meanwhile is handed to it (and comes back when the lease runs out).
        for agent in agents:
            sigterm(agent)
            assert await agent.wait(timeout=30) == 0, agent.log
    step_ref = "refs/codeforge/uid-lonely/write/v1/p0"
    assert step_ref in refs(bare)
    # The pool's agent is gone: the deletion waits CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT, then lets it go.
    async with running(kmock, timeout=30) as cluster:
        await cluster.delete("lonely")
        await cluster.eventually(lambda: cluster.get("lonely") is None)
        record = await cluster.queue.get(pool, "uid-lonely/_cleanup")
        assert record is not None
        assert record.state is TaskState.QUEUED
        await cluster.eventually(lambda: cluster.events("lonely", "WorkspaceRefsKept"))
        [kept] = cluster.events("lonely", "WorkspaceRefsKept")
        assert kept["type"] == "Warning"
        assert "refs/codeforge/uid-lonely/" in kept["message"]
        assert "stays queued" in kept["message"]
    assert step_ref in refs(bare)
    # A later agent of the pool takes the queued cleanup.
    async with running_agents(env):
        q = await open_queue(redis_url)
        try:
            outcome = await q.wait_result(pool, "uid-lonely/_cleanup", timeout=60)
        finally:
            await q.close()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert step_ref not in refs(bare)
