"""Batched, rate-limited status writes for running Workflows, and their step-transition Events.

Progress events arrive far faster than etcd should be written (a fan-out of 50 parts emits 100+ events in a
second). Runs only update their in-memory `WorkflowTracker`; one writer task per operator sends the latest
rendered status of each changed Workflow:

- at most one status patch per Workflow per `interval` (CODEFORGE_WORKFLOW_STATUS_INTERVAL, default 2 s);
  a final status (Succeeded, Failed, Cancelled) is written at once (`flush`);
- at most `writes_per_second` patches in total (CODEFORGE_STATUS_WRITES_PER_SECOND, default 20), a token
  bucket shared by every Workflow, oldest-written first, so 200 busy Workflows do not flood the API server;
  up to `WRITES_IN_FLIGHT` patches (of different Workflows) at once, so the API server's latency does not
  bound the rate below the cap;
- unchanged statuses are not written at all;
- the step transitions gathered since the last write are posted as Kubernetes Events with it, at most
  `EVENTS_PER_WRITE` per write (the rest are summed up in one Event); a step's routine start and success
  (`ROUTINE_STEP_REASONS`) only with `step_events` (CODEFORGE_WORKFLOW_STEP_EVENTS): at thousands of
  Workflows they would be most of the operator's API requests, and status.steps shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.controller.kstatus import EventType, KubeEvent, ObjectRef
from codeforge.controller.kube import KubeApiError, NotFoundError
from codeforge.controller.workflow import metrics as workflow_metrics
from codeforge.controller.workflow.tracker import ROUTINE_STEP_REASONS, WorkflowTracker
from codeforge.orchestrator.flag import Flag

JSON = dict[str, Any]
EVENTS_PER_WRITE: Final = 5
#: Status patches in flight at once (each Workflow still has at most one; the token bucket still paces them).
WRITES_IN_FLIGHT: Final = 8
logger = logging.getLogger(__name__)


#: Sends `{"status": ...}` as a merge patch to the Workflow's status subresource.
PatchStatus = Callable[[ObjectRef, JSON], Awaitable[None]]
#: Posts one Kubernetes Event on the Workflow (type, reason, message).
PostEvent = Callable[[ObjectRef, KubeEvent], None]


class TokenBucket:
    """`rate` acquisitions per second on average, bursts up to `rate`."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        self._refill()
        while self._tokens < 1.0:
            await asyncio.sleep((1.0 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1.0


@dataclass
class _Entry:
    ref: ObjectRef
    tracker: WorkflowTracker
    written_version: int = -1
    written_at: float = float("-inf")
    written: JSON | None = None
    urgent: bool = False
    flushed: Flag = field(default_factory=Flag)
    marker: Callable[[], None] | None = None  # the tracker's on_change set by `track`
    released: bool = False  # the run ended: untracked once its last status is written


class StatusWriter:
    def __init__(
        self,
        patch: PatchStatus,
        post: PostEvent | None = None,
        *,
        interval: float = 2.0,
        writes_per_second: float = 20.0,
        step_events: bool = False,
    ) -> None:
        self._patch = patch
        self._post = post
        self.step_events = step_events
        self.interval = interval
        self.bucket = TokenBucket(writes_per_second)
        self._entries: dict[str, _Entry] = {}
        self._dirty: dict[str, None] = {}  # uids changed since written (insertion-ordered set)
        self._planned = float("-inf")  # when the loop wakes next by itself (-inf: it is writing)
        self._wake = asyncio.Event()
        self.writes = 0  # patches sent, for tests and the benchmark

    def track(self, ref: ObjectRef, tracker: WorkflowTracker) -> None:
        entry = _Entry(ref, tracker)
        self._entries[ref.uid] = entry
        entry.marker = tracker.on_change = functools.partial(self._mark, ref.uid)
        self._mark(ref.uid)

    def untrack(self, uid: str) -> None:
        entry = self._entries.pop(uid, None)
        self._dirty.pop(uid, None)
        if entry is not None and entry.tracker.on_change is entry.marker:
            entry.tracker.on_change = None

    def release(self, uid: str) -> None:
        """The run ended: stop tracking it once its last status is written (at once if it is). A final
        status is never dropped because the writer is behind (the cap queues thousands at 10,000 runs)."""
        entry = self._entries.get(uid)
        if entry is None:
            return
        if not self._is_dirty(entry):
            self.untrack(uid)
            return
        entry.released = entry.urgent = True
        self._dirty[uid] = None
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Shutdown, with the loop stopped: write every changed status now (still under the cap), in this
        task (Kopf may have cancelled the loop's); False if some were left."""
        for entry in self._pending():
            entry.urgent = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.write_due(), timeout)
        return not self._pending()

    def changed(self) -> None:
        """Something may have changed in any tracker: look at them all (trackers report their own changes
        through `_mark`, which costs nothing per Workflow)."""
        self._dirty.update(dict.fromkeys(self._entries))
        self._wake.set()

    def _mark(self, uid: str) -> None:
        """A tracker changed: remember it; wake the loop only if it is due before the loop's planned wake
        (so 400 changes per second do not make the loop rescan 10,000 Workflows 400 times a second)."""
        entry = self._entries.get(uid)
        if entry is None or uid in self._dirty:
            return
        self._dirty[uid] = None
        if entry.written_at + self.interval < self._planned:
            self._wake.set()

    async def flush(self, uid: str, timeout: float = 30.0) -> bool:
        """Write this Workflow's status now (still under the global cap); False if it could not be written."""
        entry = self._entries.get(uid)
        if entry is None:
            return False
        if entry.tracker.version == entry.written_version and not entry.tracker.transitions:
            return True
        entry.urgent = True
        entry.flushed.clear()
        self._dirty[uid] = None
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(entry.flushed.wait(), timeout)
        return entry.tracker.version == entry.written_version

    async def run(self) -> None:
        """The writer loop; runs until cancelled (operator cleanup)."""
        while True:
            delay = self._next_delay()
            self._planned = float("inf") if delay is None else time.monotonic() + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # Python 3.11's wait_for loses a cancellation that races the wake-up: honour it here, or the
                # operator's cleanup waits on this loop forever.
                raise asyncio.CancelledError
            self._planned = float("-inf")  # writing: every change wakes the next round
            self._wake.clear()
            await self.write_due()

    def _is_dirty(self, entry: _Entry) -> bool:
        return entry.tracker.version != entry.written_version or bool(entry.tracker.transitions)

    def _pending(self) -> list[_Entry]:
        """The changed entries (only those: the loop never scans every tracked Workflow)."""
        pending = []
        for uid in list(self._dirty):
            entry = self._entries.get(uid)
            if entry is not None and self._is_dirty(entry):
                pending.append(entry)
            else:
                del self._dirty[uid]
        return pending

    def _next_delay(self) -> float | None:
        now = time.monotonic()
        waits = [max(e.written_at + self.interval - now, 0.0) for e in self._pending()]
        return min(waits) if waits else None

    async def write_due(self) -> int:
        """Write every Workflow whose status changed and whose interval passed; returns the count."""
        now = time.monotonic()
        due = [e for e in self._pending() if e.urgent or now - e.written_at >= self.interval]
        due.sort(key=lambda e: (not e.urgent, e.written_at))
        queue = iter(due)

        async def writer() -> None:
            for entry in queue:
                await self.bucket.acquire()
                await self._write(entry)

        # A few patches in flight: one at a time, the API server's round trip (not the cap) bounded the
        # writes (12-14 per second with 1,000-3,000 Workflows against a cap of 20; 18 with 8 in flight).
        async with asyncio.TaskGroup() as group:
            for _ in range(min(WRITES_IN_FLIGHT, len(due))):
                group.create_task(writer())
        return len(due)

    async def _write(self, entry: _Entry) -> None:
        version = entry.tracker.version
        status = entry.tracker.render()
        transitions = entry.tracker.take_transitions()
        try:
            if status != entry.written:
                await self._patch(entry.ref, {"status": status})
                self.writes += 1
        except NotFoundError:
            self.untrack(entry.ref.uid)  # deleted meanwhile
            entry.flushed.set()
            return
        except (TimeoutError, KubeApiError, OSError) as exc:
            # Kept dirty: the next round writes the then-latest status.
            logger.warning("status of Workflow %s not written, will retry: %s", entry.ref.key, exc)
            entry.tracker.transitions[:0] = transitions
            entry.written_at = time.monotonic()
            return
        entry.written, entry.written_version, entry.written_at = status, version, time.monotonic()
        workflow_metrics.observe_phase(entry.ref.uid, status.get("phase"))
        entry.urgent = False
        if not self._is_dirty(entry):
            self._dirty.pop(entry.ref.uid, None)
            if entry.released:
                self.untrack(entry.ref.uid)
        entry.flushed.set()
        self._post_events(entry.ref, transitions)

    def _post_events(self, ref: ObjectRef, transitions: list[KubeEvent]) -> None:
        if self._post is None:
            return
        if not self.step_events:
            transitions = [t for t in transitions if t.reason not in ROUTINE_STEP_REASONS]
        if not transitions:
            return
        shown = transitions
        if len(transitions) > EVENTS_PER_WRITE:
            # Keep the first ones and the latest (often the Workflow's own ending); sum up the middle.
            middle = transitions[EVENTS_PER_WRITE - 2 : -1]
            summary = KubeEvent(
                EventType.NORMAL,
                "StepTransitions",
                f"{len(middle)} more step transitions, the last: {middle[-1].message}",
            )
            shown = [*transitions[: EVENTS_PER_WRITE - 2], summary, transitions[-1]]
        for transition in shown:
            try:
                self._post(ref, transition)
            except Exception as exc:  # Events are informative: never let one break the status loop
                logger.warning("event on Workflow %s not posted: %s", ref.key, exc)
