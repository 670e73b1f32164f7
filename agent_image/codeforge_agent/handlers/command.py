"""The `command` handler: run a program per task, task JSON on stdin, result JSON from stdout.

- exit 0: stdout is the result (empty stdout means `null`); stdout that is not JSON fails the task;
- non-zero exit or death by signal: the task fails (retryable) with the tail of stderr;
- the program runs in its own process group, so on timeout, cancellation or agent shutdown the whole
  group (the program and anything it spawned) is killed, not just the direct child;
- on Linux the kernel also kills the program when the agent dies without a shutdown (SIGKILL, the OOM killer),
  so it does not go on editing a worktree nobody will push, or spending tokens (in a pod the container's end
  does this anyway; an agent run on a host or by `codeforge run` has no container around it).

The program's environment is the agent's (minus the Redis and API-key secrets) plus the configured extra
variables and `CODEFORGE_TASK_ID`, `CODEFORGE_TASK_POOL`, `CODEFORGE_TASK_ATTEMPT`,
`CODEFORGE_TASK_WORKFLOW`, `CODEFORGE_TASK_STEP`.

For a task with a workspace the program runs inside the task's Git worktree (its working directory, also in
`CODEFORGE_WORKSPACE`): whatever it leaves there is committed and pushed after it exits 0. It may name the
commit message with a `commit_message` key in its JSON result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from codeforge import event_loop
from codeforge.api.task import Task
from codeforge_agent.handlers.base import HandlerError, TaskContext, ensure_json, tail, task_json

#: Secrets the agent itself needs but a user program must not inherit.
SECRET_ENV = frozenset(
    {
        "CODEFORGE_REDIS_PASSWORD",
        "CODEFORGE_REDIS_PASSWORD_FILE",
        "CODEFORGE_QUEUE_URL",
        "CODEFORGE_OPENAI_API_KEY",
        "CODEFORGE_OPENAI_API_KEY_FILE",
    }
)


#: prctl(2) option: the signal a process gets when the thread that forked it exits.
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()  # looked up here, not in the forked child


def die_with(agent_pid: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel SIGKILL the program when the agent's process ends, or None where
    prctl is missing. The spawning thread is the event loop's, which lives as long as the agent."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def arm() -> None:  # in the child, between fork and exec: no allocation-heavy work here
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != agent_pid:  # the agent died before the signal was armed
            os._exit(137)

    return arm


def kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group the program leads (it was started in a new session)."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class CommandHandler:
    kind = "command"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("command handler needs a program: set --command / CODEFORGE_COMMAND")
        self.argv = list(argv)
        self.cwd = cwd
        self.extra_env = dict(env or {})

    def _environment(self, task: Task, context: TaskContext) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env.update(self.extra_env)
        env.update(
            CODEFORGE_TASK_ID=task.id,
            CODEFORGE_TASK_POOL=task.pool,
            CODEFORGE_TASK_ATTEMPT=str(context.attempt),
            CODEFORGE_TASK_WORKFLOW=task.workflow,
            CODEFORGE_TASK_STEP=task.step,
        )
        if context.workspace is not None:
            env["CODEFORGE_WORKSPACE"] = str(context.workspace)
        return env

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        stdin = json.dumps(task_json(task)).encode()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(context.workspace) if context.workspace is not None else self.cwd,
                env=self._environment(task, context),
                start_new_session=True,  # own process group: a timeout kills its children too
                preexec_fn=die_with(os.getpid()),
            )
        except OSError as exc:
            raise HandlerError(
                f"command handler: cannot start {self.argv[0]!r}: {exc.strerror or exc} "
                "(check --command / CODEFORGE_COMMAND and --command-cwd)",
                retryable=False,
            ) from None
        try:
            stdout, stderr = await event_loop.communicate(process, stdin)
        finally:
            # Timeout or shutdown cancels us mid-communicate: take the whole group down with us.
            kill_group(process)
        if process.returncode != 0:
            code = process.returncode
            how = (
                f"was killed by signal {-code}"
                if code is not None and code < 0
                else f"exited with code {code}"
            )
            err = tail(stderr) or "(no stderr)"
            raise HandlerError(f"command {self.argv[0]!r} {how}; stderr: {err}")
        text = stdout.decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            result = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HandlerError(
                f"command {self.argv[0]!r} printed output that is not JSON ({exc.msg} at line {exc.lineno}); "
                f"stdout starts: {text[:200]!r}; stderr: {tail(stderr, 500) or '(none)'} "
                "(print only the result JSON to stdout and send logs to stderr)",
                retryable=False,
            ) from None
        return ensure_json(result, f"command {self.argv[0]!r}")

    async def aclose(self) -> None:
        return None
