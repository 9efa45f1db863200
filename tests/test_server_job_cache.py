"""Per-grid arrays cached across jobs, the jobs' own time rows, and the finite check of a result (no HTTP)."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from anystep.server import grid_cache
from anystep.server.jobs import Job, all_finite, grid_arrays
from anystep.server.scheduler import NonFiniteError, StepScheduler


class _AffineMap:
    """A flow-map engine stand-in: ``X_{s,t}(x) = x (1 + s) + t`` (depends on x, s and t)."""

    kind = "flowmap"
    data_shape = (2,)

    def __init__(self, poison: bool = False) -> None:
        self.poison = poison

    def evaluate(self, x, s, t):
        y = x * (1 + s[:, None]) + t[:, None]
        if self.poison:
            y[0, 0] = np.nan
        return y.astype(np.float32)

    def warmup(self, sizes, repeats=1):
        return []


def _solve(engine, grids, x0, executor="loop"):
    async def go():
        sched = StepScheduler(engine, executor=executor)
        await sched.start()
        try:
            return await asyncio.gather(
                *[sched.submit(Job(x=x0, grid=g)) for g in grids], return_exceptions=True
            )
        finally:
            await sched.close()

    return asyncio.run(go())


def _expected(x0, grid):
    x = np.array(x0, dtype=np.float32)
    g32 = np.asarray(grid, dtype=np.float64).astype(np.float32)
    for s, t in itertools.pairwise(g32):
        x = (x * (1 + s) + t).astype(np.float32)
    return x


def test_grid_arrays_shared_read_only_and_apart():
    grid_cache._GRIDS.clear()
    a = grid_arrays(np.array([1.0, 0.5, 0.0]))
    b = grid_arrays(np.array([1.0, 0.5, 0.0]))  # equal times, another array: the same arrays
    c = grid_arrays(np.array([1.0, 0.25, 0.0]))
    assert a is b and c is not a
    for arr in (a.step_s, a.step_t, a.times):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 7.0
    np.testing.assert_array_equal(a.step_s, np.float32([1.0, 0.5]))
    np.testing.assert_array_equal(c.step_t, np.float32([0.25, 0.0]))
    assert a.step_s.dtype == np.float32 and a.times.shape == (2, 2, 1)


def test_grid_cache_bounded_and_long_grids_not_kept(monkeypatch):
    grid_cache._GRIDS.clear()
    monkeypatch.setattr(grid_cache, "GRID_CACHE_MAX", 3)
    for k in range(7):
        grid_arrays(np.linspace(1.0, 0.0, k + 2))
        assert len(grid_cache._GRIDS) <= 3
    grid_cache._GRIDS.clear()
    long = np.linspace(1.0, 0.0, grid_cache.GRID_CACHE_SIZE + 1)
    arrays = grid_arrays(long)
    assert not grid_cache._GRIDS and arrays is not grid_arrays(long)
    np.testing.assert_array_equal(arrays.step_t, long[1:].astype(np.float32))


@pytest.mark.parametrize("n", [1, 3])
def test_time_rows_are_each_jobs_own(n):
    grid = np.array([1.0, 0.5, 0.0])
    grid.flags.writeable = False  # as the shared spec grids of the HTTP layer
    a, b = Job(x=np.zeros((n, 2)), grid=grid), Job(x=np.zeros((n, 2)), grid=grid)
    assert a.step_s is b.step_s  # shared, read-only
    for k in range(2):
        a.at = b.at = k
        (sa, ta), (sb, tb) = a.time_rows(), b.time_rows()
        np.testing.assert_array_equal(sa, np.full(n, np.float32(grid[k])))
        np.testing.assert_array_equal(ta, np.full(n, np.float32(grid[k + 1])))
        assert sa.flags.writeable and sa.dtype == np.float32 and sa.shape == (n,)  # torch takes them as is
        assert not np.shares_memory(sa, sb) and not np.shares_memory(ta, tb)
    assert not a.every.flags.writeable and a.live() is a.every
    np.testing.assert_array_equal(a.every, np.arange(n))


def test_cached_answers_equal_fresh_and_specs_apart():
    x0 = np.array([[0.25, -1.5]], dtype=np.float32)
    grids = [np.array([1.0, 0.0]), np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.3, 1.0])]
    grid_cache._GRIDS.clear()
    fresh = [_solve(_AffineMap(), [g], x0)[0].x for g in grids]  # each grid derived for its job
    assert len(grid_cache._GRIDS) == len(grids)
    cached = _solve(_AffineMap(), [g.copy() for g in grids] * 2, x0)  # from the cache, sharing ticks
    for i, g in enumerate(grids * 2):
        np.testing.assert_array_equal(cached[i].x, fresh[i % len(grids)])
        np.testing.assert_array_equal(cached[i].x, _expected(x0, g))
    assert not np.array_equal(fresh[0], fresh[1]) and not np.array_equal(fresh[1], fresh[2])
    threaded = _solve(_AffineMap(), grids, x0, executor="thread")
    for r, want in zip(threaded, fresh):
        np.testing.assert_array_equal(r.x, want)


@np.errstate(over="ignore", invalid="ignore")  # the float32 sums of the large cases overflow
def test_all_finite_small_and_large():
    for size in (1, 2, 64, 65, 1000):
        x = np.linspace(-3, 3, size, dtype=np.float32).reshape(size, 1)
        assert all_finite(x)
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[size // 2] = bad
            assert not all_finite(y)
        big = np.full((size, 1), np.finfo(np.float32).max, dtype=np.float32)  # a float32 sum overflows
        assert all_finite(big)
        big[-1] = -np.inf
        assert not all_finite(big)
    mixed = np.float32([[np.inf, -np.inf]])  # inf - inf: still not finite
    assert not all_finite(mixed)


def test_non_finite_output_fails_the_job():
    (r,) = _solve(_AffineMap(poison=True), [np.array([1.0, 0.0])], np.zeros((1, 2), np.float32))
    assert isinstance(r, NonFiniteError) and "1 of 1 samples" in str(r)
