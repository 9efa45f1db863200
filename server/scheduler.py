"""Step-level batching: fuse the samples of concurrent requests into one engine call per tick.

The iteration-level scheduling of LLM servers, applied to flow maps. A request
(a :class:`Job`) expands into ``n`` samples, each with its own state ``x``, its own
time grid ``0 = t_0 < ... < t_K = 1`` and its own step index ``k``. At every tick
the scheduler gathers up to ``max_batch`` live samples from the oldest jobs, makes
ONE engine call with per-sample times, and advances each sample:

* flow maps: ``x <- X_{t_k, t_{k+1}}(x)`` (the K-step sampler of the semigroup law,
  eq. 3.6; a reversed grid gives the inverse map ``X_{1,0}``);
* velocity models with a fixed-step solver: one Runge-Kutta *stage* per tick
  (Euler 1, Heun 2, RK4 4 stages per step of eq. 3.1), so ODE baselines with
  different step counts share ticks too;
* velocity models with ``dopri5``: the adaptive solver of
  :func:`anystep.core.solvers.dopri5` (per-sample step control) runs the job as its
  own batch when it is the oldest job.

A sample leaves the batch when its last step is done; a job finishes when all its
samples have. Everything a sample computes outside the engine is row-wise, so its
output depends only on its seed and grid, not on the samples it was batched with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from anystep.errors import AnystepError

from .engines import Engine

log = logging.getLogger("anystep.server")

# Butcher tableaux of the fixed-step solvers (same schemes as anystep.core.solvers).
TABLEAUX: dict[str, tuple[list[float], list[list[float]], list[float]]] = {
    # name: (c, A, b)
    "euler": ([0.0], [[0.0]], [1.0]),
    "heun": ([0.0, 1.0], [[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5]),
    "rk4": (
        [0.0, 0.5, 0.5, 1.0],
        [[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    ),
}
STAGES = {"flowmap": 1, "euler": 1, "heun": 2, "rk4": 4}
"""Network evaluations per step of each method."""


class SchedulerError(AnystepError):
    """Base of scheduler errors."""


class QueueFullError(SchedulerError):
    """The bounded queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchedulerClosedError(SchedulerError):
    """The scheduler is shutting down and takes no new work."""


class SolverFailedError(SchedulerError):
    """An adaptive solve did not converge within its step limit."""


@dataclass
class JobResult:
    """What a finished job hands back.

    Attributes:
        x: ``[n, *shape]`` float32 final states (model units).
        nfe: network evaluations per sample.
        steps: steps taken (accepted steps for dopri5).
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


@dataclass(eq=False)
class Job:
    """One request: ``n`` samples stepped along a shared grid.

    Attributes:
        x: ``[n, *shape]`` float32 current states (start states at submission).
        grid: ``[K + 1]`` float64 times; decreasing grids run the map backwards.
        method: ``"flowmap"``, ``"euler"``, ``"heun"``, ``"rk4"`` or ``"dopri5"``.
        rtol: dopri5 tolerance (atol = rtol).
        tag: free-form label (the model name) for logs.
    """

    x: np.ndarray
    grid: np.ndarray
    method: str = "flowmap"
    rtol: float = 1e-3
    tag: str = ""
    id: int = field(default_factory=itertools.count().__next__)
    # per-sample progress
    k: np.ndarray = field(init=False)
    stage: np.ndarray = field(init=False)
    kstore: np.ndarray | None = field(init=False, default=None)
    done: np.ndarray = field(init=False)
    # bookkeeping
    future: asyncio.Future | None = field(init=False, default=None, repr=False)
    submitted_at: float = field(init=False, default=0.0)
    started_at: float | None = field(init=False, default=None)
    compute_s: float = field(init=False, default=0.0)
    ticks: int = field(init=False, default=0)
    nfe: int = field(init=False, default=0)
    steps_taken: int = field(init=False, default=0)
    cancelled: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32).copy()
        self.grid = np.asarray(self.grid, dtype=np.float64).reshape(-1)
        n = self.x.shape[0]
        if n < 1:
            raise SchedulerError("a job needs at least one sample")
        if self.method != "dopri5" and self.grid.size < 2:
            raise SchedulerError("a grid needs at least two times")
        if self.method not in STAGES and self.method != "dopri5":
            raise SchedulerError(f"unknown method {self.method!r}")
        self.k = np.zeros(n, dtype=np.int64)
        self.stage = np.zeros(n, dtype=np.int64)
        self.done = np.zeros(n, dtype=bool)
        if self.method in TABLEAUX and STAGES[self.method] > 1:
            self.kstore = np.zeros((STAGES[self.method], *self.x.shape), dtype=np.float32)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def K(self) -> int:
        """Number of steps of the grid."""
        return int(self.grid.size - 1)

    @property
    def stages(self) -> int:
        return STAGES.get(self.method, 0)

    @property
    def evals_total(self) -> int:
        """Engine rows this job still needs (0 for dopri5, which is unknown in advance)."""
        if self.method == "dopri5":
            return 0
        progress = self.k * self.stages + self.stage
        return int(np.sum(self.K * self.stages - progress))

    def live(self) -> np.ndarray:
        """Indices of unfinished samples, least progressed first (stable)."""
        idx = np.flatnonzero(~self.done)
        if idx.size > 1:
            progress = self.k[idx] * max(1, self.stages) + self.stage[idx]
            idx = idx[np.argsort(progress, kind="stable")]
        return idx


class CostModel:
    """Online estimate of one engine call's wall time, ``cost(B) ~ a + b B`` seconds.

    Seeded by warm-up timings and refit on the most recent engine calls.

    Args:
        window: number of recent observations kept.
    """

    def __init__(self, window: int = 256) -> None:
        self._obs: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)
        self._warm: list[tuple[int, float]] = []
        self.a = 1e-3
        self.b = 1e-5

    def seed(self, points: Sequence[tuple[int, float]]) -> None:
        """Set the warm-up points (kept besides the rolling window)."""
        self._warm = [(int(b), float(s)) for b, s in points]
        self._fit()

    def observe(self, batch: int, seconds: float) -> None:
        """Record one engine call."""
        self._obs.append((int(batch), float(seconds)))
        if len(self._obs) % 8 == 0:
            self._fit()

    def _fit(self) -> None:
        pts = self._warm + list(self._obs)
        if not pts:
            return
        # robust to CPU contention: median time per power-of-two batch bucket, then a line fit
        buckets: dict[int, list[tuple[int, float]]] = {}
        for b, sec in pts:
            buckets.setdefault(int(math.log2(max(1, b))), []).append((b, sec))
        B = np.array([np.median([p[0] for p in v]) for v in buckets.values()], dtype=np.float64)
        T = np.array([np.median([p[1] for p in v]) for v in buckets.values()], dtype=np.float64)
        if B.size == 1:
            a, b = 0.5 * T[0], 0.5 * T[0] / max(B[0], 1.0)
        else:
            b, a = np.polyfit(B, T, 1)
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


@dataclass
class TickStats:
    """Counters of a scheduler (for tests and metrics)."""

    ticks: int = 0
    rows: int = 0
    max_rows: int = 0
    max_jobs_in_tick: int = 0


class StepScheduler:
    """Step-level batching scheduler of one engine.

    The tick loop runs in its own thread, back to back while there is work, so the
    asyncio event loop (HTTP parsing, encoding) and the engine overlap without a
    thread hop per tick; engines such as torch and ONNX Runtime release the GIL while
    they compute. Requests are submitted from the event loop and get an
    ``asyncio.Future`` that the tick thread resolves thread-safely.

    Args:
        engine: the engine (flow map or velocity).
        max_batch: most rows in one engine call.
        max_queue: most unfinished jobs (running + waiting); more raise :class:`QueueFullError`.
        batching: False disables cross-request fusion (one job at a time; for benchmarks).
        on_tick: callback ``(rows, seconds, jobs)`` after every engine call (metrics; tick thread).
        dopri5_max_steps: step limit of adaptive solves.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 256,
        max_queue: int = 64,
        batching: bool = True,
        on_tick: Callable[[int, float, int], None] | None = None,
        dopri5_max_steps: int = 2000,
    ) -> None:
        if max_batch < 1:
            raise SchedulerError("max_batch must be >= 1")
        if max_queue < 1:
            raise SchedulerError("max_queue must be >= 1")
        self.engine = engine
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.batching = bool(batching)
        self.on_tick = on_tick
        self.dopri5_max_steps = int(dopri5_max_steps)
        self.cost = CostModel()
        self.stats = TickStats()
        self._jobs: list[Job] = []
        self._cv = threading.Condition()
        self._engine_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._stop = False

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start the tick thread (idempotent); futures resolve on the calling event loop."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="anystep-scheduler", daemon=True)
            self._thread.start()

    async def warmup(self, batch_sizes: Sequence[int]) -> None:
        """Warm the engine up (off the event loop) and seed the cost model with its timings."""

        def go():
            with self._engine_lock:
                return self.engine.warmup(list(batch_sizes))

        timings = await asyncio.to_thread(go)
        self.cost.seed([(w.batch, w.seconds) for w in timings])

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop taking work, let running jobs finish (up to ``drain_timeout``), stop the thread."""
        self._closing = True
        deadline = time.monotonic() + drain_timeout
        while self._jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with self._cv:
            leftover, self._jobs = list(self._jobs), []
            self._stop = True
            self._cv.notify_all()
        for job in leftover:
            self._resolve(
                job,
                exc=SchedulerClosedError("the server is shutting down; retry on another replica"),
            )
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
            self._thread = None

    # -- submission (event loop) -----------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not yet started."""
        return sum(1 for j in list(self._jobs) if j.started_at is None)

    @property
    def inflight(self) -> int:
        """Jobs submitted and not finished."""
        return len(self._jobs)

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained (at least 1)."""
        rows = sum(j.evals_total for j in list(self._jobs))
        ticks = math.ceil(rows / self.max_batch) if rows else 1
        return max(1.0, ticks * self.cost.call_seconds(min(rows, self.max_batch) or 1))

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job; returns a future resolving to a :class:`JobResult`.

        Raises:
            QueueFullError: ``max_queue`` jobs are unfinished.
            SchedulerClosedError: the scheduler is shutting down.
        """
        if self._closing or self._stop:
            raise SchedulerClosedError("the server is shutting down; retry shortly")
        if self._thread is None:
            raise SchedulerClosedError("the scheduler is not started")
        if tuple(job.x.shape[1:]) != self.engine.data_shape:
            raise SchedulerError(
                f"job samples have shape {job.x.shape[1:]}, engine expects {self.engine.data_shape}"
            )
        if job.method != "flowmap" and self.engine.kind == "flowmap":
            raise SchedulerError("ODE solvers need a velocity model")
        if job.method == "flowmap" and self.engine.kind != "flowmap":
            raise SchedulerError("flow-map stepping needs a flow-map model")
        loop = asyncio.get_running_loop()
        with self._cv:
            if len(self._jobs) >= self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} requests in flight); retry after a moment",
                    retry_after=self.retry_after(),
                )
            job.future = loop.create_future()
            job.submitted_at = time.perf_counter()
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Pause ticking while the block runs, e.g. to submit several jobs that then
        share their first tick (tests, benchmarks). Hold it briefly: ticks wait."""
        with self._cv:
            yield

    def cancel(self, job: Job) -> None:
        """Drop a job (e.g. its request timed out); its future is cancelled."""
        with self._cv:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)
        if job.future is not None and not job.future.done():
            job.future.cancel()

    # -- the tick thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                head = self._jobs[0]
                now = time.perf_counter()
                if head.method == "dopri5":
                    plan = [(head, np.arange(head.n))]
                else:
                    plan = self._plan()
                for job, _ in plan:
                    if job.started_at is None:
                        job.started_at = now
            if head.method == "dopri5":
                try:
                    with self._engine_lock:
                        self._run_dopri5(head)
                except Exception as e:  # noqa: BLE001 - engine failure or non-convergence
                    self._fail(head, e)
                else:
                    self._finish_if_done(head)
                continue
            try:
                with self._engine_lock:
                    rows, seconds = self._tick(plan)
            except Exception as e:  # noqa: BLE001 - an engine failure fails the jobs of this tick only
                for job, _ in plan:
                    self._fail(job, e)
                continue
            self.cost.observe(rows, seconds)
            self.stats.ticks += 1
            self.stats.rows += rows
            self.stats.max_rows = max(self.stats.max_rows, rows)
            self.stats.max_jobs_in_tick = max(self.stats.max_jobs_in_tick, len(plan))
            if self.on_tick is not None:
                try:
                    self.on_tick(rows, seconds, len(plan))
                except Exception:
                    log.debug("on_tick callback failed", exc_info=True)
            for job, _ in plan:
                job.compute_s += seconds
                job.ticks += 1
                self._finish_if_done(job)

    def _plan(self) -> list[tuple[Job, np.ndarray]]:
        cap = self.max_batch
        plan: list[tuple[Job, np.ndarray]] = []
        for job in self._jobs:
            if cap <= 0:
                break
            if job.method == "dopri5" or job.cancelled:
                continue
            idx = job.live()[:cap]
            if idx.size:
                plan.append((job, idx))
                cap -= idx.size
            if not self.batching:
                break
        return plan

    def _tick(self, plan: list[tuple[Job, np.ndarray]]) -> tuple[int, float]:
        """Build the fused batch, make one engine call, advance every sample."""
        xs, ss, ts = [], [], []
        for job, idx in plan:
            x_in, s_in, t_in = _stage_inputs(job, idx)
            xs.append(x_in)
            ss.append(s_in)
            ts.append(t_in)
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        t = np.concatenate(ts) if len(ts) > 1 else ts[0]
        s = None
        if self.engine.kind == "flowmap":
            s = np.concatenate(ss) if len(ss) > 1 else ss[0]
        t0 = time.perf_counter()
        y = self.engine.evaluate(x, s, t)
        seconds = time.perf_counter() - t0
        if y.shape != x.shape:
            raise SchedulerError(
                f"engine returned shape {list(y.shape)} for a batch of shape {list(x.shape)}"
            )
        offset = 0
        for job, idx in plan:
            _advance(job, idx, y[offset : offset + idx.size])
            offset += idx.size
        return int(x.shape[0]), seconds

    def _run_dopri5(self, job: Job) -> None:
        """Adaptive dopri5 on the job's samples, as their own batch."""
        import torch

        from anystep.core import solvers

        engine = self.engine
        t0 = time.perf_counter()

        def b(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = engine.velocity(
                x.detach().cpu().numpy().astype(np.float32), t.detach().cpu().numpy()
            )
            return torch.from_numpy(out)

        t_start, t_end = float(job.grid[0]), float(job.grid[-1])
        try:
            sol = solvers.dopri5(
                b,
                torch.from_numpy(job.x),
                t_start,
                t_end,
                rtol=job.rtol,
                atol=job.rtol,
                max_steps=self.dopri5_max_steps,
            )
        except RuntimeError as e:
            raise SolverFailedError(
                f"dopri5 did not reach t={t_end:g} within {self.dopri5_max_steps} steps at rtol={job.rtol:g}; "
                "use a larger rtol or a fixed-step solver"
            ) from e
        job.x = sol.x.numpy().astype(np.float32)
        job.nfe = int(sol.nfe)
        job.steps_taken = int(sol.steps)
        job.done[:] = True
        job.compute_s += time.perf_counter() - t0
        job.ticks += 1

    # -- completion (tick thread -> event loop) --------------------------------------
    def _finish_if_done(self, job: Job) -> None:
        if not bool(job.done.all()):
            return
        with self._cv:
            if job in self._jobs:
                self._jobs.remove(job)
        if job.method != "dopri5":
            job.nfe = job.K * job.stages
            job.steps_taken = job.K
        queue_s = (job.started_at or job.submitted_at) - job.submitted_at
        self._resolve(
            job,
            result=JobResult(
                x=job.x,
                nfe=job.nfe,
                steps=job.steps_taken,
                queue_s=max(0.0, queue_s),
                compute_s=job.compute_s,
                ticks=job.ticks,
            ),
        )

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cv:
            if job in self._jobs:
                self._jobs.remove(job)
        self._resolve(job, exc=exc)

    def _resolve(
        self, job: Job, result: JobResult | None = None, exc: BaseException | None = None
    ) -> None:
        fut, loop = job.future, self._loop
        if fut is None or loop is None:
            return

        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        if threading.current_thread() is self._thread:
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the event loop is closed
                pass
        else:
            settle()


def _stage_inputs(job: Job, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Engine inputs of the selected samples for their current step/stage.

    For a flow map: ``(x, t_k, t_{k+1})``. For Runge-Kutta stage ``j`` of step ``k``
    with ``h = t_{k+1} - t_k``: ``(x + h sum_l A_jl K_l, ., t_k + c_j h)``.
    """
    k = job.k[idx]
    t_k = job.grid[k]
    t_next = job.grid[k + 1]
    x = job.x[idx]
    if job.method == "flowmap":
        return x, t_k.astype(np.float32), t_next.astype(np.float32)
    c, A, _ = TABLEAUX[job.method]
    j = job.stage[idx]
    h = (t_next - t_k).astype(np.float32)
    t_in = (t_k + np.asarray(c)[j] * (t_next - t_k)).astype(np.float32)
    if job.stages == 1 or job.kstore is None:
        return x, t_in, t_in
    coeff = np.asarray(A, dtype=np.float32)[j]  # [m, S]
    stages = job.kstore[:, idx]  # [S, m, *shape]
    incr = np.einsum("ms,sm...->m...", coeff, stages)
    hb = h.reshape(-1, *([1] * (x.ndim - 1)))
    return (x + hb * incr).astype(np.float32), t_in, t_in


def _advance(job: Job, idx: np.ndarray, y: np.ndarray) -> None:
    """Consume engine outputs ``y`` for the selected samples and move them one stage on."""
    if job.method == "flowmap":
        job.x[idx] = y
        job.k[idx] += 1
        job.done[idx] = job.k[idx] >= job.K
        return
    S = job.stages
    _, _, bw = TABLEAUX[job.method]
    j = job.stage[idx]
    k = job.k[idx]
    if S == 1:
        h = (job.grid[k + 1] - job.grid[k]).astype(np.float32).reshape(-1, *([1] * (y.ndim - 1)))
        job.x[idx] = job.x[idx] + h * y
        job.k[idx] += 1
        job.done[idx] = job.k[idx] >= job.K
        return
    assert job.kstore is not None
    job.kstore[j, idx] = y
    last = j == S - 1
    if np.any(last):
        li = idx[last]
        kk = job.k[li]
        h = (job.grid[kk + 1] - job.grid[kk]).astype(np.float32).reshape(-1, *([1] * (y.ndim - 1)))
        incr = np.einsum("s,sm...->m...", np.asarray(bw, dtype=np.float32), job.kstore[:, li])
        job.x[li] = job.x[li] + h * incr
        job.k[li] += 1
        job.stage[li] = 0
        job.done[li] = job.k[li] >= job.K
    if np.any(~last):
        job.stage[idx[~last]] += 1
