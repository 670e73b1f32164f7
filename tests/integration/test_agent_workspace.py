"""Workspaces through the real `codeforge-agent`, a real redis-server and a real Git server (git http-backend
with basic auth on 127.0.0.1): checkout + commit + push, no-op steps, the warm cache, credentials, rejected
pushes, merge, publish, a full cache and the redelivery of a task whose agent was SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codeforge.api.task import Task, TaskOutcome, TaskState, TaskWorkspace, WorkspaceAction
from codeforge.queue import TaskQueue, open_queue
from support.agent_procs import agent_env, running_agents
from support.git_server import GitServer, commit_files, git, make_bare_repo, protect_branch, read_file

pytestmark = pytest.mark.redis
EDIT = Path(__file__).parents[1] / "support" / "workspace_edit.py"
FILES = {
    "README.md": "# app\n",
    "src/app.py": "def answer():\n    return 41\n",
    "tests/test_app.py": "x = 1\n",
}


@dataclass
class Repo:
    server: GitServer
    bare: Path
    url: str
    base: str


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def repo(server: GitServer) -> Repo:
    bare = server.root / "app.git"
    base = make_bare_repo(bare, FILES)
    return Repo(server, bare, server.url("app.git"), base)


def credentials(tmp_path: Path, server: GitServer, password: str | None = None) -> Path:
    directory = tmp_path / f"creds-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    (directory / "username").write_text(server.username + "\n")
    (directory / "password").write_text((password or server.password) + "\n")
    return directory


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    yield q
    await q.close()


def env_for(pool: str, redis_url: str, cache: Path, creds: Path, **extra: str) -> dict[str, str]:
    settings = {
        "handler": "command",
        "command": f"{sys.executable} {EDIT}",
        "workspace_dir": str(cache),
        "git_credentials_dir": str(creds),
        "git_author_name": "Forge Bot",
        "git_author_email": "forge-bot@example.com",
        **extra,
    }
    return agent_env(pool, redis_url, **settings)


def new_pool() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


async def run_task(
    queue: TaskQueue, pool: str, workspace: TaskWorkspace, payload: Any = None, **kw: Any
) -> TaskOutcome:
    task = Task(id=f"t-{uuid.uuid4().hex[:8]}", pool=pool, workflow="wf", step="implement", payload=payload,
                workspace=workspace, **kw)  # fmt: skip
    await queue.enqueue(task)
    return await queue.wait_result(pool, task.id, timeout=60)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def task_worktrees(cache: Path) -> list[Path]:
    return [p for p in (cache / "work").iterdir() if not p.name.endswith("-spare")]


def ref_of(bare: Path, ref: str) -> str | None:
    out = git("for-each-ref", "--format=%(objectname)", ref, cwd=bare).strip()
    return out or None


async def test_checkout_commit_push_and_unchanged(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    env = env_for(pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server))
    push_ref = "refs/codeforge/wf/implement/v1/p0"
    async with running_agents(env) as [agent]:
        changed = await run_task(
            queue,
            pool,
            TaskWorkspace(url=repo.url, base=repo.base, push_ref=push_ref),
            {
                "write": {"src/app.py": "def answer():\n    return 42\n", "src/new.py": "NEW = True\n"},
                "delete": ["tests/test_app.py"],
                "read": ["README.md"],
                "commit_message": "implement: answer 42",
            },
        )
        same = await run_task(
            queue,
            pool,
            TaskWorkspace(url=repo.url, base=repo.base, push_ref="refs/codeforge/wf/review/v1/p0"),
            {"read": ["src/app.py"]},
        )
        # Used worktrees are removed in the background; one spare stays for the next task.
        await wait_for(lambda: len(list((tmp_path / "cache" / "work").iterdir())) <= 1, "worktree removal")
        log = agent.log
    assert changed.state is TaskState.SUCCEEDED, changed.error
    result = changed.result
    ws = result["workspace"]
    # The handler ran inside its own worktree, and saw the base's files.
    assert result["cwd"] == result["workspace_env"]
    assert str(tmp_path / "cache") in result["cwd"]
    assert result["seen"] == {"README.md": "# app\n"}
    assert result["commit_message"] == "implement: answer 42"  # a dict result keeps its keys
    assert ws["base"] == repo.base
    assert ws["changed"] is True
    assert ws["ref"] == push_ref
    assert sorted(ws["files"]) == ["src/app.py", "src/new.py", "tests/test_app.py"]
    assert ws["diffstat"] == {"files": 3, "insertions": 2, "deletions": 2}
    # ... and the commit is on the server, under the task's ref, with the base as parent.
    assert ref_of(repo.bare, push_ref) == ws["commit"]
    assert read_file(repo.bare, ws["commit"], "src/app.py").endswith("return 42\n")
    assert git("log", "-1", "--format=%an <%ae>|%s|%P", ws["commit"], cwd=repo.bare).strip() == (
        f"Forge Bot <forge-bot@example.com>|implement: answer 42|{repo.base}"
    )
    # A step that changes nothing makes no commit and pushes nothing.
    assert same.state is TaskState.SUCCEEDED, same.error
    assert same.result["workspace"] == {
        "base": repo.base,
        "commit": repo.base,
        "changed": False,
        "ref": None,
        "files": [],
        "diffstat": {"files": 0, "insertions": 0, "deletions": 0},
    }
    assert same.result["seen"] == {"src/app.py": FILES["src/app.py"]}, "each task starts from its own base"
    assert ref_of(repo.bare, "refs/codeforge/wf/review/v1/p0") is None
    # The tasks' worktrees are gone (one spare waits for the next task), the cache stays; the password
    # never reached a log line.
    assert task_worktrees(tmp_path / "cache") == []
    assert len(list((tmp_path / "cache" / "work").glob("*-spare"))) <= 1
    assert len(list((tmp_path / "cache" / "repos").glob("*.git"))) == 1
    assert repo.server.password not in log


async def test_a_second_task_uses_the_cache_and_fetches_only_new_objects(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    big = {f"data/blob{i}.bin": os.urandom(100_000) for i in range(20)}  # 2 MB to clone once
    base = commit_files(repo.bare, big, message="big")
    pool = new_pool()
    env = env_for(pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server))
    async with running_agents(env) as [agent]:
        first = await run_task(queue, pool, TaskWorkspace(url=repo.url, base=base), {"read": ["README.md"]})
        cold = repo.server.upload_packs("app.git")
        second = await run_task(queue, pool, TaskWorkspace(url=repo.url, base=base), {"read": ["README.md"]})
        after_second = repo.server.upload_packs("app.git")
        child = commit_files(repo.bare, {"src/app.py": "changed\n"}, message="small change")
        third = await run_task(queue, pool, TaskWorkspace(url=repo.url, base=child), {"read": ["src/app.py"]})
        after_third = repo.server.upload_packs("app.git")
        log = agent.log
    for outcome in (first, second, third):
        assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert third.result["seen"] == {"src/app.py": "changed\n"}
    assert cold, "the first task fetches"
    assert after_second == cold, "a commit already in the cache needs no request to the server"
    new = after_third[len(cold) :]
    assert new, "a new commit is fetched"
    cloned = sum(r.bytes_out for r in cold)
    fetched = sum(r.bytes_out for r in new)
    assert fetched < cloned / 20, f"the new commit brought {fetched} bytes, the clone {cloned}"
    assert log.count("created the cache") == 1


async def test_wrong_password_fails_clearly_without_the_password(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    creds = credentials(tmp_path, repo.server, password="not-the-Password-9")
    env = env_for(pool, redis_url, tmp_path / "cache", creds)
    async with running_agents(env) as [agent]:
        outcome = await run_task(queue, pool, TaskWorkspace(url=repo.url, base=repo.base), {})
        log = agent.log
    assert outcome.state is TaskState.FAILED  # permanent: a retry cannot fix a password
    assert outcome.attempts == 1
    assert outcome.error is not None
    assert "git rejected the credentials" in outcome.error
    assert "spec.workspace.credentialsSecret" in outcome.error
    assert "not-the-Password-9" not in outcome.error
    assert "not-the-Password-9" not in log
    assert "Authentication failed" in log


async def test_unknown_host_missing_commit_and_missing_ref(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    env = env_for(pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server), git_timeout="20")
    async with running_agents(env):
        host = await run_task(
            queue,
            pool,
            TaskWorkspace(url="http://no-such-host.invalid/app.git", base=repo.base),
            max_attempts=1,
        )
        commit = await run_task(queue, pool, TaskWorkspace(url=repo.url, base="0" * 40))
        ref = await run_task(
            queue, pool, TaskWorkspace(url=repo.url, action=WorkspaceAction.RESOLVE, ref="no-such-branch")
        )
        good = await run_task(
            queue, pool, TaskWorkspace(url=repo.url, action=WorkspaceAction.RESOLVE, ref="main")
        )
    assert host.state is TaskState.DEAD  # retryable (DNS may come back), out of attempts
    assert host.error is not None
    assert "unknown host" in host.error
    assert commit.state is TaskState.FAILED
    assert commit.error is not None
    assert f"commit {'0' * 40} not found" in commit.error
    assert ref.state is TaskState.FAILED
    assert ref.error is not None
    assert "ref 'no-such-branch' not found" in ref.error
    assert good.state is TaskState.SUCCEEDED
    assert good.result == {"workspace": {"ref": "main", "commit": repo.base}}


async def test_merge_publish_and_a_rejected_push(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    env = env_for(pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server))
    base = repo.base

    def part(index: int) -> TaskWorkspace:
        return TaskWorkspace(url=repo.url, base=base, push_ref=f"refs/codeforge/wf/debate/v1/p{index}")

    async with running_agents(env):
        parts = [
            await run_task(queue, pool, part(0), {"write": {"a.txt": "from part 0\n"}}),
            await run_task(queue, pool, part(1), {"write": {"b.txt": "from part 1\n"}}),
            await run_task(queue, pool, part(2), {"write": {"a.txt": "part 2 disagrees\n", "c.txt": "c\n"}}),
        ]
        commits = [p.result["workspace"]["commit"] for p in parts]
        merged = await run_task(
            queue,
            pool,
            TaskWorkspace(
                url=repo.url,
                action=WorkspaceAction.MERGE,
                base=base,
                parts=commits[:2],
                push_ref="refs/codeforge/wf/d/v1/merge",
            ),
        )
        conflict = await run_task(
            queue,
            pool,
            TaskWorkspace(
                url=repo.url,
                action=WorkspaceAction.MERGE,
                base=base,
                parts=commits,
                push_ref="refs/codeforge/wf/x/v1/merge",
            ),
        )
        merged_commit = merged.result["workspace"]["commit"]
        published = await run_task(
            queue,
            pool,
            TaskWorkspace(
                url=repo.url,
                action=WorkspaceAction.PUBLISH,
                commit=merged_commit,
                push_ref="refs/heads/codeforge/wf",
            ),
        )
        protect_branch(repo.bare, "main")
        rejected = await run_task(
            queue,
            pool,
            TaskWorkspace(
                url=repo.url, action=WorkspaceAction.PUBLISH, commit=merged_commit, push_ref="refs/heads/main"
            ),
        )
    assert merged.state is TaskState.SUCCEEDED, merged.error
    ws = merged.result["workspace"]
    assert ws["changed"] is True
    assert sorted(ws["files"]) == ["a.txt", "b.txt"]
    assert ref_of(repo.bare, "refs/codeforge/wf/d/v1/merge") == ws["commit"]
    parents = git("log", "-1", "--format=%P", ws["commit"], cwd=repo.bare).split()
    assert commits[0] in parents or commits[1] in parents
    assert read_file(repo.bare, ws["commit"], "a.txt") == "from part 0\n"
    assert read_file(repo.bare, ws["commit"], "b.txt") == "from part 1\n"

    assert conflict.state is TaskState.FAILED
    assert conflict.error is not None
    assert "merge conflict in: a.txt" in conflict.error
    assert ref_of(repo.bare, "refs/codeforge/wf/x/v1/merge") is None

    assert published.state is TaskState.SUCCEEDED, published.error
    assert published.result == {"workspace": {"ref": "refs/heads/codeforge/wf", "commit": merged_commit}}
    assert ref_of(repo.bare, "refs/heads/codeforge/wf") == merged_commit

    assert rejected.state is TaskState.FAILED
    assert rejected.attempts == 1
    assert rejected.error is not None
    assert "rejected the push of refs/heads/main" in rejected.error
    assert "protected branch: main" in rejected.error
    assert ref_of(repo.bare, "refs/heads/main") == base


async def test_a_cache_too_small_for_the_repository_fails_the_task_clearly(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    base = commit_files(repo.bare, {f"blob{i}.bin": os.urandom(200_000) for i in range(10)}, message="2 MB")
    pool = new_pool()
    env = env_for(
        pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server), workspace_size_limit="2Mi"
    )
    async with running_agents(env):
        outcome = await run_task(queue, pool, TaskWorkspace(url=repo.url, base=base), {})
    assert outcome.state is TaskState.FAILED
    assert outcome.error is not None
    assert "raise the AgentPool's spec.workspace.cacheSizeLimit" in outcome.error


async def test_python_handler_gets_the_worktree_path(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    env = env_for(
        pool, redis_url, tmp_path / "cache", credentials(tmp_path, repo.server),
        handler="python", python_function="support.agent_funcs:edit_workspace",
    )  # fmt: skip
    async with running_agents(env):
        outcome = await run_task(
            queue,
            pool,
            TaskWorkspace(url=repo.url, base=repo.base, push_ref="refs/codeforge/wf/py/v1/p0"),
            {"write": {"py.txt": "from python\n"}},
        )
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert outcome.result["files"] == ["README.md", "py.txt", "src", "tests"]
    assert outcome.result["workspace"]["files"] == ["py.txt"]
    assert outcome.result["workspace"]["commit"] == ref_of(repo.bare, "refs/codeforge/wf/py/v1/p0")


@pytest.mark.slow
async def test_sigkill_mid_task_the_redelivered_attempt_owns_the_ref(
    tmp_path: Path, redis_url: str, queue: TaskQueue, repo: Repo
) -> None:
    pool = new_pool()
    cache = tmp_path / "cache"  # the pod restarts with its emptyDir: same cache, a new process
    env = env_for(pool, redis_url, cache, credentials(tmp_path, repo.server), lease_seconds="1")
    push_ref = "refs/codeforge/wf/implement/v1/p0"
    task = Task(
        id="impl-1",
        pool=pool,
        workflow="wf",
        step="implement",
        payload={"write": {"work.txt": "attempt {attempt} by {pid}\n"}, "hang_on_attempt": 1},
        workspace=TaskWorkspace(url=repo.url, base=repo.base, push_ref=push_ref),
    )
    async with running_agents(env) as [doomed]:
        await queue.enqueue(task)
        await wait_for(lambda: any((cache / "work").glob("*/work.txt")), "the first attempt's edit")
        doomed.signal(signal.SIGKILL)
        await doomed.wait()
    stale_worktrees = list((cache / "work").iterdir())
    assert len(task_worktrees(cache)) == 1, "the killed attempt left its worktree (and a spare) behind"
    # A lost agent's late push lands on the step's ref before the redelivered attempt finishes.
    stale = commit_files(repo.bare, {"work.txt": "stale work of the killed attempt\n"}, branch="stale")
    git("update-ref", push_ref, stale, cwd=repo.bare)
    async with running_agents(env) as [rescuer]:
        outcome = await queue.wait_result(pool, "impl-1", timeout=60)
        rescuer_pid = rescuer.pid
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert outcome.attempts == 2
    commit = outcome.result["workspace"]["commit"]
    assert ref_of(repo.bare, push_ref) == commit, "the redelivered attempt's push replaced the stale one"
    content = read_file(repo.bare, commit, "work.txt")
    assert content.startswith("attempt 2 by ")
    assert str(rescuer_pid) not in content  # the program's pid, not the agent's
    assert git("log", "--format=%H", commit, cwd=repo.bare).split() == [commit, repo.base]
    assert not any(p.exists() for p in stale_worktrees), "the new process removed the dead one's worktree"
