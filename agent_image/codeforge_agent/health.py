"""The agent's one HTTP port: /healthz (the process is alive), /readyz (it reaches the queue), /metrics."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from codeforge.queue import QueueError
from codeforge_agent.execution import TRANSIENT_ERRORS
from codeforge_agent.loop import Agent

PING_TIMEOUT = 1.0
PING_ERRORS: tuple[type[BaseException], ...] = (QueueError, *TRANSIENT_ERRORS)


class AgentProbe:
    """What the endpoints look at: the agent once the queue is connected, None before."""

    agent: Agent | None = None


def build_app(probe: AgentProbe) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        agent = probe.agent
        if agent is None:  # alive while still connecting: a restart would not make Redis come up sooner
            return web.json_response({"status": "ok", "state": "connecting", "in_flight": 0})
        return web.json_response({"status": "ok", "state": agent.state, "in_flight": agent.in_flight})

    async def readyz(_: web.Request) -> web.Response:
        agent = probe.agent
        if agent is None:
            return web.json_response({"status": "connecting"}, status=503)
        if agent.draining:
            return web.json_response({"status": "draining"}, status=503)
        try:
            await asyncio.wait_for(agent.queue.ping(), PING_TIMEOUT)
        except PING_ERRORS as exc:
            return web.json_response({"status": "queue unreachable", "error": str(exc)}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(probe.agent.metrics.registry) if probe.agent else b""
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class HealthServer:
    """Serves the endpoints on host:port (port 0 picks a free one; `port` tells which).

    It starts before the queue connection so the liveness probe passes while Redis is still coming up;
    `attach(agent)` connects it to the agent once there is one.
    """

    def __init__(self, host: str, port: int, agent: Agent | None = None) -> None:
        self.probe = AgentProbe()
        self.probe.agent = agent
        self._runner = web.AppRunner(build_app(self.probe), access_log=None)
        self.host = host
        self.port = port

    def attach(self, agent: Agent) -> None:
        self.probe.agent = agent

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound sockets
        sockets: list[socket.socket] = list(getattr(server, "sockets", None) or [])
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self._runner.cleanup()
