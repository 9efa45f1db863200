"""Tests for the (s, t) samplers of anystep.training.times and the PFMM schedule helpers."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from anystep.training.distill import ObjectiveError
from anystep.training.fmm import progressive_schedule, teacher_grid
from anystep.training.times import TimeError, TimeSampler, band_weight

N = 40_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_forward_only_uniform_triangle() -> None:
    pair = TimeSampler(forward_only=True).sample(N, gen())
    s, t = pair.s.double(), pair.t.double()
    assert pair.s.shape == (N,) and pair.t.shape == (N,)
    assert bool((s <= t).all()) and bool((s >= 0).all()) and bool((t <= 1).all())
    # uniform on the triangle: s = min(U, V) has CDF 1 - (1 - x)^2, t = max has CDF x^2
    assert stats.kstest(s.numpy(), lambda x: 1 - (1 - x) ** 2).pvalue > 1e-3
    assert stats.kstest(t.numpy(), lambda x: x**2).pvalue > 1e-3


def test_symmetric_square_is_uniform() -> None:
    pair = TimeSampler(forward_only=False).sample(N, gen(1))
    s, t = pair.s.double().numpy(), pair.t.double().numpy()
    assert stats.kstest(s, "uniform").pvalue > 1e-3
    assert stats.kstest(t, "uniform").pvalue > 1e-3
    assert abs((pair.s < pair.t).double().mean().item() - 0.5) < 0.02
    # independence: corr(s, t) = 0 on the square
    assert abs(float(torch.corrcoef(torch.stack([pair.s, pair.t]))[0, 1])) < 0.03


@pytest.mark.parametrize("K", [2, 4, 10])
@pytest.mark.parametrize("forward_only", [False, True])
def test_window_is_exact_and_uniform_on_the_band(K: int, forward_only: bool) -> None:
    delta = 1.0 / K
    sampler = TimeSampler(window=delta, forward_only=forward_only)
    pair = sampler.sample(N, gen(K))
    s, t = pair.s.double(), pair.t.double()
    gap = (t - s).abs()
    assert bool((gap <= delta + 1e-6).all())
    assert bool((sampler.weight(pair.s, pair.t) == 1).all())
    if forward_only:
        assert bool((s <= t).all())
    else:
        assert abs((s < t).double().mean().item() - 0.5) < 0.02
    # gap density ∝ (1 - u) on [0, delta]
    c = delta - delta**2 / 2
    assert stats.kstest(gap.numpy(), lambda u: (u - u**2 / 2) / c).pvalue > 1e-3
    # given the gap, the lower time is uniform on [0, 1 - gap]
    lo = torch.minimum(s, t)
    assert stats.kstest((lo / (1 - gap)).numpy(), "uniform").pvalue > 1e-3
    # the gap actually uses the whole window
    assert gap.max().item() > 0.95 * delta


def test_diag_fraction() -> None:
    sampler = TimeSampler(diag_frac=0.75, forward_only=True)
    pair = sampler.sample(256, gen(2))
    assert pair.n_diag == 192
    assert bool(pair.diag[:192].all()) and not bool(pair.diag[192:].any())
    assert torch.equal(pair.s[pair.diag], pair.t[pair.diag])
    off = ~pair.diag
    assert bool((pair.s[off] < pair.t[off]).all())
    # tiny batches still get one row on and one off the diagonal
    assert TimeSampler(diag_frac=0.75).n_diag(2) == 1
    assert TimeSampler(diag_frac=0.01).n_diag(8) == 1
    assert TimeSampler(diag_frac=1.0).n_diag(8) == 8
    assert TimeSampler(diag_frac=0.0).n_diag(8) == 0


def test_logit_normal() -> None:
    sampler = TimeSampler(kind="logit_normal", logit_mean=-0.4, logit_std=1.3, forward_only=False)
    t = sampler.sample_t(N, gen(3)).double()
    logit = torch.log(t / (1 - t)).numpy()
    assert stats.kstest(logit, "norm", args=(-0.4, 1.3)).pvalue > 1e-3
    pair = TimeSampler(kind="logit_normal").sample(1000, gen(4))
    assert bool((pair.s <= pair.t).all())


def test_reproducible_from_generator_only() -> None:
    sampler = TimeSampler(window=0.25, forward_only=False, diag_frac=0.5)
    torch.manual_seed(0)
    a = sampler.sample(64, gen(7))
    torch.manual_seed(1)  # the global RNG must not matter
    b = sampler.sample(64, gen(7))
    c = sampler.sample(64, gen(8))
    assert torch.equal(a.s, b.s) and torch.equal(a.t, b.t)
    assert not torch.equal(a.t, c.t)


def test_pair_to_casts_dtype() -> None:
    pair = TimeSampler().sample(4, gen()).to(torch.zeros(1, dtype=torch.float64))
    assert pair.s.dtype == torch.float64 and pair.diag.dtype == torch.bool


def test_band_weight() -> None:
    s = torch.tensor([0.0, 0.5, 0.9, 0.2])
    t = torch.tensor([0.2, 0.1, 1.0, 0.2])
    assert band_weight(s, t, 0.25).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert band_weight(s, t, 1.0, forward_only=True).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert band_weight(s, t, 1.0).tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "beta"},
        {"window": 0.0},
        {"window": 1.5},
        {"diag_frac": 1.2},
        {"diag_frac": -0.1},
        {"logit_std": 0.0},
        {"kind": "logit_normal", "window": 0.5},
    ],
)
def test_invalid_settings_raise(kwargs) -> None:
    with pytest.raises(TimeError):
        TimeSampler(**kwargs)


def test_invalid_batch_size() -> None:
    with pytest.raises(TimeError, match="batch_size"):
        TimeSampler().sample(0, gen())


@pytest.mark.parametrize("K,M", [(8, 2), (6, 2), (5, 2), (4, 4), (9, 3), (10, 3), (2, 5), (1, 2)])
def test_progressive_schedule(K: int, M: int) -> None:
    schedule = progressive_schedule(K, M)
    assert len(schedule) == (math.ceil(math.log(K, M) - 1e-12) if K > 1 else 0)
    n = K
    for n_r in schedule:
        # each round's student jump (1/n_r) is covered by M jumps of the previous model (1/n)
        assert n_r * M >= n and n_r < n
        n = n_r
    if K > 1:
        assert schedule[-1] == 1


def test_progressive_schedule_rejects_bad_input() -> None:
    with pytest.raises(ObjectiveError):
        progressive_schedule(0, 2)
    with pytest.raises(ObjectiveError):
        progressive_schedule(4, 1)


def test_teacher_grid() -> None:
    s = torch.tensor([0.0, 0.8])
    t = torch.tensor([1.0, 0.2])
    grid = teacher_grid(s, t, 4)
    assert grid.shape == (5, 2)
    assert torch.equal(grid[0], s) and torch.equal(grid[-1], t)
    assert torch.allclose(grid[:, 0], torch.linspace(0, 1, 5))
    assert torch.allclose(grid[1:, 1] - grid[:-1, 1], torch.full((4,), -0.15))
