"""The command handler's program is armed to die with the agent (prctl PDEATHSIG): the kernel kills it when
the agent's process ends, even by SIGKILL; an agent gone before the arming is noticed by the child itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from codeforge_agent.handlers.command import die_with
from support.procs import running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# A middle process stands in for the agent: it starts the program armed against itself, prints its pid, and
# waits to be SIGKILLed.
MIDDLE = """
import os, subprocess, sys, time
from codeforge_agent.handlers.command import die_with
argv = [sys.executable, "-c", "import time; time.sleep(60)"]
child = subprocess.Popen(argv, preexec_fn=die_with(os.getpid()), start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_the_program_ends_when_its_agent_is_sigkilled() -> None:
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    try:
        assert running(child)
        middle.send_signal(signal.SIGKILL)
        middle.wait(timeout=10)
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not running(child), "the program outlived its agent"
    finally:
        middle.kill()
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_a_program_whose_agent_is_already_gone_does_not_start() -> None:
    arm = die_with(os.getpid() + 1_000_000)  # not its parent: as if the agent had died before the arming
    assert arm is not None
    proc = subprocess.run(
        [sys.executable, "-c", "print('ran')"], preexec_fn=arm, capture_output=True, text=True
    )
    assert proc.returncode == 137
    assert proc.stdout == ""
