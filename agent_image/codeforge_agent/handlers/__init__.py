"""Handlers: one interface (`Handler`), several kinds, picked per pool by `build_handler`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codeforge_agent.config import HandlerConfig
from codeforge_agent.handlers.base import (
    Handler,
    HandlerError,
    RateLimitedError,
    TaskContext,
    ensure_json,
)
from codeforge_agent.handlers.builtin import EchoHandler, FailHandler, SleepHandler
from codeforge_agent.handlers.command import CommandHandler
from codeforge_agent.handlers.python_call import PythonHandler

if TYPE_CHECKING:
    from codeforge_agent.handlers.http_post import HttpHandler
    from codeforge_agent.handlers.openai_chat import OpenAIHandler

__all__ = [
    "CommandHandler",
    "EchoHandler",
    "FailHandler",
    "Handler",
    "HandlerError",
    "HttpHandler",
    "OpenAIHandler",
    "PythonHandler",
    "RateLimitedError",
    "SleepHandler",
    "TaskContext",
    "build_handler",
    "ensure_json",
]


def __getattr__(name: str) -> Any:
    # aiohttp costs ~0.3 s of start-up; only pools that use the http or openai handler pay it.
    if name == "HttpHandler":
        from codeforge_agent.handlers.http_post import HttpHandler

        return HttpHandler
    if name == "OpenAIHandler":
        from codeforge_agent.handlers.openai_chat import OpenAIHandler

        return OpenAIHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def openai_api_key(settings: HandlerConfig, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(key, None) or (None, why it is missing): a missing key fails tasks, it does not stop the agent."""
    if env.get("CODEFORGE_OPENAI_API_KEY"):
        return env["CODEFORGE_OPENAI_API_KEY"].strip(), None
    path = settings.openai_api_key_file or env.get("CODEFORGE_OPENAI_API_KEY_FILE")
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            return None, (
                f"openai handler: cannot read the API key file {path!r} ({exc.strerror}): "
                "mount the Secret there or fix CODEFORGE_OPENAI_API_KEY_FILE"
            )
        if key:
            return key, None
        return None, f"openai handler: the API key file {path!r} is empty"
    return None, None


def build_handler(
    settings: HandlerConfig, *, threads: int = 4, env: Mapping[str, str] | None = None
) -> Handler:
    """The handler a pool's configuration names. Misconfiguration that only concerns tasks (an import
    error, a missing key) is reported on each task instead of raised, so the agent stays up and visible."""
    env = os.environ if env is None else env
    match settings.kind:
        case "echo":
            return EchoHandler()
        case "sleep":
            return SleepHandler()
        case "fail":
            return FailHandler()
        case "python":
            return PythonHandler(settings.python_function, threads=threads)
        case "command":
            return CommandHandler(settings.command, cwd=settings.command_cwd, env=settings.command_env)
        case "http":
            from codeforge_agent.handlers.http_post import HttpHandler

            return HttpHandler(settings.http_url, headers=settings.http_headers)
        case "openai":
            from codeforge_agent.handlers.openai_chat import OpenAIHandler

            key, problem = openai_api_key(settings, env)
            return OpenAIHandler(
                base_url=settings.openai_base_url,
                model=settings.openai_model,
                api_key=key,
                api_key_error=problem,
                system_prompt=settings.openai_system_prompt,
                temperature=settings.openai_temperature,
                max_tokens=settings.openai_max_tokens,
                input_price=settings.openai_input_price,
                output_price=settings.openai_output_price,
            )
    raise ValueError(f"unknown handler kind {settings.kind!r}")
