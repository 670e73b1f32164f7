"""The benchmark's worker processes can be paused while another system is measured, and stop even paused."""

from __future__ import annotations

import time
from pathlib import Path

from codeforge.benchmarks.system import WorkerGroup
from support.procs import process_state


def _wait_state(pid: int, wanted: set[str], timeout: float = 5.0) -> str | None:
    deadline = time.monotonic() + timeout
    state = process_state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        state = process_state(pid)
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
