"""Tests of the few-step family (issue 14): MeanFlow, shortcut, CD/CT, PD, trajectory regression.

All on the analytic Gaussian -> Gaussian case of tests/gaussian_case.py (linear
interpolant, independent coupling), whose exact velocity and flow map are known: each
loss (or, for the stop-gradient objectives, its expected gradient) vanishes at the exact
map and not at a perturbed one, and training from scratch recovers ``X_{0,1}``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from gaussian_case import (
    ExactGaussianFlowMap,
    ExactGaussianVelocity,
    PowerGaussianFlowMap,
    ScaledGaussianFlowMap,
)
from test_objectives import CASE_1D, CASE_2D, LINEAR, gen, identity_error, mlp_model, train
from torch import Tensor, nn

from anystep.training.base import build_objective
from anystep.training.consistency import consistency_grid, consistency_sample
from anystep.training.distill import ObjectiveError
from anystep.training.operator import generate_trajectories
from anystep.training.pd import pd_schedule
from anystep.training.presets import PRESETS, get_preset
from anystep.training.shortcut import Shortcut, dyadic_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class PowerSlopeMap(PowerGaussianFlowMap):
    """The power family ``mu_t + (S_t/S_s)^θ (x - mu_s)`` with its slope ``v_{s,t}`` (exact at θ = 1).

    ``v = m + r (x - mu_s)`` with ``r = expm1(θ (log S_t - log S_s)) / (t - s)``, and its
    limit ``θ S_s'/S_s`` on the diagonal (a safe denominator keeps JVPs finite there).
    """

    def slope(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        c = self.case
        th = self.theta.to(x)
        diff = (t - s).reshape(-1, *([1] * (x.ndim - 1)))
        on_diag = diff.abs() < 1e-12
        safe = torch.where(on_diag, torch.ones_like(diff), diff)
        ratio = torch.expm1(th * (torch.log(c.S(t, x)) - torch.log(c.S(s, x)))) / safe
        limit = th * c.dS(s, x) / c.S(s, x)
        return c.m.to(x) + torch.where(on_diag, limit, ratio) * (x - c.mu(s, x))


def _mean_theta_grad(objective, model, case, n_batches=24, batch=4096, teacher=None, seed=11):
    """Monte Carlo mean and standard error of ``d loss / d θ`` (float64)."""
    g = gen(seed)
    grads = []
    for step in range(n_batches):
        model.zero_grad()
        out = objective.loss(model, case.batch(batch, g, dtype=torch.float64), g, teacher=teacher, step=step)
        out.loss.backward()
        grads.append(float(model.theta.grad))
    t = torch.tensor(grads, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(n_batches))


# ------------------------------------------------------------------------------------------
# registry and presets
# ------------------------------------------------------------------------------------------
FAMILY = ("meanflow", "shortcut", "cd", "ct", "pd", "operator")


def test_family_objectives_and_presets_are_registered() -> None:
    from anystep.training.objectives import OBJECTIVES

    assert set(FAMILY) <= set(OBJECTIVES)
    want = {f"checkerboard-{n}" for n in FAMILY} | {"digits-meanflow", "digits-shortcut"}
    assert want <= set(PRESETS)
    for name in want:
        cfg = get_preset(name)
        assert cfg.preset == name and cfg.objective == name.split("-", 1)[1]
        assert cfg.model.kind == "flowmap"
        build_objective(cfg.objective, LINEAR, **cfg.objective_hparams)  # hyper-parameters valid
    assert get_preset("checkerboard-pd").model.ansatz == get_preset("checkerboard-fmm4").model.ansatz


def test_ot_variants_are_named_presets_and_the_presets_keep_the_published_recipes() -> None:
    from anystep.benchmarks.checkerboard_methods import DEFAULT_METHODS, METHODS

    published, variant = get_preset("checkerboard-meanflow"), get_preset("checkerboard-meanflow-ot")
    assert published.coupling == "independent" and published.objective_hparams == {}
    mf = build_objective("meanflow", LINEAR, **published.objective_hparams).hparams
    assert (mf["time_kind"], mf["adaptive_p"], mf["diag_frac"]) == ("logit_normal", 1.0, 0.75)
    assert variant.objective == "meanflow" and variant.coupling == "minibatch_ot"
    assert variant.objective_hparams == {"time_kind": "uniform", "adaptive_p": 0.0}
    assert variant.model == published.model
    spec = METHODS["meanflow_ot"]
    assert spec.preset == "checkerboard-meanflow-ot" and spec.init_from == "si"
    assert "meanflow_ot" not in DEFAULT_METHODS  # opt-in like the other family rows
    sc, sc_ot = get_preset("checkerboard-shortcut"), get_preset("checkerboard-shortcut-ot")
    assert sc.coupling == "independent" and sc.objective_hparams == {}
    assert build_objective("shortcut", LINEAR).hparams["fm_frac"] == 0.75  # the paper's batch mix
    assert (sc_ot.objective, sc_ot.coupling, sc_ot.objective_hparams) == ("shortcut", "minibatch_ot", {"fm_frac": 0.25})
    assert METHODS["shortcut_ot"].preset == "checkerboard-shortcut-ot" and "shortcut_ot" not in DEFAULT_METHODS


def test_hyperparameters_are_validated() -> None:
    for name, bad in [
        ("meanflow", {"adaptive_p": -1.0}),
        ("meanflow", {"adaptive_c": 0.0}),
        ("shortcut", {"fm_frac": 1.0}),
        ("shortcut", {"levels": 0}),
        ("shortcut", {"target_ema": 1.0}),
        ("cd", {"solver": "rk4"}),
        ("cd", {"N": 0}),
        ("ct", {"target_ema": 1.0}),
        ("pd", {"steps": 0}),
        ("operator", {"bank_size": 0}),
    ]:
        with pytest.raises(ObjectiveError):
            build_objective(name, LINEAR, **bad)
    assert pd_schedule(8) == [4, 2, 1]
    with pytest.raises(ObjectiveError, match="power of two"):
        pd_schedule(6)
    assert dyadic_steps(3) == [1, 2, 4]


def test_supported_step_counts_follow_the_trained_pairs() -> None:
    from anystep.training.objectives import supported_steps

    assert supported_steps("meanflow") is None
    assert supported_steps("shortcut", {"levels": 3}) == (1, 2, 4)
    assert supported_steps("cd") == supported_steps("ct") == supported_steps("operator") == (1,)
    assert supported_steps("pd", {"steps": 2}) == (2,)
    assert supported_steps("lmd") is None


# ------------------------------------------------------------------------------------------
# MeanFlow
# ------------------------------------------------------------------------------------------
def test_meanflow_value_is_the_eulerian_residual_but_the_gradient_differs() -> None:
    """With p = 0 the MeanFlow loss equals ee_naive's |∂_s X + ∇X·dI_s|^2 (same draws):
    (MF) is the Eulerian equation; only the stop-gradient placement differs."""
    torch.manual_seed(0)
    model = mlp_model("flowmap")
    batch = CASE_2D.batch(128, gen(1))
    times = {"time_kind": "logit_normal", "logit_mean": 0.4, "diag_frac": 0.0}
    mf = build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0)
    naive = build_objective("ee_naive", LINEAR, **times)
    a = mf.loss(model, batch, gen(2))
    b = naive.loss(model, batch, gen(2))
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-4)
    a.loss.backward()
    ga = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    b.loss.backward()
    gb = torch.cat([p.grad.flatten() for p in model.parameters()])
    # MeanFlow drops the (t - s) ∇_θ(∂_s v + ∇v·dI_s) part of ee_naive's gradient
    assert float((ga - gb).norm() / ga.norm()) > 0.05


def test_meanflow_identity_holds_for_the_exact_map() -> None:
    """(MF) with the true b_s: v_{s,t} = b_s + (t - s)(∂_s v + ∇v·b_s), at every (s, t)."""
    from anystep.training.distill import jvp_times

    case = CASE_2D
    model = PowerSlopeMap(case, 1.0)
    g = gen(3)
    x = 2 * torch.randn(256, 2, generator=g, dtype=torch.float64)
    s = torch.rand(256, generator=g, dtype=torch.float64)
    t = s + (1 - s) * torch.rand(256, generator=g, dtype=torch.float64)
    b = case.velocity(x, s)
    out = jvp_times(model.slope, x, s, t, dx=b, ds=1.0)
    assert torch.allclose(out.value, b + (t - s)[:, None] * out.tangent, atol=1e-9)
    assert torch.allclose(x + (t - s)[:, None] * out.value, case.flow_map(x, s, t), atol=1e-12)
    wrong = PowerSlopeMap(case, 1.2)
    out = jvp_times(wrong.slope, x, s, t, dx=b, ds=1.0)
    assert (out.value - b - (t - s)[:, None] * out.tangent).abs().max() > 0.05


@pytest.mark.parametrize("p", [0.0, 1.0], ids=["unit", "adaptive"])
def test_meanflow_expected_gradient_vanishes_at_the_exact_map(p: float) -> None:
    case = CASE_2D
    objective = build_objective("meanflow", LINEAR, adaptive_p=p)
    mean, se = _mean_theta_grad(objective, PowerSlopeMap(case, 1.0), case)
    mean_wrong, se_wrong = _mean_theta_grad(objective, PowerSlopeMap(case, 1.2), case)
    assert abs(mean) < 4 * se + 1e-12
    assert abs(mean_wrong) > 10 * se_wrong
    assert abs(mean) < 0.05 * abs(mean_wrong)


class _OffDiagonalPerturbed(PowerSlopeMap):
    """The exact diagonal (velocity) with wrong jumps: ``v_{s,t} + 0.3 (t - s) x``."""

    def slope(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return super().slope(x, s, t) + 0.3 * (t - s).reshape(-1, *([1] * (x.ndim - 1))) * x


def test_meanflow_model_tangent_target_is_exact_at_the_exact_map() -> None:
    """tangent = "model": off the diagonal the target u + (t - s)(∂_s v + ∇v·u), u = v_ss(I_s),
    is a deterministic function of I_s, so the exact map's loss is 0 on every draw (no noise),
    a perturbed map's is not; the diagonal keeps flow matching (expected gradient 0)."""
    case = CASE_2D
    off = build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0, tangent="model")
    batch = case.batch(2048, gen(5), dtype=torch.float64)
    assert off.loss(PowerSlopeMap(case, 1.0), batch, gen(6)).loss.item() < 1e-12
    # off the diagonal it enforces consistency with the map's own velocity: a map whose
    # diagonal is right but whose jumps are not has a positive loss on every draw (the
    # velocity itself is pinned by the diagonal rows, checked by the gradient below)
    assert off.loss(_OffDiagonalPerturbed(case, 1.0), batch, gen(6)).loss.item() > 1e-3
    # the published one-sample target is noisy at the exact map
    assert build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0).loss(
        PowerSlopeMap(case, 1.0), batch, gen(6)).loss.item() > 0.1
    mixed = build_objective("meanflow", LINEAR, adaptive_p=0.0, tangent="model")
    mean, se = _mean_theta_grad(mixed, PowerSlopeMap(case, 1.0), case)
    mean_wrong, se_wrong = _mean_theta_grad(mixed, PowerSlopeMap(case, 1.2), case)
    assert abs(mean) < 4 * se + 1e-12 and abs(mean_wrong) > 10 * se_wrong
    with pytest.raises(ObjectiveError, match="tangent"):
        build_objective("meanflow", LINEAR, tangent="teacher")


@pytest.mark.parametrize("kind,above_09", [("uniform", 0.10), ("long", 0.19)])
def test_meanflow_gap_kinds_draw_forward_pairs_with_the_stated_gap_density(kind: str, above_09: float) -> None:
    """gap_kind (not published) redraws the off-diagonal rows with gap density 1 / 2u; the
    diagonal rows and the published sampler's stream are untouched; invalid mixes refuse."""
    n = 200_000
    mf = build_objective("meanflow", LINEAR, time_kind="uniform", gap_kind=kind, diag_frac=0.5)
    pair = mf.sample_pairs(n, gen(0))
    gap = (pair.t - pair.s)[~pair.diag].double()
    assert int(pair.diag.sum()) == n // 2 and bool((pair.s[pair.diag] == pair.t[pair.diag]).all())
    assert bool((gap >= 0).all()) and float(pair.t.max()) <= 1.0 and float(pair.s.min()) >= 0.0
    assert float((gap > 0.9).double().mean()) == pytest.approx(above_09, abs=0.005)
    mean_gap = {"uniform": 0.5, "long": 2 / 3}[kind]
    assert float(gap.mean()) == pytest.approx(mean_gap, abs=0.005)
    # the start is uniform on [0, 1 - u] given u: the long gaps start near the base
    assert float(pair.s[~pair.diag][gap > 0.9].max()) <= 0.1 + 1e-6
    tri = build_objective("meanflow", LINEAR, time_kind="uniform", diag_frac=0.5)
    ref = tri.times.sample(n, gen(0))
    got = tri.sample_pairs(n, gen(0))
    assert torch.equal(ref.s, got.s) and torch.equal(ref.t, got.t)  # triangle = the time sampler's draw
    assert float(((got.t - got.s)[~got.diag] > 0.9).double().mean()) == pytest.approx(0.01, abs=0.002)
    for bad in ({"gap_kind": kind}, {"gap_kind": kind, "time_kind": "uniform", "forward_only": False},
                {"gap_kind": "short", "time_kind": "uniform"}):
        with pytest.raises(ObjectiveError, match="gap_kind"):
            build_objective("meanflow", LINEAR, **bad)


def test_meanflow_jvp_warmup_ramps_the_jvp_term_to_the_published_target() -> None:
    """jvp_warmup = N: the target is dI_s + min(1, (step + 1)/N)(t - s)[∂_s v + ∇v·dI_s];
    from step N - 1 on it is MeanFlow's loss exactly, before it the exact map is not a zero."""
    case = CASE_2D
    batch = case.batch(1024, gen(7), dtype=torch.float64)
    exact = PowerSlopeMap(case, 1.0)
    published = build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0)
    warm = build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0, jvp_warmup=4)
    assert [warm.jvp_scale(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    for model in (exact, PowerSlopeMap(case, 1.2)):
        ref = published.loss(model, batch, gen(8)).loss.item()
        assert warm.loss(model, batch, gen(8), step=3).loss.item() == pytest.approx(ref, rel=1e-12)
        assert abs(warm.loss(model, batch, gen(8), step=0).loss.item() - ref) > 1e-3 * ref
    # the Eulerian part: with the exact velocity as tangent the exact map's residual is 0 only at scale 1
    mf_model = build_objective("meanflow", LINEAR, adaptive_p=0.0, diag_frac=0.0, tangent="model", jvp_warmup=4)
    assert mf_model.loss(exact, batch, gen(8), step=3).loss.item() < 1e-12
    assert mf_model.loss(exact, batch, gen(8), step=0).loss.item() > 1e-4
    with pytest.raises(ObjectiveError, match="jvp_warmup"):
        build_objective("meanflow", LINEAR, jvp_warmup=-1)


def test_meanflow_start_and_end_frac_put_rows_on_the_one_step_characteristics() -> None:
    """start_frac / end_frac (not published): after the diagonal rows, shares of the batch at
    s = 0 and at t = 1 (s uniform); the rest stay the sampler's pairs; the exact map stays
    stationary (a mixture of weights) and a wrong one does not; invalid mixes refuse."""
    n = 100_000
    mf = build_objective("meanflow", LINEAR, time_kind="uniform", diag_frac=0.5, start_frac=0.2, end_frac=0.2)
    pair = mf.sample_pairs(n, gen(0))
    start, end = slice(n // 2, n // 2 + n // 5), slice(n // 2 + n // 5, n // 2 + 2 * (n // 5))
    assert int(pair.diag.sum()) == n // 2 and bool((pair.s[pair.diag] == pair.t[pair.diag]).all())
    assert bool((pair.s[start] == 0).all()) and float(pair.t[start].mean()) == pytest.approx(0.5, abs=0.01)
    assert bool((pair.t[end] == 1).all()) and float(pair.s[end].mean()) == pytest.approx(0.5, abs=0.01)
    rest = slice(n // 2 + 2 * (n // 5), n)
    assert float((pair.t[rest] == 1).double().mean()) == 0.0 and bool((pair.t[rest] >= pair.s[rest]).all())
    # end_frac = 0 is MeanFlow's draw, untouched
    ref = build_objective("meanflow", LINEAR, time_kind="uniform", diag_frac=0.5, start_frac=0.2)
    assert torch.equal(ref.sample_pairs(64, gen(3)).t, ref.times.sample(64, gen(3)).t)
    case = CASE_2D
    objective = build_objective("meanflow", LINEAR, adaptive_p=0.0, time_kind="uniform", diag_frac=0.25,
                                start_frac=0.25, end_frac=0.25)
    mean, se = _mean_theta_grad(objective, PowerSlopeMap(case, 1.0), case)
    mean_wrong, se_wrong = _mean_theta_grad(objective, PowerSlopeMap(case, 1.2), case)
    assert abs(mean) < 4 * se + 1e-12
    assert abs(mean_wrong) > 10 * se_wrong
    for bad in ({"diag_frac": 0.75, "end_frac": 0.5}, {"end_frac": 1.0, "diag_frac": 0.0},
                {"time_kind": "uniform", "diag_frac": 0.5, "gap_kind": "long", "end_frac": 0.2}):
        with pytest.raises(ObjectiveError, match="end_frac"):
            build_objective("meanflow", LINEAR, **bad)


# ------------------------------------------------------------------------------------------
# shortcut models
# ------------------------------------------------------------------------------------------
def test_shortcut_target_is_exact_two_step_composition() -> None:
    """Above the finest level the target ½(v_1 + v_2) is X_{t+d,t+2d}∘X_{t,t+d}: equal to
    X_{t,t+2d} for the exact map (semigroup), not for a map that breaks the semigroup."""
    case = CASE_2D
    g = gen(4)
    x = torch.randn(512, 2, generator=g, dtype=torch.float64)
    two_d = 2.0 ** -torch.randint(0, 4, (512,), generator=g).double()
    t = torch.floor(torch.rand(512, generator=g, dtype=torch.float64) / two_d) * two_d
    coarse = torch.zeros(512, dtype=torch.bool)
    exact = ExactGaussianFlowMap(case)
    target = Shortcut._two_half_steps(exact, x, t, two_d / 2, coarse)
    assert torch.allclose(target, exact(x, t, t + two_d), atol=1e-12)
    scaled = ScaledGaussianFlowMap(case, 1.2)
    with torch.no_grad():
        gap = Shortcut._two_half_steps(scaled, x, t, two_d / 2, coarse) - scaled(x, t, t + two_d)
    assert gap.pow(2).mean() > 1e-3


def test_shortcut_target_ema_bootstraps_from_the_ema_weights() -> None:
    """With ``target_ema`` the self-consistency target comes from an EMA of the weights (the
    published ``bootstrap_ema``): at step 0 it is the online weights (same loss as without),
    after a change of the weights it is ``mu * old + (1 - mu) * new`` and the loss differs;
    its state round-trips and a checkpoint without it is refused."""
    model = mlp_model("flowmap")
    batch = CASE_2D.batch(64, gen(11))
    kw = {"levels": 3, "fm_frac": 0.5}
    online, ema = build_objective("shortcut", LINEAR, **kw), build_objective("shortcut", LINEAR, target_ema=0.5, **kw)
    l0 = online.loss(model, batch, gen(3), step=0).loss
    assert torch.equal(l0, ema.loss(model, batch, gen(3), step=0).loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    l1_online = online.loss(model, batch, gen(3), step=1).loss
    l1_ema = ema.loss(model, batch, gen(3), step=1).loss
    assert not torch.allclose(l1_online, l1_ema)
    target = ema._target.get(model, 1)
    for k, v in target.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.5 * before[k] + 0.5 * model.state_dict()[k], atol=1e-6)
    state = ema.state_dict()
    assert state["ema_step"] == 1 and online.state_dict() == {}
    fresh = build_objective("shortcut", LINEAR, target_ema=0.5, **kw)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.loss(model, batch, gen(3), step=1).loss, l1_ema)
    with pytest.raises(ObjectiveError, match="restart"):
        fresh.load_state_dict({"ema_step": 1})


def test_shortcut_finest_level_error_is_second_order() -> None:
    """At the finest level the half steps are Euler steps of v_{t,t}: for the exact map the
    slope-space residual is O(d), so its square drops ~4x per halving of d."""
    case = CASE_1D
    exact = ExactGaussianFlowMap(case)
    g = gen(5)
    x = torch.randn(4096, 1, generator=g, dtype=torch.float64)
    t0 = torch.rand(4096, generator=g, dtype=torch.float64) * 0.5
    fine = torch.ones(4096, dtype=torch.bool)
    errs = []
    for two_d in (1 / 16, 1 / 32, 1 / 64):
        d = torch.full_like(t0, two_d / 2)
        tgt = Shortcut._two_half_steps(exact, x, t0, d, fine)
        errs.append(float(((tgt - exact(x, t0, t0 + 2 * d)) / two_d).pow(2).mean()))
    for a, b in itertools.pairwise(errs):
        assert 3.0 < a / b < 5.5
    assert errs[-1] < 1e-4


def test_shortcut_expected_gradient_vanishes_at_the_exact_map() -> None:
    case = CASE_2D
    objective = build_objective("shortcut", LINEAR, levels=3)
    mean, se = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.0), case)
    mean_wrong, se_wrong = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.2), case)
    # the finest level's Euler half steps leave an O(d^2) bias at d = 1/8
    assert abs(mean) < 4 * se + 0.02 * abs(mean_wrong)
    assert abs(mean_wrong) > 10 * se_wrong


class _PairLog(nn.Module):
    """Wraps a flow map and records the gaps ``t - s`` of the calls that carry a gradient."""

    kind = "flowmap"

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.gaps: list[Tensor] = []
        self.starts: list[Tensor] = []

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            self.gaps.append((t - s).detach())
            self.starts.append(s.detach())
        return self.inner(x, s, t)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self.inner.velocity(x, t)


@pytest.mark.parametrize("top_frac", [0.0, 0.5, 1.0])
def test_shortcut_top_frac_puts_rows_on_the_one_step_jump(top_frac: float) -> None:
    """top_frac (not published) of the self-consistency rows regress the one-step jump 2d = 1;
    the rest draw a uniform level (1/L of them at 2d = 1); the exact map stays stationary."""
    case = CASE_2D
    B, L = 1000, 4
    objective = build_objective("shortcut", LINEAR, levels=L, fm_frac=0.5, top_frac=top_frac)
    logged = _PairLog(ExactGaussianFlowMap(case))
    objective.loss(logged, case.batch(B, gen(9), dtype=torch.float64), gen(10))
    (gaps,) = logged.gaps  # the prediction X_{t, t+2d} of the 500 self-consistency rows
    share = float((gaps == 1.0).double().mean())
    assert gaps.numel() == B // 2
    assert share == pytest.approx(top_frac + (1 - top_frac) / L, abs=0.06)
    if top_frac == 1.0:
        assert share == 1.0
    if top_frac == 0.5:
        mean, se = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.0), case)
        mean_wrong, se_wrong = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.2), case)
        assert abs(mean) < 4 * se + 0.02 * abs(mean_wrong)
        assert abs(mean_wrong) > 10 * se_wrong
    with pytest.raises(ObjectiveError, match="top_frac"):
        build_objective("shortcut", LINEAR, top_frac=1.5)


@pytest.mark.parametrize("key, value", [("window", 4), ("diag_frac", 0.25), ("forward_only", False),
                                        ("time_kind", "logit_normal"), ("logit_std", 2.0), ("edge_frac", 0.25)])
def test_shortcut_refuses_the_time_keys_it_does_not_read(key, value) -> None:
    """Shortcut draws its own dyadic times: a shared time key it would ignore is refused, naming it;
    its default value (what every recorded config carries) is accepted."""
    with pytest.raises(ObjectiveError, match=f"{key}=.*no effect"):
        build_objective("shortcut", LINEAR, **{key: value})
    default = build_objective("shortcut", LINEAR).hparams[key]
    assert build_objective("shortcut", LINEAR, **{key: default}).hparams[key] == default
    build_objective("fmm", LINEAR, **{key: value})  # the objectives that read it take it


def test_shortcut_start_frac_starts_rows_at_the_base() -> None:
    """start_frac (not published) of the self-consistency rows start at t = 0 at a uniform
    level (after the top_frac rows); 0 is the paper's draw; the exact map stays stationary."""
    case = CASE_2D
    B, L = 2000, 4
    objective = build_objective("shortcut", LINEAR, levels=L, fm_frac=0.5, start_frac=0.5, top_frac=0.2)
    logged = _PairLog(ExactGaussianFlowMap(case))
    objective.loss(logged, case.batch(B, gen(9), dtype=torch.float64), gen(10))
    (gaps,), (starts,) = logged.gaps, logged.starts
    n_sc = B // 2
    top, start, rest = slice(0, 200), slice(200, 700), slice(700, n_sc)
    assert bool((gaps[top] == 1.0).all()) and bool((starts[:700] == 0).all())
    # the start rows keep a uniform level: 2d = 1, 1/2, 1/4, 1/8 about equally often
    for level in range(L):
        assert float((gaps[start] == 2.0**-level).double().mean()) == pytest.approx(1 / L, abs=0.07)
    # the rest start on their level's grid: at t = 0 only with probability 2d
    assert float((starts[rest] == 0).double().mean()) == pytest.approx(float(gaps[rest].mean()), abs=0.08)
    # only the starts of the start rows change: the paper's draw of levels and starts is kept
    plain, moved = _PairLog(ExactGaussianFlowMap(case)), _PairLog(ExactGaussianFlowMap(case))
    build_objective("shortcut", LINEAR, levels=L, fm_frac=0.5).loss(
        plain, case.batch(B, gen(9), dtype=torch.float64), gen(10))
    build_objective("shortcut", LINEAR, levels=L, fm_frac=0.5, start_frac=0.5).loss(
        moved, case.batch(B, gen(9), dtype=torch.float64), gen(10))
    assert torch.equal(plain.gaps[0], moved.gaps[0]) and bool((moved.starts[0][:500] == 0).all())
    assert torch.equal(plain.starts[0][500:], moved.starts[0][500:])
    assert float((plain.starts[0][:500] > 0).double().mean()) > 0.3
    objective = build_objective("shortcut", LINEAR, levels=3, fm_frac=0.5, start_frac=0.5)
    mean, se = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.0), case)
    mean_wrong, se_wrong = _mean_theta_grad(objective, PowerGaussianFlowMap(case, 1.2), case)
    assert abs(mean) < 4 * se + 0.02 * abs(mean_wrong)
    assert abs(mean_wrong) > 10 * se_wrong
    with pytest.raises(ObjectiveError, match="start_frac"):
        build_objective("shortcut", LINEAR, top_frac=0.6, start_frac=0.5)


# ------------------------------------------------------------------------------------------
# consistency models
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver,order", [("heun", 6), ("euler", 4)])
def test_cd_loss_vanishes_at_the_exact_map_at_the_solver_order(solver: str, order: int) -> None:
    """With the exact teacher, CD at the exact map only sees the ODE step's local error
    O(h^{p+1}): the loss falls as N^{-2(p+1)}; at a wrong map only as N^{-2}."""
    case = CASE_2D
    teacher = ExactGaussianVelocity(case)
    batch = case.batch(8192, gen(6), dtype=torch.float64)

    def loss(model, N):
        obj = build_objective("cd", LINEAR, N=N, solver=solver, target_ema=0.0)
        return obj.loss(model, batch, gen(7), teacher=teacher).loss.item()

    exact = ExactGaussianFlowMap(case)
    e16, e32 = loss(exact, 16), loss(exact, 32)
    assert 0.6 * 2**order < e16 / e32 < 1.6 * 2**order
    wrong = PowerGaussianFlowMap(case, 1.2)
    w16, w32 = loss(wrong, 16), loss(wrong, 32)
    assert 3.0 < w16 / w32 < 6.0
    assert w32 > 10 * e32


def test_ct_expected_gradient_vanishes_as_the_grid_refines() -> None:
    """CT (eq. C.14) uses the one-sample I_{τ_{i+1}}: its expected gradient at the exact map
    is O(Δ^2) (Δ = 1/N), i.e. the per-Δ gradient -> 0 (C.16 has no bias); at a wrong map
    the per-Δ gradient stays O(1)."""
    case = CASE_1D
    per_delta = {}
    for theta in (1.0, 1.2):
        for N in (4, 16):
            obj = build_objective("ct", LINEAR, N=N)
            mean, se = _mean_theta_grad(obj, PowerGaussianFlowMap(case, theta), case, n_batches=16, batch=8192)
            per_delta[theta, N] = (mean * N, se * N)
    exact4, exact16 = abs(per_delta[1.0, 4][0]), abs(per_delta[1.0, 16][0])
    assert exact16 < 0.5 * exact4 + 3 * per_delta[1.0, 16][1]
    wrong16 = abs(per_delta[1.2, 16][0])
    assert wrong16 > 5 * exact16 and wrong16 > 10 * per_delta[1.2, 16][1]


def test_cd_target_network_is_an_ema_updated_once_per_step() -> None:
    torch.manual_seed(0)
    model = mlp_model("flowmap", width=16, depth=1)
    obj = build_objective("cd", LINEAR, target_ema=0.5, N=4)
    teacher = ExactGaussianVelocity(CASE_2D)
    batch = CASE_2D.batch(16, gen())
    w0 = [p.detach().clone() for p in model.parameters()]
    obj.loss(model, batch, gen(1), teacher=teacher, step=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    obj.loss(model, batch, gen(1), teacher=teacher, step=1)
    obj.loss(model, batch, gen(1), teacher=teacher, step=1)  # a second micro-batch: no update
    for a, p, e in zip(w0, model.parameters(), obj._target._ema.module.parameters()):
        assert torch.allclose(e, 0.5 * a + 0.5 * p.detach())
        assert not e.requires_grad
    assert build_objective("ct", LINEAR).target_network(model, 0) is model  # decay 0: online weights


def test_consistency_grid_and_renoising_sampler() -> None:
    g = consistency_grid(4, rho=2.0)
    assert g[0] == 0 and g[-1] == 1 and bool((g[1:] > g[:-1]).all())
    assert torch.allclose(consistency_grid(4), torch.linspace(0, 1, 5, dtype=torch.float64))
    case = CASE_2D
    exact = ExactGaussianFlowMap(case)
    x0 = torch.randn(50_000, 2, generator=gen(8), dtype=torch.float64)
    one = consistency_sample(exact, x0, LINEAR, steps=1)
    assert torch.allclose(one.x, case.flow_map(x0, torch.zeros(50_000), torch.ones(50_000)))
    four = consistency_sample(exact, x0, LINEAR, steps=4, generator=gen(9))
    assert four.nfe == 4
    # re-noising keeps the law of rho_1 = N(m, sigma^2) but loses the coupling with x0
    assert torch.allclose(four.x.mean(0), case.m, atol=0.03)
    assert torch.allclose(four.x.std(0), case.sigma, rtol=0.03)
    assert (four.x - one.x).pow(2).mean() > 0.1
    again = consistency_sample(exact, x0, LINEAR, steps=4, generator=gen(10))
    assert not torch.allclose(again.x, four.x)


# ------------------------------------------------------------------------------------------
# progressive distillation and trajectory regression
# ------------------------------------------------------------------------------------------
def test_pd_loss_vanishes_at_the_exact_map_and_copies_a_semigroup_teacher() -> None:
    case = CASE_2D
    batch = case.batch(2048, gen(11), dtype=torch.float64)
    for on_grid in (False, True):
        obj = build_objective("pd", LINEAR, steps=2, on_grid=on_grid)
        exact = ExactGaussianFlowMap(case)
        assert obj.loss(exact, batch, gen(12), teacher=exact).loss.item() < 1e-24
        wrong = PowerGaussianFlowMap(case, 1.2)
        assert obj.loss(wrong, batch, gen(12), teacher=exact).loss.item() > 1e-3
        # a round reproduces (cannot repair) a wrong but semigroup-consistent teacher
        assert obj.loss(wrong, batch, gen(12), teacher=PowerGaussianFlowMap(case, 1.2)).loss.item() < 1e-24
    # a teacher that breaks the semigroup gives a target the same map cannot meet
    scaled = ScaledGaussianFlowMap(case, 1.2)
    assert build_objective("pd", LINEAR, steps=2).loss(scaled, batch, gen(12), teacher=scaled).loss.item() > 1e-3


def test_operator_bank_is_the_teacher_flow_and_the_loss_vanishes_at_the_exact_map() -> None:
    case = CASE_2D
    teacher = ExactGaussianVelocity(case)
    x0 = torch.randn(256, 2, generator=gen(13), dtype=torch.float64)
    bank = generate_trajectories(teacher, x0, 4, rtol=1e-8)
    for j, t in enumerate(bank.times.tolist()):
        tt = torch.full((256,), t, dtype=torch.float64)
        assert torch.allclose(bank.states[j], case.flow_map(x0, torch.zeros_like(tt), tt), atol=1e-6)
    obj = build_objective("operator", LINEAR, bank_size=256, bank_times=4, rtol=1e-8)
    batch = case.batch(512, gen(14), dtype=torch.float64)
    assert obj.loss(ExactGaussianFlowMap(case), batch, gen(15), teacher=teacher).loss.item() < 1e-10
    assert obj.loss(PowerGaussianFlowMap(case, 1.2), batch, gen(15), teacher=teacher).loss.item() > 1e-3
    # the bank is seeded by the objective, not by the batch: a new instance (a resumed run)
    # rebuilds the identical regression set
    again = build_objective("operator", LINEAR, bank_size=256, bank_times=4, rtol=1e-8)
    again.build_bank(teacher, batch.x0)
    assert torch.equal(again.bank.states, obj.bank.states)


# ------------------------------------------------------------------------------------------
# training from scratch recovers X_{0,1}
# ------------------------------------------------------------------------------------------
# (objective, case, steps, hyper-parameters, threshold on E|X̂_{0,1} - X_{0,1}|^2)
FAST_RUNS = [
    ("meanflow", CASE_2D, 1000, {"adaptive_p": 0.0}, 0.05),
    ("shortcut", CASE_2D, 1000, {}, 0.04),
    ("cd", CASE_2D, 600, {"N": 8}, 0.02),
]
SLOW_RUNS = [
    ("meanflow", CASE_2D, 2500, {}, 0.1),
    ("cd", CASE_2D, 1500, {}, 0.02),
    ("ct", CASE_2D, 600, {}, 0.05),
    ("pd", CASE_2D, 500, {"steps": 1}, 0.01),
    ("operator", CASE_2D, 600, {"bank_size": 4096}, 0.02),
]


def _check(name, case, steps, hparams, threshold) -> None:
    _, err, init_err = train(name, case, steps, **hparams)
    assert err < threshold, f"{name}: one-step error {err:.4f} >= {threshold}"
    assert err < 0.1 * min(init_err, identity_error(case))


@pytest.mark.parametrize("name,case,steps,hparams,threshold", FAST_RUNS, ids=lambda v: str(v)[:12])
def test_training_recovers_exact_one_step_map(name, case, steps, hparams, threshold) -> None:
    _check(name, case, steps, hparams, threshold)


@pytest.mark.slow
@pytest.mark.parametrize("name,case,steps,hparams,threshold", SLOW_RUNS, ids=lambda v: str(v)[:12])
def test_training_recovers_exact_one_step_map_slow(name, case, steps, hparams, threshold) -> None:
    _check(name, case, steps, hparams, threshold)


# ------------------------------------------------------------------------------------------
# through the trainer
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["checkerboard-shortcut", "checkerboard-ct", "checkerboard-meanflow"])
def test_family_presets_train_into_forward_only_model_dirs(preset: str, tmp_path) -> None:
    """A few trainer steps of each teacher-free preset (tiny net) give a model directory that
    records the forward-only region and the objective, from which the step support follows."""
    from anystep.core.modeldir import load_model_dir
    from anystep.training.config import apply_overrides
    from anystep.training.objectives import supported_steps
    from anystep.training.trainer import Trainer

    cfg = apply_overrides(
        get_preset(preset),
        ["model.backbone.width=16", "model.backbone.depth=1", "max_steps=4", "batch_size=16",
         "log_every=1", "ckpt_every=2", "eval_every=-1", "device=cpu"],
    )  # fmt: skip
    res = Trainer(cfg, tmp_path / "run", progress=False, eval_fn=None).fit()
    assert res.completed and math.isfinite(res.final_loss)
    loaded = load_model_dir(tmp_path / "run")
    assert loaded.config.time_region == "forward"
    prov = loaded.config.provenance
    want = {"checkerboard-shortcut": (1, 2, 4, 8, 16, 32, 64), "checkerboard-ct": (1,), "checkerboard-meanflow": None}
    assert supported_steps(prov["objective"], prov["objective_hparams"]) == want[preset]
    assert loaded.config.supported_steps == want[preset]  # recorded in config.json (served and refused)


# ------------------------------------------------------------------------------------------
# CD's EMA target network is part of the checkpoint
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective, hparams", [
    ("cd", {"N": 4, "target_ema": 0.5}),
    ("shortcut", {"levels": 3, "fm_frac": 0.5, "target_ema": 0.5}),
])
def test_ema_target_resume_equals_an_uninterrupted_run(tmp_path, objective: str, hparams: dict) -> None:
    """A CD (or shortcut, EMA bootstrap) run stopped at step 3 and resumed to 6 ends
    bit-identical to one trained 0 -> 6: the target network X⁻ (EMA 0.5 here, so a restart
    from the online weights would differ) is saved in ``objective.safetensors`` and restored
    exactly."""
    from safetensors.torch import load_file

    from anystep.core.config import BackboneConfig, InterpolantConfig, ModelConfig
    from anystep.core.flowmap import build_model
    from anystep.core.modeldir import save_model_dir
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import Trainer

    torch.manual_seed(0)
    vb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1, width=16, depth=1, fourier_features=4)
    vcfg = ModelConfig(kind="velocity", backbone=vb, data_shape=(2,), interpolant=InterpolantConfig())
    teacher = save_model_dir(tmp_path / "teacher", build_model(vcfg), vcfg)
    fb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2, width=16, depth=1, fourier_features=4)
    cfg = TrainConfig(
        model=ModelConfig(kind="flowmap", backbone=fb, data_shape=(2,)), objective=objective,
        objective_hparams=hparams, dataset="checkerboard", batch_size=16, max_steps=6,
        log_every=1, ckpt_every=0, eval_every=-1, teacher=str(teacher) if objective == "cd" else None, lr=1e-2,
    )  # fmt: skip
    Trainer(cfg, tmp_path / "full", progress=False, eval_fn=None).fit()
    stopped = Trainer(cfg, tmp_path / "cut", progress=False, eval_fn=None)
    stopped.fit(until=3)
    saved = load_file(str(tmp_path / "cut" / "checkpoint" / "objective.safetensors"))
    assert saved and all(k.startswith("target.") for k in saved)
    # the saved target is the EMA after the update of step 3 (index 2), not the online weights
    online = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert any(not torch.equal(saved[f"target.{k}"], v) for k, v in online.items())
    Trainer(cfg, tmp_path / "cut", resume=True, progress=False, eval_fn=None).fit()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cd_state_dict_round_trip_restores_the_target_exactly() -> None:
    model = mlp_model("flowmap")
    obj = build_objective("cd", LINEAR, target_ema=0.9, N=4)
    obj.target_network(model, 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    target = obj.target_network(model, 1)  # one EMA update
    state = obj.state_dict()
    assert state["ema_step"] == 1 and set(state["tensors"]) == {f"target.{k}" for k in target.state_dict()}
    fresh = build_objective("cd", LINEAR, target_ema=0.9, N=4)
    fresh.load_state_dict(state)
    restored = fresh.target_network(model, 1)  # same step: restored, not updated again
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in target.state_dict().items())
    nxt_a, nxt_b = obj.target_network(model, 2), fresh.target_network(model, 2)
    assert all(torch.equal(nxt_a.state_dict()[k], v) for k, v in nxt_b.state_dict().items())
    assert build_objective("ct", LINEAR).state_dict() == {}  # target_ema = 0: nothing to save
    with pytest.raises(ObjectiveError, match="restart"):
        build_objective("cd", LINEAR, N=4).load_state_dict({"ema_step": 1})
