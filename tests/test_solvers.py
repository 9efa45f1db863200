import math

import pytest
import torch
from gaussian_flow import GaussianFlow

from anystep.core.solvers import dopri5, solve, solve_fixed


def linear_ode(x, t):  # dx/dt = cos(t) x  -> x(t) = x0 exp(sin t)
    return torch.cos(t)[:, None] * x


def exact(x0, t):
    return x0 * math.exp(math.sin(t))


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_convergence_order(method, order):
    x0 = torch.ones(3, 2, dtype=torch.float64)
    errs = []
    for steps in (8, 16, 32, 64):
        sol = solve_fixed(linear_ode, x0, 0.0, 2.0, method=method, steps=steps)
        errs.append(float((sol.x - exact(x0, 2.0)).abs().max()))
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    observed = math.log2(ratios[-1])
    assert abs(observed - order) < 0.25, (method, errs, observed)


def test_nfe_accounting_and_budget():
    x0 = torch.ones(2, 1, dtype=torch.float64)
    assert solve_fixed(linear_ode, x0, method="euler", steps=5).nfe == 5
    assert solve_fixed(linear_ode, x0, method="heun", steps=5).nfe == 10
    assert solve_fixed(linear_ode, x0, method="rk4", nfe=16).steps == 4
    with pytest.raises(ValueError, match="below"):
        solve_fixed(linear_ode, x0, method="rk4", nfe=3)
    with pytest.raises(ValueError, match="unknown"):
        solve(linear_ode, x0, method="leapfrog", steps=3)


@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_dopri5_hits_closed_form_gaussian_flow(rtol):
    flow = GaussianFlow([2.0, -1.0], [0.5, 1.5])
    x0 = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sol = dopri5(flow.b, x0, 0.0, 1.0, rtol=rtol, atol=rtol)
    err = float((sol.x - flow.X(x0, 0.0, 1.0)).abs().max())
    assert err < 50 * rtol, err
    assert sol.nfe > 6


def test_dopri5_backward_inverts_forward():
    flow = GaussianFlow([1.0], [0.3])
    x0 = torch.randn(10, 1, dtype=torch.float64)
    fwd = dopri5(flow.b, x0, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    back = dopri5(flow.b, fwd.x, 1.0, 0.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(back.x, x0, atol=1e-6, rtol=1e-6)


def test_dopri5_is_batch_invariant():
    flow = GaussianFlow([1.0, 2.0], [0.2, 3.0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, dtype=torch.float64, generator=g) * torch.tensor([1.0, 10.0], dtype=torch.float64)
    alone = dopri5(flow.b, x[:1], rtol=1e-4, atol=1e-4).x
    batched = dopri5(flow.b, x, rtol=1e-4, atol=1e-4).x[:1]
    torch.testing.assert_close(alone, batched, atol=1e-12, rtol=0)


def test_per_sample_times():
    x0 = torch.ones(2, 1, dtype=torch.float64)
    t1 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = solve_fixed(linear_ode, x0, 0.0, t1, method="rk4", steps=64)
    torch.testing.assert_close(sol.x[:, 0], torch.exp(torch.sin(t1)), atol=1e-7, rtol=1e-7)
