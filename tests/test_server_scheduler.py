"""Engines and the step-level batching scheduler (no HTTP)."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
import torch

from anystep.core import solvers
from anystep.core.modeldir import load_model_dir
from anystep.core.samplers import base_noise, sample_flowmap
from anystep.server.engines import (
    EngineError,
    OnnxEngine,
    TensorRTEngine,
    TorchEngine,
    build_engine,
    export_onnx_cached,
    find_onnx_artifact,
)
from anystep.server.scheduler import CostModel, Job, QueueFullError, StepScheduler
from anystep.server.testing import make_tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("models"), seed=1)


@pytest.fixture(scope="module")
def flowmap(models):
    return load_model_dir(models["checkerboard"])


@pytest.fixture(scope="module")
def velocity(models):
    return load_model_dir(models["checkerboard-teacher"])


def _fast_export_options():
    """The export package's options with the quick exporter and a small batch range (tests)."""
    from anystep.export.common import BatchRange
    from anystep.export.onnx_export import OnnxOptions

    return OnnxOptions(exporter="torchscript", batch=BatchRange(1, 8, 64))


def run(coro):
    return asyncio.run(coro)


async def _serve(engine, jobs, **kw):
    """Submit all jobs before the loop ticks (so they share ticks), return results and stats."""
    sched = StepScheduler(engine, **kw)
    await sched.start()
    with sched.hold():
        futs = [sched.submit(j) for j in jobs]
    results = await asyncio.gather(*futs)
    stats = sched.stats
    await sched.close()
    return results, stats


def _job(lm, seed, n, grid, method="flowmap"):
    x0 = base_noise([seed + i for i in range(n)], lm.config.data_shape).numpy()
    return Job(x=x0, grid=np.asarray(grid, dtype=np.float64), method=method)


def test_torch_engine_matches_model(flowmap):
    eng = TorchEngine(flowmap.model, flowmap.config.data_shape)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    s = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
    t = np.array([1.0, 0.3, 0.5, 0.2, 0.0], np.float32)
    want = (
        flowmap.model(torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(t))
        .detach()
        .numpy()
    )
    np.testing.assert_allclose(eng.step(x, s, t), want, atol=1e-6)
    with pytest.raises(EngineError, match="shape"):
        eng.step(x[:, :1], s, t)


def test_flowmap_steps_match_core_sampler_and_share_ticks(flowmap):
    """Jobs with 1, 3 and 8 steps (and a custom grid) fused into shared ticks equal the core sampler."""
    eng = TorchEngine(flowmap.model, (2,))
    specs = [
        (0, 4, np.linspace(0, 1, 2)),
        (100, 3, np.linspace(0, 1, 4)),
        (200, 5, np.linspace(0, 1, 9)),
        (300, 2, [0.0, 0.1, 0.7, 1.0]),
    ]
    jobs = [_job(flowmap, seed, n, g) for seed, n, g in specs]
    results, stats = run(_serve(eng, jobs, max_batch=64))
    for (seed, n, g), res in zip(specs, results):
        x0 = base_noise([seed + i for i in range(n)], (2,))
        want = sample_flowmap(flowmap.model, x0, grid=torch.as_tensor(g)).x.numpy()
        np.testing.assert_allclose(res.x, want, atol=1e-5)
        assert res.nfe == len(g) - 1 and res.steps == len(g) - 1
    # one tick per step of the longest job: shorter jobs rode along, then left the batch
    assert stats.ticks == 8
    assert stats.max_jobs_in_tick == 4 and stats.max_rows == 4 + 3 + 5 + 2


def test_outputs_do_not_depend_on_batch_composition(flowmap):
    """The same seeds give the same samples alone, fused with others, or split by a small max_batch."""
    eng = TorchEngine(flowmap.model, (2,))
    target = lambda: _job(flowmap, 42, 6, np.linspace(0, 1, 5))
    alone, _ = run(_serve(eng, [target()], max_batch=256))
    others = [_job(flowmap, 7, 9, np.linspace(0, 1, 2)), _job(flowmap, 9, 5, np.linspace(0, 1, 8))]
    mixed, _ = run(_serve(eng, [others[0], target(), others[1]], max_batch=256))
    split, stats = run(
        _serve(eng, [_job(flowmap, 7, 9, np.linspace(0, 1, 3)), target()], max_batch=4)
    )
    np.testing.assert_allclose(mixed[1].x, alone[0].x, atol=1e-5)
    np.testing.assert_allclose(split[1].x, alone[0].x, atol=1e-5)
    assert stats.max_rows <= 4
    # and the first samples of a request are those of a smaller request with the same seed
    small, _ = run(_serve(eng, [_job(flowmap, 42, 2, np.linspace(0, 1, 5))]))
    np.testing.assert_allclose(small[0].x, alone[0].x[:2], atol=1e-5)


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_velocity_stages_match_core_solvers(velocity, method, per_step):
    eng = TorchEngine(velocity.model, (2,))
    jobs = [
        _job(velocity, 5, 3, np.linspace(0, 1, 5), method),
        _job(velocity, 50, 2, np.linspace(0, 1, 3), "rk4"),
    ]
    results, stats = run(_serve(eng, jobs))
    x0 = base_noise([5, 6, 7], (2,))
    want = solvers.solve_fixed(velocity.model, x0, 0.0, 1.0, method=method, steps=4)
    np.testing.assert_allclose(results[0].x, want.x.numpy(), atol=1e-5)
    assert results[0].nfe == want.nfe == 4 * per_step
    # the two jobs shared ticks: total ticks = the longer job's evaluations
    assert stats.ticks == max(4 * per_step, 2 * 4)


def test_dopri5_is_staged_with_other_jobs_and_matches_core(velocity):
    eng = TorchEngine(velocity.model, (2,))
    job = Job(
        x=base_noise([3, 4], (2,)).numpy(), grid=np.array([0.0, 1.0]), method="dopri5", rtol=1e-4
    )
    other = _job(velocity, 9, 2, np.linspace(0, 1, 3), "euler")
    (res, res2), stats = run(_serve(eng, [job, other]))
    want = solvers.dopri5(velocity.model, base_noise([3, 4], (2,)), 0.0, 1.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.x, want.x.numpy(), atol=1e-5)
    # per-sample nfe: the slowest sample's count equals the lockstep solver's batched count
    assert res.nfe == want.nfe and res.steps == want.steps
    assert res2.nfe == 2
    # the Euler job rode along in the dopri5 job's first two ticks instead of waiting for it
    assert stats.max_jobs_in_tick == 2 and stats.ticks == res.nfe


def test_encode_runs_reversed_grid(flowmap):
    eng = TorchEngine(flowmap.model, (2,))
    x1 = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)
    (res,), _ = run(_serve(eng, [Job(x=x1, grid=np.linspace(1, 0, 4))]))
    want = sample_flowmap(flowmap.model, torch.from_numpy(x1), steps=3, reverse=True).x.numpy()
    np.testing.assert_allclose(res.x, want, atol=1e-5)


def test_no_batching_serves_one_job_at_a_time(flowmap):
    eng = TorchEngine(flowmap.model, (2,))
    jobs = [_job(flowmap, s, 2, np.linspace(0, 1, 4)) for s in (0, 10, 20)]
    results, stats = run(_serve(eng, jobs, batching=False))
    assert stats.ticks == 9 and stats.max_jobs_in_tick == 1
    fused, fstats = run(
        _serve(eng, [_job(flowmap, s, 2, np.linspace(0, 1, 4)) for s in (0, 10, 20)])
    )
    assert fstats.ticks == 3
    for a, b in zip(results, fused):
        np.testing.assert_allclose(a.x, b.x, atol=1e-5)


def test_queue_bound_and_close(flowmap):
    eng = TorchEngine(flowmap.model, (2,))

    async def go():
        sched = StepScheduler(eng, max_queue=2)
        await sched.start()
        with sched.hold():
            f1 = sched.submit(_job(flowmap, 0, 1, np.linspace(0, 1, 3)))
            f2 = sched.submit(_job(flowmap, 1, 1, np.linspace(0, 1, 3)))
            with pytest.raises(QueueFullError) as ei:
                sched.submit(_job(flowmap, 2, 1, np.linspace(0, 1, 3)))
        assert ei.value.retry_after >= 1
        await sched.close()  # drains the running jobs first
        with pytest.raises(Exception, match="shutting down"):
            sched.submit(_job(flowmap, 3, 1, np.linspace(0, 1, 3)))
        return f1.result(), f2.result()

    r1, r2 = run(go())
    assert r1.nfe == 2 and r2.nfe == 2


def test_cost_model_fits_linear_cost():
    cm = CostModel()
    cm.seed([(1, 0.0011), (16, 0.0026), (64, 0.0074)])
    assert cm.call_seconds(32) == pytest.approx(0.001 + 0.0001 * 32, rel=0.05)
    for _ in range(cm.refit_every - 1):  # contention spikes on some calls do not move the estimate much
        cm.observe(16, 0.0026)
    cm.observe(16, 0.5)  # the refit after this call includes the spike
    assert cm.call_seconds(16) < 0.01
    assert cm.request_seconds(n=100, nfe=4, max_batch=64) == pytest.approx(
        4 * 2 * cm.call_seconds(64)
    )


def test_onnx_engine_exported_on_the_fly_matches_torch(models, tmp_path):
    pytest.importorskip("onnxruntime")
    lm = load_model_dir(models["checkerboard"])
    art = export_onnx_cached(models["checkerboard"], tmp_path / "cache", _fast_export_options())
    assert art.kind == "flowmap" and art.input_names == ["x", "s", "t"]
    assert find_onnx_artifact(art.onnx_path.parent).onnx_path == art.onnx_path
    mtime = art.onnx_path.stat().st_mtime_ns
    again = export_onnx_cached(models["checkerboard"], tmp_path / "cache", _fast_export_options())
    assert again.onnx_path == art.onnx_path and art.onnx_path.stat().st_mtime_ns == mtime  # cached
    onnx_eng = OnnxEngine(art, (2,))
    torch_eng = TorchEngine(lm.model, (2,))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 2)).astype(np.float32)
    s, t = rng.random(7).astype(np.float32), rng.random(7).astype(np.float32)
    np.testing.assert_allclose(onnx_eng.step(x, s, t), torch_eng.step(x, s, t), atol=1e-5)
    # a model directory holding its export is used as is
    eng2 = build_engine("onnx", "cb", art.onnx_path.parent, lm.config)
    np.testing.assert_allclose(eng2.step(x, s, t), torch_eng.step(x, s, t), atol=1e-5)
    # and the scheduler drives it like any engine
    jobs = [_job(lm, 1, 3, np.linspace(0, 1, 4))]
    (res,), _ = run(_serve(onnx_eng, jobs))
    want = sample_flowmap(lm.model, base_noise([1, 2, 3], (2,)), steps=3).x.numpy()
    np.testing.assert_allclose(res.x, want, atol=1e-5)


@pytest.mark.gpu
def test_tensorrt_engine(models, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip(
            "TensorRT is not installed (extra 'gpu'); the tensorrt engine needs an NVIDIA GPU"
        )
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine; the tensorrt engine needs one")
    lm = load_model_dir(models["checkerboard"])
    # the export package's builder (precision rules, parity check), cached per model content
    eng = TensorRTEngine.from_model_dir(models["checkerboard"], (2,), max_batch=64, cache_dir=tmp_path / "cache")
    x = np.random.default_rng(0).standard_normal((9, 2)).astype(np.float32)
    s, t = np.zeros(9, np.float32), np.ones(9, np.float32)
    np.testing.assert_allclose(
        eng.step(x, s, t), TorchEngine(lm.model, (2,)).step(x, s, t), atol=1e-4
    )


def test_tensorrt_engine_without_gpu_says_why(models):
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("this machine has TensorRT and a GPU; see test_tensorrt_engine")
    with pytest.raises(EngineError, match="TensorRT|GPU"):
        TensorRTEngine(models["checkerboard"], (2,))


@pytest.mark.slow
def test_compiled_torch_engine_matches_eager(flowmap):
    eager = TorchEngine(flowmap.model, (2,))
    compiled = TorchEngine(flowmap.model, (2,), compile=True)
    rng = np.random.default_rng(1)
    for b in (1, 5, 17):  # dynamic batch: no recompilation per size
        x = rng.standard_normal((b, 2)).astype(np.float32)
        s, t = rng.random(b).astype(np.float32), rng.random(b).astype(np.float32)
        np.testing.assert_allclose(compiled.step(x, s, t), eager.step(x, s, t), atol=1e-5)
