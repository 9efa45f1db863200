import math

import pytest
import torch

from anystep.core.config import InterpolantConfig
from anystep.core.interpolants import INTERPOLANTS, build_interpolant

CASES = [(name, g) for name in INTERPOLANTS for g in (0.0, 0.5)]


@pytest.mark.parametrize("name,gamma", CASES)
def test_boundary_conditions(name, gamma):
    it = build_interpolant(InterpolantConfig(name=name, gamma=gamma))
    it.check_boundary_conditions(tol=1e-9)
    x0, x1, z = torch.randn(3, 5, 4, dtype=torch.float64).unbind(0)
    s0 = it.interpolate(x0, x1, torch.zeros(5, dtype=torch.float64), z)
    s1 = it.interpolate(x0, x1, torch.ones(5, dtype=torch.float64), z)
    torch.testing.assert_close(s0.I_t, x0)
    torch.testing.assert_close(s1.I_t, x1)


@pytest.mark.parametrize("name,gamma", CASES)
def test_time_derivative_matches_finite_difference(name, gamma):
    it = build_interpolant(InterpolantConfig(name=name, gamma=gamma))
    torch.manual_seed(0)
    x0, x1, z = torch.randn(3, 7, 2, dtype=torch.float64).unbind(0)
    t = torch.rand(7, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    fd = (it.interpolate(x0, x1, t + h, z).I_t - it.interpolate(x0, x1, t - h, z).I_t) / (2 * h)
    torch.testing.assert_close(it.interpolate(x0, x1, t, z).dI_t, fd, rtol=1e-5, atol=1e-6)


def test_bad_boundary_detected():
    it = build_interpolant("linear")
    it.alpha = lambda t: 1 - 0.5 * t  # alpha_1 = 0.5 violates Definition 3.9
    with pytest.raises(ValueError, match="Definition 3.9"):
        it.check_boundary_conditions()


def test_gamma_requires_z_and_shapes():
    it = build_interpolant("linear", gamma=1.0)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="pass z"):
        it.interpolate(x, x, torch.rand(2))
    with pytest.raises(ValueError, match="same shape"):
        it.interpolate(x, torch.zeros(2, 4), torch.rand(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="times"):
        it.interpolate(x, x, torch.rand(3), x)


def test_gamma_value():
    it = build_interpolant("trig", gamma=2.0)
    t = torch.tensor([0.25])
    assert math.isclose(float(it.gamma(t)), math.sqrt(2 * 0.25 * 0.75), rel_tol=1e-6)


def test_minibatch_ot_coupling_preserves_marginals_and_reduces_cost():
    from anystep.core.couplings import independent, minibatch_ot

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g)
    x1 = torch.randn(64, 2, generator=g) + 3
    ot = minibatch_ot(x0, x1)
    ind = independent(x0, x1)
    # same multiset of base points
    assert torch.equal(ot.x0.sort(0).values, x0.sort(0).values)
    assert ((ot.x0 - ot.x1) ** 2).sum() < ((ind.x0 - ind.x1) ** 2).sum()
