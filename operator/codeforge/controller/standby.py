"""The liveness endpoint of a standby operator (leader election on, the Lease held by another replica).

Kopf serves `--liveness` only once it runs; a standby waits in its startup handler before that, so this
small server answers the kubelet meanwhile (with the current holder), and is closed before Kopf binds the
same address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp.web


def liveness_endpoint(env: Mapping[str, str], argv: Sequence[str]) -> str | None:
    """Where Kopf will serve its liveness probe, so a standby serves the same one: CODEFORGE_LIVENESS_ENDPOINT
    (`codeforge operator` and the chart set it), else `--liveness` of `kopf run` (the image's entrypoint)."""
    if "CODEFORGE_LIVENESS_ENDPOINT" in env:
        raw = env["CODEFORGE_LIVENESS_ENDPOINT"].strip()
        return None if raw.lower() in ("", "off") else raw
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith("--liveness="):
            found = arg.partition("=")[2]
        elif arg == "--liveness" and i + 1 < len(argv):
            found = argv[i + 1]
    return found or None


class StandbyProbe:
    """The liveness endpoint while this replica stands by; closed before Kopf binds the same address."""

    def __init__(self, endpoint: str, holder: Callable[[], str]) -> None:
        parts = urlsplit(endpoint)
        self.host = parts.hostname or "0.0.0.0"  # the kubelet probes the pod's address
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._holder = holder
        self._runner: aiohttp.web.AppRunner | None = None

    async def _get(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"leader": False, "holder": self._holder()})

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get(self.path, self._get)
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)  # probes: no log
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
