"""Tests for anystep.core.metrics: KL (2D histogram), W2^2, coupling error, Frechet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anystep.core import metrics as M
from anystep.core.data import checkerboard_density, get_dataset


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# --------------------------------------------------------------------------- KL


def test_kl_self_is_small_and_grows_with_shift():
    n = 200_000
    target = _rng(0).standard_normal((n, 2))
    same = _rng(1).standard_normal((n, 2))
    kl_same = M.kl_divergence_2d(target, same, bins=50)
    assert isinstance(kl_same, float)
    assert 0.0 <= kl_same < 0.03
    kl_half = M.kl_divergence_2d(target, same + [0.5, 0.0], bins=50)
    kl_one = M.kl_divergence_2d(target, same + [1.0, 0.0], bins=50)
    # true KL(N(0,I) || N(m,I)) = |m|^2 / 2
    assert kl_same < kl_half < kl_one
    assert abs(kl_half - 0.125) < 0.05
    assert abs(kl_one - 0.5) < 0.12
    # torch input gives the same number
    assert M.kl_divergence_2d(
        torch.from_numpy(target), torch.from_numpy(same), bins=50
    ) == pytest.approx(kl_same)


def test_kl_with_exact_checkerboard_density():
    ds = get_dataset("checkerboard")
    x = ds.sample(200_000, torch.Generator().manual_seed(0)).numpy()
    kl_cb = M.kl_divergence_2d(None, x, target_density=checkerboard_density)
    assert 0.0 <= kl_cb < 0.03
    g = _rng(2).standard_normal((200_000, 2))
    assert M.kl_divergence_2d(None, g, target_density=checkerboard_density) > 1.0
    # overflow: 10% of the samples moved off the grid cost at least -log(0.9)
    y = x.copy()
    y[:20_000] = 50.0
    kl_out = M.kl_divergence_2d(None, y, target_density=checkerboard_density)
    assert kl_out >= kl_cb - np.log(0.9) - 0.01
    y[:20_000] = np.nan  # non-finite samples count as outside, too
    assert M.kl_divergence_2d(None, y, target_density=checkerboard_density) == pytest.approx(kl_out)


def test_kl_target_mass_outside_the_grid_is_compared():
    # half of the target lies outside the grid; a model with none outside is penalised
    rng = _rng(3)
    inside = rng.uniform(-1, 1, (100_000, 2))
    target = np.concatenate([inside, inside + 10.0])
    model_in = rng.uniform(-1, 1, (200_000, 2))
    model_mix = np.concatenate([model_in[:100_000], model_in[100_000:] + 10.0])
    kl_bad = M.kl_divergence_2d(target, model_in, bins=20)
    kl_good = M.kl_divergence_2d(target, model_mix, bins=20)
    assert kl_good < 0.02 < kl_bad


def test_kl_validation():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="exactly one"):
        M.kl_divergence_2d(None, x)
    with pytest.raises(ValueError, match="exactly one"):
        M.kl_divergence_2d(x, x, target_density=checkerboard_density)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        M.kl_divergence_2d(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="2D array"):
        M.kl_divergence_2d(x, np.zeros(10))
    with pytest.raises(ValueError, match="normalised"):
        M.kl_divergence_2d(None, x, target_density=lambda p: np.full(len(p), 1.0))
    with pytest.raises(ValueError, match="bins"):
        M.kl_divergence_2d(x, x, bins=0)


# --------------------------------------------------------------------------- W2


def test_w2_shifted_gaussians_and_identical_sets():
    rng = _rng(4)
    m = np.array([2.0, 1.0])
    x = rng.standard_normal((800, 2))
    y = rng.standard_normal((800, 2)) + m
    w2 = M.w2_squared(x, y)
    assert isinstance(w2, float)
    assert abs(w2 - float(m @ m)) < 0.4
    assert M.w2_squared(x, x[::-1].copy()) == pytest.approx(0.0, abs=1e-9)
    assert M.w2_squared(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(25.0)
    # two points each: optimal matching, not index order
    a = np.array([[0.0, 0.0], [10.0, 0.0]])
    b = np.array([[10.0, 1.0], [0.0, 1.0]])
    assert M.w2_squared(a, b) == pytest.approx(1.0)
    # subsampling keeps the estimate close and is deterministic in the seed
    sub = M.w2_squared(torch.from_numpy(x), torch.from_numpy(y), max_samples=300, seed=1)
    assert abs(sub - float(m @ m)) < 0.8
    assert sub == M.w2_squared(x, y, max_samples=300, seed=1)


def test_w2_validation():
    with pytest.raises(ValueError, match="features"):
        M.w2_squared(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="reshape"):
        M.w2_squared(np.zeros((5, 1, 2, 2)), np.zeros((5, 1, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.w2_squared(np.full((3, 2), np.nan), np.zeros((3, 2)))


# --------------------------------------------------------------------------- coupling


def test_coupling_l2():
    rng = _rng(5)
    x = rng.standard_normal((100, 3))
    shift = np.array([1.0, -2.0, 2.0])
    assert M.coupling_l2(x, x + shift) == pytest.approx(9.0)
    assert M.coupling_l2(torch.from_numpy(x), torch.from_numpy(x)) == 0.0
    noise = rng.standard_normal((100, 3))
    expected = float(np.mean(np.sum(noise**2, axis=1)))
    assert M.coupling_l2(x, x + noise) == pytest.approx(expected)
    imgs = rng.standard_normal((4, 1, 2, 2))
    assert M.coupling_l2(imgs, imgs + 0.5) == pytest.approx(4 * 0.25)
    with pytest.raises(ValueError, match="same shape"):
        M.coupling_l2(x, x[:50])


# --------------------------------------------------------------------------- Frechet


def test_gaussian_frechet_isotropic_closed_form():
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, 2.0, 0.0, -1.0])
    a, b = 2.0, 0.5
    got = M.gaussian_frechet(mu1, a * np.eye(d), mu2, b * np.eye(d))
    want = float((mu1 - mu2) @ (mu1 - mu2) + d * (a + b - 2 * np.sqrt(a * b)))
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-9)
    assert M.gaussian_frechet(mu2, np.eye(d), mu2, np.eye(d)) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_frechet_general_covariances():
    rng = _rng(6)
    d = 5
    a_ = rng.standard_normal((d, d))
    b_ = rng.standard_normal((d, d))
    c1, c2 = a_ @ a_.T + 0.1 * np.eye(d), b_ @ b_.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1 = _sqrtm_psd(c1)
    want = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2 - 2 * _sqrtm_psd(s1 @ c2 @ s1)))
    assert M.gaussian_frechet(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-7)
    # singular covariances (rank 1) still give the closed form
    u = rng.standard_normal((d, 1))
    cs = u @ u.T
    want_s = float(np.trace(cs + c2 - 2 * _sqrtm_psd(_sqrtm_psd(cs) @ c2 @ _sqrtm_psd(cs))))
    assert M.gaussian_frechet(mu1, cs, mu1, c2) == pytest.approx(want_s, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match=r"\[5, 5\]"):
        M.gaussian_frechet(mu1, c1[:4, :4], mu2, c2)
    with pytest.raises(ValueError, match="mu2"):
        M.gaussian_frechet(mu1, c1, mu2[:3], c2)


def test_frechet_distance_from_samples():
    rng = _rng(7)
    d = 3
    mu1, mu2 = np.zeros(d), np.array([1.0, 0.0, -1.0])
    c1 = np.diag([1.0, 2.0, 0.5])
    c2 = np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]])
    a = rng.multivariate_normal(mu1, c1, size=100_000)
    b = rng.multivariate_normal(mu2, c2, size=100_000)
    want = M.gaussian_frechet(mu1, c1, mu2, c2)
    got = M.frechet_distance(torch.from_numpy(a), b)
    assert abs(got - want) < 0.05
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a[:, :1], b[:, :1]) == pytest.approx(
        M.gaussian_frechet(
            a[:, :1].mean(0), np.var(a[:, 0], ddof=1), b[:, :1].mean(0), np.var(b[:, 0], ddof=1)
        )
    )
    with pytest.raises(ValueError, match="features"):
        M.frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(a[:1], b)
