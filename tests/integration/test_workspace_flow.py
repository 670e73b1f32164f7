"""Workspaces end to end (issue #11): the code travels from step to step through a real Git server.

Real parts only: `git http-backend` with basic auth on 127.0.0.1 (tests/support/git_server.py), a real Redis,
one `codeforge-agent` process per pool, each with its own cache directory as separate pods would have, and the
orchestrator as `codeforge run --queue redis://... --no-agents` or in-process on the same Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeforge.api.workflow import parse_workflow_spec
from codeforge.orchestrator import WorkflowOutcome, WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import open_queue
from support.agent_procs import AgentProcess, agent_env, start_agent
from support.git_server import GitServer, commit_files, git, make_bare_repo
from support.procs import running

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FLAGSHIP = EXAMPLES / "workflows" / "feature-development.yaml"
CODEFORGE = Path(sys.executable).parent / "codeforge"
EDIT = f"{sys.executable} -m support.workspace_steps"


def sample_files() -> dict[str, str]:
    project = EXAMPLES / "sample-project"
    return {
        str(p.relative_to(project)): p.read_text()
        for p in sorted(project.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "server") as srv:
        yield srv


@pytest.fixture
def credentials(tmp_path: Path, server: GitServer) -> Path:
    """The Secret an AgentPool's spec.workspace.credentialsSecret mounts: username + password files."""
    path = tmp_path / "git-credentials"
    path.mkdir()
    (path / "username").write_text(server.username)
    (path / "password").write_text(server.password)
    return path


class Agents:
    """One codeforge-agent process per pool, each with its own workspace cache (as separate pods)."""

    def __init__(self, root: Path, queue_url: str, credentials: Path) -> None:
        self.root, self.queue_url, self.credentials = root, queue_url, credentials
        self.procs: dict[str, AgentProcess] = {}

    def start(self, pool: str, name: str | None = None, **settings: str) -> AgentProcess:
        name = name or pool
        env = agent_env(
            pool,
            self.queue_url,
            workspace_dir=str(self.root / f"cache-{name}"),
            git_credentials_dir=str(self.credentials),
            log_level="info",
            **settings,
        )
        env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES / "workflows"), env["PYTHONPATH"]])
        agent = start_agent(env)
        self.procs[name] = agent
        return agent

    async def ready(self) -> None:
        for agent in self.procs.values():
            await agent.wait_for_log("agent started", timeout=60)

    def stop(self) -> None:
        for agent in self.procs.values():
            agent.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{a.log[-2000:]}" for name, a in self.procs.items())


def refs(bare: Path, prefix: str = "refs/") -> dict[str, str]:
    listing = git("for-each-ref", "--format=%(refname) %(objectname)", prefix, cwd=bare)
    return dict(line.split(" ", 1) for line in listing.splitlines())


# -- the flagship workflow ----------------------------------------------------------------------------


def flagship_manifest(tmp_path: Path, suffix: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    """feature-development.yaml with pool names made unique on the shared Redis; its pools' settings."""
    docs = list(yaml.safe_load_all(FLAGSHIP.read_text()))
    pools: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if doc["kind"] == "AgentPool":
            doc["metadata"]["name"] += f"-{suffix}"
            pools[doc["metadata"]["name"]] = doc["spec"]
        else:
            for step in doc["spec"]["steps"]:
                step["pool"] += f"-{suffix}"
    path = tmp_path / "feature-development.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path, pools


async def run_cli(*args: str, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        str(CODEFORGE), "run", *args, "-o", "json", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    try:
        outcome = json.loads(out)
    except json.JSONDecodeError:
        outcome = {}
    return process.returncode, outcome, err.decode(errors="replace")


async def test_flagship_workflow_across_agent_processes_with_its_code_in_git(
    tmp_path: Path, redis_url: str, server: GitServer, credentials: Path
) -> None:
    bare = server.root / "sample-project.git"
    base = make_bare_repo(bare, sample_files())
    suffix = uuid.uuid4().hex[:6]
    manifest, pools = flagship_manifest(tmp_path, suffix)
    agents = Agents(tmp_path, redis_url, credentials)
    for pool, spec in pools.items():
        agents.start(pool, handler="command", command=spec["handler"]["settings"]["command"])
    try:
        await agents.ready()
        code, outcome, stderr = await run_cli(
            str(manifest),
            "--queue",
            redis_url,
            "--no-agents",
            "--workspace-url",
            server.url("sample-project.git"),
            "--workflow-id",
            f"flagship-{suffix}",
        )
    finally:
        agents.stop()
    assert code == 0, stderr + agents.logs()
    assert [h["step"] for h in outcome["history"]] == [
        "assign",
        "research",
        "debate",
        "implement",
        "test",
        "review",
    ]
    results, workspace = outcome["results"], outcome["workspace"]
    implemented = results["implement"]["workspace"]["commit"]

    # The run resolved main once and every step saw the commit its predecessor produced.
    assert workspace["base"] == base
    assert results["assign"]["saw"] == results["research"]["saw"] == base
    assert [r["saw"] for r in results["debate"]["results"]] == [base] * 3
    assert results["implement"]["saw"] == base
    assert results["test"]["saw"] == results["review"]["saw"] == implemented != base
    assert results["review"]["verdict"] == "approved"

    # Steps that only read made no commit and pushed nothing; the implementation pushed its step ref.
    for step in ("assign", "research", "test", "review"):
        assert results[step]["workspace"]["changed"] is False, step
    step_refs = refs(bare, "refs/codeforge/")
    assert step_refs == {f"refs/codeforge/flagship-{suffix}/implement/v1/p0": implemented}
    assert results["implement"]["workspace"]["files"] == ["tests/test_slugify.py", "textkit/words.py"]

    # The branch holds the feature; its tests pass in a fresh clone; the status-like summary agrees.
    assert workspace["branch"] == "codeforge/feature-development"
    assert workspace["commit"] == implemented
    assert refs(bare, "refs/heads/")["refs/heads/codeforge/feature-development"] == implemented
    assert workspace["diffstat"]["files"] == 2
    clone = tmp_path / "clone"
    git("clone", "--quiet", "--branch", "codeforge/feature-development", str(bare), str(clone))
    assert "def slugify(text: str) -> str:" in (clone / "textkit" / "words.py").read_text()
    tests = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
        cwd=clone,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert tests.returncode == 0, tests.stderr
    assert "Ran 3 tests" in tests.stderr
    message = git("log", "-1", "--format=%s%n%an", implemented, cwd=bare).splitlines()
    assert message == ["Add slugify (regex strategy)", "CodeForge"]
    # Credentials never reached the outcome.
    assert server.password not in json.dumps(outcome)


# -- the same machinery with a test program: SIGKILL, merges, no-change steps -------------------------


async def run_in_process(
    url: str, workflow_id: str, spec: dict[str, Any], name: str = "wf", *, retry: bool = False
) -> WorkflowOutcome:
    queue = await open_queue(url)
    saver = await open_checkpointer(url)
    runner = WorkflowRunner(queue, saver)
    parsed = parse_workflow_spec(spec)
    try:
        if retry:  # what the operator does for the codeforge.ai/retry annotation
            await runner.rewind(workflow_id, parsed)
        return await asyncio.wait_for(runner.run(workflow_id, parsed, name=name), 180)
    finally:
        await saver.aclose()
        await queue.close()


async def test_sigkill_of_the_implementation_agent_keeps_no_trace_of_its_work(
    tmp_path: Path, redis_url: str, server: GitServer, credentials: Path
) -> None:
    bare = server.root / "repo.git"
    base = make_bare_repo(bare, {"README.md": "start\n"})
    suffix = uuid.uuid4().hex[:6]
    pool = f"impl-{suffix}"
    agents = Agents(tmp_path, redis_url, credentials)
    first = agents.start(pool, "impl-1", handler="command", command=EDIT)
    await agents.ready()
    spec = {
        "workspace": {"git": {"url": server.url("repo.git"), "ref": "main"}},
        "steps": [
            {
                "name": "implement",
                "pool": pool,
                "params": {
                    "write": {"feature.txt": "written by pid {pid} on attempt {attempt}\n"},
                    "hang_on_attempt": 1,
                    "commit_message": "implement the feature",
                },
            }
        ],
    }
    # A short lease, so the killed agent's task is redelivered quickly (the pool's spec.queue.leaseSeconds).
    run = asyncio.create_task(run_in_process(redis_url, f"kill-{suffix}", spec, name=f"kill-{suffix}"))
    try:
        await _wait_for_hang(first, tmp_path)
        killed_pid = _hanging_pid(tmp_path / "cache-impl-1")
        first.process.kill()  # SIGKILL: no goodbye, the lease runs out
        # ... and its program, in a session of its own, dies with it instead of working on unseen
        assert killed_pid is not None
        assert await _ends(killed_pid), f"pid {killed_pid} outlived its agent"
        agents.start(pool, "impl-2", handler="command", command=EDIT)
        outcome = await run
    finally:
        agents.stop()
    assert outcome.status == "succeeded", (outcome.error, agents.logs())
    result = outcome.results["implement"]
    assert result["attempt"] >= 2
    assert result["pid"] != killed_pid
    commit = result["workspace"]["commit"]
    branch = f"refs/heads/codeforge/kill-{suffix}"
    assert refs(bare)[branch] == commit == outcome.workspace["commit"]  # type: ignore[index]
    assert refs(bare)[f"refs/codeforge/kill-{suffix}/implement/v1/p0"] == commit
    content = git("show", f"{commit}:feature.txt", cwd=bare)
    assert content == f"written by pid {result['pid']} on attempt {result['attempt']}\n"
    history = git("log", "--format=%H", f"{base}..{commit}", cwd=bare).split()
    assert history == [commit]  # one commit on top of the base: nothing of the killed attempt
    assert str(killed_pid) not in git("log", "-p", "--all", cwd=bare)


async def _wait_for_hang(agent: AgentProcess, tmp_path: Path, timeout: float = 60) -> None:
    """The first attempt has written its file and hangs (the program said so on stderr, in the agent log
    or as a worktree holding feature.txt)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if _hanging_pid(tmp_path / "cache-impl-1") is not None:
            return
        assert agent.alive, agent.log
        await asyncio.sleep(0.05)
    raise AssertionError(f"the first attempt never started its work:\n{agent.log[-3000:]}")


async def _ends(pid: int, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if not running(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def _hanging_pid(cache: Path) -> int | None:
    # Only the worktrees (cache/work/<id>/): the agent renames its temporary clones under cache/repos while
    # this polls, and a recursive walk there can find a directory gone by the time it lists it.
    for found in (cache / "work").glob("*/feature.txt"):
        try:
            text = found.read_text()
        except FileNotFoundError:  # the worktree was released between the listing and the read
            continue
        if text.startswith("written by pid "):
            return int(text.split()[3])
    return None


def fan_spec(url: str, pool: str, writes: list[dict[str, Any]], merge: bool) -> dict[str, Any]:
    return {
        "workspace": {"git": {"url": url, "ref": "main"}},
        "input": {"writes": writes},
        "steps": [
            {
                "name": "fan",
                "pool": pool,
                "forEach": "state.input.writes",
                "input": "{}",
                "join": "all",
                "workspace": {"merge": merge},
            },
            {
                "name": "check",
                "pool": pool,
                "input": "{}",
                "params": {"read": ["shared.txt", "a.txt", "b.txt"]},
            },
        ],
        "edges": [{"from": "fan", "to": "check"}],
    }


@pytest.fixture
async def edit_agent(tmp_path: Path, redis_url: str, credentials: Path) -> Any:
    pool = f"edit-{uuid.uuid4().hex[:6]}"
    agents = Agents(tmp_path, redis_url, credentials)
    agents.start(pool, handler="command", command=EDIT, concurrency="3")
    await agents.ready()
    yield pool, agents
    agents.stop()


async def test_fan_out_merge_without_and_with_a_conflict(
    tmp_path: Path, redis_url: str, server: GitServer, edit_agent: tuple[str, Agents]
) -> None:
    pool, agents = edit_agent
    bare = server.root / "fan.git"
    base = make_bare_repo(bare, {"shared.txt": "one\ntwo\nthree\n"})
    url = server.url("fan.git")
    clean = [
        {"write": {"a.txt": "part a\n"}},
        {"write": {"b.txt": "part b\n"}},
        {},  # changes nothing: no commit, nothing to merge
    ]
    outcome = await run_in_process(
        redis_url, f"merge-{uuid.uuid4().hex[:6]}", fan_spec(url, pool, clean, True)
    )
    assert outcome.status == "succeeded", (outcome.error, agents.logs())
    merged = outcome.workspace["commit"]  # type: ignore[index]
    assert git("show", f"{merged}:a.txt", cwd=bare) == "part a\n"
    assert git("show", f"{merged}:b.txt", cwd=bare) == "part b\n"
    check = outcome.results["check"]
    assert check["seen"] == {"shared.txt": "one\ntwo\nthree\n", "a.txt": "part a\n", "b.txt": "part b\n"}
    assert check["saw"] == merged
    assert check["workspace"]["changed"] is False
    fan_results = outcome.results["fan"]
    assert [r["saw"] for r in fan_results] == [base] * 3  # the parts all started from the same commit
    assert fan_results[2]["workspace"]["changed"] is False
    assert fan_results[2]["workspace"]["commit"] == base
    assert not any("/fan/v1/p2" in ref for ref in refs(bare))  # the no-change part pushed nothing

    conflicting = [
        {"write": {"shared.txt": "one\nTWO by part 0\nthree\n"}},
        {"write": {"shared.txt": "one\nTWO by part 1\nthree\n"}},
    ]
    spec = fan_spec(url, pool, conflicting, merge=True)
    failed = await run_in_process(redis_url, f"conflict-{uuid.uuid4().hex[:6]}", spec, name="conflict")
    assert failed.status == "failed"
    assert "merging the parts of step 'fan' failed" in (failed.error or "")
    assert "shared.txt" in (failed.error or "")
    assert "refs/heads/codeforge/conflict" not in refs(bare)  # a failed run publishes nothing...
    assert any(
        ref.endswith("/fan/v1/p1") for ref in refs(bare, "refs/codeforge/")
    )  # ...and keeps its step refs

    # Without workspace.merge an `all` join passes its input commit on.
    spec = fan_spec(url, pool, conflicting, merge=False)
    spec["steps"][1]["params"]["read"] = ["shared.txt"]
    kept = await run_in_process(redis_url, f"nomerge-{uuid.uuid4().hex[:6]}", spec)
    assert kept.status == "succeeded", kept.error
    assert kept.workspace["commit"] == base  # type: ignore[index]
    assert kept.results["check"]["seen"] == {"shared.txt": "one\ntwo\nthree\n"}


async def test_a_retried_run_works_from_its_checkpointed_base_after_the_branch_moved(
    tmp_path: Path, redis_url: str, server: GitServer, edit_agent: tuple[str, Agents]
) -> None:
    pool, agents = edit_agent
    bare = server.root / "retry.git"
    base = make_bare_repo(bare, {"README.md": "v1\n"})
    flag = tmp_path / "fail-now"
    flag.write_text("")
    spec = {
        "workspace": {"git": {"url": server.url("retry.git"), "ref": "main"}},
        "steps": [
            {"name": "write", "pool": pool, "input": "{}", "params": {"write": {"a.txt": "a\n"}}},
            {
                "name": "check",
                "pool": pool,
                "input": "{}",
                "params": {"read": ["README.md", "a.txt"], "fail_while_exists": str(flag)},
            },
        ],
        "edges": [{"from": "write", "to": "check"}],
    }
    run_id = f"retry-{uuid.uuid4().hex[:6]}"
    failed = await run_in_process(redis_url, run_id, spec)
    assert failed.status == "failed", agents.logs()
    written = failed.results["write"]["workspace"]["commit"]
    commit_files(bare, {"README.md": "v2: main moved on\n"})  # someone pushes to main meanwhile
    flag.unlink()
    retried = await run_in_process(redis_url, run_id, spec, retry=True)
    assert retried.status == "succeeded", (retried.error, agents.logs())
    check = retried.results["check"]
    assert check["saw"] == written  # the retried step starts from its predecessor's commit...
    assert check["seen"] == {"README.md": "v1\n", "a.txt": "a\n"}  # ...on the base resolved at the start
    assert retried.workspace["base"] == base  # type: ignore[index]
    assert git("rev-parse", "refs/heads/codeforge/wf", cwd=bare).strip() == written
