"""A process's state as the kernel reports it, for tests that kill processes and check what is left."""

from __future__ import annotations

from pathlib import Path


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...), None when the process is gone. The command
    name before it is in parentheses and may hold spaces, so the state is read after the last ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def running(pid: int) -> bool:
    """Exists and is not a zombie (a killed orphan stays a zombie until init reaps it)."""
    return process_state(pid) not in (None, "Z", "X")
