"""Tests for anystep.core.networks: shapes, time inputs, forward AD, export, batch independence."""

from __future__ import annotations

import time

import pytest
import torch

from anystep.core.config import BackboneConfig, ConfigError
from anystep.core.networks import (
    FourierFeatures,
    MLPBackbone,
    MultiTimeEmbedding,
    UNetBackbone,
    build_backbone,
)
from anystep.core.networks.unet import group_norm_groups


def small_cfg(data_shape: tuple[int, ...], time_inputs: int = 2, **kw) -> BackboneConfig:
    """A small config of the right kind for ``data_shape`` (MLP for vectors, U-Net for images)."""
    if len(data_shape) == 3:
        base = {"name": "unet", "channels": 16, "channel_mult": (1, 2), "attention_levels": (1,)}
    else:
        base = {"name": "mlp", "width": 64, "depth": 3}
    base.update(kw)
    return BackboneConfig(
        data_shape=data_shape, time_inputs=time_inputs, fourier_features=8, **base
    )


def perturb_output_layer(model: torch.nn.Module) -> None:
    """Give the U-Net's zero-initialised output conv random weights (no-op for the MLP)."""
    if isinstance(model, UNetBackbone):
        with torch.no_grad():
            torch.nn.init.normal_(model.conv_out.weight, std=0.1)
            torch.nn.init.normal_(model.conv_out.bias, std=0.1)


def times_for(batch: int, n: int, gen: torch.Generator, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.rand(batch, generator=gen, dtype=dtype) for _ in range(n)]


SHAPES = [(2,), (5,), (1, 8, 8), (3, 16, 16)]


@pytest.mark.parametrize("data_shape", SHAPES)
@pytest.mark.parametrize("time_inputs", [1, 2])
def test_output_shape_various_batches(data_shape, time_inputs):
    torch.manual_seed(0)
    model = build_backbone(small_cfg(data_shape, time_inputs)).eval()
    expected_cls = UNetBackbone if len(data_shape) == 3 else MLPBackbone
    assert isinstance(model, expected_cls)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3, 17):
        x = torch.randn(batch, *data_shape, generator=gen)
        with torch.no_grad():
            y = model(x, *times_for(batch, time_inputs, gen))
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


def test_mlp_accepts_image_shapes():
    model = build_backbone(BackboneConfig(name="mlp", data_shape=(1, 8, 8), width=32, depth=2))
    x = torch.randn(4, 1, 8, 8)
    assert model(x, torch.rand(4), torch.rand(4)).shape == (4, 1, 8, 8)


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8)])
def test_wrong_number_of_times_raises(data_shape):
    model = build_backbone(small_cfg(data_shape, time_inputs=2))
    x = torch.randn(3, *data_shape)
    with pytest.raises(ValueError, match="time_inputs=2"):
        model(x, torch.rand(3))
    with pytest.raises(ValueError, match="time_inputs=2"):
        model(x, torch.rand(3), torch.rand(3), torch.rand(3))
    velocity = build_backbone(small_cfg(data_shape, time_inputs=1))
    with pytest.raises(ValueError, match="time_inputs=1"):
        velocity(x, torch.rand(3), torch.rand(3))


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8)])
def test_wrong_shapes_raise(data_shape):
    model = build_backbone(small_cfg(data_shape))
    x = torch.randn(3, *data_shape)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model(x, torch.rand(3, 1), torch.rand(3))  # [B, 1] instead of [B]
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model(x, torch.rand(4), torch.rand(4))  # batch mismatch
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model(x, torch.tensor(0.5), torch.rand(3))  # scalar time
    bad_x = torch.randn(3, *[d + 1 for d in data_shape])
    with pytest.raises(ValueError, match="data_shape"):
        model(bad_x, torch.rand(3), torch.rand(3))


def test_unet_bad_resolution_raises_config_error():
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_backbone(BackboneConfig(name="unet", data_shape=(1, 6, 6), channel_mult=(1, 2, 2)))
    with pytest.raises(ConfigError, match="attention_levels"):
        build_backbone(BackboneConfig(name="unet", data_shape=(1, 8, 8), attention_levels=(5,)))


def test_unet_initial_output_is_zero():
    model = build_backbone(small_cfg((1, 8, 8)))
    x = torch.randn(5, 1, 8, 8)
    y = model(x, torch.rand(5), torch.rand(5))
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8)])
def test_output_depends_on_s_and_t(data_shape):
    torch.manual_seed(0)
    model = build_backbone(small_cfg(data_shape)).eval()
    perturb_output_layer(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, *data_shape, generator=gen)
    s, t = times_for(6, 2, gen)
    with torch.no_grad():
        y = model(x, s, t)
        y_s = model(x, (s + 0.3) % 1.0, t)
        y_t = model(x, s, (t + 0.3) % 1.0)
        y_x = model(x + 0.5, s, t)
    for other in (y_s, y_t, y_x):
        per_sample = (other - y).flatten(1).abs().amax(dim=1)
        assert (per_sample > 1e-4).all(), per_sample


def test_same_gap_different_times_differ():
    """(s, t) and (s + c, t + c) share t - s but must give different outputs."""
    torch.manual_seed(0)
    model = build_backbone(small_cfg((2,))).eval()
    x = torch.randn(8, 2)
    s = torch.rand(8) * 0.5
    t = s + 0.2
    with torch.no_grad():
        diff = model(x, s, t) - model(x, s + 0.3, t + 0.3)
    assert diff.abs().amax() > 1e-4


def _jvp_vs_fd(model, x, times, which: int, eps: float = 1e-6):
    """jvp of model wrt input `which` (0 = x, 1.. = times) vs central finite difference."""
    inputs = [x, *times]
    gen = torch.Generator().manual_seed(7)
    tangent = torch.randn(inputs[which].shape, generator=gen, dtype=torch.float64)

    def f(z):
        args = list(inputs)
        args[which] = z
        return model(*args)

    _, jvp_out = torch.func.jvp(f, (inputs[which],), (tangent,))
    fd = (f(inputs[which] + eps * tangent) - f(inputs[which] - eps * tangent)) / (2 * eps)
    return jvp_out, fd


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8)])
def test_jvp_matches_finite_difference(data_shape):
    torch.manual_seed(0)
    model = build_backbone(small_cfg(data_shape, channels=8)).double().eval()
    perturb_output_layer(model)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, *data_shape, generator=gen, dtype=torch.float64)
    times = times_for(4, 2, gen, dtype=torch.float64)
    for which in (0, 1, 2):  # x, s, t
        jvp_out, fd = _jvp_vs_fd(model, x, times, which)
        assert jvp_out.shape == x.shape
        assert jvp_out.abs().amax() > 1e-6, "derivative unexpectedly zero"
        torch.testing.assert_close(jvp_out, fd, rtol=1e-5, atol=1e-7)


def test_jvp_velocity_model_wrt_t():
    model = build_backbone(small_cfg((1, 8, 8), time_inputs=1, channels=8)).double().eval()
    perturb_output_layer(model)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.rand(2, dtype=torch.float64)
    jvp_out, fd = _jvp_vs_fd(model, x, [t], which=1)
    torch.testing.assert_close(jvp_out, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8), (3, 16, 16)])
def test_per_sample_independence(data_shape):
    torch.manual_seed(0)
    # train mode (dropout is 0): a batch-coupling layer such as BatchNorm would show up here
    model = build_backbone(small_cfg(data_shape)).train()
    perturb_output_layer(model)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, *data_shape, generator=gen)
    s, t = times_for(5, 2, gen)
    with torch.no_grad():
        y = model(x, s, t)
        for i in range(5):
            yi = model(x[i : i + 1], s[i : i + 1], t[i : i + 1])
            torch.testing.assert_close(y[i : i + 1], yi, rtol=0, atol=1e-5)


@pytest.mark.parametrize("data_shape", [(2,), (1, 8, 8)])
def test_torch_export_dynamic_batch(data_shape):
    torch.manual_seed(0)
    model = build_backbone(small_cfg(data_shape)).eval()
    perturb_output_layer(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    x = torch.randn(4, *data_shape)
    s, t = torch.rand(4), torch.rand(4)
    exported = torch.export.export(
        model, (x, s, t), dynamic_shapes=({0: batch}, ({0: batch}, {0: batch}))
    )
    module = exported.module()
    for b in (1, 7):
        xb, sb, tb = torch.randn(b, *data_shape), torch.rand(b), torch.rand(b)
        with torch.no_grad():
            torch.testing.assert_close(module(xb, sb, tb), model(xb, sb, tb), rtol=1e-5, atol=1e-6)


def test_onnx_roundtrip_dynamic_batch(tmp_path):
    """torch.onnx.export (dynamo) of a U-Net with attention; onnxruntime matches at batch 1 and 9."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_backbone(small_cfg((1, 8, 8))).eval()
    perturb_output_layer(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    x, s, t = torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4)
    program = torch.onnx.export(
        model,
        (x, s, t),
        dynamo=True,
        input_names=["x", "s", "t"],
        output_names=["y"],
        dynamic_shapes=({0: batch}, ({0: batch}, {0: batch})),
    )
    path = tmp_path / "unet.onnx"
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # no spinning worker threads left behind for later tests
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for b in (1, 9):
        xb, sb, tb = torch.randn(b, 1, 8, 8), torch.rand(b), torch.rand(b)
        (y,) = session.run(None, {"x": xb.numpy(), "s": sb.numpy(), "t": tb.numpy()})
        with torch.no_grad():
            ref = model(xb, sb, tb)
        torch.testing.assert_close(torch.from_numpy(y), ref, rtol=1e-4, atol=1e-5)


def test_default_sizes_and_speed():
    mlp = build_backbone(BackboneConfig())
    n_mlp = sum(p.numel() for p in mlp.parameters())
    assert 1.0e6 < n_mlp < 1.6e6, n_mlp
    unet = build_backbone(
        BackboneConfig(name="unet", data_shape=(1, 8, 8), channels=32, channel_mult=(1, 2))
    )
    assert sum(p.numel() for p in unet.parameters()) < 1_000_000
    x, s, t = torch.randn(256, 1, 8, 8), torch.rand(256), torch.rand(256)
    durations = []
    for _ in range(3):  # best of 3 (the first call also warms up)
        start = time.perf_counter()
        unet(x, s, t).square().mean().backward()
        durations.append(time.perf_counter() - start)
    assert min(durations) < 2.0, durations  # ~0.2-0.4 s on 2 idle cores; generous for shared CI


def test_gradients_reach_all_parameters():
    for data_shape in [(2,), (1, 8, 8)]:
        model = build_backbone(small_cfg(data_shape))
        perturb_output_layer(model)
        x = torch.randn(3, *data_shape)
        model(x, torch.rand(3), torch.rand(3)).square().sum().backward()
        missing = [
            n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
        ]
        assert not missing, missing


def test_fourier_features_distinguish_endpoints():
    feats = FourierFeatures(4)
    phi = feats(torch.tensor([0.0, 1.0]))
    assert phi.shape == (2, feats.out_features) == (2, 9)
    # excluding the raw-t channel, t=0 and t=1 still differ (period-2 features)
    assert (phi[0, 1:] - phi[1, 1:]).abs().amax() > 0.5


def test_multi_time_embedding_shapes():
    emb = MultiTimeEmbedding(num_times=2, num_frequencies=4, embed_dim=12)
    out = emb([torch.rand(5), torch.rand(5)])
    assert out.shape == (5, 12)
    emb1 = MultiTimeEmbedding(num_times=1, num_frequencies=4, embed_dim=12)
    assert emb1([torch.rand(5)]).shape == (5, 12)
    with pytest.raises(ValueError):
        MultiTimeEmbedding(num_times=3, num_frequencies=4, embed_dim=12)


@pytest.mark.parametrize("channels", [1, 3, 8, 16, 32, 64, 96, 128, 256, 384])
def test_group_norm_groups_divides(channels):
    g = group_norm_groups(channels)
    assert channels % g == 0 and 1 <= g <= 32


def test_invalid_config_values_raise():
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(depth=0))
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="unet", data_shape=(1, 8, 8), dropout=1.0))
    with pytest.raises(ConfigError):
        build_backbone({"name": "mlp"})  # type: ignore[arg-type]
