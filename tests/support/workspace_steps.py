"""A command-handler program for the Workflow workspace tests: it edits its working directory (the task's
worktree) the way a coding-agent CLI would, driven by the task.

Task JSON on stdin. Instructions are read from the payload, its `item` (forEach) and its `input` (a dict),
later ones winning: `write` {path: content} ("{pid}" and "{attempt}" are filled in), `read` [path] (reported
in `seen`), `commit_message`, `hang_on_attempt` n (on that delivery: write, then hang, to be killed),
`fail_while_exists` path (outside the repository: fail, after writing, while that file exists).
Prints {"attempt", "pid", "seen", "saw" (the commit checked out), "commit_message"?} as the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def instructions(payload: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for source in (payload, payload.get("item"), payload.get("input")):
        if isinstance(source, dict):
            merged.update({k: v for k, v in source.items() if k not in ("item", "input")})
    return merged


def main() -> int:
    task = json.load(sys.stdin)
    todo = instructions(task.get("payload") or {})
    here = Path.cwd()
    attempt = int(os.environ.get("CODEFORGE_TASK_ATTEMPT", "0"))
    for name, content in (todo.get("write") or {}).items():
        target = here / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.replace("{pid}", str(os.getpid())).replace("{attempt}", str(attempt)))
    if todo.get("fail_while_exists") and Path(todo["fail_while_exists"]).exists():
        print(f"failing: {todo['fail_while_exists']} exists", file=sys.stderr)
        return 1
    if todo.get("hang_on_attempt") == attempt:
        print(f"hanging in {here}", file=sys.stderr, flush=True)
        time.sleep(600)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=False)
    result: dict[str, Any] = {
        "attempt": attempt,
        "pid": os.getpid(),
        "seen": {name: (here / name).read_text() for name in todo.get("read") or []},
        "saw": head.stdout.strip(),
    }
    if todo.get("commit_message"):
        result["commit_message"] = todo["commit_message"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
