import pytest
import torch
from gaussian_flow import ExactFlowMap, ExactVelocity, GaussianFlow

from anystep.core.flowmap import FlowMap, VelocityModel
from anystep.core.samplers import (
    GridError,
    base_noise,
    make_grid,
    sample_flowmap,
    sample_ode,
    sample_seeds,
)


class RandomBackbone(torch.nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 2, 32), torch.nn.Tanh(), torch.nn.Linear(32, d))

    def forward(self, x, s, t):
        return self.net(torch.cat([x, s[:, None], t[:, None]], 1)) * 10


@pytest.mark.parametrize("ansatz", ["residual", "convex"])
def test_identity_on_diagonal(ansatz):
    fm = FlowMap(RandomBackbone(), ansatz=ansatz)
    x = torch.randn(16, 3)
    t = torch.rand(16)
    torch.testing.assert_close(fm(x, t, t), x, rtol=0, atol=0)
    # and not the identity off the diagonal (the net is not degenerate)
    assert (fm(x, t * 0, t * 0 + 1) - x).abs().max() > 1e-3


def test_convex_ansatz_is_eq_4_1():
    bb = RandomBackbone()
    fm = FlowMap(bb, ansatz="convex")
    x, s, t = torch.randn(5, 3), torch.rand(5), torch.rand(5)
    f = bb(x, s, t)
    expected = (1 - t + s)[:, None] * x + (t - s)[:, None] * f
    torch.testing.assert_close(fm(x, s, t), expected)


def test_velocity_view_is_tangent():
    fm = FlowMap(RandomBackbone()).double()
    x, s = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    h = 1e-6
    d_dt = (fm(x, s, s + h) - fm(x, s, s - h)) / (2 * h)
    torch.testing.assert_close(d_dt, fm.velocity(x, s), atol=1e-5, rtol=1e-5)


def test_semigroup_and_inverse_laws_on_exact_map():
    flow = GaussianFlow([3.0, -1.0], [0.5, 2.0])
    X = ExactFlowMap(flow)
    x = torch.randn(100, 2, dtype=torch.float64)
    s, u, t = 0.1, 0.55, 0.9
    torch.testing.assert_close(X(X(x, s, u), u, t), X(x, s, t))
    torch.testing.assert_close(X(X(x, s, t), t, s), x)
    # K-step sampling on any grid equals one step
    one = sample_flowmap(X, x, steps=1).x
    for grid in ([0, 0.3, 1], [0, 0.1, 0.2, 0.9, 1]):
        torch.testing.assert_close(sample_flowmap(X, x, grid=grid).x, one)
    back = sample_flowmap(X, one, steps=3, reverse=True)
    torch.testing.assert_close(back.x, x)
    assert back.grid[0] == 1 and back.grid[-1] == 0


def test_exact_map_solves_lagrangian_equation():
    flow = GaussianFlow([1.0], [0.4])
    x = torch.randn(20, 1, dtype=torch.float64)
    s, t, h = 0.2, 0.7, 1e-6
    d_dt = (flow.X(x, s, t + h) - flow.X(x, s, t - h)) / (2 * h)
    torch.testing.assert_close(d_dt, flow.b(flow.X(x, s, t), t), atol=1e-6, rtol=1e-6)


def test_ode_sampling_matches_exact_flow_and_reports_nfe():
    flow = GaussianFlow([2.0], [0.5])
    v = ExactVelocity(flow)
    x0 = torch.randn(32, 1, dtype=torch.float64)
    res = sample_ode(v, x0, solver="rk4", steps=20)
    assert res.nfe == 80
    torch.testing.assert_close(res.x, flow.X(x0, 0.0, 1.0), atol=1e-6, rtol=1e-6)


def test_trajectory_shape():
    fm = FlowMap(RandomBackbone())
    res = sample_flowmap(fm, torch.randn(6, 3), steps=4, return_trajectory=True)
    assert res.trajectory.shape == (5, 6, 3) and res.nfe == 4


@pytest.mark.parametrize(
    "grid,match",
    [([0.0], "two times"), ([0.1, 1.0], "start at 0"), ([0, 0.5, 0.5, 1], "increase"), ([0, 0.7, 0.3, 1], "increase"),
     ([0, float("nan"), 1], "finite")],
)
def test_bad_grids(grid, match):
    with pytest.raises(GridError, match=match):
        make_grid(grid=grid)


def test_bad_steps():
    with pytest.raises(GridError):
        make_grid(steps=0)
    with pytest.raises(GridError, match="disagrees"):
        make_grid(steps=3, grid=[0, 1])


def test_per_sample_seeds_are_batch_invariant():
    fm = FlowMap(RandomBackbone())
    seeds = sample_seeds(100, 8)
    x_all = sample_flowmap(fm, base_noise(seeds, (3,)), steps=2).x
    x_one = sample_flowmap(fm, base_noise(seeds[5:6], (3,)), steps=2).x
    torch.testing.assert_close(x_all[5:6], x_one, atol=1e-6, rtol=1e-6)
    mixed = base_noise([7, seeds[5], 9], (3,))
    torch.testing.assert_close(mixed[1], base_noise(seeds[5:6], (3,))[0], rtol=0, atol=0)
    assert not torch.equal(base_noise([1], (3,)), base_noise([2], (3,)))


def test_velocity_model_wrapper():
    class B(torch.nn.Module):
        def forward(self, x, t):
            return x * t[:, None]

    vm = VelocityModel(B())
    x = torch.ones(3, 2)
    torch.testing.assert_close(vm(x, 0.5), x * 0.5)
