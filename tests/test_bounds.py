"""Props. 3.7 and 3.8 checked numerically on the Gaussian -> Gaussian case (exact b_t and C_t)."""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_case import GaussianCase, PowerGaussianFlowMap

from anystep.core.bounds import BoundCheck, eulerian_defect, lagrangian_defect, one_sided_lipschitz
from anystep.core.metrics import w2_squared

CASE = GaussianCase(m=[1.5, -0.5], sigma=[0.5, 2.0])


def _exact_c(t: float) -> float:
    """Exact one-sided Lipschitz constant: b_t is affine with Jacobian diag(S_t'/S_t)."""
    tt = torch.tensor([t], dtype=torch.float64)
    x = torch.zeros(1, CASE.d, dtype=torch.float64)
    return float((CASE.dS(tt, x) / CASE.S(tt, x)).max())


def _check(X_hat, n: int = 2000, seed: int = 0) -> BoundCheck:
    g = torch.Generator().manual_seed(seed)
    batch = CASE.batch(n, g, dtype=torch.float64)
    x0, x1 = batch.x0, batch.x1
    zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    with torch.no_grad():
        x_hat = X_hat(x0, zero, one)
        x_b = CASE.flow_map(x0, zero, one)
    c = one_sided_lipschitz(CASE.velocity, lambda t: CASE.mu(torch.tensor([t]), x0[:64]) + x0[:64], n_times=32)
    return BoundCheck(
        w2=w2_squared(x_b.numpy(), x_hat.numpy(), max_samples=2000),
        coupling=float((x_b - x_hat).pow(2).sum(1).mean()),
        lagrangian_defect=lagrangian_defect(X_hat, CASE.velocity, x0, n_times=32),
        lipschitz_integral=float(c.abs().mean()),
        eulerian_defect=eulerian_defect(X_hat, CASE.velocity, x0, x1, n_times=32),
    )


def test_one_sided_lipschitz_is_exact_for_the_affine_velocity():
    c = one_sided_lipschitz(CASE.velocity, lambda t: torch.randn(16, 2, dtype=torch.float64), n_times=8)
    nodes = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    assert torch.allclose(c, torch.tensor([_exact_c(float(t)) for t in nodes], dtype=torch.float64), atol=1e-10)


def test_exact_map_has_zero_defects():
    r = _check(lambda x, s, t: CASE.flow_map(x, s, t))
    assert r.coupling < 1e-20 and r.lagrangian_defect < 1e-18 and r.eulerian_defect < 1e-18


def _drifted(x, s, t):
    """Exact map plus a drift ``(t - s) delta``: keeps ``X_{s,s} = id``, wrong mean."""
    return CASE.flow_map(x, s, t) + (t - s)[:, None] * torch.tensor([0.3, -0.2], dtype=x.dtype)


@pytest.mark.parametrize("theta", [0.5, 0.8, 1.5, "drift"])
def test_lagrangian_and_eulerian_bounds_hold(theta):
    """X_hat with X_{s,s} = id (the proofs' starting point E_{s,s} = 0) but wrong off the diagonal."""
    X_hat = _drifted if theta == "drift" else PowerGaussianFlowMap(CASE, theta=theta).requires_grad_(False)
    r = _check(X_hat)
    assert r.coupling > 1e-3  # a genuinely wrong map
    # both sides: the measured W2^2 (exact OT on samples, biased upwards) and the coupling error E_{0,1}
    # that the proofs bound (>= the true W2^2)
    assert r.w2 <= r.lmd_bound and r.w2 <= r.emd_bound, r.to_dict()
    assert r.coupling <= r.lmd_bound, r.to_dict()
    assert r.coupling <= r.emd_bound, r.to_dict()
    assert math.isfinite(r.lmd_bound) and r.to_dict()["lmd_holds"] and r.to_dict()["emd_holds"]


@pytest.mark.slow
def test_bounds_hold_for_trained_lmd_and_emd_maps(one_torch_thread):
    """Train LMD and EMD MLP maps briefly (exact teacher) and check both bounds with the measured terms."""
    from test_objectives import train

    for name in ("lmd", "emd"):
        model, _, _ = train(name, CASE, 150)
        model = model.double()
        r = _check(model, n=2000)
        print(name, r.to_dict())
        assert r.coupling <= r.lmd_bound and r.coupling <= r.emd_bound, (name, r.to_dict())
