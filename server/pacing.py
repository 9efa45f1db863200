"""Pacing of the step scheduler: its online engine cost model and the app-wide foreground gate.

* :class:`CostModel` -- ``cost(B) ~ a + b B`` seconds per engine call, seeded at warm-up and
  refit online (latency budgets, ``Retry-After``, the ``auto`` executor's choice);
* :class:`Foreground` -- the sampling requests in flight, so that ticks of adaptive (dopri5)
  jobs only yield the GIL and the CPU to fixed-step requests instead of delaying them.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np


class CostModel:
    """Online estimate of one engine call's wall time, ``cost(B) ~ a + b B`` seconds.

    Seeded by warm-up timings and refit on the most recent engine calls.

    Args:
        window: number of recent observations kept.
    """

    def __init__(self, window: int = 256) -> None:
        self._obs: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)
        self._warm: list[tuple[int, float]] = []
        self._count = 0
        self.refit_every = 256  # a refit is ~50 us of numpy: keep it rare on the tick path
        self.a = 1e-3
        self.b = 1e-5

    def seed(self, points: Sequence[tuple[int, float]]) -> None:
        """Set the warm-up points (kept besides the rolling window)."""
        self._warm = [(int(b), float(s)) for b, s in points]
        self._fit()

    def observe(self, batch: int, seconds: float) -> None:
        """Record one engine call (the line is refit every ``refit_every`` calls)."""
        self._obs.append((int(batch), float(seconds)))
        self._count += 1
        if self._count % self.refit_every == 0:  # not len(deque): once full, that is a refit every tick
            self._fit()

    def _fit(self) -> None:
        pts = self._warm + list(self._obs)
        if not pts:
            return
        # robust to CPU contention: median time per power-of-two batch bucket, then a line fit
        bt = np.array(pts, dtype=np.float64)
        bucket = np.frexp(np.maximum(bt[:, 0], 1.0))[1]  # floor(log2 B) + 1
        B, T = _group_medians(bucket, bt[:, 0]), _group_medians(bucket, bt[:, 1])
        if B.size == 1:
            a, b = 0.5 * T[0], 0.5 * T[0] / max(B[0], 1.0)
        else:
            dB = B - B.mean()  # least squares (what np.polyfit(B, T, 1) solves, without its lstsq)
            b = float(dB @ (T - T.mean()) / (dB @ dB))
            a = float(T.mean()) - b * float(B.mean())
            if b <= 0:  # flat (overhead-bound) or noisy: all cost in the intercept
                a, b = float(np.median(T)), 0.0
        self.a = float(max(a, 1e-6))
        self.b = float(max(b, 1e-9))

    def call_seconds(self, batch: int) -> float:
        """Estimated seconds of one engine call on ``batch`` rows."""
        return self.a + self.b * max(1, int(batch))

    def request_seconds(self, n: int, nfe: int, max_batch: int) -> float:
        """Estimated compute seconds of a job of ``n`` samples with ``nfe`` evaluations each."""
        chunks = math.ceil(n / max(1, max_batch))
        return nfe * chunks * self.call_seconds(min(n, max_batch))


def _group_medians(key: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The median of ``v`` over each value of ``key`` (ascending keys), without a Python loop over groups."""
    order = np.lexsort((v, key))
    ks, vs = key[order], v[order]
    starts = np.flatnonzero(np.concatenate(([True], ks[1:] != ks[:-1])))
    counts = np.diff(np.append(starts, ks.size))
    return 0.5 * (vs[starts + (counts - 1) // 2] + vs[starts + counts // 2])


ADAPTIVE_MAX_DEFER_S = 0.01
"""Longest an adaptive-only tick waits for the foreground to go idle (its solve still advances)."""


ADAPTIVE_SHARE = 0.25
"""Most of the wall time adaptive-only ticks take while fixed-step traffic is recent."""
FOREGROUND_RECENT_S = 0.05
"""How long after the last sampling request the foreground still counts as active."""


def adaptive_pause(tick_seconds: float, share: float = ADAPTIVE_SHARE, cap: float = ADAPTIVE_MAX_DEFER_S) -> float:
    """Seconds to pause after an adaptive-only tick of ``tick_seconds`` to use at most ``share`` of the time."""
    return min(cap, max(0.0, tick_seconds) * (1.0 / share - 1.0))


class Foreground:
    """Latency-sensitive requests in flight, app-wide: adaptive solves yield to them.

    The front door counts the sampling requests in flight (:meth:`enter` / :meth:`leave`),
    the schedulers the adaptive (dopri5) jobs among them (:meth:`adaptive_started`, until
    their future is done). While more requests than adaptive jobs are in flight, a tick
    thread whose live jobs are all adaptive waits (:meth:`wait_idle`, at most
    ``ADAPTIVE_MAX_DEFER_S`` per phase) before taking the GIL for its Python work, so a
    long dopri5 solve does not delay fixed-step requests to any model; it advances in the
    gaps between them, and at least one phase every ``ADAPTIVE_MAX_DEFER_S`` under
    sustained load. While fixed-step traffic is recent (:meth:`recently_busy`), the tick
    thread also paces itself to at most ``ADAPTIVE_SHARE`` of the wall time
    (:func:`adaptive_pause` after each tick): on a machine with few cores the solve's
    engine calls then leave the CPU to the requests too. The counters are written on the
    event loop only.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.adaptive = 0
        self.last_seen = 0.0
        self._waiting = 0
        self._idle = threading.Condition(threading.Lock())

    @property
    def busy(self) -> bool:
        return self.requests > self.adaptive

    def enter(self) -> None:
        self.requests += 1
        self.last_seen = time.monotonic()

    def leave(self) -> None:
        self.requests -= 1
        self.last_seen = time.monotonic()
        if self._waiting and not self.busy:
            with self._idle:
                self._idle.notify_all()

    def adaptive_started(self, fut: asyncio.Future) -> None:
        self.adaptive += 1
        fut.add_done_callback(self._adaptive_done)

    def _adaptive_done(self, _fut: asyncio.Future) -> None:
        self.adaptive -= 1

    def recently_busy(self, window_s: float = FOREGROUND_RECENT_S) -> bool:
        """Busy now, or a sampling request started or ended within ``window_s`` seconds."""
        return self.busy or time.monotonic() - self.last_seen < window_s

    def wait_idle(self, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """Block (GIL released) until nothing latency-sensitive is in flight, ``until()`` holds
        (checked when :meth:`kick` wakes the waiters), or ``timeout``; True when not timed out."""
        with self._idle:
            self._waiting += 1
            try:
                return self._idle.wait_for(lambda: not self.busy or (until is not None and until()), timeout)
            finally:
                self._waiting -= 1

    def kick(self) -> None:
        """Wake the waiters of :meth:`wait_idle` to re-check (e.g. a fixed-step job joined their scheduler)."""
        if self._waiting:
            with self._idle:
                self._idle.notify_all()
