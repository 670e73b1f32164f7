"""Lua scripts run by SHA, sent in full once when a server does not know them yet (NOSCRIPT)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors


class Script:
    """One Lua script: its source and SHA1, and `run` with the NOSCRIPT fallback."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def from_package(cls, package: str, name: str, *, prelude: str = "") -> Script:
        """`lua/<name>.lua` beside `package`, with the file `lua/<prelude>.lua` prepended if named."""
        folder = resources.files(package) / "lua"
        source = (folder / f"{name}.lua").read_text()
        if prelude:
            source = (folder / f"{prelude}.lua").read_text() + "\n" + source
        return cls(name, source)

    async def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """EVALSHA, or EVAL on a NOSCRIPT reply (a restarted or newly promoted node lost its cache)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
