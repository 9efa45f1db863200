"""A request's samples as per-sample solver state, advanced one engine evaluation at a time.

A :class:`Job` holds ``n`` samples, each with its own state ``x``, time, step size,
Runge-Kutta stage and evaluation count. :func:`stage_inputs` gives the engine inputs
of selected samples for their current stage and :func:`advance` consumes the engine's
outputs, so every method -- flow-map jumps, Euler/Heun/RK4 and adaptive dopri5 -- is
staged the same way and can share engine calls with any other job (step-level
batching). Stages come from :data:`anystep.core.tableaux.TABLEAUX`:

* flow maps: ``x <- X_{t_k, t_{k+1}}(x)`` along the grid (eq. 3.6; a decreasing grid
  runs the inverse map);
* fixed-step RK of step ``h = t_{k+1} - t_k``: stage ``j`` evaluates
  ``k_j = b(x + h sum_l A_jl k_l, t_k + c_j h)``; after the last stage
  ``x <- x + h sum_j b_j k_j``;
* dopri5: the same stages with the sample's own ``(t, h)``; after stage 7 the scaled
  RMS error accepts or rejects the step and the controller
  (:data:`~anystep.core.tableaux.DOPRI5`) resizes ``h``; FSAL reuses ``k_7`` as the next
  ``k_1``. A sample that would exceed ``max_nfe`` evaluations fails the job.

Everything here is row-wise, so a sample's result depends only on its own inputs. A
flow-map job whose samples all advance together keeps their common step as one int
(:attr:`Job.at`) until something splits them: a tick of it is then the engine call and
one copy of its output, with no per-sample bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from anystep.core.tableaux import DEFAULT_MAX_NFE, DOPRI5, TABLEAUX
from anystep.errors import AnystepError

from .grid_cache import grid_arrays

METHODS = ("flowmap", *TABLEAUX)
_C = {name: np.asarray(tb.c, dtype=np.float64) for name, tb in TABLEAUX.items()}
_A = {name: np.asarray(tb.a, dtype=np.float32) for name, tb in TABLEAUX.items()}
_B = {name: np.asarray(tb.b, dtype=np.float32) for name, tb in TABLEAUX.items()}
_B_ERR = {name: np.asarray(tb.b_err, dtype=np.float32) for name, tb in TABLEAUX.items() if tb.b_err is not None}
"""Each tableau's coefficients as the arrays the stages use (made once, not per evaluation)."""
TIME_ROWS_MAX = 1 << 16
"""Most floats per time array a lockstep job prepares for all its steps at once (:meth:`Job.time_rows`)."""
_ARANGE = np.arange(4096)
_ARANGE.setflags(write=False)
"""Sample indices ``0 .. 4095``, shared read-only: a job's :attr:`Job.every` is a view of them when it fits."""


class SchedulerError(AnystepError):
    """Base of scheduler errors."""


class SolverFailedError(SchedulerError):
    """An adaptive solve did not reach its end time within ``max_nfe`` evaluations."""


class NonFiniteError(SchedulerError):
    """The model produced NaN or Inf for some samples of a job."""


FINITE_SUM_MAX = 64
"""Most values whose finiteness :func:`all_finite` reads from a float64 sum of Python floats."""


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of the float32 array ``x`` is finite.

    A finite sum means every value is finite (NaN and Inf propagate): one reduction in the common
    case. Up to :data:`FINITE_SUM_MAX` values the sum is Python's over ``tolist()`` (float64: at most
    64 float32 values cannot overflow it), cheaper than a numpy reduction on a few values; a larger
    array whose float32 sum overflowed is checked value by value.
    """
    if x.size <= FINITE_SUM_MAX:
        return math.isfinite(sum(x.reshape(-1).tolist()))
    return math.isfinite(float(x.sum())) or bool(np.isfinite(x).all())


@dataclass
class JobResult:
    """What a finished job hands back.

    Attributes:
        x: ``[n, *shape]`` float32 final states (model units).
        nfe: network evaluations per sample (the most any sample used, for dopri5).
        steps: steps taken (accepted steps of the slowest sample for dopri5).
        queue_s: seconds from submission to the first tick that ran the job.
        compute_s: seconds of engine ticks the job took part in.
        ticks: number of ticks it took part in.
    """

    x: np.ndarray
    nfe: int
    steps: int
    queue_s: float
    compute_s: float
    ticks: int


@dataclass(frozen=True)
class SeededBase:
    """Start states not drawn yet: rows ``seed, ..., seed + n - 1`` of the model's base.

    A job given one draws them at its first tick, in ONE vectorised call together with
    every other job starting then (the scheduler's ``draw_base``, see
    :func:`.planner.draw_bases`): the same rows as drawing them per request, without a
    per-request generator call.

    Attributes:
        seed: seed of the first sample.
        n: number of samples.
        shape: shape of one sample.
    """

    seed: int
    n: int
    shape: tuple[int, ...]


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request: ``n`` samples stepped along a shared grid (or adaptively, dopri5).

    Attributes:
        x: ``[n, *shape]`` float32 current states: the start states at submission (copied),
            or a :class:`SeededBase` drawn at the first tick (then ``base`` holds it until drawn).
        grid: ``[K + 1]`` float64 times; decreasing grids run the map backwards. dopri5
            uses ``grid[0]`` and ``grid[-1]`` only.
        method: ``"flowmap"`` or a solver of :data:`~anystep.core.tableaux.TABLEAUX`.
        rtol: dopri5 tolerance (atol = rtol).
        max_nfe: dopri5 bound on evaluations per sample.
        tag: free-form label (the model name) for logs.
        cond: extra per-sample engine inputs that ride along with ``(x, s, t)``, e.g.
            ``{"y": [n] class labels, "w": [n] guidance weights}``; every array has ``n`` rows.
    """

    x: np.ndarray | SeededBase
    grid: np.ndarray
    method: str = "flowmap"
    rtol: float = 1e-3
    max_nfe: int = DEFAULT_MAX_NFE
    tag: str = ""
    cond: dict[str, np.ndarray] = field(default_factory=dict)
    id: int = field(default_factory=_ids.__next__)
    at: int | None = field(init=False, default=None)
    """While every sample of a fixed-step job (a flow map or a fixed-step solver) is at the same grid
    step -- nothing has split them: they advance together whenever the job gets all its live rows in
    a tick -- that step ``k`` as one int (and the stage as :attr:`at_stage`), and the per-sample arrays
    :attr:`k`, :attr:`stage`, :attr:`nfe`, :attr:`done` are made from them when first read
    (:meth:`split`); None once those arrays are the state. A tick of such a flow-map job is one copy
    of the engine's output (no per-sample bookkeeping)."""
    at_stage: int = field(init=False, default=0)
    """The Runge-Kutta stage of every sample while :attr:`at` is set."""
    K: int = field(init=False)
    """Steps of the grid (fixed-step methods)."""
    kstore: np.ndarray | None = field(init=False, default=None)
    t: np.ndarray | None = field(init=False, default=None)
    h: np.ndarray | None = field(init=False, default=None)
    hs: np.ndarray | None = field(init=False, default=None)
    rejected: int = field(init=False, default=0)
    error: BaseException | None = field(init=False, default=None)
    future: asyncio.Future | None = field(init=False, default=None, repr=False)
    submitted_at: float = field(init=False, default=0.0)
    started_at: float | None = field(init=False, default=None)
    compute_s: float = field(init=False, default=0.0)
    ticks: int = field(init=False, default=0)
    cancelled: bool = field(init=False, default=False)
    base: SeededBase | None = field(init=False, default=None)
    every: np.ndarray = field(init=False, repr=False)
    """``arange(n)`` (read-only): what :meth:`live` returns (this very array) while every sample is in
    lockstep, so flow-map stages and updates use whole-array operations instead of gathers."""
    step_s: np.ndarray = field(init=False, repr=False)
    """``[K]`` float32 ``grid[:-1]``: the start time ``s`` of each step, as the engine takes it
    (read-only, shared by the jobs of equal grids: :func:`grid_arrays`)."""
    step_t: np.ndarray = field(init=False, repr=False)
    """``[K]`` float32 ``grid[1:]``: the end time ``t`` of each step (read-only, shared)."""
    _times: np.ndarray = field(init=False, repr=False)
    _k: np.ndarray | None = field(init=False, default=None, repr=False)
    _stage: np.ndarray | None = field(init=False, default=None, repr=False)
    _nfe: np.ndarray | None = field(init=False, default=None, repr=False)
    _done: np.ndarray | None = field(init=False, default=None, repr=False)
    _rows: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.x, SeededBase):
            self.base, self.x = self.x, np.empty((self.x.n, *self.x.shape), dtype=np.float32)
        else:
            self.x = np.array(self.x, dtype=np.float32, order="C", ndmin=1)  # a copy: ticks update it in place
        self.grid = np.asarray(self.grid, dtype=np.float64).reshape(-1)
        n = self.x.shape[0]
        if n < 1:
            raise SchedulerError("a job needs at least one sample")
        if self.method not in METHODS:
            raise SchedulerError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.grid.size < 2:
            raise SchedulerError("a grid needs at least two times")
        self.cond = {k: np.ascontiguousarray(v) for k, v in self.cond.items()}
        bad = [k for k, v in self.cond.items() if v.ndim < 1 or v.shape[0] != n]
        if bad:
            raise SchedulerError(f"conditioning inputs {bad} must have one row per sample ({n})")
        self.K = int(self.grid.size - 1)
        self.every = _ARANGE[:n] if n <= _ARANGE.size else np.arange(n)
        if not self.adaptive:  # dopri5 samples choose their own steps: per-sample arrays from the start
            self.at = 0
        else:
            self._k, self._stage, self._nfe = (np.zeros(n, dtype=np.int64) for _ in range(3))
            self._done = np.zeros(n, dtype=bool)
        arrays = grid_arrays(self.grid)
        self.step_s, self.step_t, self._times = arrays.step_s, arrays.step_t, arrays.times
        tb = TABLEAUX.get(self.method)
        if tb is not None and tb.stages > 1:
            self.kstore = np.zeros((tb.stages, *self.x.shape), dtype=np.float32)
        if self.adaptive:
            if self.max_nfe < tb.stages:
                raise SchedulerError(f"max_nfe must be >= {tb.stages}")
            t0, t1 = float(self.grid[0]), float(self.grid[-1])
            span = abs(t1 - t0)
            self.t = np.full(n, t0, dtype=np.float64)
            self.h = np.full(n, DOPRI5.h0_fraction * max(span, 1e-12), dtype=np.float64)
            self.hs = np.minimum(self.h, span) * (1.0 if t1 >= t0 else -1.0)
            self.done[:] = span <= 0

    # -- properties --------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def k(self) -> np.ndarray:
        """``[n]`` int64 step of each sample."""
        self.split()
        return self._k

    @property
    def stage(self) -> np.ndarray:
        """``[n]`` int64 Runge-Kutta stage of each sample's current step."""
        self.split()
        return self._stage

    @property
    def nfe(self) -> np.ndarray:
        """``[n]`` int64 evaluations of each sample so far."""
        self.split()
        return self._nfe

    @property
    def done(self) -> np.ndarray:
        """``[n]`` bool: the sample has reached the end of its grid."""
        self.split()
        return self._done

    def split(self) -> None:
        """Leave lockstep (:attr:`at`): from now on the per-sample arrays hold the state."""
        if self.at is None:
            return
        n, k, j = self.n, self.at, self.at_stage
        self._k, self._nfe = np.full(n, k, dtype=np.int64), np.full(n, k * self.stages + j, dtype=np.int64)
        self._stage, self._done = np.full(n, j, dtype=np.int64), np.full(n, k >= self.K)
        self.at = None

    def time_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``([n], [n])`` float32 engine times ``(grid[at], grid[at + 1])`` of every sample in lockstep.

        All ``K`` rows are made once per job, the job's own writable ``[2, K, n]`` array (``K n`` floats
        each, up to :data:`TIME_ROWS_MAX`; beyond, the two rows of each step): a tick then takes two views.
        """
        rows, k = self._rows, self.at
        if rows is None:
            n = self.n
            if self.K * n > TIME_ROWS_MAX:
                return np.full(n, self.step_s[k]), np.full(n, self.step_t[k])
            rows = self._rows = self._times.copy() if n == 1 else self._times.repeat(n, axis=2)
        return rows[0, k], rows[1, k]

    @property
    def adaptive(self) -> bool:
        return self.method == "dopri5"

    @property
    def stages(self) -> int:
        """Evaluations per step."""
        return 1 if self.method == "flowmap" else TABLEAUX[self.method].stages

    @property
    def evals_left(self) -> int:
        """Engine rows this job may still need (the ``max_nfe`` bound for dopri5)."""
        at = self.at  # read once: the tick thread may split the job meanwhile
        if at is not None:
            return self.n * max(0, (self.K - at) * self.stages - self.at_stage)
        live = ~self.done
        if self.adaptive:
            return int(np.sum(np.maximum(self.max_nfe - self.nfe[live], 0)))
        return int(np.sum(self.K * self.stages - self.nfe[live]))

    @property
    def finished(self) -> bool:
        if self.error is not None:
            return True
        if self.at is not None:
            return self.at >= self.K
        # a live last sample answers most calls without a reduction (ticks ask every job, every tick)
        return bool(self._done[-1]) and bool(self._done.all())

    def live(self) -> np.ndarray:
        """Indices of unfinished samples, least evaluated first (stable)."""
        if self.at is not None:  # lockstep: every sample or none
            return self.every if self.at < self.K else self.every[:0]
        if not self.done.any() and (self.n == 1 or (self.nfe == self.nfe[0]).all()):
            return self.every  # nothing done, all equally far: the stable order is the identity
        idx = np.flatnonzero(~self.done)
        if idx.size > 1:
            idx = idx[np.argsort(self.nfe[idx], kind="stable")]
        return idx

    def result_nfe(self) -> int:
        return int(self.nfe.max()) if self.adaptive else self.K * self.stages

    def result_steps(self) -> int:
        return int(self.k.max()) if self.adaptive else self.K


def _col(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape(-1, *([1] * (ndim - 1)))


def _step_times(job: Job, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start time and signed step ``(t, h)`` (float64) of the selected samples' current step."""
    if job.adaptive:
        return job.t[idx], job.hs[idx]
    k = job.k[idx]
    t_k = job.grid[k]
    return t_k, job.grid[k + 1] - t_k


def stage_inputs(job: Job, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Engine inputs ``(x, s, t)`` of the selected samples for their current stage.

    Flow maps: ``(x, t_k, t_{k+1})``. RK stage ``j``: ``(x + h sum_l A_jl K_l, ., t + c_j h)``
    (the middle entry repeats the time; velocity engines ignore it).
    """
    if job.method == "flowmap":
        if job.at is not None and idx is job.every:  # every sample at step `at`: the job's own state
            return (job.x, *job.time_rows())
        k = job.k[idx]
        return job.x[idx], job.step_s[k], job.step_t[k]  # (x, grid[k], grid[k + 1]) in float32
    if job.at is not None and idx is job.every:  # a fixed-step solver's samples in lockstep: scalar times
        t0 = job.grid[job.at]
        h, j = job.grid[job.at + 1] - t0, job.at_stage
        t_in = np.full(job.n, t0 + _C[job.method][j] * h, dtype=np.float32)
        if job.kstore is None or j == 0:
            return job.x, t_in, t_in
        incr = np.einsum("ms,sm...->m...", _A[job.method][np.full(job.n, j)], job.kstore)  # as below, bit for bit
        return (job.x + np.float32(h) * incr).astype(np.float32, copy=False), t_in, t_in
    t0, h = _step_times(job, idx)
    x = job.x[idx]
    j = job.stage[idx]
    t_in = (t0 + _C[job.method][j] * h).astype(np.float32)
    if job.kstore is None or not np.any(j):
        return x, t_in, t_in
    incr = np.einsum("ms,sm...->m...", _A[job.method][j], job.kstore[:, idx])  # coefficients [m, S]
    x_in = x + _col(h.astype(np.float32), x.ndim) * incr
    return x_in.astype(np.float32, copy=False), t_in, t_in


def advance(job: Job, idx: np.ndarray, y: np.ndarray) -> None:
    """Consume engine outputs ``y`` of the selected samples and move them one stage on."""
    if job.at is not None and idx is job.every:  # every sample in lockstep: whole arrays, ints
        _advance_lockstep(job, y)
        return
    job.nfe[idx] += 1
    if job.method == "flowmap":
        job.x[idx] = y
        job.k[idx] += 1
        job.done[idx] = job.k[idx] >= job.K
        return
    tb = TABLEAUX[job.method]
    S = tb.stages
    if S == 1:  # Euler
        _, h = _step_times(job, idx)
        job.x[idx] = job.x[idx] + _col(h.astype(np.float32), y.ndim) * y
        job.k[idx] += 1
        job.done[idx] = job.k[idx] >= job.K
        return
    j = job.stage[idx]
    job.kstore[j, idx] = y
    last = j == S - 1
    if np.any(~last):
        job.stage[idx[~last]] += 1
    if not np.any(last):
        return
    li = idx[last]
    _, h = _step_times(job, li)
    hb = _col(h.astype(np.float32), y.ndim)
    ks = job.kstore[:, li]
    x = job.x[li]
    x_new = x + hb * np.einsum("s,sm...->m...", _B[job.method], ks)
    if not job.adaptive:
        job.x[li] = x_new
        job.k[li] += 1
        job.stage[li] = 0
        job.done[li] = job.k[li] >= job.K
        return
    _dopri5_control(job, li, x, x_new, hb * np.einsum("s,sm...->m...", _B_ERR[job.method], ks))


def _advance_lockstep(job: Job, y: np.ndarray) -> None:
    """:func:`advance` of every sample of a job in lockstep: the same arithmetic on whole arrays."""
    if job.method == "flowmap":  # one copy, one int
        job.x[...] = y
        job.at += 1
        return
    S = job.stages
    if S > 1:
        job.kstore[job.at_stage] = y
        if job.at_stage < S - 1:
            job.at_stage += 1
            return
        y = np.einsum("s,sm...->m...", _B[job.method], job.kstore)  # the step's weighted stages
    h = job.grid[job.at + 1] - job.grid[job.at]
    job.x[...] = job.x + np.float32(h) * y
    job.at += 1
    job.at_stage = 0


def _dopri5_control(job: Job, li: np.ndarray, x: np.ndarray, x5: np.ndarray, err: np.ndarray) -> None:
    """Accept or reject the finished dopri5 steps of samples ``li`` and resize their steps."""
    ctl = DOPRI5
    red = tuple(range(1, x.ndim))
    scale = job.rtol + job.rtol * np.maximum(np.abs(x), np.abs(x5))
    with np.errstate(over="ignore", invalid="ignore"):
        err_norm = np.sqrt(np.mean((err / scale) ** 2, axis=red)).astype(np.float64)
    if not (np.isfinite(err_norm).all() and np.isfinite(x5).all()):
        job.error = NonFiniteError(
            f"the model produced non-finite values in a dopri5 step of {job.tag or 'this request'}"
        )
        return
    ok = err_norm <= 1.0
    t1 = float(job.grid[-1])
    t, hs = job.t[li], job.hs[li]
    remaining = np.abs(t1 - t)
    acc = li[ok]
    job.x[acc] = x5[ok]
    job.kstore[0, acc] = job.kstore[-1, acc]  # FSAL
    job.k[acc] += 1
    t_new = np.where(ok, t + hs, t)
    job.rejected += int(np.sum(~ok))
    factor = np.clip(ctl.safety * np.maximum(err_norm, 1e-10) ** ctl.exponent, ctl.min_factor, ctl.max_factor)
    job.h[li] = job.h[li] * factor
    done = (np.abs(t1 - t_new) <= 1e-12 * (1 + abs(t1))) | (ok & (remaining <= np.abs(hs) + 1e-15))
    t_new = np.where(done, t1, t_new)
    job.t[li] = t_new
    job.done[li] = done
    job.hs[li] = np.minimum(job.h[li], np.abs(t1 - t_new)) * (1.0 if t1 >= float(job.grid[0]) else -1.0)
    job.stage[li] = 1  # stage 0 of the next step is the FSAL k_7
    over = (~done) & (job.nfe[li] + (TABLEAUX["dopri5"].stages - 1) > job.max_nfe)
    if np.any(over):
        job.error = SolverFailedError(
            f"dopri5 needs more than max_nfe={job.max_nfe} evaluations per sample at rtol={job.rtol:g}; "
            "raise max_nfe or rtol, or use a fixed-step solver"
        )
