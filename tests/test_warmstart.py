"""Flow map warm-started from a velocity model: v_{s,t}(x) = b_s(x) exactly (one Euler step)."""

from __future__ import annotations

import pytest
import torch
from test_trainer import save_random_model, tiny_config, tiny_model

from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir
from anystep.core.warmstart import WarmStartError, flowmap_from_velocity
from anystep.training.config import validate_config
from anystep.training.trainer import Trainer


def _pair(width=16, ansatz="residual", fm_width=None):
    torch.manual_seed(0)
    vel = build_model(tiny_model("velocity", width=width))
    fm = build_model(tiny_model("flowmap", width=fm_width or width, ansatz=ansatz))
    return fm, vel


def test_warm_started_map_is_one_euler_step_of_the_velocity():
    fm, vel = _pair()
    x = torch.randn(64, 2)
    s, t = torch.rand(64), torch.rand(64)
    before = fm.slope(x, s, t)
    flowmap_from_velocity(fm, vel)
    b_s = vel(x, s)
    assert not torch.allclose(before, b_s)  # it really changed something
    torch.testing.assert_close(fm.slope(x, s, t), b_s, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fm(x, s, t), x + (t - s)[:, None] * b_s, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fm.velocity(x, t), vel(x, t), atol=1e-6, rtol=1e-6)  # tangent condition


def test_mismatched_or_unsupported_models_are_refused():
    fm, vel = _pair(fm_width=24)
    with pytest.raises(WarmStartError, match="differs"):
        flowmap_from_velocity(fm, vel)
    fm, vel = _pair(ansatz="convex")
    with pytest.raises(WarmStartError, match="residual"):
        flowmap_from_velocity(fm, vel)
    with pytest.raises(WarmStartError, match="needs"):
        flowmap_from_velocity(vel, fm)
    unet = build_model(ModelConfig(kind="flowmap", data_shape=(1, 8, 8), backbone=BackboneConfig(
        name="unet", data_shape=(1, 8, 8), time_inputs=2, channels=8, channel_mult=(1,), num_res_blocks=1,
        attention_levels=())))
    with pytest.raises(WarmStartError, match="MLP"):
        flowmap_from_velocity(unet, _pair()[1])


def test_trainer_starts_a_flow_map_objective_from_a_velocity_teacher(tmp_path):
    teacher = save_random_model(tmp_path / "teacher", tiny_model("velocity"))
    cfg = tiny_config(kind="flowmap", objective="lmd", teacher=str(teacher), init_from=str(teacher), max_steps=1,
                      lr=1e-12, ema_decay=0.0)
    Trainer(cfg, tmp_path / "run", progress=False, eval_fn=None).fit()
    fm, vel = load_model_dir(tmp_path / "run").model, load_model_dir(teacher).model
    x, s, t = torch.randn(32, 2), torch.rand(32), torch.rand(32)
    with torch.no_grad():
        torch.testing.assert_close(fm.slope(x, s, t), vel(x, s), atol=1e-5, rtol=1e-5)


def test_config_check_names_the_mismatch(tmp_path):
    teacher = save_random_model(tmp_path / "teacher", tiny_model("velocity", width=8))
    cfg = tiny_config(kind="flowmap", objective="lmd", teacher=str(teacher), init_from=str(teacher))
    with pytest.raises(ConfigError, match="width 8"):
        validate_config(cfg)
