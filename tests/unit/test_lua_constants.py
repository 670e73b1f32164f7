"""lib.lua holds copies of Python bounds (Lua cannot import them): each equals its source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from codeforge.api import limits, task

LIB = Path(task.__file__).resolve().parents[1] / "queue" / "lua" / "lib.lua"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_RESULT", limits.MAX_RESULT_BYTES),
        ("MAX_KEYS", limits.MAX_FAIR_KEYS),
        ("LOST_BACKOFF_CAP_MS", int(task.LOST_LEASE_BACKOFF_CAP_SECONDS * 1000)),
    ],
)
def test_lib_lua_holds_the_python_value(name: str, value: int) -> None:
    found = re.search(rf"^local {name} = (\d+)", LIB.read_text(), re.MULTILINE)
    assert found is not None, f"lib.lua declares no {name}"
    assert int(found.group(1)) == value
