"""The CUDA-graph engine: bucket planning and padding on CPU, real capture on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.server.engine_cudagraph import (
    Chunk,
    CudaGraphEngine,
    bucket_sizes,
    cudagraph_available,
    pick_bucket,
    plan_chunks,
)
from anystep.server.engines import EngineError, TorchEngine


def _model(kind: str = "flowmap", seed: int = 0) -> torch.nn.Module:
    bb = BackboneConfig(
        name="unet", data_shape=(1, 8, 8), time_inputs=2 if kind == "flowmap" else 1,
        channels=8, channel_mult=(1, 2), num_res_blocks=1, fourier_features=4,
    )
    model = build_model(ModelConfig(kind=kind, backbone=bb, data_shape=(1, 8, 8)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # far from the zero-initialised identity map
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _inputs(b: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 1, 8, 8)).astype(np.float32)
    s = rng.uniform(0, 1, b).astype(np.float32)
    t = rng.uniform(0, 1, b).astype(np.float32)
    return x, s, t


def test_buckets_and_chunks():
    assert bucket_sizes(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(1) == (1,)
    assert [pick_bucket(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert plan_chunks(0, (1, 4)) == []
    assert plan_chunks(11, (1, 2, 4)) == [Chunk(0, 4, 4), Chunk(4, 8, 4), Chunk(8, 11, 4)]
    assert plan_chunks(9, (1, 2, 4)) == [Chunk(0, 4, 4), Chunk(4, 8, 4), Chunk(8, 9, 1)]
    for n in range(40):  # chunks tile 0..n and each fits its bucket
        chunks = plan_chunks(n, bucket_sizes(8))
        assert sum(c.rows for c in chunks) == n
        assert all(c.rows <= c.bucket for c in chunks)
        assert [c.start for c in chunks] == [c.stop - c.rows for c in chunks]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(EngineError, match="max_batch"):
            bucket_sizes(bad)
    with pytest.raises(EngineError, match="split the batch"):
        pick_bucket(9, (1, 8))
    with pytest.raises(EngineError, match="increasing"):
        plan_chunks(3, (4, 2))


@pytest.mark.parametrize("kind", ["flowmap", "velocity"])
def test_padded_buckets_match_eager_on_cpu(kind):
    model = _model(kind)
    eager = TorchEngine(_model(kind), (1, 8, 8), threads=1)
    eng = CudaGraphEngine(model, (1, 8, 8), device="cpu", capture=False, buckets=(1, 2, 4))
    assert eng.name == "cudagraph" and eng.kind == kind and not eng.capture
    # sizes that pad (3), fit (4), chunk (4 + 4 + 3) and shrink after a larger call (1)
    for b in (3, 4, 11, 1, 2):
        x, s, t = _inputs(b, seed=b)
        y = eng.evaluate(x, s if kind == "flowmap" else None, t)
        ref = eager.evaluate(x, s if kind == "flowmap" else None, t)
        assert y.shape == x.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        assert not np.allclose(y, x)  # a real map, not the identity
    assert eng.verify(batches=(1, 3, 5)) < 1e-5
    assert eng.describe()["buckets"] == [1, 2, 4]


def test_per_sample_times_and_identity_boundary():
    eng = CudaGraphEngine(_model(), (1, 8, 8), device="cpu", capture=False, max_batch=4)
    x, s, _ = _inputs(3)
    np.testing.assert_allclose(eng.step(x, s, s), x, atol=1e-6)  # X_{s,s} = id, per row
    t = np.array([s[0], 0.9, s[2]], dtype=np.float32)
    y = eng.step(x, s, t)
    np.testing.assert_allclose(y[[0, 2]], x[[0, 2]], atol=1e-6)
    assert np.abs(y[1] - x[1]).max() > 1e-3
    # row 1 alone gives the same answer as inside the padded batch of 3
    np.testing.assert_allclose(eng.step(x[1:2], s[1:2], t[1:2]), y[1:2], rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_devices():
    eng = CudaGraphEngine(_model(), (1, 8, 8), device="cpu", capture=False, max_batch=2)
    with pytest.raises(EngineError, match="shape"):
        eng.step(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32))
    with pytest.raises(EngineError, match="velocity model"):
        eng.velocity(np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.float32))
    with pytest.raises(EngineError, match="CUDA"):
        CudaGraphEngine(_model(), (1, 8, 8), device="cpu", capture=True)
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA GPU"):
            CudaGraphEngine(_model(), (1, 8, 8), device="cuda")
        assert cudagraph_available() is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("channels_last", [False, True])
def test_captured_graphs_match_eager_on_gpu(channels_last):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    eng = CudaGraphEngine(_model(), (1, 8, 8), device="cuda", max_batch=16, channels_last=channels_last)
    assert eng.capture and cudagraph_available()
    eager = TorchEngine(_model(), (1, 8, 8), device="cuda")
    # bucket order differs from capture order; shared-pool graphs must not clobber each other
    for b in (1, 16, 3, 40, 2, 1, 9):
        x, s, t = _inputs(b, seed=b)
        np.testing.assert_allclose(eng.step(x, s, t), eager.step(x, s, t), rtol=1e-4, atol=1e-4)
    assert eng.verify(batches=(1, 5, 16)) < 1e-4
    vel = CudaGraphEngine(_model("velocity"), (1, 8, 8), device="cuda", max_batch=8)
    x, _, t = _inputs(5)
    ref = TorchEngine(_model("velocity"), (1, 8, 8), device="cuda").velocity(x, t)
    np.testing.assert_allclose(vel.velocity(x, t), ref, rtol=1e-4, atol=1e-4)


def test_registered_and_chosen_by_auto_on_a_cuda_device(monkeypatch, tmp_path):
    from anystep.server import engine_cudagraph, engines
    from anystep.server.testing import make_tiny_models

    assert "cudagraph" in engines.ENGINES and "cudagraph" in engines.ENGINE_CHOICES
    monkeypatch.setattr(engine_cudagraph, "cudagraph_available", lambda: True)
    monkeypatch.setattr(engines, "_cuda_available", lambda: True)
    real_has = engines._has
    monkeypatch.setattr(engines, "_has", lambda m: False if m == "tensorrt" else real_has(m))
    gpu = engines.EngineOptions(device="cuda")
    assert "cudagraph" in engines.available_engines(gpu)
    assert engines.resolve_engine("auto", gpu) == "cudagraph"
    assert engines.resolve_engine("auto", engines.EngineOptions(device="cuda", compile=True)) == "torch"
    assert engines.resolve_engine("auto", engines.EngineOptions(device="cpu")) in ("onnx", "torch")
    monkeypatch.setattr(engines, "_has", lambda m: True if m == "tensorrt" else real_has(m))
    assert engines.resolve_engine("auto", gpu) == "tensorrt"  # TensorRT first where installed
    dirs = make_tiny_models(tmp_path, digits=True)
    from anystep.core.modeldir import read_config

    with pytest.raises(EngineError, match="--device cuda"):
        engines.build_engine("cudagraph", "digits", dirs["digits"], read_config(dirs["digits"]),
                             engines.EngineOptions(device="cpu"))
