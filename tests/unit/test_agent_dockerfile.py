"""The agent image's Dockerfile passes hadolint and keeps the promises the README makes about it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.dockerfiles import hadolint, stages

DOCKERFILE = Path(__file__).parents[2] / "agent_image" / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    out = hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_non_root_and_compiler_free_final_stage() -> None:
    parts = stages(DOCKERFILE)
    assert len(parts) >= 2, "the image must be multi-stage (build deps stay in the builder)"
    final = parts[-1]
    assert "\nUSER 10001" in final, "the final stage must run as a numeric non-root user"
    for tool in ("gcc", "build-essential", "g++", "make "):
        assert tool not in final, f"{tool} must not be installed in the final stage"
    assert "PYTHONDONTWRITEBYTECODE=1" in final, "no .pyc writes: the root filesystem may be read-only"
    assert 'ENTRYPOINT ["codeforge-agent"]' in final


IMPORTS_OF_A_RUNNING_AGENT = """
import importlib.metadata as md, json, sys
import codeforge_agent.main, codeforge_agent.health, codeforge.queue.memory, codeforge.queue.redis_backend
owners = md.packages_distributions()
dists = {d for name in list(sys.modules) for d in owners.get(name.partition(".")[0], [])}
print(json.dumps(sorted(dists)))
"""


def test_the_image_requirements_cover_everything_the_agent_imports() -> None:
    """The image installs requirements.txt with --no-deps: a new import must show up here, not in a pod."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_RUNNING_AGENT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {name.lower().replace("_", "-") for name in json.loads(out.stdout)} - {"codeforge"}
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (DOCKERFILE.parent / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert imported <= pinned, f"add to agent_image/requirements.txt: {sorted(imported - pinned)}"
    assert not imported & {"kopf", "kubernetes", "langgraph"}
