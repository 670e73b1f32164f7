"""`SharedOpening`: one opening of a connection for all the coroutines that ask for it while it is under way.

A starting operator resumes its Workflows' runs all at once, and each asks for the queue and the runner (with
its checkpoint store) in the same loop turn. Each that found none opened its own: at 300 Workflows, 17
checkpoint stores and their Redis clients were opened and all but the last left open, their sockets closed
only when the cyclic collector got to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedOpening(Generic[T]):
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[T] | None = None

    async def join(self, open_: Callable[[], Awaitable[T]]) -> T:
        """The result of the opening under way, or of a new one made with `open_` when none is (the caller
        has decided that one is needed: whether the last one failed or not). A caller cancelled while it
        waits leaves the opening to the others."""
        if self._future is None or self._future.done():
            self._future = asyncio.ensure_future(open_())
        return await asyncio.shield(self._future)
