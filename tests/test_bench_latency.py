"""Tests of the latency and load benchmarks (statistics, reports, the loopback client, quick runs)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from anystep.benchmarks import latency as L
from anystep.benchmarks import load as LD

# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
    st.floats(min_value=0, max_value=100),
)
@settings(max_examples=200, deadline=None)
def test_percentile_matches_numpy_linear(values, q):
    assert L.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_percentile_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        L.percentile(bad, 50)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_q_out_of_range(q):
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        L.percentile([1.0, 2.0], q)


def test_summarize_orders_statistics_and_converts_to_ms():
    rng = np.random.default_rng(3)
    secs = rng.lognormal(-6, 1, size=101)
    s = L.summarize(secs)
    assert s.n == 101
    assert s.min_ms <= s.median_ms <= s.p95_ms <= s.max_ms
    assert s.median_ms == pytest.approx(np.median(secs) * 1000)
    assert s.mean_ms == pytest.approx(secs.mean() * 1000)


def _dominates(a, b):
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


points_strategy = st.lists(
    st.tuples(st.floats(0.001, 1000, allow_nan=False), st.floats(0.0, 10, allow_nan=False)), min_size=0, max_size=30
)


@given(points_strategy)
@settings(max_examples=300, deadline=None)
def test_pareto_front_is_exactly_the_non_dominated_set(points):
    front = L.pareto_front(points)
    fs = set(front)
    assert len(fs) == len(front)
    for i in front:  # nobody dominates a front point
        assert not any(_dominates(points[j], points[i]) for j in range(len(points)) if j != i)
    for i in range(len(points)):  # every other point is dominated by, or equal to, a front point
        if i not in fs:
            assert any(_dominates(points[j], points[i]) or points[j] == points[i] for j in front)
    xs = [points[i][0] for i in front]
    ys = [points[i][1] for i in front]
    assert xs == sorted(xs)
    assert all(a > b for a, b in itertools.pairwise(ys))


def test_pareto_front_skips_non_finite_points():
    pts = [(1.0, float("nan")), (float("inf"), 0.0), (2.0, 1.0), (3.0, 2.0)]
    assert L.pareto_front(pts) == [2]


# --------------------------------------------------------------------------------------
# interleaved timing
# --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_methods(clock, costs, log):
    def make(k, c):
        def fn():
            log.append(k)
            clock.now += c
            return k

        return fn

    return {k: make(k, c) for k, c in costs.items()}


def test_interleaved_timing_blocks_rounds_and_orders():
    clock = FakeClock()
    log: list[str] = []
    costs = {"fast": 0.001, "mid": 0.01, "slow": 0.2, "d": 0.003, "e": 0.02}
    res = L.interleaved_timing(_fake_methods(clock, costs, log), rounds=8, warmup=2, block_s=0.05,
                               max_calls_per_block=1000, clock=clock, seed=1)
    assert res.rounds == 8
    # each call is timed exactly (fake clock) and blocks scale with speed
    for k, c in costs.items():
        assert res.seconds[k] == pytest.approx([c] * (8 * res.calls_per_round[k]))
        assert res.outputs[k] == k
    assert res.calls_per_round["fast"] == 50 and res.calls_per_round["slow"] == 1
    # warm-up calls are made but not timed
    assert log.count("slow") == 2 + 8
    # the order of methods changes between rounds
    timed = log[2 * len(costs):]
    orders, i = [], 0
    for _ in range(8):
        order = []
        while len(order) < len(costs):
            k = timed[i]
            order.append(k)
            i += res.calls_per_round[k]
        orders.append(tuple(order))
    assert len(set(orders)) > 1


def test_interleaved_timing_budget_cuts_rounds_but_not_below_minimum():
    clock = FakeClock()
    res = L.interleaved_timing(_fake_methods(clock, {"a": 0.5, "b": 0.5}, []), rounds=20, min_rounds=3,
                               warmup=1, block_s=0.01, budget_s=2.0, clock=clock)
    assert res.rounds == 3  # a round costs 1 s: the budget allows 2, the minimum is 3
    res = L.interleaved_timing(_fake_methods(clock, {"a": 0.01}, []), rounds=5, warmup=1, block_s=0.01,
                               budget_s=100.0, clock=clock)
    assert res.rounds == 5


def test_interleaved_timing_validates_arguments():
    with pytest.raises(ValueError):
        L.interleaved_timing({})
    with pytest.raises(ValueError):
        L.interleaved_timing({"a": lambda: None}, rounds=0)


# --------------------------------------------------------------------------------------
# methods, settings, goals, report
# --------------------------------------------------------------------------------------


def test_solver_methods_match_nfe_to_stages():
    specs = L.solver_methods(steps=(1, 4), solver_nfe=(1, 2, 4, 6, 8), rtols=(1e-5, 1e-3))
    keys = [s.key for s in specs]
    assert keys[:2] == ["flowmap-1", "flowmap-4"]
    assert {s.nfe for s in specs if s.family == "euler"} == {1, 2, 4, 6, 8}
    assert {s.nfe for s in specs if s.family == "heun"} == {2, 4, 6, 8}
    assert {s.nfe for s in specs if s.family == "rk4"} == {4, 8}
    for s in specs:
        if s.family in L.STAGES:
            assert s.steps * L.STAGES[s.family] == s.nfe
    assert [s.rtol for s in specs if s.family == "dopri5"] == [1e-3, 1e-5]
    with pytest.raises(L.LatencyBenchError, match="unknown solver"):
        L.solver_methods(solvers=("midpoint",))
    with pytest.raises(L.LatencyBenchError):
        L.solver_methods(rtols=(2.0,))


def test_settings_validation_messages():
    with pytest.raises(L.LatencyBenchError, match="engine"):
        L.BenchSettings(engines=("cuda-magic",))
    with pytest.raises(L.LatencyBenchError, match="batch"):
        L.BenchSettings(batch_sizes=(0,))
    with pytest.raises(LD.LoadBenchError, match="concurrency"):
        LD.LoadSettings(concurrency=(0,))
    with pytest.raises(LD.LoadBenchError, match="request count"):
        LD.LoadSettings(concurrency=(1, 3), requests={1: 5})


def _row(key, family, steps, rtol, med, kl, batch=1):
    r = L.SamplerRow(key=key, label=key, family=family, steps=steps, rtol=rtol, quality={"kl": kl, "w2": kl})
    r.latency[batch] = L.LatencyStats(n=5, median_ms=med, p95_ms=med * 1.5, mean_ms=med, min_ms=med, max_ms=med * 2)
    r.nfe[batch] = steps or 100
    r.throughput[batch] = batch / med * 1000
    return r


def _fake_results(fm_ms, fm_kl, ref_ms=10.0, ref_kl=0.1):
    rows = [_row("flowmap-1", "flow map", 1, None, fm_ms, fm_kl), _row("euler-8", "euler", 8, None, 1.0, 0.5),
            _row("dopri5-1e-05", "dopri5", None, 1e-5, ref_ms, ref_kl)]
    L._mark_pareto(rows, "kl", [1])
    eng = []
    for engine, ms in (("torch", 0.3), ("onnx", 0.1)):
        e = L.EngineRow(key="flowmap-1", label="flow map, K=1", family="flow map", steps=1, rtol=None,
                        quality={"kl": fm_kl}, engine=engine, max_abs_diff=0.0)
        e.latency[1] = L.LatencyStats(n=5, median_ms=ms, p95_ms=ms, mean_ms=ms, min_ms=ms, max_ms=ms)
        eng.append(e)
    return {"checkerboard": {
        "models": {"dataset": "checkerboard", "data_shape": [2], "flowmap": None, "teacher": None},
        "quality_metric": "kl", "n_quality": 1000, "floor": {"kl": 0.05, "w2": 0.01}, "rows": rows,
        "speedup_vs": "dopri5-1e-05", "speedups": L.speedups(rows, "kl", [1], "dopri5-1e-05"),
        "engine_rows": eng, "engine_skipped": [{"engine": "tensorrt", "method": "all", "reason": "no GPU"}],
    }}


def test_speedups_and_goals_follow_the_thresholds():
    s = L.BenchSettings(batch_sizes=(1,))
    res = _fake_results(fm_ms=0.25, fm_kl=0.12)  # 40x faster, KL ratio 1.2
    sp = res["checkerboard"]["speedups"]
    assert sp[0]["speedup"] == pytest.approx(40.0)
    assert sp[0]["quality_ratio"] == pytest.approx(1.2)
    assert sp[0]["matched"] is False
    goals = L.evaluate_goals(res, s)
    assert goals[0]["met"] is True
    assert goals[0]["per_batch"][0]["excess_kl_ratio"] == pytest.approx((0.12 - 0.05) / (0.1 - 0.05))
    assert goals[1]["speedup"] == pytest.approx(3.0) and goals[1]["met"] is True
    # too slow, or too poor a KL: missed
    assert L.evaluate_goals(_fake_results(fm_ms=1.0, fm_kl=0.12), s)[0]["met"] is False
    assert L.evaluate_goals(_fake_results(fm_ms=0.25, fm_kl=0.2), s)[0]["met"] is False
    # pareto: the fast flow map and dopri5 (best KL) are on the front, Euler (worse and slower than fm) is not
    rows = {r.key: r for r in res["checkerboard"]["rows"]}
    assert rows["flowmap-1"].pareto[1] and rows["dopri5-1e-05"].pareto[1] and not rows["euler-8"].pareto[1]


def test_render_markdown_and_notes_round_trip(tmp_path):
    s = L.BenchSettings(batch_sizes=(1,))
    results = _fake_results(fm_ms=0.25, fm_kl=0.12)
    data = {"settings": s, "command": "python -m anystep.benchmarks.latency --quick",
            "machine_description": "Test CPU, 2 cores", "load_average": [1.0, 1.0, 1.0],
            "versions": {"torch": "x"}, "started_at": "now", "duration_s": 1.0, "results": results,
            "goals": L.evaluate_goals(results, s), "profiles": {}, "plot": None}
    md = L.render_markdown(data, notes="keep me: profiled X")
    assert "python -m anystep.benchmarks.latency --quick" in md and "Test CPU, 2 cores" in md
    assert "| flowmap-1 |" in md and "tensorrt skipped (all): no GPU" in md
    assert "## Goals" in md and "met" in md
    path = tmp_path / "latency.md"
    path.write_text(md)
    assert L.existing_notes(path) == "keep me: profiled X"
    png = L.make_plot(results, s, tmp_path / "latency.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# load benchmark pieces
# --------------------------------------------------------------------------------------

PROM_BEFORE = """# HELP anystep_engine_batch_size Rows per engine call.
# TYPE anystep_engine_batch_size histogram
anystep_engine_batch_size_bucket{le="1.0",model="cb"} 2.0
anystep_engine_batch_size_bucket{le="2.0",model="cb"} 3.0
anystep_engine_batch_size_bucket{le="4.0",model="cb"} 3.0
anystep_engine_batch_size_bucket{le="+Inf",model="cb"} 3.0
anystep_engine_batch_size_count{model="cb"} 3.0
anystep_engine_batch_size_sum{model="cb"} 4.0
anystep_engine_batch_size_bucket{le="1.0",model="other"} 9.0
anystep_engine_batch_size_bucket{le="+Inf",model="other"} 9.0
anystep_engine_batch_size_count{model="other"} 9.0
anystep_engine_batch_size_sum{model="other"} 9.0
"""
PROM_AFTER = PROM_BEFORE.replace('le="1.0",model="cb"} 2.0', 'le="1.0",model="cb"} 4.0').replace(
    'le="2.0",model="cb"} 3.0', 'le="2.0",model="cb"} 5.0').replace(
    'le="4.0",model="cb"} 3.0', 'le="4.0",model="cb"} 8.0').replace(
    'le="+Inf",model="cb"} 3.0', 'le="+Inf",model="cb"} 9.0').replace(
    'count{model="cb"} 3.0', 'count{model="cb"} 9.0').replace('sum{model="cb"} 4.0', 'sum{model="cb"} 24.0')


def test_histogram_delta_between_scrapes():
    b, a = LD.parse_prometheus(PROM_BEFORE), LD.parse_prometheus(PROM_AFTER)
    h = LD.histogram_delta(b, a, "anystep_engine_batch_size", model="cb")
    counts = {bk["le"]: bk["count"] for bk in h["buckets"]}
    assert counts == {1.0: 2, 2.0: 0, 4.0: 3, math.inf: 1}
    assert h["count"] == 6 == sum(counts.values())
    assert h["mean"] == pytest.approx(20.0 / 6)
    empty = LD.histogram_delta(a, a, "anystep_engine_batch_size", model="cb")
    assert empty["count"] == 0 and empty["mean"] is None


def test_parse_prometheus_skips_comments_and_garbage():
    out = LD.parse_prometheus("# comment\nfoo 1\nbar{a=\"x\",b=\"y\"} 2.5\nnot a sample\nbaz{a=\"1\"} NaNx\n")
    assert out[("foo", ())] == 1.0
    assert out[("bar", (("a", "x"), ("b", "y")))] == 2.5
    assert len(out) == 2


def test_make_requests_is_seeded_and_draws_from_the_mix():
    a = LD.make_requests(400, (1, 2, 4, 8), seed=5)
    b = LD.make_requests(400, (1, 2, 4, 8), seed=5)
    assert [r.steps for r in a] == [r.steps for r in b]
    assert {r.steps for r in a} == {1, 2, 4, 8}
    assert len({r.seed for r in a}) == 400
    assert [r.steps for r in LD.make_requests(400, (1, 2, 4, 8), seed=6)] != [r.steps for r in a]


def test_summarize_phase_counts_errors_and_throughput():
    recs = [LD.RequestRecord(steps=k, status=200, latency_s=0.01 * k) for k in (1, 2, 4, 8)]
    recs += [LD.RequestRecord(steps=1, status=429, latency_s=0.001),
             LD.RequestRecord(steps=2, status=0, latency_s=1.0, error="TimeoutError")]
    s = LD.summarize_phase(LD.PhaseResult(concurrency=2, wall_s=2.0, records=recs), n=3)
    assert s["ok"] == 4 and s["sent"] == 6 and s["error_count"] == 2
    assert s["errors"] == {"429": 1, "TimeoutError": 1}
    assert s["evals_per_s"] == pytest.approx((1 + 2 + 4 + 8) * 3 / 2.0)
    assert s["requests_per_s"] == pytest.approx(2.0)
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]


def test_categorize_stacks_assigns_layers():
    text = (
        "run (server/scheduler.py:1);step (server/engines.py:2);forward (torch/nn/linear.py:3) 6\n"
        "run (uvicorn/server.py:1);handle (h11/_conn.py:2) 3\n"
        "run (asyncio/base_events.py:1);generate (server/app.py:5) 1\n"
        "garbage line"
    )
    out = LD.categorize_stacks(text)
    assert out["samples"] == 10
    assert out["categories"]["engine call (torch / ONNX Runtime compute)"] == pytest.approx(0.6)
    assert out["categories"]["uvicorn HTTP protocol"] == pytest.approx(0.3)
    assert out["categories"]["request handler (parse, validate, encode response)"] == pytest.approx(0.1)
    assert out["top_self"][0]["frame"].startswith("forward")


async def _tiny_http_server(replies):
    """A raw asyncio HTTP server answering each request with the next canned reply."""
    it = iter(replies)
    seen = []

    async def handle(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            seen.append((head.split(b"\r\n")[0].decode(), body))
            reply, close = next(it)
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_loopback_client_keepalive_chunked_and_reconnect():
    async def go():
        replies = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Anystep-Time-Ms: 1.5\r\n\r\nhello", False),
            (b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True),
        ]
        server, port, seen = await _tiny_http_server(replies)
        c = LD.LoopbackClient(port, timeout_s=5)
        try:
            st1, h1, b1 = await c.request("POST", "/generate", b'{"steps": 1}')
            st2, _, b2 = await c.request("GET", "/x")  # same connection; the server closes after it
            st3, _, b3 = await c.request("GET", "/y")  # reconnects
        finally:
            await c.close()
            server.close()
            await server.wait_closed()
        return (st1, h1, b1, st2, b2, st3, b3, seen)

    st1, h1, b1, st2, b2, st3, b3, seen = asyncio.run(go())
    assert (st1, b1, h1["x-anystep-time-ms"]) == (200, b"hello", "1.5")
    assert (st2, b2) == (404, b"abcde")
    assert (st3, b3) == (200, b"ok")
    assert seen[0] == ("POST /generate HTTP/1.1", b'{"steps": 1}')
    assert [s[0] for s in seen[1:]] == ["GET /x HTTP/1.1", "GET /y HTTP/1.1"]


def test_loopback_client_only_takes_a_port():
    c = LD.LoopbackClient(8000)
    assert c.host == "127.0.0.1"
    with pytest.raises(LD.LoadBenchError):
        LD.LoopbackClient(0)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_bench_cli_lists_benchmarks_and_delegates(monkeypatch):
    from anystep.benchmarks.cli import bench

    runner = CliRunner()
    res = runner.invoke(bench, ["--help"])
    assert res.exit_code == 0
    for name in ("checkerboard", "digits", "latency", "load", "load-triton", "load-nfe"):
        assert name in res.output
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 3

    monkeypatch.setattr(L, "main", fake_main)
    res = runner.invoke(bench, ["latency", "--quick", "--models", "x"])
    assert seen["argv"] == ["--quick", "--models", "x"]
    assert res.exit_code == 3


def test_bench_cli_usage_error_exits_2():
    from anystep.benchmarks.cli import bench

    res = CliRunner().invoke(bench, ["load", "--no-such-option"])
    assert res.exit_code == 2
    assert "unrecognized arguments" in res.output


# --------------------------------------------------------------------------------------
# quick end-to-end runs (slow)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from anystep.server.testing import make_tiny_models

    root = tmp_path_factory.mktemp("bench-models")
    make_tiny_models(root, digits=False)
    return root


@pytest.mark.slow
def test_latency_quick_run_end_to_end(tiny_models, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    code = L.main(["--quick", "--models", "checkerboard", "--models-dir", str(tiny_models), "--out", str(out),
                   "--work-dir", str(work), "--batch-sizes", "1,4", "--engine-steps", "2",
                   "--engines", "torch,onnx,onnx-fused,tensorrt", "--n-quality", "1000"])
    assert code == 0
    data = json.loads((out / "latency.json").read_text())
    assert data["command"].startswith("python -m anystep.benchmarks.latency --quick")
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    res = data["results"]["checkerboard"]
    rows = {r["key"]: r for r in res["rows"]}
    assert {"flowmap-1", "flowmap-2", "flowmap-4", "euler-1", "heun-2", "rk4-4", "dopri5-1e-05"} <= set(rows)
    for r in rows.values():
        for b in ("1", "4"):
            st_ = r["latency"][b]
            assert 0 < st_["median_ms"] <= st_["p95_ms"] <= st_["max_ms"]
            assert r["throughput"][b] == pytest.approx(int(b) / (st_["median_ms"] / 1000))
        assert r["quality"]["kl"] > 0 and r["quality"]["w2"] > 0
    assert rows["flowmap-4"]["nfe"]["1"] == 4 and rows["rk4-8"]["nfe"]["4"] == 8
    assert rows["dopri5-1e-05"]["nfe"]["1"] > rows["dopri5-0.001"]["nfe"]["1"] >= 7
    eng = {(r["engine"], r["key"]): r for r in res["engine_rows"]}
    for e in ("torch", "onnx", "onnx-fused"):
        assert ("flowmap-2", e) in {(k, en) for (en, k) in eng}
        assert eng[(e, "flowmap-2")]["max_abs_diff"] < 1e-3
    assert eng[("onnx", "dopri5-1e-05")]["max_abs_diff"] < 1e-2
    skipped = {s["engine"]: s["reason"] for s in res["engine_skipped"]}
    import torch

    if not torch.cuda.is_available():
        assert "GPU" in skipped["tensorrt"]
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "latency.md").read_text()
    assert "### Engines" in md and "### Samplers (torch eager)" in md
    goal_names = " ".join(g["goal"] for g in data["goals"])
    assert "dopri5" in goal_names and "ONNX Runtime" in goal_names


@pytest.mark.slow
def test_load_quick_run_end_to_end(tiny_models, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    code = LD.main(["--quick", "--models-dir", str(tiny_models), "--out", str(out), "--work-dir", str(work),
                    "--concurrency", "1,4", "-n", "1,2", "--requests", "24", "--time-limit", "20",
                    "--probe-pairs", "10"])
    assert code == 0
    data = json.loads((out / "load.json").read_text())
    res = data["results"]["checkerboard"]
    for mode in ("on", "off"):
        run_ = res["runs"][mode]
        assert run_["server_exit_code"] in (0, -15)  # uvicorn re-raises SIGTERM after a graceful stop
        assert run_["probe"]["served"]["median_ms"] > 0 and run_["probe"]["ratio_p50"] > 0
        assert len(run_["phases"]) == 4
        for p in run_["phases"]:
            assert p["error_count"] == 0 and p["ok"] == p["sent"] == 24
            h = p["batch_size"]
            assert h["count"] == sum(b["count"] for b in h["buckets"]) == p["engine_calls"]
            # every sample-step is one row of some engine call
            assert h["sum"] == pytest.approx(p["evals_per_s"] * p["wall_s"], rel=1e-6)
            top = max((b["le"] for b in h["buckets"] if b["count"]), default=0)
            if mode == "off":  # one request at a time: never more rows than its n
                assert h["sum"] / h["count"] <= p["n"] + 1e-9 and top <= max(1, 2 ** math.ceil(math.log2(p["n"])))
            assert p["served_raw_ratio"] is not None and p["served_raw_ratio"] > 0
            # the empty-route ceiling is measured once (batching on) and applies to both modes
            assert p["http_ceiling_requests_per_s"] > 0 and 0 < p["ceiling_raw_ratio"] <= 1
    ceiling = res["runs"]["on"]["http_ceiling"]
    assert set(map(int, ceiling)) == {1, 4} and all(h["ok"] == h["sent"] == 24 for h in ceiling.values())
    assert "off" in res["runs"] and "http_ceiling" not in res["runs"]["off"]
    md = (out / "load.md").read_text()
    assert "HTTP ceiling" in md
    assert "Step-level batching on" in md and "Step-level batching off" in md
    assert any("within 2x" in g["goal"] for g in data["goals"])


def test_interleaved_timing_times_very_slow_methods_once():
    clock = FakeClock()
    log: list[str] = []
    res = L.interleaved_timing(_fake_methods(clock, {"fast": 0.01, "slow": 30.0}, log), rounds=4, warmup=2,
                               block_s=0.01, max_call_s=5.0, clock=clock)
    assert res.single_shot == ["slow"]
    assert res.seconds["slow"] == [30.0] and log.count("slow") == 1
    assert len(res.seconds["fast"]) == 4 and log.count("fast") == 2 + 4
