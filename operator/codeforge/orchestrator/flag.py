"""`Flag`: asyncio.Event's interface at a fifteenth of its memory, for the events every run holds.

An asyncio.Event allocates its waiters' deque up front: ~0.86 KiB an event (tracemalloc), and a run held
about ten (its handle, budget ledger, approvals, Stop gate, dispatch context, the operator's registry entry
and status entry), ~85 MiB at 10,000 Workflows, nearly all of them never waited on. A `Flag` is ~56 bytes
and makes its waiters' list only when something waits.
"""

from __future__ import annotations

import asyncio
from typing import Literal


class Flag:
    """Set or clear; `wait()` returns once it is set (at once if it is). Same semantics as asyncio.Event: a
    waiter woken by `set()` returns True even if the flag is cleared again before it runs."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None

    def __repr__(self) -> str:
        waiting = len(self._waiters or ())
        return f"<Flag {'set' if self._value else 'unset'}{f' waiters:{waiting}' if waiting else ''}>"
