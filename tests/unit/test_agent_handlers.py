"""Each handler kind on its own: real subprocesses, real local HTTP servers, no agent loop."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from codeforge import event_loop
from codeforge.api.task import Task
from codeforge_agent.config import HandlerConfig
from codeforge_agent.handlers import (
    CommandHandler,
    HandlerError,
    HttpHandler,
    OpenAIHandler,
    PythonHandler,
    TaskContext,
    build_handler,
)
from codeforge_agent.log_setup import get_logger
from support.agent_servers import Recorded, fake_openai, serve, task_service
from support.procs import running


def ctx(timeout: float | None = None) -> TaskContext:
    return TaskContext(agent_id="agent-1", attempt=1, timeout=timeout, log=get_logger())


def task(payload: Any = None, **fields: Any) -> Task:
    return Task(id=fields.pop("id", "t1"), pool="unit", payload=payload, attempts=1, **fields)


# ---- built-ins ----


async def test_echo_returns_the_payload() -> None:
    handler = build_handler(HandlerConfig(kind="echo"))
    assert await handler(task({"a": [1, 2]}), ctx()) == {"a": [1, 2]}


async def test_sleep_waits_the_requested_seconds() -> None:
    handler = build_handler(HandlerConfig(kind="sleep"))
    started = time.monotonic()
    assert await handler(task({"seconds": 0.05}), ctx()) == {"slept": 0.05, "payload": {"seconds": 0.05}}
    assert time.monotonic() - started >= 0.05


async def test_sleep_takes_its_seconds_from_the_steps_input_when_params_name_none() -> None:
    """A step whose `input` selects a number from the run's input (`input: input.seconds[0]`): each run of
    one template sleeps its own time. `payload.seconds` (the step's params) wins; other inputs are ignored."""
    handler = build_handler(HandlerConfig(kind="sleep"))
    assert (await handler(task({"input": 0.02, "step": "s0"}), ctx()))["slept"] == 0.02
    assert (await handler(task({"seconds": 0.01, "input": 5}), ctx()))["slept"] == 0.01
    assert (await handler(task({"input": {"n": 1}, "seconds": 0}), ctx()))["slept"] == 0.0
    with pytest.raises(HandlerError, match="must be a number >= 0"):
        await handler(task({"input": -1}), ctx())


async def test_fail_raises_with_the_payload_message_and_retryability() -> None:
    handler = build_handler(HandlerConfig(kind="fail"))
    with pytest.raises(HandlerError) as info:
        await handler(task({"message": "nope", "retryable": False}), ctx())
    assert (info.value.message, info.value.retryable) == ("nope", False)


# ---- python ----


async def test_python_sync_function_gets_the_task() -> None:
    handler = PythonHandler("support.agent_funcs:shout")
    assert await handler(task({"text": "hi"}), ctx()) == {"text": "HI", "attempt": 1}
    await handler.aclose()


async def test_python_async_function_may_take_the_context() -> None:
    handler = PythonHandler("support.agent_funcs:async_shout")
    assert await handler(task({"text": "hi"}), ctx()) == {"text": "HI", "agent": "agent-1"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_colon_here", "not of the form 'module:function'"),
        ("support.no_such_module:run", "cannot import module 'support.no_such_module'"),
        ("support.agent_funcs:missing", "has no attribute 'missing'"),
        ("support.agent_funcs:NOT_CALLABLE", "is not callable"),
    ],
)
async def test_python_bad_target_fails_each_task_permanently(target: str, expected: str) -> None:
    handler = PythonHandler(target)  # must not raise: the agent keeps running
    assert handler.load_error is not None
    assert expected in handler.load_error
    with pytest.raises(HandlerError) as info:
        await handler(task({}), ctx())
    assert expected in info.value.message
    assert info.value.retryable is False


async def test_python_result_that_is_not_json_is_refused() -> None:
    handler = PythonHandler("support.agent_funcs:not_json")
    with pytest.raises(HandlerError, match="not JSON"):
        await handler(task({}), ctx())


async def test_python_pydantic_results_become_json() -> None:
    handler = PythonHandler(lambda t: t)  # returns the Task model itself
    result = await handler(task({"a": 1}), ctx())
    assert result["id"] == "t1"
    assert result["payload"] == {"a": 1}
    assert result["priority"] == 3


async def test_python_accepts_a_callable_for_embedded_mode() -> None:
    handler = PythonHandler(lambda t: {"id": t.id})
    assert await handler(task({}), ctx()) == {"id": "t1"}


# ---- command ----

PY = sys.executable


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(body))
    return [PY, str(path)]


async def test_command_gets_task_json_on_stdin_and_returns_stdout_json(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import json, os, sys
        task = json.load(sys.stdin)
        print("log line", file=sys.stderr)
        print(json.dumps({"id": task["id"], "text": task["payload"]["text"], "cwd": os.getcwd(),
                          "extra": os.environ["EXTRA"], "env_id": os.environ["CODEFORGE_TASK_ID"],
                          "secret": os.environ.get("CODEFORGE_REDIS_PASSWORD")}))
        """,
    )
    os.environ["CODEFORGE_REDIS_PASSWORD"] = "hunter2"
    try:
        handler = CommandHandler(argv, cwd=str(tmp_path), env={"EXTRA": "x"})
        result = await handler(task({"text": "hi"}), ctx())
    finally:
        del os.environ["CODEFORGE_REDIS_PASSWORD"]
    assert result == {
        "id": "t1",
        "text": "hi",
        "cwd": str(tmp_path),
        "extra": "x",
        "env_id": "t1",
        "secret": None,
    }


async def test_command_nonzero_exit_fails_with_stderr_tail(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        "import sys\nprint('x' * 5000, file=sys.stderr)\nprint('real cause', file=sys.stderr)\nsys.exit(3)",
    )
    with pytest.raises(HandlerError) as info:
        await CommandHandler(argv)(task({}), ctx())
    assert "exited with code 3" in info.value.message
    assert info.value.message.rstrip().endswith("real cause")
    assert len(info.value.message) < 2300
    assert info.value.retryable is True


async def test_command_output_that_is_not_json_fails_permanently(tmp_path: Path) -> None:
    argv = script(tmp_path, "print('Done! all good')")
    with pytest.raises(HandlerError) as info:
        await CommandHandler(argv)(task({}), ctx())
    assert "not JSON" in info.value.message
    assert "Done! all good" in info.value.message
    assert info.value.retryable is False


@pytest.mark.parametrize("loop", event_loop.CHOICES)
def test_a_program_gone_before_its_stdin_is_written_reports_its_own_outcome(loop: str) -> None:
    """On either event loop: uvloop raised RuntimeError writing to the exited program's closed pipe (where
    asyncio's `communicate` ignores the broken pipe), and the task failed with that instead of the
    program's exit code and stderr."""

    async def gone_first(script: str) -> tuple[int | None, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(PY, "-c", script, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        await process.wait()  # the program is gone before anything is written to it
        await asyncio.sleep(0.05)
        stdout, stderr = await event_loop.communicate(process, b'{"id": "t1"}' * 1000)
        return process.returncode, stdout, stderr

    factory = event_loop.choose({event_loop.ENV: loop})
    failed = "import sys; print('the linter found 3 errors', file=sys.stderr); sys.exit(1)"
    assert event_loop.run(gone_first(failed), factory) == (1, b"", b"the linter found 3 errors\n")
    assert event_loop.run(gone_first("print('{}')"), factory) == (0, b"{}\n", b"")


@pytest.mark.parametrize("loop", event_loop.CHOICES)
def test_a_command_that_exits_without_reading_its_stdin_reports_its_own_outcome(
    tmp_path: Path, loop: str
) -> None:
    argv = script(tmp_path, "import sys\nprint('the linter found 3 errors', file=sys.stderr)\nsys.exit(1)")
    big = task({"text": "x" * 500_000})  # more than a pipe holds: the write is still going when it exits
    factory = event_loop.choose({event_loop.ENV: loop})
    with pytest.raises(HandlerError) as info:
        event_loop.run(CommandHandler(argv)(big, ctx()), factory)
    assert "exited with code 1" in info.value.message
    assert "the linter found 3 errors" in info.value.message
    assert event_loop.run(CommandHandler([PY, "-c", "print('[1]')"])(big, ctx()), factory) == [1]


async def test_command_empty_stdout_is_a_null_result(tmp_path: Path) -> None:
    assert await CommandHandler(script(tmp_path, "pass"))(task({}), ctx()) is None


async def test_command_missing_program_is_a_clear_permanent_failure() -> None:
    with pytest.raises(HandlerError) as info:
        await CommandHandler(["/no/such/program"])(task({}), ctx())
    assert "cannot start '/no/such/program'" in info.value.message
    assert info.value.retryable is False


async def test_command_cancellation_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    argv = script(
        tmp_path,
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """,
    )
    job = asyncio.create_task(CommandHandler(argv)(task({}), ctx()))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.02)
    grandchild = int(pid_file.read_text())
    job.cancel()  # what the loop does on timeout
    with pytest.raises(asyncio.CancelledError):
        await job
    for _ in range(100):
        if not running(grandchild):
            break
        await asyncio.sleep(0.02)
    else:
        os.kill(grandchild, 9)
        pytest.fail("the command's child process survived the timeout")


# ---- http ----


async def test_http_posts_the_task_and_returns_the_json_response() -> None:
    recorded = Recorded()
    async with serve(task_service(recorded)) as base:
        handler = HttpHandler(f"{base}/run", headers={"X-Team": "a"})
        try:
            assert await handler(task({"text": "abc"}), ctx(5)) == {"reversed": "cba"}
        finally:
            await handler.aclose()
    assert recorded.requests[0]["id"] == "t1"
    assert recorded.requests[0]["payload"] == {"text": "abc"}
    assert recorded.headers[0]["X-Team"] == "a"
    assert recorded.headers[0]["X-CodeForge-Task-Id"] == "t1"


@pytest.mark.parametrize(("code", "retryable"), [(503, True), (429, True), (400, False)])
async def test_http_error_status_is_retryable_only_when_it_should_be(code: int, retryable: bool) -> None:
    async with serve(task_service(Recorded())) as base:
        handler = HttpHandler(f"{base}/status/{code}")
        try:
            with pytest.raises(HandlerError) as info:
                await handler(task({}), ctx(5))
        finally:
            await handler.aclose()
    assert f"HTTP {code}" in info.value.message
    assert "on purpose" in info.value.message
    assert info.value.retryable is retryable
    assert info.value.retry_delay == 2.0


async def test_http_non_json_body_and_unreachable_url_are_clear() -> None:
    async with serve(task_service(Recorded())) as base:
        handler = HttpHandler(f"{base}/text")
        with pytest.raises(HandlerError, match="not JSON"):
            await handler(task({}), ctx(5))
        await handler.aclose()
    handler = HttpHandler(f"{base}/run")  # the server is gone now
    with pytest.raises(HandlerError, match=r"request to .* failed"):
        await handler(task({}), ctx(5))
    await handler.aclose()


# ---- openai ----


async def test_openai_chat_completion_against_a_local_server() -> None:
    recorded = Recorded()
    async with serve(fake_openai(recorded)) as base:
        handler = build_handler(
            HandlerConfig(
                kind="openai",
                openai_base_url=f"{base}/v1",
                openai_model="tiny",
                openai_system_prompt="Be brief.",
            ),
            env={"CODEFORGE_OPENAI_API_KEY": "sk-test"},
        )
        try:
            result = await handler(task({"prompt": "hello", "temperature": 0.1}), ctx(5))
        finally:
            await handler.aclose()
    assert result["content"] == "HELLO"
    assert result["model"] == "tiny"
    assert result["finish_reason"] == "stop"
    assert result["usage"]["total_tokens"] == 6
    sent = recorded.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert sent["temperature"] == 0.1


async def test_openai_key_from_a_secret_file(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-test\n")
    recorded = Recorded()
    async with serve(fake_openai(recorded)) as base:
        handler = build_handler(
            HandlerConfig(kind="openai", openai_base_url=f"{base}/v1", openai_api_key_file=str(key_file)),
            env={},
        )
        result = await handler(task({"messages": [{"role": "user", "content": "x"}]}), ctx(5))
        await handler.aclose()
    assert result["content"] == "X"


async def test_openai_missing_key_fails_the_task_clearly() -> None:
    handler = build_handler(HandlerConfig(kind="openai"), env={})
    with pytest.raises(HandlerError) as info:
        await handler(task({"prompt": "x"}), ctx())
    assert "no API key" in info.value.message
    assert "CODEFORGE_OPENAI_API_KEY" in info.value.message
    assert info.value.retryable is False


async def test_openai_wrong_key_is_a_permanent_401() -> None:
    async with serve(fake_openai(Recorded())) as base:
        handler = OpenAIHandler(base_url=f"{base}/v1", model="m", api_key="sk-wrong")
        with pytest.raises(HandlerError) as info:
            await handler(task({"prompt": "x"}), ctx(5))
        await handler.aclose()
    assert "HTTP 401" in info.value.message
    assert "Incorrect API key" in info.value.message
    assert info.value.retryable is False
