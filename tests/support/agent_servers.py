"""Local HTTP servers for the http and openai handler tests (nothing leaves the host)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve an app on a free local port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def task_service(recorded: Recorded) -> web.Application:
    """A "microservice agent": /run answers with the payload reversed; /status/<code> answers that code."""

    async def run(request: web.Request) -> web.Response:
        body = await request.json()
        recorded.requests.append(body)
        recorded.headers.append(dict(request.headers))
        return web.json_response({"reversed": str(body["payload"]["text"])[::-1]})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code} on purpose", headers={"Retry-After": "2"})

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>")

    app = web.Application()
    app.router.add_post("/run", run)
    app.router.add_post("/status/{code}", status)
    app.router.add_post("/text", text)
    return app


def fake_openai(recorded: Recorded, api_key: str = "sk-test") -> web.Application:
    """An OpenAI-compatible /v1/chat/completions that echoes the last user message, upper-cased."""

    async def completions(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        body = await request.json()
        recorded.requests.append(body)
        last = body["messages"][-1]["content"]
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": last.upper()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


def dumps(value: Any) -> str:
    return json.dumps(value)
