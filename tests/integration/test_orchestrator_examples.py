"""The example workflows in examples/workflows run to the expected result on the memory queue, each
branch of the feature-development flow included (research + debate, debate only, and the review loop), the
latter on a file:// bare repository made from examples/sample-project (as `make demo` does)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from codeforge.api.workspace import GitSource, WorkspaceSpec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import load_manifest
from codeforge.orchestrator import WorkflowOutcome, WorkflowRunner
from codeforge.queue import open_queue
from support.git_server import git, make_bare_repo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"
SAMPLE = EXAMPLES.parent / "sample-project"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {
        str(p.relative_to(SAMPLE)): p.read_text()
        for p in SAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    bare = tmp_path / "sample-project.git"
    make_bare_repo(bare, files)
    return bare


async def run_example(
    name: str, input_override: dict[str, Any] | None = None, repo: Path | None = None
) -> WorkflowOutcome:
    manifest = load_manifest(EXAMPLES / name)
    spec = manifest.workflow.spec
    if input_override is not None:
        spec = spec.model_copy(update={"input": {**spec.input, **input_override}})
    if repo is not None:
        spec = spec.model_copy(
            update={"workspace": WorkspaceSpec(git=GitSource(url=f"file://{repo}", ref="main"))}
        )
    queue = await open_queue("memory://")
    try:
        async with InProcessAgents(queue, manifest.pools.values(), manifest.directory):
            return await WorkflowRunner(queue).run(f"{manifest.workflow.metadata.name}-test", spec)
    finally:
        await queue.close()
        sys.modules.pop("demo_agents", None)


async def test_hello_world() -> None:
    outcome = await run_example("hello-world.yaml")
    assert outcome.status == "succeeded"
    assert outcome.results["hello"]["input"] == "hello, world"


async def test_fan_out() -> None:
    outcome = await run_example("fan-out.yaml")
    assert outcome.status == "succeeded", outcome.error
    files = outcome.results["scan"]["files"]
    assert "textkit/words.py" in files
    assert [c["file"] for c in outcome.results["count"]] == files
    assert outcome.results["summarize"]["files"] == len(files)
    assert outcome.results["fastest-mirror"]["slept"] == 0.2


FEATURE = {"name": "slugify", "module": "textkit/words.py"}


async def test_feature_development_research_then_debate(repo: Path) -> None:
    outcome = await run_example("feature-development.yaml", {"feature": FEATURE}, repo)
    assert outcome.status == "succeeded", outcome.error
    assert [h["step"] for h in outcome.history] == [
        "assign",
        "research",
        "debate",
        "implement",
        "test",
        "review",
    ]
    assert len(outcome.results["research"]["examples"]) == 4  # the README's slugify doctests
    assert outcome.results["debate"]["votes"] == {"regex": 2, "translate": 1}
    assert {k: outcome.results["test"][k] for k in ("passed", "ran", "output")} == {
        "passed": True,
        "ran": 3,
        "output": "OK",
    }
    assert outcome.workspace is not None
    branch = outcome.workspace["branch"]
    assert branch == "codeforge/feature-development-test"
    assert "def slugify(text: str) -> str:" in git("show", f"{branch}:textkit/words.py", cwd=repo)


async def test_feature_development_debate_branch(repo: Path) -> None:
    feature = {**FEATURE, "examples": [['slugify("A b")', "'a-b'"]]}
    outcome = await run_example("feature-development.yaml", {"feature": feature}, repo)
    assert outcome.status == "succeeded", outcome.error
    assert [h["step"] for h in outcome.history] == ["assign", "debate", "implement", "test", "review"]


async def test_feature_development_review_loop(repo: Path) -> None:
    feature = {**FEATURE, "prefer": "loop"}  # an undocumented, untyped design: review asks for changes
    outcome = await run_example("feature-development.yaml", {"feature": feature}, repo)
    assert outcome.status == "succeeded", outcome.error
    steps = [h["step"] for h in outcome.history]
    assert steps[-6:] == ["implement", "test", "review", "implement", "test", "review"]
    assert outcome.results["implement"]["strategy"] == "translate"
    assert outcome.results["review"]["verdict"] == "approved"
    # Round 2 started from round 1's commit and replaced the design: two commits, one slugify.
    assert outcome.workspace is not None
    log = git("log", "--format=%s", f"main..{outcome.workspace['branch']}", cwd=repo).splitlines()
    assert log == ["Add slugify (translate strategy)", "Add slugify (loop strategy)"]
    words = git("show", f"{outcome.workspace['branch']}:textkit/words.py", cwd=repo)
    assert words.count("def slugify") == 1
    assert "keep = " in words


async def test_feature_development_direct_branch_fails_on_an_unknown_feature(repo: Path) -> None:
    feature = {"name": "word_count", "module": "textkit/words.py"}  # exists: a direct change
    outcome = await run_example("feature-development.yaml", {"feature": feature}, repo)
    assert [h["step"] for h in outcome.history] == ["assign", "implement"]
    assert outcome.status == "failed"
    assert "does not know how to build 'word_count'" in (outcome.error or "")
    assert outcome.workspace is not None
    assert "branch" not in outcome.workspace


@pytest.fixture(autouse=True)
def _no_stray_demo_module() -> None:
    sys.modules.pop("demo_agents", None)
