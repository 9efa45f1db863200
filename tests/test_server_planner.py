"""The pure planner and the per-sample staged solvers, without threads; then the executor's
cancellation, non-finite and batch-bucket behaviour with instrumented engines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from anystep.core import solvers
from anystep.core.noise import base_noise_np
from anystep.server.engine_base import Engine
from anystep.server.jobs import Job, NonFiniteError, SolverFailedError, advance, stage_inputs
from anystep.server.planner import apply_outputs, bucket_size, bucket_sizes, plan_tick, share_rows
from anystep.server.scheduler import StepScheduler

# ---- share_rows: max-min fair, oldest first when scarce ------------------------------------


@pytest.mark.parametrize(
    "live,max_batch,want",
    [
        ([256, 1], 256, [255, 1]),  # a big (slow) job cannot starve a one-sample request
        ([3, 5], 64, [3, 5]),
        ([100, 100, 100], 10, [4, 3, 3]),
        ([5, 5, 5], 2, [1, 1, 0]),
        ([0, 4, 2], 4, [0, 2, 2]),
        ([1, 300, 300], 256, [1, 128, 127]),
        ([], 8, []),
    ],
)
def test_share_rows(live, max_batch, want):
    got = share_rows(live, max_batch)
    assert got == want and sum(got) <= max_batch and all(g <= v for g, v in zip(got, live))


def test_share_rows_without_batching_serves_the_oldest_live_job():
    assert share_rows([0, 7, 3], 4, batching=False) == [0, 4, 0]


def test_buckets():
    assert [bucket_size(r, 256) for r in (1, 2, 3, 5, 64, 65, 200, 256)] == [1, 2, 4, 8, 64, 128, 256, 256]
    assert bucket_size(100, 96) == 96 and bucket_sizes(96) == [1, 2, 4, 8, 16, 32, 64, 96]


# ---- plan_tick: inputs of every method, padding ---------------------------------------------


def test_plan_fuses_jobs_with_their_own_times_and_pads_to_a_bucket():
    a = Job(x=np.zeros((2, 2)), grid=np.linspace(0, 1, 3))
    b = Job(x=np.ones((1, 2)), grid=np.array([1.0, 0.4, 0.0]))  # encode: reversed grid
    plan = plan_tick([a, b], 64, flowmap=True)
    assert plan.rows == 3 and plan.x.shape == (4, 2)  # padded to the bucket of 4
    np.testing.assert_allclose(plan.s[:3], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(plan.t[:3], [0.5, 0.5, 0.4])
    np.testing.assert_array_equal(plan.x[3], plan.x[0])  # padding copies a real row
    apply_outputs(plan, plan.x + 1.0)
    np.testing.assert_array_equal(a.k, [1, 1]) and np.testing.assert_array_equal(b.x, [[2.0, 2.0]])
    unpadded = plan_tick([a, b], 64, flowmap=True, pad=False)
    assert unpadded.x.shape == (3, 2)



@pytest.mark.parametrize("batching", [True, False])
def test_a_lone_job_plans_like_the_same_job_among_finished_ones(batching):
    # a job alone plans as it does beside a finished job (the same rows, inputs and conditioning)
    rng = np.random.default_rng(0)
    for n, max_batch, cond in ((1, 256, False), (300, 256, False), (5, 4, True), (7, 8, True)):
        job = Job(rng.standard_normal((n, 2)).astype(np.float32), np.linspace(0, 1, 4),
                  cond={"y": np.arange(n)} if cond else {})
        done = Job(np.zeros((1, 2), np.float32), np.linspace(0, 1, 2))
        done.done[:] = True
        lone = plan_tick([job], max_batch, flowmap=True, batching=batching)
        general = plan_tick([done, job], max_batch, flowmap=True, batching=batching)
        assert lone.rows == general.rows == min(n, max_batch)
        for a, b in ((lone.x, general.x), (lone.s, general.s), (lone.t, general.t)):
            np.testing.assert_array_equal(a, b)
        assert lone.cond.keys() == general.cond.keys()
        for k in lone.cond:
            np.testing.assert_array_equal(lone.cond[k], general.cond[k])
        assert [j for j, _ in lone.jobs] == [job] and np.array_equal(lone.jobs[0][1], general.jobs[0][1])


def _drive_flowmap(job, max_batch):
    """Tick ``job`` to the end with the exact map X_st(x) = x + (t - s) (x + s); the plans' (s, t) seen."""
    seen = []
    while not job.finished:
        plan = plan_tick([job], max_batch, flowmap=True)
        seen.append((plan.s[: plan.rows].copy(), plan.t[: plan.rows].copy()))
        apply_outputs(plan, (plan.x + (plan.t - plan.s)[:, None] * (plan.x + plan.s[:, None])).astype(np.float32))
    return seen


def test_a_flow_map_job_in_lockstep_steps_as_one_int_and_splits_when_its_arrays_are_read():
    grid = np.array([0.0, 0.1, 0.35, 0.7, 1.0])
    x0 = base_noise_np(3, 3, (2,))
    lock = Job(x0, grid)
    assert lock.at == 0 and lock.live() is lock.every and lock.evals_left == 3 * 4
    seen = _drive_flowmap(lock, 256)
    assert lock.at == 4 and lock.finished and lock.result_nfe() == 4
    for k, (s, t) in enumerate(seen):  # every tick fed grid[k] -> grid[k + 1] in float32, to every sample
        np.testing.assert_array_equal(s, np.full(3, grid[k], np.float32))
        np.testing.assert_array_equal(t, np.full(3, grid[k + 1], np.float32))
    # the same job split after two steps (its arrays read), and one whose rows are scarce, end bit-identical
    split = Job(x0, grid)
    for _ in range(2):
        plan = plan_tick([split], 256, flowmap=True)
        apply_outputs(plan, (plan.x + (plan.t - plan.s)[:, None] * (plan.x + plan.s[:, None])).astype(np.float32))
    assert split.k.tolist() == [2, 2, 2] and split.nfe.tolist() == [2, 2, 2] and split.at is None
    _drive_flowmap(split, 256)
    scarce = Job(x0, grid)
    _drive_flowmap(scarce, 2)
    assert scarce.at is None and scarce.done.all() and scarce.nfe.tolist() == [4, 4, 4]
    np.testing.assert_array_equal(split.x, lock.x)
    np.testing.assert_array_equal(scarce.x, lock.x)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_a_fixed_step_solver_in_lockstep_equals_its_split_and_scarce_runs_bit_for_bit(method):
    def b(x, t):
        return (np.cos(3 * t)[:, None] * x + t[:, None]).astype(np.float32)

    def drive(job, max_batch, split_after=None):
        evals = 0
        while not job.finished:
            if evals == split_after:
                job.split()
            plan = plan_tick([job], max_batch, flowmap=False)
            apply_outputs(plan, b(plan.x, plan.t.astype(np.float64)))
            evals += 1
        return evals

    x0, grid = base_noise_np(2, 3, (2,)), np.linspace(0, 1, 5)
    lock, split, scarce = (Job(x=x0, grid=grid, method=method) for _ in range(3))
    stages = lock.stages
    assert lock.at == 0 and lock.evals_left == 3 * 4 * stages
    assert drive(lock, 256) == 4 * stages and lock.at == 4  # never split: one int per job all along
    drive(split, 256, split_after=stages + 1)  # leaves lockstep mid-step (at a stage > 0 for heun, rk4)
    drive(scarce, 2)  # max_batch 2 < n: the samples part at once
    assert split.at is None and scarce.at is None
    np.testing.assert_array_equal(split.x, lock.x)
    np.testing.assert_array_equal(scarce.x, lock.x)
    assert split.nfe.tolist() == scarce.nfe.tolist() == [4 * stages] * 3
    want = solvers.solve_fixed(
        lambda x, t: torch.cos(3 * t)[:, None] * x + t[:, None], torch.from_numpy(x0), method=method, steps=4
    )
    np.testing.assert_allclose(lock.x, want.x.numpy(), atol=2e-6)


def test_lockstep_time_rows_beyond_the_prepared_size_are_the_same_times(monkeypatch):
    from anystep.server import jobs as jobs_mod

    grid = np.linspace(1.0, 0.0, 4)  # a decreasing grid (encode)
    x0 = base_noise_np(0, 2, (2,))
    prepared = _drive_flowmap(Job(x0, grid), 256)
    monkeypatch.setattr(jobs_mod, "TIME_ROWS_MAX", 1)
    per_step = _drive_flowmap(Job(x0, grid), 256)
    for (s0, t0), (s1, t1) in zip(prepared, per_step):
        np.testing.assert_array_equal(s0, s1) and np.testing.assert_array_equal(t0, t1)
        assert s1.dtype == t1.dtype == np.float32


def test_finished_needs_every_sample_done_or_an_error():
    job = Job(np.zeros((3, 2), np.float32), np.linspace(0, 1, 2))
    assert not job.finished
    job.done[-1] = True  # the last alone: not finished
    assert not job.finished
    job.done[:] = [False, True, True]
    assert not job.finished
    job.done[:] = True
    assert job.finished
    other = Job(np.zeros((1, 2), np.float32), np.linspace(0, 1, 2))
    other.error = ValueError("x")
    assert other.finished

@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_staged_fixed_step_solvers_equal_core(method):
    def b(x, t):
        return np.cos(3 * t)[:, None] * x + t[:, None]

    x0 = base_noise_np(1, 3, (2,))
    job = Job(x=x0, grid=np.linspace(0, 1, 6), method=method)
    evals = 0
    while not job.finished:  # drive it the way the executor does, one engine call per tick
        plan = plan_tick([job], 2, flowmap=False)  # max_batch 2 < n: samples interleave stages
        apply_outputs(plan, b(plan.x, plan.t.astype(np.float64)).astype(np.float32))
        evals += 1
    want = solvers.solve_fixed(
        lambda x, t: torch.cos(3 * t)[:, None] * x + t[:, None], torch.from_numpy(x0), method=method, steps=5
    )
    np.testing.assert_allclose(job.x, want.x.numpy(), atol=2e-6)
    assert job.result_nfe() == want.nfe and job.nfe.tolist() == [want.nfe] * 3


def test_staged_dopri5_solves_an_analytic_ode_per_sample():
    # dx/dt = -k x with a different rate per sample: x(1) = x0 exp(-k); samples adapt independently
    rates = np.array([0.5, 4.0, 12.0], dtype=np.float32)
    job = Job(x=np.ones((3, 1), np.float32) * rates[:, None], grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-6, max_nfe=2000)
    while not job.finished:
        idx = job.live()
        x, _, _t = stage_inputs(job, idx)
        advance(job, idx, (-rates[idx, None] * x).astype(np.float32))
    assert job.error is None
    np.testing.assert_allclose(job.x[:, 0], rates * np.exp(-rates), rtol=1e-4, atol=2e-6)  # atol = rtol
    assert job.nfe[2] > job.nfe[0]  # the stiffer sample took more steps, the easy one did not wait


def test_staged_dopri5_enforces_max_nfe():
    job = Job(x=np.ones((1, 1), np.float32), grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-7, max_nfe=13)
    while not job.finished:
        idx = job.live()
        x, _, t = stage_inputs(job, idx)
        advance(job, idx, (np.cos(50 * t)[:, None] * x).astype(np.float32))
    assert isinstance(job.error, SolverFailedError) and job.nfe.max() <= 13


# ---- the executor with instrumented engines ---------------------------------------------------


class CountingEngine(Engine):
    """A velocity (or flow-map) engine that counts calls per job row and can be slow or broken."""

    name = "counting"

    def __init__(self, kind="velocity", delay=0.0, bad_above=None):
        super().__init__(kind, (2,))
        self.delay, self.bad_above = delay, bad_above
        self.calls, self.sizes = 0, set()
        self.lock = threading.Lock()

    def _f(self, x, t):
        with self.lock:
            self.calls += 1
            self.sizes.add(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        y = -x + t[:, None]
        if self.bad_above is not None:
            y = np.where(np.abs(x) > self.bad_above, np.inf, y)
        return y.astype(np.float32)

    def velocity(self, x, t):
        return self._f(x, t)

    def step(self, x, s, t):
        return x + (t - s)[:, None] * self._f(x, t)


@pytest.mark.parametrize("executor", ["thread", "loop"])
def test_cancelled_job_stops_using_the_engine_within_one_tick(executor):
    eng = CountingEngine(delay=0.01)

    async def go():
        sched = StepScheduler(eng, max_batch=64, executor=executor)
        await sched.start()
        job = Job(x=base_noise_np(0, 8, (2,)), grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-8, max_nfe=100000)
        sched.submit(job)
        await asyncio.sleep(0.1)
        sched.cancel(job)
        calls_at_cancel = eng.calls
        await asyncio.sleep(0.15)
        after = eng.calls
        await sched.close()
        return calls_at_cancel, after, job.future.cancelled()

    at_cancel, after, cancelled = asyncio.run(go())
    assert at_cancel > 2 and after - at_cancel <= 1 and cancelled  # at most the tick in flight


@pytest.mark.parametrize("executor", ["thread", "loop"])
def test_dopri5_job_does_not_block_fixed_step_jobs_of_the_same_engine(executor):
    eng = CountingEngine(delay=0.002)

    async def go():
        sched = StepScheduler(eng, max_batch=256, executor=executor)
        await sched.start()
        slow = Job(x=base_noise_np(0, 256, (2,)), grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-8, max_nfe=100000)
        f_slow = sched.submit(slow)
        await asyncio.sleep(0.05)
        quick = Job(x=base_noise_np(9, 1, (2,)), grid=np.linspace(0, 1, 3), method="euler")
        ticks_before = sched.stats.ticks
        res = await sched.submit(quick)
        ticks_quick = sched.stats.ticks - ticks_before
        still_running = not f_slow.done()
        sched.cancel(slow)
        await sched.close()
        return res, ticks_quick, still_running

    res, ticks, still_running = asyncio.run(go())
    assert res.nfe == 2 and still_running and ticks <= 3  # two Euler steps in (about) two ticks


@pytest.mark.parametrize("executor", ["thread", "loop"])
def test_non_finite_results_fail_the_job(executor):
    eng = CountingEngine(kind="flowmap", bad_above=5.0)

    async def go():
        sched = StepScheduler(eng, executor=executor)
        await sched.start()
        ok = sched.submit(Job(x=np.zeros((2, 2), np.float32), grid=np.linspace(0, 1, 3)))
        bad = sched.submit(Job(x=np.full((2, 2), 100.0, np.float32), grid=np.linspace(1, 0, 3)))
        r = await asyncio.gather(ok, bad, return_exceptions=True)
        await sched.close()
        return r

    ok, bad = asyncio.run(go())
    assert np.isfinite(ok.x).all() and isinstance(bad, NonFiniteError)


@pytest.mark.parametrize("executor", ["thread", "loop"])
def test_engine_sees_only_bucket_sizes(executor):
    eng = CountingEngine(kind="flowmap")

    async def go():
        sched = StepScheduler(eng, max_batch=32, executor=executor)
        await sched.start()
        with sched.hold():
            futs = [sched.submit(Job(x=base_noise_np(i, n, (2,)), grid=np.linspace(0, 1, 4))) for i, n in enumerate((3, 7, 11, 5))]
        await asyncio.gather(*futs)
        await sched.close()
        return sched.stats

    stats = asyncio.run(go())
    assert eng.sizes <= set(bucket_sizes(32)) and stats.batch_sizes == eng.sizes


def test_conditioning_inputs_ride_along_with_their_rows():
    a = Job(x=np.zeros((2, 2), np.float32), grid=np.linspace(0, 1, 2), cond={"y": np.array([3, 4]), "w": np.array([1.0, 2.0])})
    b = Job(x=np.ones((1, 2), np.float32), grid=np.linspace(0, 1, 3), cond={"y": np.array([7]), "w": np.array([0.5])})
    plan = plan_tick([a, b], 8, flowmap=True)
    assert plan.x.shape[0] == 4 and plan.cond["y"].tolist() == [3, 4, 7, 3] and plan.cond["w"].tolist() == [1, 2, 0.5, 1]
    with pytest.raises(Exception, match="one row per sample"):
        Job(x=np.zeros((2, 2)), grid=np.linspace(0, 1, 2), cond={"y": np.array([1])})


def test_auto_executor_moves_cheap_engines_onto_the_event_loop():
    async def go(delay):
        sched = StepScheduler(CountingEngine(kind="flowmap", delay=delay), max_batch=8, executor="auto")
        await sched.start()
        await sched.warmup([1, 8])
        mode = await sched.choose_executor()
        res = await sched.submit(Job(x=np.zeros((2, 2), np.float32), grid=np.linspace(0, 1, 4)))
        await sched.close()
        return mode, res.nfe

    assert asyncio.run(go(0.0)) == ("loop", 3)
    assert asyncio.run(go(0.01)) == ("thread", 3)


def test_auto_executor_keeps_velocity_models_on_a_thread():
    async def go():
        sched = StepScheduler(CountingEngine(kind="velocity"), max_batch=8, executor="auto")
        await sched.start()
        await sched.warmup([1, 8])
        mode = await sched.choose_executor()
        await sched.close()
        return mode

    assert asyncio.run(go()) == "thread"


def test_loop_executor_answers_a_finished_request_before_the_next_tick():
    # ticks run back to back for a while, but a tick that ends a request yields at once: its future is
    # settled while the long job beside it has taken part in no further tick
    eng = CountingEngine(kind="flowmap")

    async def go():
        sched = StepScheduler(eng, executor="loop")
        await sched.start()
        long = Job(x=base_noise_np(0, 1, (2,)), grid=np.linspace(0, 1, 2001))
        short = Job(x=base_noise_np(1, 1, (2,)), grid=np.linspace(0, 1, 4))
        with sched.hold():
            f_long, f_short = sched.submit(long), sched.submit(short)
        seen = []
        f_short.add_done_callback(lambda _f: seen.append(long.ticks))
        r = await f_short
        sched.cancel(long)
        await sched.close()
        return r, seen, f_long.cancelled()

    r, seen, cancelled = asyncio.run(go())
    assert r.ticks == 3 and seen == [3] and cancelled
