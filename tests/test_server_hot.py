"""The serving hot path: one vectorised base draw per tick, cached sampling specs, the fast JSON
body parser, and the front door outside FastAPI's middleware stack (user middleware still wraps it)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from test_server_planner import CountingEngine

from anystep.core.noise import base_noise_np, base_noise_rows_np
from anystep.server.jobs import Job, SchedulerError, SeededBase
from anystep.server.planner import draw_bases, plan_tick
from anystep.server.scheduler import StepScheduler
from anystep.server.schemas import ApiError, parse_json_body

SHAPE = (2,)


class CountingDraw:
    """``base_noise_rows_np`` that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, seeds):
        self.calls += 1
        return base_noise_rows_np(seeds, SHAPE)


def _seeded(seed, n, **kw):
    return Job(x=SeededBase(seed, n, SHAPE), grid=np.linspace(0, 1, 3), **kw)


# ---- draw_bases: pure, no threads -------------------------------------------------------------


def test_draw_bases_draws_every_pending_job_in_one_call_with_the_rows_of_its_seeds():
    jobs = [_seeded(5, 3), Job(x=np.ones((2, 2)), grid=np.linspace(0, 1, 2)), _seeded(100, 1), _seeded(7, 4)]
    draw = CountingDraw()
    assert draw_bases(jobs, draw) == 3 and draw.calls == 1
    np.testing.assert_array_equal(jobs[0].x, base_noise_np(5, 3, SHAPE))
    np.testing.assert_array_equal(jobs[1].x, np.ones((2, 2)))  # given start states untouched
    np.testing.assert_array_equal(jobs[2].x, base_noise_np(100, 1, SHAPE))
    np.testing.assert_array_equal(jobs[3].x, base_noise_np(7, 4, SHAPE))  # overlapping seeds: same rows
    assert all(j.base is None for j in jobs)
    assert draw_bases(jobs, draw) == 0 and draw.calls == 1  # nothing pending: no call
    plan = plan_tick(jobs, 64, flowmap=True)  # the drawn rows are what the first tick feeds the engine
    np.testing.assert_array_equal(plan.x[:3], base_noise_np(5, 3, SHAPE))


def test_a_sample_gets_the_same_start_state_alone_or_drawn_with_others():
    alone = _seeded(42, 2)
    draw_bases([alone], CountingDraw())
    crowd = [_seeded(s, 3) for s in (1, 40, 41, 900)]
    draw_bases(crowd, CountingDraw())
    np.testing.assert_array_equal(alone.x[0], crowd[1].x[2])  # seed 42: row 2 of the job of seeds 40..42
    np.testing.assert_array_equal(alone.x, crowd[2].x[1:])  # seeds 42, 43: rows 1, 2 of seeds 41..43


def test_draw_bases_failures_fail_the_pending_jobs_only():
    jobs = [_seeded(1, 2), Job(x=np.zeros((1, 2)), grid=np.linspace(0, 1, 2))]

    def broken(seeds):
        raise RuntimeError("boom")

    assert draw_bases(jobs, broken) == 1
    assert isinstance(jobs[0].error, SchedulerError) and "boom" in str(jobs[0].error) and jobs[1].error is None
    job = _seeded(1, 2)
    draw_bases([job], None)
    assert "no base sampler" in str(job.error)
    job = _seeded(1, 2)
    draw_bases([job], lambda seeds: np.zeros((seeds.size, 3), np.float32))
    assert "shape" in str(job.error)


# ---- the scheduler draws per tick ---------------------------------------------------------------


@pytest.mark.parametrize("executor", ["loop", "thread"])
def test_scheduler_draws_the_bases_of_jobs_starting_together_in_one_call(executor):
    async def go():
        draw = CountingDraw()
        sched = StepScheduler(CountingEngine(kind="flowmap"), max_batch=64, executor=executor, draw_base=draw)
        await sched.start()
        with sched.hold():
            futs = [sched.submit(_seeded(10 * i, 2)) for i in range(6)]
        res = await asyncio.gather(*futs)
        given = await sched.submit(Job(x=base_noise_np(20, 2, SHAPE), grid=np.linspace(0, 1, 3)))
        await sched.close()
        return draw.calls, res, given

    calls, res, given = asyncio.run(go())
    assert calls == 1  # six requests, one draw
    np.testing.assert_array_equal(res[2].x, given.x)  # seeded or given start states: the same samples


def test_scheduler_without_a_base_sampler_refuses_seeded_jobs():
    async def go():
        sched = StepScheduler(CountingEngine(kind="flowmap"), executor="loop")
        await sched.start()
        try:
            with pytest.raises(SchedulerError, match="base samples"):
                sched.submit(_seeded(0, 1))
        finally:
            await sched.close()

    asyncio.run(go())


# ---- specs and bodies ---------------------------------------------------------------------------


def test_json_body_fast_path_keeps_the_strict_parsers_answers():
    assert parse_json_body(b'{"steps": 4, "grid": [0, 0.5, 1]}') == {"steps": 4, "grid": [0, 0.5, 1]}
    assert parse_json_body(b'{"seed": 123456789012345678901234567890}')["seed"] == 123456789012345678901234567890
    for raw, code in ((b'{"n": NaN}', 400), (b"[1, 2]", 422), (b"\xff\xfe", 400), (b'{"n": 1', 400)):
        with pytest.raises(ApiError) as e:
            parse_json_body(raw)
        assert e.value.status == code


# ---- the app: front door, cached specs, user middleware ----------------------------------------


class Tag:
    """User middleware added after create_app (like Ray's replica middleware): tags every answer."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-tag", b"yes")]}
            await send(message)

        await self.inner(scope, receive, tagged)


@pytest.fixture(scope="module")
def tiny_app(tiny_app):
    """conftest's tiny app with :class:`Tag` added before it starts."""
    tiny_app.add_middleware(Tag)
    return tiny_app


def test_user_middleware_wraps_the_hot_routes_too(tiny_served):
    _, c = tiny_served
    r = c.post("/generate", json={"model": "checkerboard", "steps": 2, "n": 3, "seed": 1})
    assert r.status_code == 200 and r.headers["x-tag"] == "yes" and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content) and r.headers["x-anystep-steps"] == "2"
    assert c.get("/healthz").headers["x-tag"] == "yes"
    bad = c.post("/generate", json={"model": "checkerboard", "steps": 0})
    assert bad.status_code == 422 and bad.headers["x-tag"] == "yes" and bad.json()["field"] == "steps"


def test_grid_free_specs_are_resolved_once_per_model_and_parameters(tiny_served):
    from anystep.server.validation import sampling_spec

    app, c = tiny_served
    m = app.state.anystep.models["checkerboard"]
    a, b = sampling_spec(m, 1, steps=4), sampling_spec(m, 7, steps=4)
    assert a is b and not a.grid.flags.writeable and a.steps == 4
    assert sampling_spec(m, 1, steps=2) is not a
    custom = sampling_spec(m, 1, grid=[0, 0.5, 1])
    assert custom is not sampling_spec(m, 1, grid=[0, 0.5, 1]) and custom.grid.flags.writeable
    r1 = c.post("/generate", json={"model": "checkerboard", "steps": 4, "n": 2, "seed": 5}).json()
    r2 = c.post("/generate", json={"model": "checkerboard", "steps": 4, "n": 2, "seed": 5}).json()
    assert r1["samples"] == r2["samples"] and r1["grid"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    t = app.state.anystep.models["checkerboard-teacher"]
    d1, d2 = sampling_spec(t, 1, solver="dopri5"), sampling_spec(t, 4, solver="dopri5")
    assert d1.max_nfe >= d2.max_nfe  # dopri5's default bound depends on n: cached apart


# ---- the foreground gate: adaptive solves yield to fixed-step requests --------------------------


def test_foreground_is_busy_while_more_requests_than_adaptive_jobs_are_in_flight():
    from anystep.server.pacing import Foreground

    async def go():
        fg = Foreground()
        assert not fg.busy and fg.wait_idle(0.0)
        fg.enter()  # a dopri5 request arrives: busy until its job is known to be adaptive
        assert fg.busy
        fut = asyncio.get_running_loop().create_future()
        fg.adaptive_started(fut)
        assert not fg.busy
        fg.enter()  # a steps=1 request
        assert fg.busy and not fg.wait_idle(0.001)
        fg.leave()
        assert not fg.busy
        fut.set_result(None)
        await asyncio.sleep(0)  # done callbacks run on the loop
        assert fg.adaptive == 0 and fg.busy  # the dopri5 request still answers: foreground again
        fg.leave()
        assert not fg.busy and fg.requests == 0

    asyncio.run(go())


def _dopri5_job():
    return Job(x=np.ones((4, 2), np.float32), grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-3, max_nfe=500)


def test_adaptive_only_ticks_wait_while_the_foreground_is_busy_but_still_finish():
    from anystep.server.pacing import ADAPTIVE_MAX_DEFER_S, Foreground

    async def go(busy):
        fg = Foreground()
        sched = StepScheduler(CountingEngine(kind="velocity"), executor="thread", foreground=fg)
        await sched.start()
        fg.enter()  # the dopri5 request itself (the front door counts it; its job then cancels it out)
        if busy:
            fg.enter()  # a fixed-step request elsewhere that never ends (the worst case)
        t0 = time.perf_counter()
        res = await sched.submit(_dopri5_job())
        took = time.perf_counter() - t0
        fixed = time.perf_counter()
        await sched.submit(Job(x=np.ones((2, 2), np.float32), grid=np.linspace(0, 1, 9), method="euler"))
        fixed = time.perf_counter() - fixed
        await sched.close()
        return res, sched.stats.ticks, took, fixed

    free, ticks_free, took_free, _ = asyncio.run(go(False))
    held, ticks_held, took_held, fixed = asyncio.run(go(True))
    np.testing.assert_array_equal(free.x, held.x)  # the same solve, only paced
    assert ticks_free == ticks_held and free.nfe == held.nfe
    # two phases per tick wait (at most ADAPTIVE_MAX_DEFER_S each): the solve is paced, not stopped
    assert took_held >= 0.9 * ticks_held * ADAPTIVE_MAX_DEFER_S > took_free
    assert fixed < 8 * ADAPTIVE_MAX_DEFER_S  # fixed-step jobs never wait for the foreground


def test_adaptive_pause_paces_adaptive_ticks_to_their_share_while_traffic_is_recent():
    from anystep.server.pacing import ADAPTIVE_MAX_DEFER_S, Foreground, adaptive_pause

    assert adaptive_pause(0.001, share=0.25) == pytest.approx(0.003)  # 1 ms of work, 3 ms of pause: a 25% share
    assert adaptive_pause(1.0) == ADAPTIVE_MAX_DEFER_S and adaptive_pause(-1.0) == 0.0
    fg = Foreground()
    assert not fg.recently_busy()
    fg.enter()
    fg.leave()
    assert not fg.busy and fg.recently_busy(60.0) and not fg.recently_busy(0.0)


def test_a_fixed_step_job_does_not_wait_for_a_yielding_adaptive_solve_on_its_own_scheduler():
    from anystep.server.pacing import ADAPTIVE_MAX_DEFER_S, Foreground

    async def go():
        fg = Foreground()
        sched = StepScheduler(CountingEngine(kind="velocity", delay=0.0005), executor="thread", foreground=fg)
        await sched.start()
        fg.enter()  # the dopri5 request
        solve = sched.submit(Job(x=np.ones((4, 2), np.float32), grid=np.array([0.0, 1.0]), method="dopri5",
                                 rtol=1e-6, max_nfe=5000))
        fg.enter()  # the euler request: now the foreground is busy and the solve's ticks wait
        await asyncio.sleep(0.05)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            await sched.submit(Job(x=np.ones((1, 2), np.float32), grid=np.linspace(0, 1, 3), method="euler"))
            times.append(time.perf_counter() - t0)
        fg.leave()
        fg.leave()
        await solve
        await sched.close()
        return times

    times = asyncio.run(go())
    assert np.median(times) < ADAPTIVE_MAX_DEFER_S  # 2 ticks of ~0.5 ms, not a 10 ms deferral each


# ---- npy answers: the header built once per shape -------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2), (64, 2), (3, 1, 8, 8), (5,)])
def test_npy_answers_are_byte_for_byte_what_np_save_writes(shape):
    import io

    from anystep.server.routes import npy_bytes

    x = np.random.default_rng(0).standard_normal(shape)  # float64 in: answered as float32
    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32), allow_pickle=False)
    assert npy_bytes(x) == buf.getvalue()
    back = np.load(io.BytesIO(npy_bytes(x[::-1])), allow_pickle=False)  # non-contiguous views too
    np.testing.assert_array_equal(back, x[::-1].astype(np.float32))


# ---- tick metrics: two counters per engine call, the exposition of two histograms -------------


def test_lock_free_metrics_expose_exactly_what_prometheus_collectors_would():
    import random

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from anystep.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, ServerMetrics

    m = ServerMetrics()
    ref = CollectorRegistry()
    rows_h = Histogram("anystep_engine_batch_size", "Rows per engine call (samples fused across requests).",
                       ("model",), buckets=BATCH_BUCKETS, registry=ref)
    sec_h = Histogram("anystep_engine_call_seconds", "Wall time of one engine call.", ("model",),
                      buckets=LATENCY_BUCKETS, registry=ref)
    req_c = Counter("anystep_requests", "Requests answered, by route, model, steps and HTTP status.",
                    ("route", "model", "steps", "status"), registry=ref)
    lat_h = Histogram("anystep_request_latency_seconds", "End-to-end latency of successful generate/encode requests.",
                      ("model", "steps"), buckets=LATENCY_BUCKETS, registry=ref)
    rng = random.Random(0)
    for i in range(400):  # values on the bucket bounds too (le: bound included)
        rows = rng.choice([1, 2, 3, 4, 7, 8, 9, 64, 65, 256, 300, 5000])
        sec = 0.025 if i % 7 == 0 else rng.random() * rng.choice([1e-4, 0.1, 10.0])
        model = rng.choice(["a", "b"])
        m.observe_tick(model, rows, sec)
        rows_h.labels(model=model).observe(rows)
        sec_h.labels(model=model).observe(sec)
        route, steps, status = rng.choice(["/generate", "/encode", "/healthz"]), rng.choice([1, 4, None]), rng.choice([200, 422])
        m.observe_request(route, model, steps, status, sec)
        label = str(steps) if steps is not None else "-"
        req_c.labels(route=route, model=model, steps=label, status=str(status)).inc()
        if status == 200 and route != "/healthz":
            lat_h.labels(model=model, steps=label).observe(sec)

    def lines(text: str) -> list[str]:
        return sorted(line for line in text.splitlines()
                      if line.lstrip("# HELPTY").startswith(("anystep_engine_", "anystep_request"))
                      and "_created" not in line)

    got, want = lines(m.render().decode()), lines(generate_latest(ref).decode())
    assert got == want and len(got) > 100


# ---- the request body straight from the ASGI messages -----------------------------------------


class _AsgiRequest:
    """What read_body uses of a starlette Request: the scope and receive()."""

    def __init__(self, messages, headers):
        self.scope = {"headers": headers}
        self._messages = list(messages)

    async def receive(self):
        return self._messages.pop(0)


def _read(messages, headers, limit=100):
    from anystep.server.routes import read_body

    return asyncio.run(read_body(_AsgiRequest(messages, headers), limit))


def test_read_body_joins_chunks_and_reads_the_media_type():
    msgs = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"",
                                                                          "more_body": True},
            {"type": "http.request", "body": b"cd"}]
    hdrs = [(b"content-type", b"Application/X-NPY; charset=x"), (b"content-type", b"text/plain")]
    assert _read(msgs, hdrs) == (b"abcd", "application/x-npy")  # the first of repeated headers
    assert _read([{"type": "http.request", "body": b"{}"}], []) == (b"{}", "")


def test_read_body_limits_and_bad_lengths_are_4xx_and_a_gone_client_is_clientdisconnect():
    from starlette.requests import ClientDisconnect

    with pytest.raises(ApiError) as e:  # announced too large: no read at all
        _read([], [(b"content-length", b"101")])
    assert e.value.status == 413
    with pytest.raises(ApiError) as e:  # streamed past the limit without a length
        _read([{"type": "http.request", "body": b"x" * 60, "more_body": True},
               {"type": "http.request", "body": b"x" * 60}], [])
    assert e.value.status == 413
    for bad in (b"12a", b"\xd9\xa3", b"-1"):
        with pytest.raises(ApiError) as e:
            _read([{"type": "http.request", "body": b""}], [(b"content-length", bad)])
        assert e.value.status == 400
    with pytest.raises(ClientDisconnect):
        _read([{"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.disconnect"}], [])
