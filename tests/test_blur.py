"""Blur equivalent of a 2D KL (anystep.core.metrics.blur_curve / BlurCurve)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anystep.core import metrics as M
from anystep.core.data import checkerboard_density, get_dataset


def _score(x: np.ndarray) -> float:
    return M.kl_divergence_2d(None, x, bins=100, target_density=checkerboard_density)


def test_blur_curve_grows_with_sigma_and_inverts():
    x1 = get_dataset("checkerboard").sample(40_000, torch.Generator().manual_seed(0)).double().numpy()
    curve = M.blur_curve(x1, _score, seed=1)
    assert curve.sigmas[0] == 0.0 and curve.sigmas[1:] == M.BLUR_SIGMAS
    assert all(b > a for a, b in zip(curve.kls, curve.kls[1:])), curve.kls
    # a sample blurred by sigma = 0.12 (not on the grid) reads back as about 0.12
    eps = np.random.default_rng(7).standard_normal(x1.shape)
    sigma = curve.equivalent(_score(x1 + 0.12 * eps))
    assert sigma == pytest.approx(0.12, abs=0.015)
    assert curve.equivalent(curve.kls[0] / 2) == 0.0
    assert curve.equivalent(curve.kls[-1] * 2) == float("inf")
    assert curve.describe(curve.kls[-1] * 2) == "> 0.3"
    assert curve.describe(curve.kls[0] / 2) == "<= floor"
    assert curve.describe(curve.kls[2]).startswith("~0.1")


def test_blur_curve_interpolates_piecewise_linearly_and_validates():
    curve = M.BlurCurve(sigmas=(0.0, 0.1, 0.2), kls=(0.01, 0.05, 0.03), n=10)  # noisy: made monotone
    assert curve.equivalent(0.03) == pytest.approx(0.05)
    assert curve.equivalent(0.05) == pytest.approx(0.1)
    assert curve.equivalent(float("nan")) != curve.equivalent(float("nan"))
    with pytest.raises(ValueError, match="increase"):
        M.BlurCurve(sigmas=(0.0, 0.2, 0.1), kls=(0.0, 0.1, 0.2), n=1)
    with pytest.raises(ValueError, match="positive"):
        M.blur_curve(np.zeros((10, 2)), _score, sigmas=(0.0, 0.1))
