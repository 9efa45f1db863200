"""Random Fourier features of the spatial input (``backbone.x_features``): the MLP option that
lets a small flow map make steep transitions (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, save_model_dir
from anystep.core.networks.mlp import SpatialFourierFeatures
from anystep.core.warmstart import WarmStartError, check_warm_start, flowmap_from_velocity


def _cfg(kind: str = "flowmap", x_features: int = 8, scale: float = 2.0) -> ModelConfig:
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2 if kind == "flowmap" else 1, width=32, depth=2,
                        fourier_features=4, x_features=x_features, x_feature_scale=scale)
    return ModelConfig(kind=kind, backbone=bb, ansatz="residual", data_shape=(2,))


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def test_features_are_sin_cos_of_gaussian_frequencies_and_fixed_by_the_config():
    f = SpatialFourierFeatures(2, 512, 3.0)
    x = torch.randn(5, 2)
    out = f(x)
    assert out.shape == (5, 1024)
    angles = x @ f.freqs.T
    torch.testing.assert_close(out, torch.cat([angles.sin(), angles.cos()], 1))
    # B ~ N(0, sigma^2) in cycles per unit: freqs = 2 pi B
    assert abs(float((f.freqs / (2 * np.pi)).std()) - 3.0) < 0.2
    torch.testing.assert_close(SpatialFourierFeatures(2, 512, 3.0).freqs, f.freqs)  # same config, same B


def test_flowmap_with_x_features_has_the_right_shape_identity_on_the_diagonal_and_uses_them():
    torch.manual_seed(0)
    fm = build_model(_cfg())
    _perturb(fm)
    x, s, t = torch.randn(64, 2), torch.rand(64), torch.rand(64)
    y = fm(x, s, t)
    assert y.shape == (64, 2) and torch.isfinite(y).all()
    torch.testing.assert_close(fm(x, s, s), x)  # X_{t,t} = id
    first = fm.backbone.net[0]
    n = fm.backbone.x_features.out_features
    assert first.in_features == 2 + 3 * 9 + n
    with torch.no_grad():
        first.weight[:, -n:] = 0.0
    assert not torch.allclose(fm(x, s, t), y)  # the features change the output


def test_default_keeps_the_old_network_and_old_model_dirs_load(tmp_path):
    torch.manual_seed(0)
    old = build_model(_cfg(x_features=0))
    torch.manual_seed(0)
    plain = build_model(ModelConfig(kind="flowmap", backbone=BackboneConfig(
        name="mlp", data_shape=(2,), time_inputs=2, width=32, depth=2, fourier_features=4),
        ansatz="residual", data_shape=(2,)))
    assert old.state_dict().keys() == plain.state_dict().keys()
    assert not any("x_features" in k for k in old.state_dict())
    for k, v in old.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k])
    # a model directory written before the field existed (no x_features keys) loads strictly
    d = save_model_dir(tmp_path / "old", old, _cfg(x_features=0))
    cfg_json = json.loads((d / "config.json").read_text())
    cfg_json["backbone"].pop("x_features")
    cfg_json["backbone"].pop("x_feature_scale")
    (d / "config.json").write_text(json.dumps(cfg_json))
    loaded = load_model_dir(d)
    assert loaded.config.backbone.x_features == 0
    x, s, t = torch.randn(16, 2), torch.rand(16), torch.rand(16)
    assert torch.equal(loaded.model(x, s, t), old.eval()(x, s, t))


def test_model_dir_round_trip_keeps_the_frequencies(tmp_path):
    torch.manual_seed(0)
    fm = build_model(_cfg())
    _perturb(fm)
    loaded = load_model_dir(save_model_dir(tmp_path / "m", fm, _cfg())).model
    assert torch.equal(loaded.backbone.x_features.freqs, fm.backbone.x_features.freqs)
    x, s, t = torch.randn(16, 2), torch.rand(16), torch.rand(16)
    assert torch.equal(loaded(x, s, t), fm.eval()(x, s, t))


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="x_features"):
        BackboneConfig(name="mlp", x_features=-1)
    with pytest.raises(ConfigError, match="x_feature_scale"):
        BackboneConfig(name="mlp", x_features=4, x_feature_scale=0.0)
    with pytest.raises(ConfigError, match="MLP option"):
        BackboneConfig(name="unet", data_shape=(1, 8, 8), x_features=4)


def test_warm_start_from_a_velocity_without_features_is_exact():
    torch.manual_seed(0)
    vel = build_model(_cfg("velocity", x_features=0))
    _perturb(vel)
    fm = build_model(_cfg())
    check_warm_start(_cfg(), _cfg("velocity", x_features=0))
    flowmap_from_velocity(fm, vel)
    x, s, t = torch.randn(64, 2), torch.rand(64), torch.rand(64)
    torch.testing.assert_close(fm.slope(x, s, t), vel(x, s), atol=1e-6, rtol=1e-6)  # v_st = b_s
    # a velocity with its own features: only the same ones
    with pytest.raises(WarmStartError, match="Fourier features of x"):
        check_warm_start(_cfg(scale=1.0), _cfg("velocity", scale=2.0))
    vel2 = build_model(_cfg("velocity"))
    _perturb(vel2)
    fm2 = build_model(_cfg())
    flowmap_from_velocity(fm2, vel2)
    torch.testing.assert_close(fm2.slope(x, s, t), vel2(x, s), atol=1e-6, rtol=1e-6)


def test_jvp_in_x_matches_finite_differences():
    torch.manual_seed(0)
    fm = build_model(_cfg(scale=1.0)).double()
    _perturb(fm)
    x, s, t = torch.randn(8, 2, dtype=torch.float64), torch.rand(8).double(), torch.rand(8).double()
    dx = torch.randn(8, 2, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda z: fm(z, s, t), (x,), (dx,))
    eps = 1e-6
    fd = (fm(x + eps * dx, s, t) - fm(x - eps * dx, s, t)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, atol=1e-6, rtol=1e-5)


def test_onnx_export_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from anystep.export.common import BatchRange
    from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session

    torch.manual_seed(0)
    fm = build_model(_cfg())
    _perturb(fm)
    d = save_model_dir(tmp_path / "m", fm, _cfg())
    res = export_onnx(d, tmp_path / "onnx", OnnxOptions(exporter="torchscript", batch=BatchRange(1, 8, 32)))
    sess = ort_session(res.artifact)
    x, s, t = torch.randn(8, 2), torch.rand(8), torch.rand(8)
    y = sess.run(None, {"x": x.numpy(), "s": s.numpy(), "t": t.numpy()})[0]
    with torch.no_grad():
        ref = fm.eval()(x, s, t).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_opt_in_preset_and_benchmark_rows_use_the_features_and_leave_the_default_rows_alone(tmp_path):
    from anystep.benchmarks.checkerboard_methods import DEFAULT_METHODS, METHODS, Settings
    from anystep.benchmarks.checkerboard_train import build_train_config
    from anystep.training.presets import get_preset

    cfg = get_preset("checkerboard-lmd-ff")
    assert (cfg.model.backbone.x_features, cfg.model.backbone.x_feature_scale) == (64, 1.0)
    assert cfg.model.ansatz == "residual" and cfg.objective == "lmd"
    assert get_preset("checkerboard-lmd").model.backbone.x_features == 0
    assert "lmd_ff" not in DEFAULT_METHODS and "lmd_ff_xl" not in DEFAULT_METHODS
    ff = build_train_config(METHODS["lmd_ff"], Settings(), tmp_path)
    base = build_train_config(METHODS["lmd"], Settings(), tmp_path)
    assert ff.model.backbone.x_features == 64 and base.model.backbone.x_features == 0
    assert ff.init_from == str(tmp_path / "si") and ff.teacher == str(tmp_path / "si")
    a, b = ff.to_dict(), base.to_dict()
    a["model"]["backbone"].update(x_features=0, x_feature_scale=1.0)
    assert {k for k in a if a[k] != b[k]} == {"preset"}  # the same budget and objective as the LMD row
    start = build_train_config(METHODS["lmd_ff_start"], Settings(), tmp_path)
    assert start.objective_hparams == {"start_frac": 0.5} and "lmd_ff_start" not in DEFAULT_METHODS
    xl = build_train_config(METHODS["lmd_ff_start_xl"], Settings(), tmp_path)
    assert xl.init_from == str(tmp_path / "lmd_ff_start") and xl.max_steps == 6000 and xl.lr == 5e-4
