"""Step-level batching: fuse the samples of concurrent requests into one engine call per tick.

The iteration-level scheduling of LLM servers, applied to flow maps. A request (a
:class:`~.jobs.Job`) expands into ``n`` samples with their own state, time grid and
solver stage. Each tick the pure planner (:func:`.planner.plan_tick`) picks the
samples to advance -- a max-min fair share of ``max_batch`` rows per live job, padded
to a fixed batch bucket -- and this executor makes ONE engine call with per-sample
times and hands the outputs back (:func:`.planner.apply_outputs`). Flow-map jumps,
fixed-step Runge-Kutta stages and adaptive dopri5 stages all ride in the same ticks,
so a slow adaptive request never blocks the others and stops using the engine the
tick after it is cancelled (timeout, client gone).

A sample leaves the batch when its last step is done; a job finishes when all its
samples have (its result must be finite) or fails as soon as one sample fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .engines import Engine
from .jobs import Job, JobResult, NonFiniteError, SchedulerError, SolverFailedError, all_finite
from .pacing import ADAPTIVE_MAX_DEFER_S, CostModel, Foreground, adaptive_pause
from .planner import TickPlan, apply_outputs, bucket_sizes, draw_bases, plan_tick
from .settle import settle_all, settle_one

__all__ = [
    "CostModel",
    "Foreground",
    "Job",
    "JobResult",
    "NonFiniteError",
    "QueueFullError",
    "SchedulerClosedError",
    "SchedulerError",
    "SolverFailedError",
    "StepScheduler",
    "TickStats",
]

log = logging.getLogger("anystep.server")

LOOP_YIELD_S = 2e-4
"""The ``loop`` executor's longest run of back-to-back ticks before the event loop gets a turn."""


class QueueFullError(SchedulerError):
    """The bounded queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchedulerClosedError(SchedulerError):
    """The scheduler is shutting down and takes no new work."""


@dataclass
class TickStats:
    """Counters of a scheduler (for tests and metrics)."""

    ticks: int = 0
    rows: int = 0
    max_rows: int = 0
    max_jobs_in_tick: int = 0
    batch_sizes: set[int] = field(default_factory=set)
    """Distinct (padded) batch sizes the engine has seen."""


class StepScheduler:
    """Step-level batching scheduler of one engine (the executor of :mod:`.planner` plans).

    The tick loop runs in its own thread, back to back while there is work, so the
    asyncio event loop (HTTP parsing, encoding) and the engine overlap; engines such as
    torch and ONNX Runtime release the GIL while they compute. Requests are submitted
    from the event loop and get an ``asyncio.Future`` that the tick thread resolves.

    Args:
        engine: the engine (flow map or velocity).
        max_batch: most rows in one engine call.
        max_queue: most unfinished jobs (running + waiting); more raise :class:`QueueFullError`.
        batching: False disables cross-request fusion (one job at a time; for benchmarks).
        on_tick: callback ``(rows, seconds, jobs)`` after every engine call (metrics; tick thread).
        pad: pad engine batches to fixed buckets (powers of two up to ``max_batch``): a
            sample's result then does not depend on how many others share its tick,
            and the engine's kernel caches stay bounded.
        executor: where ticks run. ``"thread"``: a tick thread (the engine overlaps the
            event loop; for engine calls of milliseconds). ``"loop"``: on the event loop
            itself, yielding after a tick that ends a request and at least every
            :data:`LOOP_YIELD_S` (no thread hand-off per request: for cheap engine calls,
            where two hand-offs cost more than the call). ``"auto"``: the
            loop when warm-up measures a full-batch call under ``inline_below_s``.
        inline_below_s: the ``auto`` threshold.
        draw_base: ``[m] int64 seeds -> [m, *shape]`` start states of the model's base; jobs
            submitted with a :class:`~.jobs.SeededBase` are drawn with it, all jobs starting
            in a tick in one call (:func:`.planner.draw_bases`).
        foreground: the app's :class:`Foreground`: on the tick thread, ticks of adaptive jobs
            only wait while fixed-step requests are in flight (None: never).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 256,
        max_queue: int = 64,
        batching: bool = True,
        on_tick: Callable[[int, float, int], None] | None = None,
        pad: bool = True,
        executor: str = "thread",
        inline_below_s: float = 2e-3,
        draw_base: Callable[[np.ndarray], np.ndarray] | None = None,
        foreground: Foreground | None = None,
    ) -> None:
        if executor not in ("thread", "loop", "auto"):
            raise SchedulerError(f"executor must be thread, loop or auto, got {executor!r}")
        if max_batch < 1:
            raise SchedulerError("max_batch must be >= 1")
        if max_queue < 1:
            raise SchedulerError("max_queue must be >= 1")
        self.engine = engine
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.batching = bool(batching)
        self.on_tick = on_tick
        self.pad = bool(pad)
        self.cost = CostModel()
        self.stats = TickStats()
        self._jobs: list[Job] = []
        self._cv = threading.Condition()
        self._engine_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._stop = False
        self._flowmap = engine.kind == "flowmap"
        self._settle: list[tuple[asyncio.Future, JobResult | None, BaseException | None]] = []
        self.executor = executor
        self.mode = "loop" if executor == "loop" else "thread"
        self.inline_below_s = float(inline_below_s)
        self.draw_base = draw_base
        self.foreground = foreground
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._undrawn = False  # a job waits for its base samples (drawn at the next tick)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start ticking (idempotent); futures resolve on the calling event loop."""
        self._loop = asyncio.get_running_loop()
        if self.mode == "loop":
            if self._task is None:
                self._wake = asyncio.Event()
                self._task = self._loop.create_task(self._run_on_loop())
        elif self._thread is None:
            self._thread = threading.Thread(target=self._run, name="anystep-scheduler", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None or self._task is not None

    async def choose_executor(self) -> str:
        """``executor="auto"``: move the ticks onto the event loop when a full-batch engine call
        (warm-up cost model) takes under ``inline_below_s``. Call it while idle (before serving)."""
        if self.executor != "auto" or self.mode != "thread" or self._jobs or not self._flowmap:
            return self.mode
        full = self.cost.call_seconds(self.max_batch)
        if full > self.inline_below_s:  # warm-up under CPU contention reads slow: re-time the full batch
            full = min(full, await asyncio.to_thread(self._time_full_batch))
        if full <= self.inline_below_s:
            await self._stop_ticking()  # idle: no tick is in flight
            self.mode = "loop"
            self._stop = False
            await self.start()
        return self.mode

    async def _stop_ticking(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._wake is not None:
            self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
            self._thread = None
        if self._task is not None:
            await self._task
            self._task = None

    def _time_full_batch(self, repeats: int = 10) -> float:
        """The fastest of ``repeats`` full-batch engine calls, in seconds."""
        with self._engine_lock:
            return float(self.engine.warmup([self.max_batch], repeats=repeats)[0].seconds)

    def warmup_sizes(self) -> list[int]:
        """The batch sizes the engine will see (every bucket, or a few sizes unpadded)."""
        if self.pad:
            return bucket_sizes(self.max_batch)
        return sorted({1, min(16, self.max_batch), min(64, self.max_batch)})

    async def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Warm the engine up (off the event loop) and seed the cost model with its timings."""
        sizes = list(batch_sizes) if batch_sizes is not None else self.warmup_sizes()

        repeats = 5 if len(sizes) <= 3 else 2  # every bucket is compiled/cached once; a few timings suffice

        def go():
            with self._engine_lock:
                return self.engine.warmup(sizes, repeats=repeats)

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
            self._resolve(job, exc=SchedulerClosedError("the server is shutting down; retry on another replica"))
        await self._stop_ticking()

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
        rows = sum(j.evals_left for j in list(self._jobs))
        ticks = math.ceil(rows / self.max_batch) if rows else 1
        return max(1.0, ticks * self.cost.call_seconds(min(rows, self.max_batch) or 1))

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job; returns a future resolving to a :class:`JobResult`.

        Raises:
            QueueFullError: ``max_queue`` jobs are unfinished.
            SchedulerClosedError: the scheduler is shutting down.
            SchedulerError: the job does not fit this engine.
        """
        if self._closing or self._stop:
            raise SchedulerClosedError("the server is shutting down; retry shortly")
        if not self.running:
            raise SchedulerClosedError("the scheduler is not started")
        if job.base is not None and self.draw_base is None:
            raise SchedulerError("this scheduler draws no base samples: give the job its start states x")
        if tuple(job.x.shape[1:]) != self.engine.data_shape:
            raise SchedulerError(f"job samples have shape {job.x.shape[1:]}, engine expects {self.engine.data_shape}")
        if (job.method == "flowmap") != self._flowmap:
            raise SchedulerError(
                "flow-map stepping needs a flow-map model" if job.method == "flowmap" else "ODE solvers need a velocity model"
            )
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
            if job.base is not None:
                self._undrawn = True
            self._cv.notify()
        if self.foreground is not None:
            if job.adaptive:
                self.foreground.adaptive_started(job.future)
            else:  # a tick thread waiting for the foreground to go idle must not keep this job waiting
                self.foreground.kick()
        if self._wake is not None:
            self._wake.set()
        return job.future

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Pause ticking while the block runs, e.g. to submit several jobs that then
        share their first tick (tests, benchmarks). Hold it briefly: ticks wait."""
        with self._cv:
            yield

    def cancel(self, job: Job) -> None:
        """Drop a job (its request timed out or its client left): it takes part in no
        further tick (the one in flight, if any, still completes); its future is cancelled."""
        with self._cv:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)
        if job.future is not None and not job.future.done():
            job.future.cancel()

    # -- the tick thread -------------------------------------------------------------
    def _run(self) -> None:
        """The tick thread: ticks back to back while there is work, else waits."""
        while True:
            with self._cv:
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
            fg = self.foreground
            if fg is None:  # no pacing: nothing to look at between ticks
                self._tick()
                continue
            jobs = list(self._jobs)
            self._defer_adaptive(jobs)
            t0 = time.perf_counter()
            self._tick()
            if jobs and all(j.adaptive for j in jobs) and fg.recently_busy():
                # pace: leave the CPU to the requests; a fixed-step job joining (submit notifies) ends the pause
                deadline = time.perf_counter() + adaptive_pause(time.perf_counter() - t0)
                with self._cv:
                    while not self._stop and self._adaptive_only() and (left := deadline - time.perf_counter()) > 0:
                        self._cv.wait(left)

    async def _run_on_loop(self) -> None:
        """Ticks on the event loop, yielding so new requests join the next tick: after a tick that ends
        a request (its answer goes out at once), else after ``LOOP_YIELD_S`` of back-to-back ticks."""
        while not self._stop:
            jobs = self._jobs
            if not jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            n, until = len(jobs), time.perf_counter() + LOOP_YIELD_S
            self._tick()
            while len(self._jobs) == n and not self._stop and time.perf_counter() < until:
                self._tick()
            if self._jobs:  # work left: let the answers out and new requests in, then go on
                await asyncio.sleep(0)
            # else the wait above yields: no extra task step per request

    def _tick(self) -> None:
        """Plan one engine call, make it, hand the outputs back, settle finished jobs."""
        with self._cv:
            jobs = self._jobs
            if self._undrawn:  # jobs starting now: one vectorised draw of their base samples
                self._undrawn = False
                if draw_bases(jobs, self.draw_base):
                    for job in [j for j in jobs if j.error is not None]:
                        self._fail(job, job.error)
            try:
                plan = plan_tick([j for j in jobs if not j.finished], self.max_batch, flowmap=self._flowmap,
                                 batching=self.batching, pad=self.pad)
            except Exception as e:  # a planning bug fails the queued jobs, not the thread
                log.exception("tick planning failed")
                for job in list(jobs):
                    job.error = job.error or SchedulerError(f"internal scheduling error: {e}")
                plan = TickPlan()
        if not plan.jobs:  # every queued job is finished or failed: settle them
            for job in list(self._jobs):
                self._finish(job)
            self._flush()
            return
        started = time.perf_counter()
        try:
            seconds = self._execute(plan)
        except Exception as e:  # noqa: BLE001 - an engine failure fails the jobs of this tick only
            for job, _ in plan.jobs:
                self._fail(job, e)
            self._flush()
            return
        self._record(plan, seconds)
        for job, _ in plan.jobs:
            if job.started_at is None:
                job.started_at = started
            job.compute_s += seconds
            job.ticks += 1
            if job.finished:
                self._finish(job)
        if self._settle:
            self._flush()

    def _execute(self, plan: TickPlan) -> float:
        """One engine call on the plan's (padded) batch; the outputs go back to the jobs."""
        with self._engine_lock:
            t0 = time.perf_counter()
            if plan.cond:  # conditioning inputs ride along with (x, s, t)
                y = self.engine.evaluate(plan.x, plan.s, plan.t, **plan.cond)
            else:
                y = self.engine.evaluate(plan.x, plan.s, plan.t)
            seconds = time.perf_counter() - t0
        if plan.jobs[0][0].adaptive and self.foreground is not None and self.foreground.busy:
            self._defer_adaptive([job for job, _ in plan.jobs])
        if y.shape != plan.x.shape:
            raise SchedulerError(f"engine returned shape {list(y.shape)} for a batch of shape {list(plan.x.shape)}")
        apply_outputs(plan, y)
        return seconds

    def _defer_adaptive(self, jobs: list[Job]) -> None:
        """On the tick thread: with only adaptive jobs to advance, wait while the foreground is busy."""
        fg = self.foreground
        if fg is not None and fg.busy and jobs and all(j.adaptive for j in jobs) and (
            threading.current_thread() is self._thread
        ):
            fg.wait_idle(ADAPTIVE_MAX_DEFER_S, until=lambda: self._stop or not self._adaptive_only())

    def _adaptive_only(self) -> bool:
        return all(j.adaptive for j in list(self._jobs))

    def _record(self, plan: TickPlan, seconds: float) -> None:
        rows = len(plan.x)
        self.cost.observe(rows, seconds)
        st = self.stats
        st.ticks += 1
        st.rows += plan.rows
        st.max_rows = max(st.max_rows, plan.rows)
        st.max_jobs_in_tick = max(st.max_jobs_in_tick, len(plan.jobs))
        st.batch_sizes.add(rows)
        if self.on_tick is not None:
            try:
                self.on_tick(plan.rows, seconds, len(plan.jobs))
            except Exception:
                log.debug("on_tick callback failed", exc_info=True)

    # -- completion (tick thread -> event loop) --------------------------------------
    def _finish(self, job: Job) -> None:
        if job.error is None and not all_finite(job.x):
            job.error = NonFiniteError(
                f"the model produced non-finite values (NaN/Inf) for {int((~np.isfinite(job.x)).reshape(job.n, -1).any(1).sum())} "
                f"of {job.n} samples of {job.tag or 'this request'}"
            )
        if job.error is not None:
            self._fail(job, job.error)
            return
        with self._cv:
            try:
                self._jobs.remove(job)
            except ValueError:  # cancelled meanwhile: already out
                pass
        queue_s = (job.started_at or job.submitted_at) - job.submitted_at
        self._resolve(
            job,
            result=JobResult(
                x=job.x,
                nfe=job.result_nfe(),
                steps=job.result_steps(),
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

    def _resolve(self, job: Job, result: JobResult | None = None, exc: BaseException | None = None) -> None:
        fut = job.future
        if fut is None or self._loop is None:
            return
        if threading.current_thread() is self._thread:
            self._settle.append((fut, result, exc))  # handed to the event loop once per tick
        else:
            settle_one(fut, result, exc)

    def _flush(self) -> None:
        """Settle this tick's finished futures on the event loop with one thread hand-off."""
        if not self._settle:
            return
        batch, self._settle = self._settle, []
        try:
            self._loop.call_soon_threadsafe(settle_all, batch)
        except RuntimeError:  # the event loop is closed
            pass
