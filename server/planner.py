"""The pure planner of step-level batching: which samples advance this tick, with which times.

Given the queue (oldest job first), :func:`share_rows` splits the ``max_batch`` rows of
one engine call max-min fairly over the jobs (every job with live samples gets at
least one row while rows last, no job more than it needs), so one large or slow
request -- a 256-sample dopri5 solve, say -- cannot starve the others: they advance
every tick. :func:`plan_tick` turns that split into a :class:`TickPlan` of per-job row
selections and the fused engine inputs ``(x, s, t)``, padded up to a fixed batch
bucket (:func:`bucket_size`) so the engine only ever sees a few batch sizes (bounded
kernel caches; the padding rows are copies of the first row and are discarded).

Jobs submitted with a :class:`~.jobs.SeededBase` get their start states from
:func:`draw_bases`, one vectorised draw for all jobs starting in a tick.

No threads and no engine here: the executor (:mod:`.scheduler`) calls :func:`draw_bases` and
:func:`plan_tick`, makes one engine call, and hands the outputs back with :func:`apply_outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .jobs import Job, SchedulerError, advance, stage_inputs


def draw_bases(jobs: Sequence[Job], draw: Callable[[np.ndarray], np.ndarray] | None) -> int:
    """Draw the start states of every job whose base is not drawn yet, in ONE call of ``draw``.

    Job ``j`` with :class:`~.jobs.SeededBase` ``(seed_j, n_j)`` gets rows
    ``draw(seeds)[o_j : o_j + n_j]`` of the concatenated seeds ``seed_j + 0 .. n_j - 1``
    (built with O(1) numpy calls, whatever the number of jobs), so a sample's start state
    depends on its seed only. A failing ``draw`` fails those jobs (``job.error``).

    Args:
        jobs: queued jobs (those without a pending base are skipped).
        draw: ``[m] int64 seeds -> [m, *shape]`` float32 rows (None: no base sampler).

    Returns:
        The number of jobs that had a pending base (drawn, or failed).
    """
    pending = [j for j in jobs if j.base is not None and j.error is None]
    if not pending:
        return 0
    if len(pending) == 1:  # one job starting (a lone request): its seeds directly
        base = pending[0].base
        ends_l, counts_l = [base.n], [base.n]
        seeds = np.arange(base.seed, base.seed + base.n, dtype=np.int64)
    else:
        counts = np.fromiter((j.base.n for j in pending), dtype=np.int64, count=len(pending))
        starts = np.fromiter((j.base.seed for j in pending), dtype=np.int64, count=len(pending))
        ends = np.cumsum(counts)
        seeds = np.repeat(starts - (ends - counts), counts) + np.arange(int(ends[-1]), dtype=np.int64)
        ends_l, counts_l = ends.tolist(), counts.tolist()
    try:
        if draw is None:
            raise SchedulerError("this scheduler has no base sampler: give the job its start states x")
        rows = draw(seeds)
        if rows.shape[0] != seeds.size:
            raise SchedulerError(f"the base sampler returned {rows.shape[0]} rows for {seeds.size} seeds")
    except Exception as e:  # noqa: BLE001 - the jobs fail, not the tick
        for j in pending:
            j.error = e if isinstance(e, SchedulerError) else SchedulerError(f"drawing base samples failed: {e}")
        return len(pending)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    for j, end, n in zip(pending, ends_l, counts_l):
        if rows.shape[1:] != j.x.shape[1:]:
            j.error = SchedulerError(f"base samples have shape {list(rows.shape[1:])}, the job {list(j.x.shape[1:])}")
        else:
            j.x = rows[end - n : end]  # disjoint views of one array: each job updates only its own rows
        j.base = None
    return len(pending)


def share_rows(live: Sequence[int], max_batch: int, batching: bool = True) -> list[int]:
    """Rows each job gets this tick (max-min fair; oldest first when rows are scarce).

    Args:
        live: live samples of each job, oldest job first.
        max_batch: rows of one engine call.
        batching: False serves the oldest job with live samples only.

    Returns:
        ``rows[i] <= live[i]`` with ``sum(rows) <= max_batch``.
    """
    want = [max(0, int(v)) for v in live]
    if batching and sum(want) <= max_batch:  # every live sample fits (a lone request, light load)
        return want
    rows = [0] * len(live)
    if not batching:
        for i, w in enumerate(want):
            if w:
                rows[i] = min(w, max_batch)
                break
        return rows
    left = int(max_batch)
    active = [i for i, w in enumerate(want) if w]
    while left > 0 and active:
        share = left // len(active)
        if share == 0:  # fewer rows than jobs: one row each to the oldest
            for i in active[:left]:
                rows[i] += 1
            break
        nxt = []
        for i in active:
            give = min(share, want[i] - rows[i])
            rows[i] += give
            left -= give
            if rows[i] < want[i]:
                nxt.append(i)
        if len(nxt) == len(active):  # everyone took a full share: spread the remainder
            for i in nxt[:left]:
                rows[i] += 1
            break
        active = nxt
    return rows


def bucket_size(rows: int, max_batch: int) -> int:
    """The padded batch size of ``rows``: the next power of two, capped at ``max_batch``."""
    if rows <= 1:
        return 1
    return min(int(max_batch), 1 << (int(rows) - 1).bit_length())


def bucket_sizes(max_batch: int) -> list[int]:
    """Every size :func:`bucket_size` can return (what warm-up should run)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(int(max_batch))
    return out


@dataclass
class TickPlan:
    """One engine call: the samples it advances and its (padded) inputs.

    Attributes:
        jobs: ``(job, sample indices)`` in batch order.
        x: ``[B, *shape]`` float32 inputs (``B`` a bucket size, ``rows <= B``).
        s: ``[B]`` float32 start times (flow maps) or None.
        t: ``[B]`` float32 end / evaluation times.
        rows: real rows (the rest is padding).
        cond: extra per-row engine inputs (the jobs' ``cond``), padded like ``x``.
    """

    jobs: list[tuple[Job, np.ndarray]] = field(default_factory=list)
    x: np.ndarray | None = None
    s: np.ndarray | None = None
    t: np.ndarray | None = None
    rows: int = 0
    cond: dict[str, np.ndarray] = field(default_factory=dict)


def _pad(a: np.ndarray, extra: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], extra, axis=0)]) if extra else a


def plan_tick(
    jobs: Sequence[Job], max_batch: int, *, flowmap: bool, batching: bool = True, pad: bool = True
) -> TickPlan:
    """Plan the next engine call over ``jobs`` (oldest first); empty when nothing is live.

    Args:
        jobs: unfinished, uncancelled jobs in submission order.
        max_batch: rows of one engine call.
        flowmap: the engine takes ``(x, s, t)``; else ``(x, t)``.
        batching: fuse jobs (False: the oldest job only).
        pad: pad to a bucket size (:func:`bucket_size`).
    """
    lives, sizes, keys = [], [], None
    for job in jobs:
        lv = job.live()
        m = lv.size
        if m:  # one engine call takes one set of conditioning inputs: jobs with other keys wait a tick
            if keys is None:
                keys = job.cond.keys()
            elif job.cond.keys() != keys:
                m = 0
        lives.append(lv)
        sizes.append(m)
    if keys is None:
        return TickPlan()
    chosen, xs, ss, ts = [], [], [], []
    for job, lv, r in zip(jobs, lives, share_rows(sizes, max_batch, batching)):
        if r:
            idx = lv if r == lv.size else lv[:r]  # lv itself may be job.every (a job in lockstep: no gathers)
            x_in, s_in, t_in = stage_inputs(job, idx)
            chosen.append((job, idx))
            xs.append(x_in)
            ss.append(s_in)
            ts.append(t_in)
    if len(xs) == 1:
        x, s, t = xs[0], ss[0], ts[0]
    else:
        x, s, t = np.concatenate(xs), np.concatenate(ss), np.concatenate(ts)
    rows = len(x)
    extra = (bucket_size(rows, max_batch) if pad else rows) - rows
    if extra:
        x, s, t = _pad(x, extra), _pad(s, extra), _pad(t, extra)
    cond = {k: _pad(np.concatenate([j.cond[k][idx] for j, idx in chosen]), extra) for k in sorted(keys)} if keys else {}
    return TickPlan(jobs=chosen, x=x, s=s if flowmap else None, t=t, rows=rows, cond=cond)


def apply_outputs(plan: TickPlan, y: np.ndarray) -> None:
    """Hand the engine's outputs of a tick back to its jobs (padding rows are dropped)."""
    offset = 0
    for job, idx in plan.jobs:
        advance(job, idx, y[offset : offset + idx.size])
        offset += idx.size
