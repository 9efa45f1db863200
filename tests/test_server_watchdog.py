"""The app's one watchdog: request deadlines and gone clients on a single timer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from anystep.server.engine_base import Engine
from anystep.server.jobs import Job
from anystep.server.routes import run_job
from anystep.server.scheduler import StepScheduler
from anystep.server.schemas import ApiError
from anystep.server.watchdog import Watchdog


def _never() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


async def _false() -> bool:
    return False


async def _true() -> bool:
    return True


def test_a_request_past_its_deadline_is_stopped_once_with_reason_timeout():
    async def go():
        wd = Watchdog(poll_s=0.5)
        stops: list[float] = []
        fut = _never()
        t0 = time.perf_counter()
        w = wd.watch(fut, 0.05, _false, lambda: stops.append(time.perf_counter() - t0))
        await asyncio.sleep(0.3)
        wd.unwatch(w)
        return w, stops

    w, stops = asyncio.run(go())
    assert w.why == "timeout"
    assert len(stops) == 1 and 0.04 <= stops[0] < 0.25  # the deadline, not the 0.5 s poll, set the sweep


def test_a_gone_client_is_stopped_after_one_poll_and_a_fast_request_is_never_asked():
    async def go():
        wd = Watchdog(poll_s=0.05)
        asked: list[int] = []

        async def gone() -> bool:
            asked.append(1)
            return True

        stops: list[str] = []
        slow = wd.watch(_never(), 10.0, gone, lambda: stops.append("slow"))
        fast_fut = _never()
        fast = wd.watch(fast_fut, 10.0, gone, lambda: stops.append("fast"))
        fast_fut.set_result(None)  # finished before the first sweep
        wd.unwatch(fast)
        await asyncio.sleep(0.2)
        wd.unwatch(slow)
        return slow, fast, stops, asked

    slow, fast, stops, asked = asyncio.run(go())
    assert slow.why == "client" and fast.why is None
    assert stops == ["slow"] and len(asked) == 1  # asked once, stopped once


def test_many_requests_share_one_timer_and_an_idle_watchdog_stops_sweeping():
    async def go():
        wd = Watchdog(poll_s=0.05)
        watches = [wd.watch(_never(), 10.0, _false, lambda: None) for _ in range(200)]
        await asyncio.sleep(0.12)
        during = wd.sweeps
        for w in watches:
            w.fut.cancel()
            wd.unwatch(w)
        await asyncio.sleep(0.1)  # at most the one already armed sweep runs, and it does not re-arm
        after = wd.sweeps
        await asyncio.sleep(0.15)
        return during, after, wd.sweeps, len(wd)

    during, after, final, left = asyncio.run(go())
    assert 1 <= during <= 4  # one timer for 200 requests: a sweep per poll, not one per request
    assert final == after and left == 0


def test_poll_must_be_positive():
    with pytest.raises(ValueError, match="poll_s"):
        Watchdog(poll_s=0)


class _SlowEngine(Engine):
    name = "slow"

    def _run(self, x, *times, **cond):
        time.sleep(0.02)
        return x.copy()


class _FakeRequest:
    def __init__(self, gone: bool) -> None:
        self.gone = gone

    async def is_disconnected(self) -> bool:
        return self.gone


class _Model:
    def __init__(self, sched: StepScheduler) -> None:
        self.scheduler = sched


@pytest.mark.parametrize(("gone", "timeout_s", "status", "error"), [(True, 30.0, 499, "client_closed"),
                                                                      (False, 0.05, 503, "timeout")])
def test_run_job_stops_the_job_of_a_gone_client_or_past_its_deadline(gone, timeout_s, status, error):
    async def go():
        sched = StepScheduler(_SlowEngine("flowmap", (2,)), max_batch=4)
        await sched.start()
        wd = Watchdog(poll_s=0.05)
        job = Job(np.zeros((2, 2), np.float32), np.linspace(0.0, 1.0, 101))  # 100 ticks of 20 ms: 2 s
        t0 = time.perf_counter()
        with pytest.raises(ApiError) as e:
            await run_job(_FakeRequest(gone), _Model(sched), job, timeout_s, wd)
        took = time.perf_counter() - t0
        ticks = job.ticks
        await asyncio.sleep(0.1)
        await sched.close()
        return e.value, took, ticks, job, len(wd)

    err, took, ticks, job, left = asyncio.run(go())
    assert err.status == status and err.body()["error"] == error
    assert took < 1.0 and job.cancelled and left == 0
    assert job.ticks <= ticks + 1  # no tick after the one in flight when it was stopped
