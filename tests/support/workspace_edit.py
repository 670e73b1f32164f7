"""A command-handler program that edits its workspace like a coding-agent CLI (for the workspace tests).

Task JSON on stdin; it works in its current directory (the task's worktree). Payload:
  write: {path: content}   files to create or overwrite      delete: [path]   files to remove
  read: [path]             files whose content it reports     commit_message: str (passed on in the result)
  hang_on_attempt: n       on that attempt: write, then hang (to be killed mid-task)
Prints {"cwd", "workspace_env", "attempt", "pid", "seen", "commit_message"?} as its result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    task = json.load(sys.stdin)
    payload = task.get("payload") or {}
    here = Path.cwd()
    attempt = int(os.environ.get("CODEFORGE_TASK_ATTEMPT", "0"))
    for name, content in (payload.get("write") or {}).items():
        target = here / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.replace("{pid}", str(os.getpid())).replace("{attempt}", str(attempt)))
    for name in payload.get("delete") or []:
        (here / name).unlink()
    if payload.get("hang_on_attempt") == attempt:
        print(f"hanging in {here}", file=sys.stderr, flush=True)
        time.sleep(600)
    result = {
        "cwd": str(here),
        "workspace_env": os.environ.get("CODEFORGE_WORKSPACE"),
        "attempt": attempt,
        "pid": os.getpid(),
        "seen": {name: (here / name).read_text() for name in payload.get("read") or []},
    }
    if payload.get("commit_message"):
        result["commit_message"] = payload["commit_message"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
