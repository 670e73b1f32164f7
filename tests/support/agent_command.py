"""A program for the `command` handler tests: behaves as the task payload's `mode` says."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    task = json.load(sys.stdin)
    mode = task["payload"].get("mode", "echo")
    print(f"working on {task['id']}", file=sys.stderr)  # logs go to stderr, never stdout
    if mode == "garbage":
        print("Done! Everything went fine.")
    elif mode == "exit":
        print("Traceback: the model refused", file=sys.stderr)
        sys.exit(4)
    elif mode == "hang":
        time.sleep(3600)
    else:
        print(json.dumps({"echo": task["payload"], "task": os.environ["CODEFORGE_TASK_ID"]}))


if __name__ == "__main__":
    main()
