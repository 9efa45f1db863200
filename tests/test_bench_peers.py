"""Tests of the peer and NFE-ratio serving benchmarks (load_triton, load_nfe) and the shared load harness."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from anystep.benchmarks import load_nfe as NF
from anystep.benchmarks import load_triton as LT
from anystep.benchmarks.loadgen import (
    LoadBenchError,
    PhaseResult,
    RequestRecord,
    closed_loop,
    summarize_phase,
)
from anystep.benchmarks.timing import LatencyStats, calls_per_second

# --------------------------------------------------------------------------------------
# harness pieces
# --------------------------------------------------------------------------------------


def test_closed_loop_keeps_concurrency_and_records_failures():
    in_flight, peak = 0, 0

    async def send(client, i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        if i == 3:
            raise ConnectionResetError("boom")
        return RequestRecord(steps=i % 4 + 1, status=200, latency_s=-1.0)

    ph = asyncio.run(closed_loop(1, 20, send, concurrency=4, steps=[i % 4 + 1 for i in range(20)]))
    assert len(ph.records) == 20 and peak == 4
    bad = [r for r in ph.records if r.status == 0]
    assert len(bad) == 1 and bad[0].error == "ConnectionResetError" and bad[0].steps == 4
    assert all(r.latency_s > 0 for r in ph.records)  # measured by the loop, not the coroutine
    s = summarize_phase(ph, n=2)
    assert s["ok"] == 19 and s["errors"] == {"ConnectionResetError": 1}
    assert s["samples_per_s"] == pytest.approx(19 * 2 / ph.wall_s)


def test_closed_loop_stops_at_the_time_limit():
    async def send(client, i):
        await asyncio.sleep(0.02)
        return RequestRecord(steps=1, status=200, latency_s=0.0)

    ph = asyncio.run(closed_loop(1, 1000, send, concurrency=2, time_limit_s=0.1))
    assert ph.stopped_by_time and 2 <= len(ph.records) < 40
    with pytest.raises(LoadBenchError, match="concurrency"):
        asyncio.run(closed_loop(1, 1, send, concurrency=0))


def test_calls_per_second_counts_calls_over_the_clock():
    t = [0.0]

    def clock():
        return t[0]

    def fn():
        t[0] += 0.25

    assert calls_per_second(fn, 1.0, warmup=2, clock=clock) == pytest.approx(4 / 1.0)
    with pytest.raises(ValueError):
        calls_per_second(fn, 0.0)


# --------------------------------------------------------------------------------------
# Triton peer: the client's step loop against a fake KServe-v2 server
# --------------------------------------------------------------------------------------


class FakeTriton:
    """Answers ``infer`` like a Triton flow map whose step is ``X_{s,t}(x) = x + (t - s)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, tuple[int, ...]]] = []

    async def request(self, method, path, body=None, content_type="", headers=None):
        assert method == "POST" and path == "/v2/models/cb/infer"
        jl = int(headers["Inference-Header-Content-Length"])
        head = json.loads(body[:jl])
        arrays, off = {}, jl
        for inp in head["inputs"]:
            size = inp["parameters"]["binary_data_size"]
            arrays[inp["name"]] = np.frombuffer(body[off:off + size], np.float32).reshape(inp["shape"])
            off += size
        x, s, t = arrays["x"], arrays["s"], arrays["t"]
        assert s.shape == (x.shape[0], 1) and np.all(s == s[0]) and np.all(t == t[0])
        self.calls.append((float(s[0, 0]), float(t[0, 0]), x.shape))
        y = (x + (t - s)).astype(np.float32)
        out = json.dumps({"outputs": [{"name": "x_t", "datatype": "FP32", "shape": list(y.shape),
                                       "parameters": {"binary_data_size": y.nbytes}}]}).encode()
        return 200, {"inference-header-content-length": str(len(out))}, out + y.tobytes()


class _Spec:
    def __init__(self, name):
        self.name = name


class _Manifest:
    inputs = (_Spec("x"), _Spec("s"), _Spec("t"))
    outputs = (_Spec("x_t"),)


def test_triton_client_loops_over_the_uniform_grid_from_the_servers_noise():
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (extra 'triton')")
    from anystep.core.noise import base_noise_np

    fake = FakeTriton()
    tc = LT.TritonStepClient("cb", _Manifest(), (2,))
    status, x = asyncio.run(tc.sample(fake, steps=4, n=3, seed=11))
    assert status == 200
    assert [(s, t) for s, t, _ in fake.calls] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert all(shape == (3, 2) for _, _, shape in fake.calls)
    # the composition of X_{t_k, t_k+1} over the grid is X_{0,1}: x0 + 1, x0 the seeds' base samples
    np.testing.assert_allclose(x, base_noise_np(11, 3, (2,)) + 1.0, atol=1e-6)


def test_triton_client_needs_an_unconditional_map():
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (extra 'triton')")

    class Cond(_Manifest):
        inputs = (_Spec("x"), _Spec("s"), _Spec("t"), _Spec("y"), _Spec("w"))

    with pytest.raises(LoadBenchError, match=r"\(x, s, t\)"):
        LT.TritonStepClient("cb", Cond(), (2,))


def _phase_summary(p50, sps, errors=0):
    return {"p50_ms": p50, "p95_ms": 2 * p50, "p99_ms": 3 * p50, "samples_per_s": sps, "requests_per_s": sps,
            "ok": 10, "sent": 10 + errors, "errors": {"0": errors} if errors else {}, "error_count": errors,
            "samples_per_s_each": [sps], "rows_per_engine_call": 3.0, "per_steps": {1: {"p50_ms": p50}}}


def test_triton_goals_compare_p50_at_1_and_samples_per_s_at_64():
    cells = [
        {"n": 1, "concurrency": 1, "anystep": _phase_summary(2.0, 400), "triton": _phase_summary(9.0, 100)},
        {"n": 1, "concurrency": 64, "anystep": _phase_summary(200.0, 300), "triton": _phase_summary(150.0, 350)},
        {"n": 64, "concurrency": 64, "anystep": _phase_summary(90.0, 9000, errors=1),
         "triton": _phase_summary(150.0, 5000)},
    ]
    goals = LT.evaluate_goals(cells)
    assert [g["met"] for g in goals] == [True, False, False]  # errors fail a faster anystep too
    assert goals[0]["ratio"] == pytest.approx(4.5) and goals[1]["ratio"] == pytest.approx(300 / 350)
    data = {"settings": {**LT.TritonSettings().__dict__, "models_dir": "models"}, "command": "python -m x",
            "machine_description": "Test CPU, 2 cores", "load_average_start": [1.0, 1, 1], "load_average": [2.0, 1, 1],
            "versions": {"tritonserver": "2.51.0"}, "started_at": "now", "duration_s": 1.0, "anystep_engine": ["onnx"],
            "parity_max_abs_diff": {1: 0.0}, "cells": cells, "goals": goals}
    md = LT.render_markdown(data, notes="kept")
    assert "Test CPU, 2 cores" in md and "tritonserver 2.51.0" in md and "kept" in md
    assert "p50 anystep 2 ms vs Triton 9 ms" in md and "**missed**" in md
    assert md.count("| 1 | 64 | Triton") == 1 and md.count("| 64 | 64 | anystep") == 1


def test_triton_settings_and_cli_reject_bad_values(capsys):
    with pytest.raises(LoadBenchError, match="max-batch"):
        LT.TritonSettings(n_values=(512,))
    with pytest.raises(LoadBenchError, match="concurrency"):
        LT.TritonSettings(concurrency=(0,), requests={0: 1})
    with pytest.raises(SystemExit) as e:
        LT.main(["--concurrency", "1,x"])
    assert e.value.code == 2 and "comma-separated" in capsys.readouterr().err
    s = LT.settings_from_args(LT.build_parser().parse_args(["--quick", "--requests", "7"]))
    assert s.quick and s.rounds == 1 and s.requests == {1: 7, 64: 7}


def test_triton_batch_rows_from_metrics():
    m = "checkerboard"
    before = {("nv_inference_count", (("model", m),)): 10.0, ("nv_inference_exec_count", (("model", m),)): 5.0}
    after = {("nv_inference_count", (("model", m),)): 110.0, ("nv_inference_exec_count", (("model", m),)): 30.0,
             ("nv_inference_count", (("model", "other"),)): 1e6}
    assert LT.triton_batches(before, after, m) == {"rows": 100.0, "executions": 25.0, "mean": 4.0}


# --------------------------------------------------------------------------------------
# NFE-ratio goal
# --------------------------------------------------------------------------------------


def _stats(ms):
    return LatencyStats(n=5, median_ms=ms, p95_ms=ms * 1.1, mean_ms=ms, min_ms=ms, max_ms=ms)


def test_nfe_goal_is_the_latency_ratio_over_the_nfe_ratio():
    s = NF.NfeSettings(steps=(1, 4))
    cases = {"dopri5": {"latency": _stats(1000.0), "nfe_median": 120.0, "nfe_range": [110, 130],
                        "server_compute_ms_p50": 960.0, "server_compute_ms_per_nfe": 8.0},
             "flowmap-1": {"latency": _stats(10.0), "nfe_median": 1.0, "nfe_range": [1, 1],
                           "server_compute_ms_p50": 8.0, "server_compute_ms_per_nfe": 8.0},
             "flowmap-4": {"latency": _stats(36.0), "nfe_median": 4.0, "nfe_range": [4, 4],
                           "server_compute_ms_p50": 32.0, "server_compute_ms_per_nfe": 8.0}}
    g1, g4 = NF.evaluate_goals(cases, s)
    assert g1["nfe_ratio_limit"] == 120.0 and g1["latency_ratio"] == pytest.approx(100.0)
    assert g1["fraction"] == pytest.approx(100 / 120) and not g1["met"]
    assert g4["nfe_ratio_limit"] == 30.0 and g4["fraction"] == pytest.approx((1000 / 36) / 30) and g4["met"]
    assert g1["engine_time_ratio"] == pytest.approx(120.0)
    # a teacher twice as cheap per evaluation halves the limit the served ratio is held to
    (b1,) = NF.evaluate_goals(cases, NF.NfeSettings(steps=(1,)), {"flowmap_ms": 8.0, "teacher_ms": 4.0})
    assert b1["bare_cost_ratio"] == 0.5 and b1["fraction_of_cost_adjusted_limit"] == pytest.approx(100 / 60)
    data = {"settings": {**s.__dict__, "models_dir": "models"}, "command": "python -m y", "machine_description": "M",
            "load_average_start": None, "load_average": None, "versions": {}, "started_at": "t", "duration_s": 2.0,
            "engines": {}, "cases": cases, "goals": [g1, g4]}
    md = NF.render_markdown(data)
    assert "measured 100x of a 120x limit = 83%" in md and md.count("**missed**") == 1


def test_dopri5_composition_weighs_each_tick_by_the_cost_of_its_padded_batch():
    # 2 requests of n=64: 100 full ticks and a tail of 20 half-batch and 10 one-row ticks in all
    hist = {"buckets": [{"le": 1.0, "count": 10}, {"le": 2.0, "count": 0}, {"le": 32.0, "count": 20},
                        {"le": 64.0, "count": 100}, {"le": math.inf, "count": 0}], "mean": 55.0}
    costs = {1: 0.5, 2: 0.6, 32: 5.0, 64: 10.0}
    c = NF.dopri5_composition(hist, 2, costs, 64)
    assert c["calls_by_batch"] == {1: 10, 32: 20, 64: 100} and c["ticks_per_request"] == 65.0
    assert c["full_batch_evals_per_request"] == pytest.approx((100 + 20 * 0.5 + 10 * 0.05) / 2)
    assert NF.dopri5_composition({"buckets": []}, 2, costs, 64) is None  # no calls seen
    assert NF.dopri5_composition(hist, 2, {64: 10.0}, 64) is None  # a batch size without a cost
    cases = {"dopri5": {"latency": _stats(1000.0), "nfe_median": 60.0},
             "flowmap-1": {"latency": _stats(20.0), "nfe_median": 1.0}}
    (g,) = NF.evaluate_goals(cases, NF.NfeSettings(steps=(1,)), composition=c)
    assert g["composition_limit"] == pytest.approx(55.25) and g["fraction"] == pytest.approx(50 / 60)
    assert g["fraction_of_composition_limit"] == pytest.approx(50 / 55.25)


def test_nfe_settings_validation():
    for kw, msg in (({"n": 0}, "-n"), ({"steps": ()}, "--steps"), ({"rtol": 2.0}, "--rtol"),
                    ({"engine": "tensorrt"}, "--engine")):
        with pytest.raises(LoadBenchError, match=msg):
            NF.NfeSettings(**kw)


# --------------------------------------------------------------------------------------
# quick end-to-end runs (slow)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from anystep.server.testing import make_tiny_models

    root = tmp_path_factory.mktemp("peer-models")
    make_tiny_models(root, digits=False)
    return root


@pytest.mark.slow
def test_nfe_quick_run_end_to_end(tiny_models, tmp_path):
    out = tmp_path / "out"
    code = NF.main(["--quick", "--model", "checkerboard", "--models-dir", str(tiny_models), "-n", "8",
                    "--steps", "1,2", "--rounds", "2", "--engine", "torch", "--rtol", "1e-3", "--out", str(out),
                    "--work-dir", str(tmp_path / "work")])
    assert code == 0
    data = json.loads((out / "load_nfe.json").read_text())
    cases = data["cases"]
    assert set(cases) == {"dopri5", "flowmap-1", "flowmap-2"}
    assert cases["flowmap-2"]["nfe_median"] == 2 and cases["dopri5"]["nfe_median"] >= 7
    for g in data["goals"]:
        assert g["nfe_ratio_limit"] == pytest.approx(cases["dopri5"]["nfe_median"] / g["steps"])
        assert math.isfinite(g["fraction"]) and g["fraction"] > 0
    assert data["bare"]["flowmap_ms"] > 0 and data["bare"]["teacher_ms"] > 0
    assert all(g["bare_cost_ratio"] > 0 for g in data["goals"])
    comp = data["dopri5_composition"]  # every dopri5 tick of the run, from the server's /metrics
    assert comp["ticks_per_request"] >= cases["dopri5"]["nfe_range"][0]
    assert 0 < comp["full_batch_evals_per_request"] <= comp["ticks_per_request"] * 1.5
    assert all(g["composition_limit"] > 0 for g in data["goals"])
    assert "NFE-ratio limit" in (out / "load_nfe.md").read_text()


@pytest.mark.slow
def test_triton_quick_run_end_to_end(tiny_models, tmp_path):
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (extra 'triton')")
    from anystep.export.triton_repo import TritonUnavailableError, find_triton_python

    try:
        find_triton_python()
    except TritonUnavailableError as e:
        pytest.skip(f"no Triton server can start here (make triton-venv): {e}")
    out = tmp_path / "out"
    code = LT.main(["--quick", "--models-dir", str(tiny_models), "--concurrency", "1,8", "--requests", "16",
                    "--steps-mix", "1,3", "--max-batch", "16", "--out", str(out), "--work-dir", str(tmp_path / "w")])
    assert code == 0
    data = json.loads((out / "load_triton.json").read_text())
    assert all(d < 1e-4 for d in data["parity_max_abs_diff"].values())  # the same map on both servers
    assert [(c["n"], c["concurrency"]) for c in data["cells"]] == [(1, 1), (1, 8)]
    for c in data["cells"]:
        for srv in ("anystep", "anystep-json", "triton"):  # npy answers, json answers, Triton
            p = c[srv]
            assert p["ok"] == p["sent"] == 16 and p["error_count"] == 0 and p["p50_ms"] > 0
            assert p["rows_per_engine_call"] >= 1 and p["server_cores"] > 0 and 0 < p["served_raw_ratio"] <= 1.5
            assert p["server_runqueue_cores"] >= 0 and p["client_cores"] > 0
    assert [g["metric"] for g in data["goals"]] == ["p50_ms"]  # no cell at concurrency 64
    md = (out / "load_triton.md").read_text()
    assert "Triton" in md and "## Goals (issue 16)" in md and "anystep serve (json answers" in md


def test_phase_result_is_the_shared_record():
    assert PhaseResult is LT.PhaseResult


def test_process_tree_cpu_and_run_queue_accounting():
    import os
    import time

    from anystep.benchmarks.timing import cpu_seconds, runqueue_seconds

    if not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    c0, w0 = cpu_seconds(os.getpid()), runqueue_seconds(os.getpid())
    t0 = time.process_time()
    while time.process_time() - t0 < 0.2:  # busy: CPU time must grow by about as much
        pass
    c1, w1 = cpu_seconds(os.getpid()), runqueue_seconds(os.getpid())
    assert c1 - c0 >= 0.1 and w1 >= w0 >= 0
    assert cpu_seconds(2**22 + 12345) is None and runqueue_seconds(2**22 + 12345) is None


def test_load_nfe_ratio_flag_forwards_and_fails_cleanly(tmp_path, capsys):
    from anystep.benchmarks import load as LD

    code = LD.main(["--nfe-ratio", "--quick", "--models-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no model directory" in err[0] and "digits" in err[0]
