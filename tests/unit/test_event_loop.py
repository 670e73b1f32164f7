"""The event loop codeforge's processes run on (`codeforge/event_loop.py`): uvloop (the agent, `codeforge run`
and the operator) unless CODEFORGE_EVENT_LOOP names one, and a wrong value is a configuration error of every
entry point, never a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop
from typer.testing import CliRunner

from codeforge import event_loop
from codeforge.cli import _register, app
from support.agent_procs import agent_config_error, agent_env

ROOT = Path(__file__).resolve().parents[2]
BAD = {event_loop.ENV: "trio"}
runner = CliRunner()
_register()


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.mark.parametrize("value", [None, "", "uvloop", " UVLoop "])
def test_uvloop_by_default_and_by_name(value: str | None) -> None:
    env = {} if value is None else {event_loop.ENV: value}
    assert isinstance(event_loop.run(running_loop(), event_loop.choose(env)), uvloop.Loop)


def test_asyncio_keeps_pythons_own_loop() -> None:
    loop = event_loop.run(running_loop(), event_loop.choose({event_loop.ENV: "asyncio"}))
    assert type(loop).__module__.startswith("asyncio.")  # not uvloop.Loop


def test_the_loop_is_closed_after_the_run_as_asyncio_run_closes_it() -> None:
    async def leave_a_task() -> asyncio.AbstractEventLoop:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600))  # cancelled when the run ends
        return asyncio.get_running_loop()

    assert event_loop.run(leave_a_task(), event_loop.choose({})).is_closed()


def test_an_unknown_loop_names_the_variable_and_the_choices() -> None:
    with pytest.raises(event_loop.EventLoopError) as caught:
        event_loop.choose(BAD)
    assert str(caught.value) == "CODEFORGE_EVENT_LOOP='trio': use uvloop or asyncio (unset: uvloop)"


def test_codeforge_run_reports_an_unknown_loop_as_invalid_input() -> None:
    result = runner.invoke(app, ["run", str(ROOT / "examples/workflows/hello-world.yaml")], env=BAD)
    assert result.exit_code == 2
    assert "CODEFORGE_EVENT_LOOP='trio': use uvloop or asyncio" in result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_the_operator_reports_an_unknown_loop_before_it_starts() -> None:
    result = runner.invoke(app, ["operator"], env={**BAD, "COLUMNS": "300"})
    assert result.exit_code == 2
    assert "CODEFORGE_EVENT_LOOP='trio': use uvloop or asyncio (unset: uvloop)" in result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_the_agent_reports_an_unknown_loop_as_a_configuration_error() -> None:
    stderr = agent_config_error({**agent_env("research", "redis://127.0.0.1:1/0"), **BAD})
    assert "configuration error: CODEFORGE_EVENT_LOOP='trio': use uvloop or asyncio (unset: uvloop)" in stderr
