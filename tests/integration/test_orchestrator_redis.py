"""Workflows on real Redis (one server and a 6-node cluster) with real `codeforge-agent` processes:
`codeforge run --queue` exit codes, and 100 concurrent workflows."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import open_queue
from support.git_server import make_bare_repo

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = ROOT / "tests"
CODEFORGE = Path(sys.executable).parent / "codeforge"

FAN_SPEC = """
input: {n: 0}
steps:
  - {name: fan, pool: %(square)s, parallel: 3, join: all}
  - {name: total, pool: %(total)s}
edges: [{from: fan, to: total}]
"""


def expected_sum(n: int) -> int:
    return sum((n + i) ** 2 for i in range(3))


def test_failed_workflow_exits_non_zero(redis_url: str, tmp_path: Path) -> None:
    """The feature-development example with a module its repository lacks: assign fails, the exit code is 1.
    (The example's success across agent processes is tests/integration/test_workspace_flow.py's flagship.)"""
    example = ROOT / "examples" / "workflows" / "feature-development.yaml"
    repo = tmp_path / "repo.git"
    make_bare_repo(repo, {"README.md": "an empty project\n"})
    bad = json.dumps({"feature": {"name": "unknown_fn", "module": "textkit/missing.py"}})
    run = subprocess.run(
        [
            str(CODEFORGE),
            "run",
            str(example),
            "--queue",
            redis_url,
            "-o",
            "json",
            "--input",
            bad,
            "--workspace-url",
            f"file://{repo}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["status"] == "failed"
    assert outcome["error"].startswith("step 'assign' failed:")
    assert "textkit/missing.py is not in the repository" in outcome["error"]


async def run_many(url: str, count: int) -> None:
    suffix = uuid.uuid4().hex[:6]
    pools = {"square": f"square-{suffix}", "total": f"total-{suffix}"}
    agents = [
        PoolSpec(
            pools["square"], "python", {"pythonFunction": "support.workflow_agents:square"}, concurrency=32
        ),
        PoolSpec(
            pools["total"], "python", {"pythonFunction": "support.workflow_agents:total"}, concurrency=32
        ),
    ]
    spec = parse_workflow_spec(yaml.safe_load(FAN_SPEC % pools))
    queue = await open_queue(url)
    saver = await open_checkpointer(url)
    runner = WorkflowRunner(queue, saver)
    try:
        with AgentProcesses(url, agents, TESTS_DIR):
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        runner.run(f"wf-{suffix}-{n}", spec.model_copy(update={"input": {"n": n}}))
                        for n in range(count)
                    )
                ),
                timeout=240,
            )
    finally:
        await queue.close()
        await saver.aclose()
    assert [o.status for o in outcomes] == ["succeeded"] * count, [o.error for o in outcomes if o.error][:3]
    assert [o.results["total"] for o in outcomes] == [{"n": n, "sum": expected_sum(n)} for n in range(count)]
    assert all([h["step"] for h in o.history] == ["fan", "total"] for o in outcomes)


async def test_100_concurrent_workflows_on_one_redis(redis_url: str) -> None:
    await run_many(redis_url, 100)


@pytest.mark.cluster
async def test_concurrent_workflows_on_the_cluster(cluster_url: str) -> None:
    await run_many(cluster_url, 20)


def test_an_agent_process_that_cannot_start_stops_the_run_with_exit_2(redis_url: str, tmp_path: Path) -> None:
    manifest = tmp_path / "wf.yaml"
    manifest.write_text(
        "kind: Workflow\nmetadata: {name: t}\nspec: {steps: [{name: a, pool: bad}]}\n---\n"
        "kind: AgentPool\nmetadata: {name: bad}\nspec: {handler: {kind: python}}\n"
    )
    run = subprocess.run(
        [str(CODEFORGE), "run", str(manifest), "--queue", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "the python handler needs --python-function" in run.stderr  # the agent's own message
    assert "the codeforge-agent process of pool 'bad' exited with code 2" in " ".join(run.stderr.split())
