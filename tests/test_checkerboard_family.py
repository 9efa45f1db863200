"""The MeanFlow diagnosis of the checkerboard (``anystep.benchmarks.checkerboard_family``).

Its teacher slope must be the flow's own jump (checked on the exact Gaussian case), and its
gap shares must be those of the objective's sampler.
"""

from __future__ import annotations

import re

import pytest
import torch
from gaussian_case import ExactGaussianVelocity
from test_objectives import CASE_2D

from anystep.benchmarks.checkerboard_family import GAPS, gap_shares, teacher_slope


def test_teacher_slope_is_the_exact_jump_of_the_flow() -> None:
    case = CASE_2D
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2, generator=g, dtype=torch.float64)
    s = 0.5 * torch.rand(512, generator=g, dtype=torch.float64)
    t = s + (1 - s) * torch.rand(512, generator=g, dtype=torch.float64)
    v = teacher_slope(ExactGaussianVelocity(case), x, s, t, steps=32)
    exact = (case.flow_map(x, s, t) - x) / (t - s)[:, None]
    assert torch.allclose(v, exact, atol=1e-7)
    assert (v - case.velocity(x, s)).abs().max() > 0.1  # a jump, not the velocity at s


def test_gap_shares_follow_the_meanflow_sampler() -> None:
    published = gap_shares({}, n=200_000)
    uniform = gap_shares({"time_kind": "uniform"}, n=200_000)
    long = gap_shares({"time_kind": "uniform", "gap_kind": "long"}, n=200_000)
    for shares in (published, uniform, long):
        assert len(shares) == len(GAPS) - 1 and sum(shares) == pytest.approx(1.0)
        assert shares[0] >= 0.75  # the diagonal rows (diag_frac 0.75) sit in the first bucket
    # uniform pairs on the triangle: P(t - s >= 0.9) = 0.1^2 of the 25% map rows
    assert uniform[-1] == pytest.approx(0.25 * 0.01, abs=6e-4)
    assert long[-1] == pytest.approx(0.25 * 0.19, abs=3e-3)
    assert published[-1] < 1e-4  # logit-normal times: the one-step jump is (almost) never drawn


def test_family_lever_variants_build_valid_configs() -> None:
    """Every variant of checkerboard_family_lever is its benchmark row plus the stated changes."""
    from anystep.benchmarks.checkerboard_family_lever import FF, RUN_DIR, VARIANTS, _cfg
    from anystep.benchmarks.checkerboard_methods import METHODS, Settings
    from anystep.benchmarks.checkerboard_train import build_train_config
    from anystep.core.interpolants import build_interpolant
    from anystep.training.base import build_objective

    for name, v in VARIANTS.items():
        cfg, base = _cfg(v), build_train_config(METHODS[v.base], Settings(), RUN_DIR)
        obj = build_objective(cfg.objective, build_interpolant("linear"), **cfg.objective_hparams)
        assert cfg.objective == base.objective and cfg.coupling == base.coupling
        for key, value in v.sets.items():
            if key.startswith("objective_hparams."):
                assert obj.hparams[key.split(".", 1)[1]] == value
        assert (cfg.model.backbone.x_features == 64) == (FF.items() <= v.sets.items())
        lr = re.search(r"_(xxl|x\dl)_lr(\d+e\d+)$", name)  # the same continuation at another peak lr
        if lr:
            assert cfg.lr == pytest.approx(float(lr.group(2).replace("e", "e-")))
        if re.search(r"_(xxl|x\dl)(_lr\d+e\d+)?$", name):  # a further 12000 steps of another variant (_xxl, _x3l, ...)
            assert cfg.max_steps == 12000 and cfg.init_from == str(RUN_DIR / v.init_from)
        elif name.endswith("_xl"):
            assert cfg.max_steps == 6000 and cfg.init_from == str(RUN_DIR / v.init_from)
        else:
            assert cfg.max_steps == Settings().steps and cfg.init_from.endswith("si")
