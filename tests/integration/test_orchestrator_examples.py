"""The example workflows in examples/workflows run to the expected result on the memory queue, each
branch of the feature-development flow included (research + debate, debate only, and the review loop)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import load_manifest
from codeforge.orchestrator import WorkflowOutcome, WorkflowRunner
from codeforge.queue import open_queue

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"


async def run_example(name: str, input_override: dict[str, Any] | None = None) -> WorkflowOutcome:
    manifest = load_manifest(EXAMPLES / name)
    spec = manifest.workflow.spec
    if input_override is not None:
        spec = spec.model_copy(update={"input": {**spec.input, **input_override}})
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


async def test_feature_development_research_then_debate(tmp_path: Path) -> None:
    outcome = await run_example("feature-development.yaml", {"workspace": str(tmp_path), "feature": FEATURE})
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
    assert outcome.results["test"] == {"passed": True, "ran": 3, "output": "OK"}
    workspace = Path(outcome.results["implement"]["workspace"])
    assert workspace.parent == tmp_path
    assert "def slugify(text: str) -> str:" in (workspace / "textkit" / "words.py").read_text()


async def test_feature_development_debate_branch(tmp_path: Path) -> None:
    feature = {**FEATURE, "examples": [['slugify("A b")', "'a-b'"]]}
    outcome = await run_example("feature-development.yaml", {"workspace": str(tmp_path), "feature": feature})
    assert outcome.status == "succeeded", outcome.error
    assert [h["step"] for h in outcome.history] == ["assign", "debate", "implement", "test", "review"]


async def test_feature_development_review_loop(tmp_path: Path) -> None:
    feature = {**FEATURE, "prefer": "loop"}  # an undocumented, untyped design: review asks for changes
    outcome = await run_example("feature-development.yaml", {"workspace": str(tmp_path), "feature": feature})
    assert outcome.status == "succeeded", outcome.error
    steps = [h["step"] for h in outcome.history]
    assert steps[-6:] == ["implement", "test", "review", "implement", "test", "review"]
    assert outcome.results["implement"]["strategy"] == "translate"
    assert outcome.results["review"]["verdict"] == "approved"


async def test_feature_development_direct_branch_fails_on_an_unknown_feature(tmp_path: Path) -> None:
    feature = {"name": "word_count", "module": "textkit/words.py"}  # exists: a direct change
    outcome = await run_example("feature-development.yaml", {"workspace": str(tmp_path), "feature": feature})
    assert [h["step"] for h in outcome.history] == ["assign", "implement"]
    assert outcome.status == "failed"
    assert "does not know how to build 'word_count'" in (outcome.error or "")


@pytest.fixture(autouse=True)
def _no_stray_demo_module() -> None:
    sys.modules.pop("demo_agents", None)
