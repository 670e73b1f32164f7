"""The benchmark's worker processes can be paused while another system is measured, and stop even paused."""

from __future__ import annotations

import time
from pathlib import Path

from codeforge.benchmarks.system import WorkerGroup


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) S ..."; comm may hold spaces, the state follows its closing parenthesis
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, wanted: set[str], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    state = _state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        state = _state(pid)
    return state


def test_paused_workers_are_stopped_resumed_run_and_a_paused_group_still_stops(tmp_path: Path) -> None:
    group = WorkerGroup([["-c", "import time; time.sleep(60)"]], {}, tmp_path, "pause")
    group.start()
    pid = group.processes[0].pid
    try:
        group.pause()
        assert _wait_state(pid, {"T"}) == "T"
        group.resume()
        assert _wait_state(pid, {"S", "R"}) in {"S", "R"}
        group.pause()
        assert _wait_state(pid, {"T"}) == "T"
    finally:
        started = time.monotonic()
        group.stop(grace=5.0)
    assert group.processes[0].returncode is not None
    assert time.monotonic() - started < 4.0  # SIGTERM reached it: no wait for the SIGKILL after the grace
