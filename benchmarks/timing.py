"""The one timing harness of the benchmarks: percentiles, summaries, interleaved timing.

:mod:`anystep.benchmarks.latency`, :mod:`~anystep.benchmarks.load` (and its
``load_*`` siblings) time in-process calls with these (medians side by side,
interleaved rounds so drift and contention hit every case alike);
:func:`calls_per_second` is the sustained rate of one call for a fixed wall time (for
processes that must run at the same time). Closed-loop HTTP load is
:mod:`anystep.benchmarks.loadgen`; where the time goes, :func:`profile_call`; how much CPU a
server's process tree used and waited for, :func:`cpu_seconds` / :func:`runqueue_seconds`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics.

    The same definition as ``numpy.percentile(values, q)`` (method ``"linear"``): with
    the sorted values ``v_0 <= ... <= v_{n-1}``, position ``h = (n - 1) q / 100`` and
    result ``v_floor(h) + (h - floor(h)) (v_ceil(h) - v_floor(h))``.

    Args:
        values: ``[n]`` finite numbers, ``n >= 1``.
        q: percentile in ``[0, 100]``.

    Returns:
        The percentile.

    Raises:
        ValueError: empty or non-finite values, or ``q`` outside ``[0, 100]``.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if v.size == 0:
        raise ValueError("percentile of no values: time at least one call")
    if not np.all(np.isfinite(v)):
        raise ValueError("percentile: values must be finite numbers")
    if not (0.0 <= float(q) <= 100.0):
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    h = (v.size - 1) * float(q) / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (h - lo) * (v[hi] - v[lo]))


@dataclass
class LatencyStats:
    """Summary of repeated wall-clock timings of one call, in milliseconds.

    Attributes:
        n: number of timed calls.
        median_ms: median (the 50th percentile).
        p95_ms: 95th percentile (linear interpolation; with few calls it is close to the max).
        mean_ms: mean.
        min_ms: fastest call.
        max_ms: slowest call.
    """

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


def summarize(seconds: Sequence[float] | np.ndarray) -> LatencyStats:
    """Median, p95, mean, min and max of timings given in seconds.

    Args:
        seconds: ``[n]`` wall-clock durations in seconds (``n >= 1``).

    Returns:
        :class:`LatencyStats` in milliseconds.
    """
    ms = np.asarray(seconds, dtype=np.float64).reshape(-1) * 1000.0
    return LatencyStats(
        n=int(ms.size),
        median_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are to be minimised.

    Point ``a`` dominates ``b`` if ``a <= b`` in both coordinates and ``a < b`` in at
    least one. Points with a non-finite coordinate are never on the front. Of several
    identical points, the first is kept.

    Args:
        points: ``[(latency, quality_loss), ...]``, e.g. ``(median ms, KL)``.

    Returns:
        Indices of the front, sorted by increasing first coordinate (so by
        decreasing second coordinate).
    """
    pts = [(float(x), float(y)) for x, y in points]
    order = sorted(
        (i for i, (x, y) in enumerate(pts) if math.isfinite(x) and math.isfinite(y)),
        key=lambda i: (pts[i][0], pts[i][1], i),
    )
    front: list[int] = []
    best_y = math.inf
    for i in order:
        if pts[i][1] < best_y:
            front.append(i)
            best_y = pts[i][1]
    return front


# --------------------------------------------------------------------------------------
# interleaved timing
# --------------------------------------------------------------------------------------


@dataclass
class TimingResult:
    """Timings of the methods of one interleaved run.

    Attributes:
        seconds: ``{key: [duration of each timed call]}``.
        outputs: ``{key: value returned by the last call}`` (e.g. the NFE).
        rounds: interleaved rounds run.
        calls_per_round: ``{key: calls per round}`` (fast methods run a block of calls).
        wall_s: wall time of the measurement (warm-up excluded).
        single_shot: keys whose first call took longer than ``max_call_s``: timed by
            that one call only (not warmed up, not interleaved).
    """

    seconds: dict[str, list[float]]
    outputs: dict[str, Any]
    rounds: int
    calls_per_round: dict[str, int]
    wall_s: float
    single_shot: list[str] = field(default_factory=list)


def interleaved_timing(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 10,
    min_rounds: int = 3,
    warmup: int = 2,
    block_s: float = 0.05,
    max_calls_per_block: int = 200,
    budget_s: float | None = None,
    max_call_s: float | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingResult:
    """Time several zero-argument callables side by side, interleaved, after a warm-up.

    Every method is first called ``warmup`` times (JIT/caches; the last warm-up call
    calibrates it). Then, ``rounds`` times, the methods run in a fresh random order,
    each as a block of ``calls`` back-to-back calls timed one by one, where
    ``calls = clamp(block_s / warm-up time, 1, max_calls_per_block)`` so fast and slow
    methods get comparable wall time per round. Load from other processes on the
    machine therefore hits every method alike (common noise), and a drift over the
    run shows up in all of them. Python's garbage collector is paused while timing.

    Args:
        fns: ``{key: callable}``; each call's return value is kept as ``outputs[key]``.
        rounds: interleaved rounds wanted.
        min_rounds: rounds run even when ``budget_s`` would allow fewer.
        warmup: untimed calls per method before measuring (>= 1).
        block_s: target wall time of one block.
        max_calls_per_block: cap on calls per block.
        budget_s: optional wall-time budget of the measurement; ``rounds`` is reduced
            (not below ``min_rounds``) to fit it, estimated from the warm-up.
        max_call_s: a method whose first call takes longer is not repeated: that call
            is its only timing (listed in ``single_shot``), so one very slow method
            cannot hold the run for minutes.
        seed: seed of the per-round orders.
        clock: monotonic clock in seconds (injectable for tests).

    Returns:
        :class:`TimingResult`.

    Raises:
        ValueError: no methods, or ``rounds`` / ``warmup`` below 1.
    """
    if not fns:
        raise ValueError("interleaved_timing needs at least one method")
    if rounds < 1 or warmup < 1 or min_rounds < 1:
        raise ValueError("rounds, min_rounds and warmup must be >= 1")
    all_keys = list(fns)
    outputs: dict[str, Any] = {}
    est: dict[str, float] = {}
    seconds: dict[str, list[float]] = {k: [] for k in all_keys}
    single: list[str] = []
    for k in all_keys:
        for w in range(warmup):
            t0 = clock()
            outputs[k] = fns[k]()
            est[k] = max(clock() - t0, 1e-7)
            if w == 0 and max_call_s is not None and est[k] > max_call_s:
                single.append(k)
                seconds[k].append(est[k])
                break
    keys = [k for k in all_keys if k not in single]
    calls = {k: int(min(max_calls_per_block, max(1, math.floor(block_s / est[k])))) for k in keys}
    per_round = sum(calls[k] * est[k] for k in keys)
    n_rounds = int(rounds)
    if budget_s is not None and per_round > 0:
        n_rounds = max(int(min_rounds), min(n_rounds, int(budget_s / per_round)))
    rng = np.random.default_rng(seed)
    gc_was_enabled = gc.isenabled()
    start = clock()
    try:
        for _ in range(n_rounds if keys else 0):
            gc.collect()
            gc.disable()
            for j in rng.permutation(len(keys)):
                k = keys[int(j)]
                fn, out = fns[k], seconds[k]
                for _ in range(calls[k]):
                    t0 = clock()
                    outputs[k] = fn()
                    out.append(clock() - t0)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimingResult(seconds=seconds, outputs=outputs, rounds=n_rounds, calls_per_round=calls,
                        wall_s=clock() - start, single_shot=single)


def calls_per_second(fn: Callable[[], Any], seconds: float, *, warmup: int = 1,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Back-to-back calls of ``fn`` for ``seconds`` of wall time: calls per second.

    For measurements that must overlap in time (several processes started together),
    where :func:`interleaved_timing`'s rounds do not apply.

    Args:
        fn: zero-argument call.
        seconds: wall time to keep calling (> 0); the last call may run past it.
        warmup: untimed calls first.
        clock: monotonic clock in seconds (injectable for tests).

    Returns:
        Completed calls divided by the elapsed time.

    Raises:
        ValueError: ``seconds <= 0`` or ``warmup < 0``.
    """
    if not seconds > 0 or warmup < 0:
        raise ValueError(f"seconds must be > 0 and warmup >= 0, got {seconds}, {warmup}")
    for _ in range(warmup):
        fn()
    calls, t0 = 0, clock()
    while clock() - t0 < seconds:
        fn()
        calls += 1
    return calls / (clock() - t0)


def profile_call(fn: Callable[[], Any], *, calls: int = 200, top: int = 12) -> dict[str, Any]:
    """Where the time of ``fn`` goes: torch profiler operator table and cProfile functions.

    Args:
        fn: zero-argument call to profile (run once untimed first).
        calls: calls profiled.
        top: rows kept per table.

    Returns:
        ``{"wall_ms_per_call", "torch_ops": [{"name", "self_cpu_us_per_call", "calls_per_call"}],
        "python": [{"function", "tottime_us_per_call", "cumtime_us_per_call"}]}``.
    """
    import cProfile
    import pstats
    from pathlib import Path

    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = (time.perf_counter() - t0) / calls
    out: dict[str, Any] = {"wall_ms_per_call": wall * 1000.0, "calls": calls}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out["torch_ops"] = [
            {"name": e.key, "self_cpu_us_per_call": e.self_cpu_time_total / calls, "calls_per_call": e.count / calls}
            for e in rows
        ]
        out["torch_self_cpu_us_per_call"] = sum(e.self_cpu_time_total for e in prof.key_averages()) / calls
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - profiler unavailable
        out["torch_ops_error"] = str(exc)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    st = pstats.Stats(pr)
    items = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # by tottime
    out["python"] = [
        {"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "tottime_us_per_call": v[2] / calls * 1e6,
         "cumtime_us_per_call": v[3] / calls * 1e6}
        for k, v in items
    ]
    return out


# --------------------------------------------------------------------------------------
# process CPU accounting (Linux /proc)
# --------------------------------------------------------------------------------------


def _process_tree(pid: int) -> tuple[set[int], dict[int, int]] | None:
    """``(pids of pid and its descendants, {pid: utime + stime ticks})`` from Linux ``/proc``, or None."""
    import os

    if not os.path.isdir("/proc"):
        return None
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        parent[int(name)] = int(fields[1])
        used[int(name)] = int(fields[11]) + int(fields[12])  # utime, stime
    if pid not in used:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        cur = frontier.pop()
        for child, ppid in parent.items():
            if ppid == cur and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree, used


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, seconds) used so far by process ``pid`` and all its descendants.

    Read from Linux ``/proc`` (``utime + stime`` of each process of the tree, children
    still running; exited children's time is not included); None where ``/proc`` is not
    available or ``pid`` is gone. The difference over a phase divided by its wall time is
    how many cores the server kept busy.
    """
    import os

    found = _process_tree(pid)
    if found is None:
        return None
    tree, used = found
    return sum(used[q] for q in tree) / os.sysconf("SC_CLK_TCK")


def runqueue_seconds(pid: int) -> float | None:
    """Time the threads of ``pid``'s process tree spent runnable but waiting for a CPU (seconds).

    Sum of the second field of ``/proc/<pid>/task/<tid>/schedstat`` (run-queue wait, ns)
    over every thread; None without ``/proc`` schedstat. Over a phase, a server that is
    slow because the machine is oversubscribed shows a large run-queue wait next to its
    CPU time; one that is slow because it waits (I/O, locks, sleeps) does not.
    """
    import os

    found = _process_tree(pid)
    if found is None:
        return None
    total = 0
    for q in found[0]:
        try:
            tids = os.listdir(f"/proc/{q}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{q}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9
