"""One watchdog per app for every running sampling request: deadlines and gone clients.

A request that runs past its deadline is stopped (503 ``timeout``); one whose client has
closed the connection is stopped too (499 ``client_closed``), so neither takes part in a
further engine tick. Instead of a timer per request, one timer per event loop sweeps
every watched request at most every ``poll_s`` seconds (earlier when a deadline is
nearer): per request the hot path only adds and removes a dictionary entry, and the
loop wakes up only while requests are in flight and at most ``1 / poll_s`` times a
second. A request younger than ``poll_s`` is never asked whether its client is still
there (most requests finish long before).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DISCONNECT_POLL_S = 0.2
"""How often a running request checks whether its client is still there."""

__all__ = ["DISCONNECT_POLL_S", "Watch", "Watchdog"]


@dataclass(eq=False)
class Watch:
    """One watched request.

    Attributes:
        fut: the job's future (done: the entry is dropped at the next sweep).
        deadline: ``loop.time()`` after which the request is stopped.
        since: ``loop.time()`` when the watch began.
        is_disconnected: ``async () -> bool``, e.g. starlette's ``request.is_disconnected``.
        stop: called once, on the event loop, to stop the job (e.g. ``scheduler.cancel(job)``).
        why: ``"timeout"`` or ``"client"`` once the watchdog stopped the request, else None.
    """

    fut: asyncio.Future
    deadline: float
    since: float
    is_disconnected: Callable[[], Any]
    stop: Callable[[], None]
    why: str | None = None
    checking: bool = field(default=False, repr=False)


class Watchdog:
    """Deadlines and client checks of every running request of one app, on one timer.

    Args:
        poll_s: most seconds between two sweeps while requests are in flight (and the age
            at which a request's client is first checked).
    """

    def __init__(self, poll_s: float = DISCONNECT_POLL_S) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.poll_s = float(poll_s)
        self._watched: dict[int, Watch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf
        self.sweeps = 0
        """Sweeps run so far (tests)."""

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, fut: asyncio.Future, timeout_s: float, is_disconnected: Callable[[], Any],
              stop: Callable[[], None]) -> Watch:
        """Watch a running request until :meth:`unwatch` (call it in a ``finally``).

        Args:
            fut: the job's future.
            timeout_s: seconds from now until the request is stopped.
            is_disconnected: ``async () -> bool``: whether the client has gone.
            stop: stops the job (called at most once, on the event loop).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests start several): timers of the old one are void
            self._loop, self._timer, self._due = loop, None, math.inf
        now = loop.time()
        w = Watch(fut=fut, deadline=now + timeout_s, since=now, is_disconnected=is_disconnected, stop=stop)
        self._watched[id(w)] = w
        due = min(now + self.poll_s, w.deadline)
        if due < self._due:  # steady state: a sweep is already due sooner, nothing to arm
            self._arm(due)
        return w

    def unwatch(self, w: Watch) -> None:
        """Stop watching ``w`` (the timer stays armed; an empty sweep does not re-arm it)."""
        self._watched.pop(id(w), None)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = due
        self._timer = self._loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        self._timer, self._due = None, math.inf
        self.sweeps += 1
        loop = self._loop
        now = loop.time()
        nxt = math.inf
        for w in list(self._watched.values()):
            if w.fut.done() or w.why is not None:
                continue
            if now >= w.deadline:
                self._stop(w, "timeout")
                continue
            if now - w.since >= self.poll_s and not w.checking:
                w.checking = True
                loop.create_task(self._check_client(w))
            nxt = min(nxt, w.deadline)
        if self._watched:
            self._arm(min(now + self.poll_s, nxt))

    def _stop(self, w: Watch, why: str) -> None:
        w.why = why
        w.stop()

    async def _check_client(self, w: Watch) -> None:
        try:
            gone = not w.fut.done() and w.why is None and await w.is_disconnected()
            if gone and not w.fut.done() and w.why is None:  # it may have finished while we asked
                self._stop(w, "client")
        finally:
            w.checking = False
