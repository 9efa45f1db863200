"""Digits benchmark rows ``shortcut_warm`` / ``meanflow_warm``: the U-Net map starts as the teacher.

The warm start sets ``v_{s,t} = b_s`` (anystep.core.warmstart), so on the diagonal the map is
one Euler step of the teacher: ``X_{s,s+eps}(x) = x + eps b_s(x)``. A map trained from scratch
(or a warm start that was not applied) fails these checks: its U-Net output starts at zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anystep.benchmarks.digits_methods import DEFAULT_METHODS, FAMILY_METHODS, METHODS
from anystep.benchmarks.digits_train import _method_config
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, save_model_dir
from anystep.core.warmstart import WarmStartError, check_warm_start, flowmap_from_velocity
from anystep.training.config import apply_overrides, validate_config
from anystep.training.presets import get_preset
from anystep.training.trainer import Trainer

WARM = {"shortcut_warm": "shortcut", "meanflow_warm": "meanflow"}


def _teacher(path: Path) -> Path:
    """A digits-velocity U-Net with every weight perturbed (a fresh one outputs exactly 0)."""
    cfg = get_preset("digits-velocity").model
    torch.manual_seed(0)
    vel = build_model(cfg)
    with torch.no_grad():
        for p in vel.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_model_dir(path, vel, cfg)


def _diagonal_checks(fm: torch.nn.Module, vel: torch.nn.Module, atol: float) -> None:
    torch.manual_seed(1)
    x, s, t = torch.randn(8, 1, 8, 8), torch.rand(8), torch.rand(8)
    eps = 1e-2
    with torch.no_grad():
        b_s = vel(x, s)
        assert b_s.abs().mean() > 0.05  # the teacher is not the zero field
        torch.testing.assert_close(fm.slope(x, s, t), b_s, atol=atol, rtol=0)
        torch.testing.assert_close(fm(x, s, s + eps), x + eps * b_s, atol=atol * eps, rtol=0)
        torch.testing.assert_close(fm.velocity(x, t), vel(x, t), atol=atol, rtol=0)  # tangent condition


@pytest.mark.parametrize("name", list(WARM))
def test_warm_rows_are_opt_in_and_start_from_the_teacher(name, tmp_path):
    spec, cold = METHODS[name], METHODS[WARM[name]]
    assert name in FAMILY_METHODS and name not in DEFAULT_METHODS
    # the from-scratch row's preset and budget, only the warm start added
    assert (spec.preset, spec.steps, spec.overrides, spec.teacher) == (cold.preset, cold.steps, cold.overrides, None)
    assert spec.init_from == "teacher" and cold.init_from is None
    cfg = _method_config(spec, tmp_path, quick=False)
    assert cfg.init_from == str(tmp_path / "teacher")
    assert cfg.to_dict() | {"init_from": None} == _method_config(cold, tmp_path, quick=False).to_dict()


def test_unet_map_warm_started_from_the_velocity_is_one_euler_step(tmp_path):
    vel_dir = _teacher(tmp_path / "teacher")
    vel = load_model_dir(vel_dir).model
    cfg = get_preset("digits-shortcut").model
    fm = build_model(cfg)
    with pytest.raises(AssertionError):  # from scratch: not the teacher
        _diagonal_checks(fm, vel, atol=1e-4)
    check_warm_start(cfg, load_model_dir(vel_dir).config)
    flowmap_from_velocity(fm, vel)
    _diagonal_checks(fm, vel, atol=1e-4)


def test_unet_warm_start_refuses_other_settings(tmp_path):
    vel_cfg = load_model_dir(_teacher(tmp_path / "teacher")).config
    cfg = get_preset("digits-shortcut").model
    other = apply_overrides(get_preset("digits-shortcut"), ["model.backbone.channels=16"]).model
    with pytest.raises(WarmStartError, match="channels 16"):
        check_warm_start(other, vel_cfg)
    with pytest.raises(WarmStartError, match="residual"):
        check_warm_start(get_preset("digits-lmd").model, vel_cfg)  # convex ansatz
    vel = build_model(vel_cfg)
    with pytest.raises(WarmStartError, match="differs"):
        flowmap_from_velocity(build_model(other), vel)
    check_warm_start(cfg, vel_cfg)  # the rows' own settings pass


@pytest.mark.parametrize("name", list(WARM))
def test_trainer_starts_the_row_from_the_teacher(name, tmp_path):
    vel_dir = _teacher(tmp_path / "teacher")
    cfg = _method_config(METHODS[name], tmp_path, quick=True)
    over = {"max_steps": 1, "lr": 1e-12, "lr_min": 0.0, "ema_decay": 0.0, "batch_size": 4}
    cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in over.items()])
    validate_config(cfg)
    Trainer(cfg, tmp_path / name, progress=False, eval_fn=None).fit()
    fm = load_model_dir(tmp_path / name).model
    prov = json.loads((tmp_path / name / "config.json").read_text())["provenance"]
    assert prov["init_from"] == "/".join(vel_dir.parts[-2:])  # no machine path in config.json
    _diagonal_checks(fm, load_model_dir(vel_dir).model, atol=1e-4)


def test_shortcut_warm_ot_is_shortcut_warm_plus_the_checkerboard_levers_only(tmp_path):
    name = "shortcut_warm_ot"
    assert name in FAMILY_METHODS and name not in DEFAULT_METHODS
    ot = _method_config(METHODS[name], tmp_path, quick=False).to_dict()
    warm = _method_config(METHODS["shortcut_warm"], tmp_path, quick=False).to_dict()
    assert ot["coupling"] == "minibatch_ot" and warm["coupling"] != "minibatch_ot"
    assert ot["objective_hparams"] == {**warm["objective_hparams"], "top_frac": 0.5, "target_ema": 0.999}
    same = {k for k in warm if k not in ("coupling", "objective_hparams", "preset")}
    assert {k: ot[k] for k in same} == {k: warm[k] for k in same}


def test_shortcut_long_continues_shortcut_warm_on_lmd_longs_schedule(tmp_path):
    name = "shortcut_long"
    assert name in FAMILY_METHODS and name not in DEFAULT_METHODS
    long = _method_config(METHODS[name], tmp_path, quick=False).to_dict()
    lmd_long = _method_config(METHODS["lmd_long"], tmp_path, quick=False).to_dict()
    assert long["init_from"] == str(tmp_path / "shortcut_warm")
    assert long["objective"] == "shortcut" and long["teacher"] is None
    schedule = ("max_steps", "batch_size", "lr", "lr_schedule", "lr_warmup_steps", "lr_min", "grad_clip", "ema_decay")
    assert {k: long[k] for k in schedule} == {k: lmd_long[k] for k in schedule}
    assert long["batch_size"] == 256 and long["lr"] == pytest.approx(3e-4)


def test_shortcut_long_top50_is_shortcut_long_plus_top_frac_only(tmp_path):
    name = "shortcut_long_top50"
    assert name in FAMILY_METHODS and name not in DEFAULT_METHODS
    top = _method_config(METHODS[name], tmp_path, quick=False).to_dict()
    long = _method_config(METHODS["shortcut_long"], tmp_path, quick=False).to_dict()
    assert top["objective_hparams"] == {**long["objective_hparams"], "top_frac": 0.5}
    assert {k: v for k, v in top.items() if k != "objective_hparams"} == {
        k: v for k, v in long.items() if k != "objective_hparams"}
