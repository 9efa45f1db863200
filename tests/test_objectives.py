"""Tests for the training objectives (anystep.training.*).

The analytic Gaussian -> Gaussian case (tests/gaussian_case.py) gives the exact velocity
and flow map, so trained maps are compared with the truth, not with hard-coded numbers.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from gaussian_case import (
    ExactGaussianFlowMap,
    ExactGaussianVelocity,
    GaussianCase,
    PowerGaussianFlowMap,
    ScaledGaussianFlowMap,
)
from torch import nn

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.interpolants import build_interpolant
from anystep.training.base import OBJECTIVES, Batch, build_objective
from anystep.training.distill import ObjectiveError, jvp_times
from anystep.training.objectives import OBJECTIVES as ALL_OBJECTIVES
from anystep.training.self_distill import SelfDistillation

# anisotropic target: one coordinate contracts (sigma < 1), the other expands (sigma > 1)
CASE_2D = GaussianCase(m=[1.0, -0.5], sigma=[0.5, 1.5])
CASE_1D = GaussianCase(m=[0.7], sigma=[0.4])
LINEAR = build_interpolant("linear")
EXPECTED_OBJECTIVES = {
    "velocity", "lmd", "emd", "fmm", "pfmm", "ee", "ee_naive", "denoiser",
    "sd", "lsd", "esd", "psd", "ayf_emd", "ayf_lmd",
    "meanflow", "shortcut", "cd", "ct", "pd", "operator",  # issue 14 (tests/test_objectives_family.py)
}  # fmt: skip
# hyper-parameters that keep the generic tests below fast (the operator's default bank is
# 20000 dopri5 trajectories of the teacher, generated on the first call)
FAST_HPARAMS = {"operator": {"bank_size": 16, "bank_times": 2, "rtol": 1e-3}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp_model(kind: str, data_shape=(2,), width=64, depth=3, fourier_features=2) -> nn.Module:
    """Small MLP flow map / velocity model built through the public config path."""
    backbone = BackboneConfig(
        name="mlp",
        data_shape=data_shape,
        time_inputs=1 if kind == "velocity" else 2,
        width=width,
        depth=depth,
        fourier_features=fourier_features,
    )
    return build_model(ModelConfig(kind=kind, backbone=backbone, data_shape=data_shape))


def unet_model(kind: str, data_shape=(1, 8, 8)) -> nn.Module:
    """Tiny U-Net; its zero-initialised output layer is re-initialised so every weight gets gradient."""
    backbone = BackboneConfig(
        name="unet",
        data_shape=data_shape,
        time_inputs=1 if kind == "velocity" else 2,
        channels=8,
        channel_mult=(1, 2),
        fourier_features=4,
    )
    model = build_model(ModelConfig(kind=kind, backbone=backbone, data_shape=data_shape))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.05)
    return model


def one_step_error(model: nn.Module, case: GaussianCase, n: int = 4096) -> float:
    """``E |X̂_{0,1}(x0) - X_{0,1}(x0)|^2`` (sum over coordinates) on fixed x0 ~ N(0, I)."""
    x0 = torch.randn(n, case.d, generator=gen(12345))
    zero, one = torch.zeros(n), torch.ones(n)
    with torch.no_grad():
        return float((model(x0, zero, one) - case.flow_map(x0, zero, one)).pow(2).sum(1).mean())


# tiny networks train fastest on one thread (and do not fight other processes)
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def train(name: str, case: GaussianCase, n_steps: int, lr: float = 1e-3, seed: int = 0, **hparams):
    """Train a small MLP flow map with objective ``name`` on the Gaussian case (Adam, cosine lr)."""
    steps = n_steps
    torch.manual_seed(seed)
    model = mlp_model("flowmap", data_shape=(case.d,))
    objective = build_objective(name, LINEAR, **hparams)
    teacher = (
        ExactGaussianFlowMap(case)
        if objective.teacher_kind == "flowmap"
        else ExactGaussianVelocity(case)
    )
    init_err = one_step_error(model, case)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = gen(seed + 1)
    start = time.perf_counter()
    for step in range(steps):
        out = objective.loss(model, case.batch(256, g), g, teacher=teacher, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    err = one_step_error(model, case)
    print(f"{name} d={case.d} steps={steps}: init {init_err:.3f} -> {err:.4f} ({seconds:.1f} s)")
    return model, err, init_err


def identity_error(case: GaussianCase) -> float:
    """``E|x0 - X_{0,1}(x0)|^2 = |m|^2 + sum (1 - sigma)^2`` in closed form."""
    return float(case.m.pow(2).sum() + (1 - case.sigma).pow(2).sum())


# ------------------------------------------------------------------------------------------
# 1. the analytic case itself
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [CASE_1D, CASE_2D], ids=["d1", "d2"])
def test_exact_map_solves_lagrangian_and_eulerian_equations(case: GaussianCase) -> None:
    g = gen(0)
    n = 512
    x = 2 * torch.randn(n, case.d, generator=g, dtype=torch.float64)
    s = torch.rand(n, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    X = ExactGaussianFlowMap(case)
    b = ExactGaussianVelocity(case)
    # eq. 3.5: ∂_t X_{s,t}(x) = b_t(X_{s,t}(x)), and X_{s,s} = id
    lag = jvp_times(X, x, s, t, dt=1.0)
    assert torch.allclose(lag.tangent, b(lag.value, t), atol=1e-10)
    assert torch.allclose(X(x, s, s), x, atol=1e-12)
    # eq. 3.8: ∂_s X_{s,t}(x) + ∇X_{s,t}(x)·b_s(x) = 0
    eul = jvp_times(X, x, s, t, dx=b(x, s), ds=1.0)
    assert eul.tangent.abs().max() < 1e-10
    # eq. 3.6: semigroup and inverse
    u = torch.rand(n, generator=g, dtype=torch.float64)
    assert torch.allclose(X(X(x, s, u), u, t), X(x, s, t), atol=1e-10)
    assert torch.allclose(X(X(x, s, t), t, s), x, atol=1e-10)


@pytest.mark.parametrize("case", [CASE_1D, CASE_2D], ids=["d1", "d2"])
def test_exact_velocity_is_conditional_mean_and_map_pushes_forward(case: GaussianCase) -> None:
    batch = case.batch(200_000, gen(1), dtype=torch.float64)
    t = torch.full((200_000,), 0.6, dtype=torch.float64)
    sample = LINEAR.interpolate(batch.x0, batch.x1, t)
    # b_t = E[dI_t | I_t] (eq. 3.13): residual dI_t - b_t(I_t) is uncorrelated with I_t
    resid = sample.dI_t - ExactGaussianVelocity(case)(sample.I_t, t)
    assert resid.mean(0).abs().max() < 0.02
    cov = ((resid - resid.mean(0)) * (sample.I_t - sample.I_t.mean(0))).mean(0)
    assert cov.abs().max() < 0.02
    # X_{0,1} pushes N(0, I) onto N(m, diag sigma^2)
    y = case.flow_map(batch.x0, torch.zeros_like(t), torch.ones_like(t))
    assert torch.allclose(y.mean(0), case.m, atol=0.02)
    assert torch.allclose(y.std(0), case.sigma, rtol=0.02)


# ------------------------------------------------------------------------------------------
# 1. training on the analytic case
# ------------------------------------------------------------------------------------------
# (objective, case, steps, hyper-parameters, threshold on E|X̂_{0,1} - X_{0,1}|^2)
FAST_RUNS = [
    ("lmd", CASE_1D, 600, {}, 0.02),
    ("fmm", CASE_2D, 1000, {}, 0.1),
    ("pfmm", CASE_2D, 500, {"steps": 4}, 0.03),
]
SLOW_RUNS = [
    ("lmd", CASE_2D, 1000, {}, 0.04),
    ("emd", CASE_2D, 1000, {}, 0.05),
    ("lsd", CASE_2D, 1500, {}, 0.05),
    ("esd", CASE_2D, 1500, {}, 0.04),
    ("psd", CASE_2D, 1500, {}, 0.08),
    ("ee", CASE_2D, 1500, {}, 0.09),
    ("ayf_emd", CASE_2D, 1500, {}, 0.15),
    ("ayf_lmd", CASE_2D, 3000, {"weighting": "unit", "tangent_norm": False}, 0.2),
]


def _check_training(name, case, steps, hparams, threshold) -> None:
    _, err, init_err = train(name, case, steps, **hparams)
    assert err < threshold, f"{name}: one-step error {err:.4f} >= {threshold}"
    assert err < 0.1 * min(init_err, identity_error(case))


@pytest.mark.parametrize("name,case,steps,hparams,threshold", FAST_RUNS, ids=lambda v: str(v)[:12])
def test_training_recovers_exact_flow_map(name, case, steps, hparams, threshold) -> None:
    _check_training(name, case, steps, hparams, threshold)


@pytest.mark.slow
@pytest.mark.parametrize("name,case,steps,hparams,threshold", SLOW_RUNS, ids=lambda v: str(v)[:12])
def test_training_recovers_exact_flow_map_slow(name, case, steps, hparams, threshold) -> None:
    _check_training(name, case, steps, hparams, threshold)


def test_velocity_objective_recovers_exact_velocity() -> None:
    case = CASE_2D
    torch.manual_seed(0)
    model = mlp_model("velocity")
    objective = build_objective("velocity", LINEAR)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = gen(1)
    b = ExactGaussianVelocity(case)
    probe = case.batch(4096, gen(2))
    t = torch.rand(4096, generator=gen(3))
    x = LINEAR.interpolate(probe.x0, probe.x1, t).I_t

    def err() -> float:
        with torch.no_grad():
            return float((model(x, t) - b(x, t)).pow(2).sum(1).mean())

    init = err()
    for step in range(800):
        out = objective.loss(model, case.batch(256, g), g, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert err() < 0.05 * init
    assert err() < 0.1


# ------------------------------------------------------------------------------------------
# 2. denoiser negative control (App. B.1)
# ------------------------------------------------------------------------------------------
def test_denoiser_collapses_to_the_mean_not_the_flow_map() -> None:
    case = CASE_2D
    model, err, _ = train("denoiser", case, 500)
    x0 = torch.randn(4096, 2, generator=gen(7))
    with torch.no_grad():
        y = model(x0, torch.zeros(4096), torch.ones(4096))
    # eq. B.5: X^denoise_{0,1}(x) = E[x1] = m; its distance to the flow map is E|sigma x0|^2
    mean_map_error = float(case.sigma.pow(2).sum())
    assert err > 0.5 * mean_map_error
    assert torch.allclose(y.mean(0).double(), case.m, atol=0.15)
    assert bool((y.var(0).double() < 0.1 * case.sigma**2).all())


# ------------------------------------------------------------------------------------------
# 3. naive Eulerian estimation is biased, the stop-gradient estimator is not (App. B.2)
# ------------------------------------------------------------------------------------------
def _expected_theta_gradient(
    name: str, n_batches: int = 30, batch: int = 4096
) -> tuple[float, float]:
    case = CASE_2D
    model = ScaledGaussianFlowMap(case, theta=1.0)  # the exact map at theta = 1
    objective = build_objective(name, LINEAR)
    g = gen(11)
    grads = []
    for _ in range(n_batches):
        model.zero_grad()
        objective.loss(model, case.batch(batch, g, dtype=torch.float64), g).loss.backward()
        grads.append(float(model.theta.grad))
    grads_t = torch.tensor(grads, dtype=torch.float64)
    return float(grads_t.mean()), float(grads_t.std() / math.sqrt(n_batches))


def test_naive_eulerian_gradient_is_biased_at_the_exact_map() -> None:
    mean_naive, se_naive = _expected_theta_gradient("ee_naive")
    mean_ee, se_ee = _expected_theta_gradient("ee")
    # naive: the E Var(dI_s·∇X | I_s) term pushes theta (hence ∇X) down: gradient > 0
    assert mean_naive > 10 * se_naive
    # stop-gradient estimator: expected gradient zero at the true map
    assert abs(mean_ee) < 4 * se_ee
    assert abs(mean_ee) < 0.05 * mean_naive


# ------------------------------------------------------------------------------------------
# 4. JVPs are exact derivatives
# ------------------------------------------------------------------------------------------
def test_jvp_time_derivative_matches_finite_difference() -> None:
    torch.manual_seed(0)
    model = mlp_model("flowmap", fourier_features=4).double()
    g = gen(3)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    s = torch.rand(16, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    out = jvp_times(model, x, s, t, dt=1.0)
    h = 1e-6
    with torch.no_grad():
        fd_t = (model(x, s, t + h) - model(x, s, t - h)) / (2 * h)
        fd_s = (model(x, s + h, t) - model(x, s - h, t)) / (2 * h)
        assert torch.allclose(out.value, model(x, s, t), atol=1e-12)
    assert torch.allclose(out.tangent, fd_t, atol=1e-7, rtol=1e-6)
    assert torch.allclose(jvp_times(model, x, s, t, ds=1.0).tangent, fd_s, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
def test_jvp_matches_explicit_jacobian(backbone: str) -> None:
    torch.manual_seed(0)
    if backbone == "mlp":
        model, shape = mlp_model("flowmap", fourier_features=4).double(), (2,)
    else:
        model, shape = unet_model("flowmap", (1, 4, 4)).double(), (1, 4, 4)
    model.eval()
    g = gen(4)
    B = 3
    x = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    s = torch.rand(B, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    dx = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    ds, dt = 0.7, -0.3
    got = jvp_times(model, x, s, t, dx=dx, ds=ds, dt=dt).tangent
    for i in range(B):

        def f(xi, si, ti):
            return model(xi[None], si.reshape(1), ti.reshape(1))[0]

        jx, js, jt = torch.autograd.functional.jacobian(f, (x[i], s[i], t[i]))
        d = math.prod(shape)
        want = jx.reshape(d, d) @ dx[i].reshape(d) + ds * js.reshape(d) + dt * jt.reshape(d)
        assert torch.allclose(got[i].reshape(d), want, atol=1e-10)


def test_jvp_needs_a_tangent() -> None:
    model = mlp_model("flowmap")
    x, s = torch.zeros(2, 2), torch.zeros(2)
    with pytest.raises(ObjectiveError):
        jvp_times(model, x, s, s)
    with pytest.raises(ObjectiveError, match="shape"):
        jvp_times(model, x, s, s, dx=torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------
# 5. every objective runs on the MLP and the U-Net
# ------------------------------------------------------------------------------------------
def test_all_objectives_are_registered() -> None:
    assert set(ALL_OBJECTIVES) == EXPECTED_OBJECTIVES
    assert ALL_OBJECTIVES is OBJECTIVES


def _teacher_for(objective, maker, shape):
    if objective.teacher_kind is None:
        return None
    teacher = maker(objective.teacher_kind, shape)
    teacher.requires_grad_(True)  # grads must still not reach it
    return teacher


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
@pytest.mark.parametrize("name", sorted(ALL_OBJECTIVES))
def test_every_objective_backpropagates(name: str, backbone: str) -> None:
    torch.manual_seed(0)
    if backbone == "mlp":
        shape: tuple[int, ...] = (2,)

        def maker(kind, shp):
            return mlp_model(kind, shp, width=32, depth=2)
    else:
        shape = (1, 8, 8)
        maker = unet_model
    interpolant = build_interpolant("linear", gamma=0.5)  # exercise the latent z too
    objective = build_objective(name, interpolant, **FAST_HPARAMS.get(name, {}))
    model = maker(objective.model_kind, shape)
    teacher = _teacher_for(objective, maker, shape)
    B = 8
    g = gen(5)
    batch = Batch(
        x0=torch.randn(B, *shape, generator=g),
        x1=torch.randn(B, *shape, generator=g),
        z=torch.randn(B, *shape, generator=g),
    )
    out = objective.loss(model, batch, gen(6), teacher=teacher, step=3)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert "loss" in out.metrics and all(math.isfinite(v) for v in out.metrics.values())
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
    assert all(float(gr.abs().sum()) > 0 for gr in grads), "some parameter got no gradient"
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters()), "gradient leaked into the teacher"


# ------------------------------------------------------------------------------------------
# loss structure
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lmd", "emd", "pfmm"])
def test_distillation_losses_vanish_at_the_exact_map(name: str) -> None:
    case = CASE_2D
    objective = build_objective(name, LINEAR, forward_only=False)
    teacher = ExactGaussianFlowMap(case) if name == "pfmm" else ExactGaussianVelocity(case)
    batch = case.batch(1024, gen(8), dtype=torch.float64)
    exact = objective.loss(ExactGaussianFlowMap(case), batch, gen(9), teacher=teacher).loss
    # X_{s,s} = id and the semigroup property hold, eq. 3.5 does not (PFMM: not K-step exact)
    wrong = objective.loss(PowerGaussianFlowMap(case, 1.2), batch, gen(9), teacher=teacher).loss
    assert exact.item() < 1e-18
    assert wrong.item() > 1e-3


def test_self_distillation_terms_vanish_at_the_exact_map() -> None:
    case = CASE_2D
    model = ExactGaussianFlowMap(case)
    batch = case.batch(512, gen(8), dtype=torch.float64)
    x = batch.x1
    s = torch.rand(512, generator=gen(1), dtype=torch.float64) * 0.5
    t = s + 0.5
    u = (s + t) / 2
    assert float(SelfDistillation._lsd(model, x, s, t)) < 1e-18
    assert float(SelfDistillation._esd(model, x, s, t)) < 1e-18
    assert float(SelfDistillation._psd(model, x, s, t, u)) < 1e-18
    # a map whose off-diagonal disagrees with its diagonal velocity (here: the exact b);
    # X_{s,s} = id and the semigroup property still hold
    wrong = PowerGaussianFlowMap(case, 1.2, velocity_theta=1.0)
    assert SelfDistillation._lsd(PowerGaussianFlowMap(case, 1.2), x, s, t).item() < 1e-18
    assert SelfDistillation._lsd(wrong, x, s, t).item() > 1e-3
    assert SelfDistillation._esd(wrong, x, s, t).item() > 1e-3
    # the scaled family breaks the semigroup property: PSD sees it
    assert SelfDistillation._psd(ScaledGaussianFlowMap(case, 1.2), x, s, t, u).item() > 1e-4


def test_fmm_is_minimised_by_the_exact_map() -> None:
    case = CASE_2D
    objective = build_objective("fmm", LINEAR, window=2)
    batch = case.batch(8192, gen(3), dtype=torch.float64)

    def value(theta: float) -> float:
        out = objective.loss(ScaledGaussianFlowMap(case, theta), batch, gen(4))
        return out.loss.item(), out.metrics["fmm_inv"]

    exact, inv_exact = value(1.0)
    assert inv_exact < 1e-20
    for theta in (0.9, 1.1):
        assert value(theta)[0] > exact


def test_self_distillation_is_a_linear_combination() -> None:
    torch.manual_seed(0)
    model = mlp_model("flowmap")
    batch = CASE_2D.batch(64, gen(1))
    parts = build_objective("sd", LINEAR, lsd_weight=1.0, esd_weight=1.0, psd_weight=1.0)
    combo = build_objective(
        "sd", LINEAR, velocity_weight=0.5, lsd_weight=2.0, esd_weight=3.0, psd_weight=0.25
    )
    m = parts.loss(model, batch, gen(2)).metrics
    out = combo.loss(model, batch, gen(2))
    want = 0.5 * m["sd_velocity"] + 2.0 * m["lsd"] + 3.0 * m["esd"] + 0.25 * m["psd"]
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert build_objective("lsd", LINEAR).hparams["esd_weight"] == 0.0
    assert build_objective("psd", LINEAR).hparams["lsd_weight"] == 0.0


def test_lsd_teacher_term_is_stop_gradient() -> None:
    """LSD's gradient equals the gradient with the target v̂_{t,t}(X̂) computed by a frozen copy."""
    torch.manual_seed(0)
    model = mlp_model("flowmap")
    frozen = mlp_model("flowmap")
    frozen.load_state_dict(model.state_dict())
    frozen.requires_grad_(False)
    x = torch.randn(32, 2, generator=gen(1))
    s = torch.rand(32, generator=gen(2)) * 0.5
    t = s + 0.4
    SelfDistillation._lsd(model, x, s, t).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = jvp_times(model, x, s, t, dt=1.0)
    target = frozen.velocity(out.value.detach(), t)
    (out.tangent - target).pow(2).mean().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["ayf_emd", "ayf_lmd"])
def test_ayf_gradient_is_the_eps_limit_of_the_discrete_loss(name: str) -> None:
    """Our-convention AYF surrogate gradient == lim_{eps->0} grad of the discrete AYF loss / (2 eps)."""
    case = CASE_2D
    torch.manual_seed(0)
    model = mlp_model("flowmap", width=32, depth=2, fourier_features=4).double()
    b = ExactGaussianVelocity(case)
    objective = build_objective(name, LINEAR, tangent_norm=False, forward_only=False)
    batch = case.batch(64, gen(1), dtype=torch.float64)
    model.zero_grad()
    objective.loss(model, batch, gen(2), teacher=b).loss.backward()
    surrogate = torch.cat([p.grad.flatten() for p in model.parameters()])

    pair = objective.times.sample(64, gen(2)).to(batch.x0)
    s, t = pair.s, pair.t
    x = LINEAR.interpolate(batch.x0, batch.x1, s).I_t
    eps = 1e-5
    with torch.no_grad():
        if name == "ayf_emd":  # source moved towards the target, one Euler step of the ODE
            s2 = s + eps * (t - s)
            target = model(x + (s2 - s)[:, None] * b(x, s), s2, t)
        else:  # target moved towards the source, then one Euler step to t
            t2 = t + eps * (s - t)
            y = model(x, s, t2)
            target = y + (t - t2)[:, None] * b(y, t2)
    model.zero_grad()
    ((model(x, s, t) - target).pow(2).mean(1).mean() / (2 * eps)).backward()
    discrete = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.nn.functional.cosine_similarity(surrogate, discrete, dim=0) > 0.9999
    assert float(surrogate.norm() / discrete.norm()) == pytest.approx(1.0, rel=1e-3)


def test_ayf_warmup_and_metrics() -> None:
    objective = build_objective("ayf_lmd", LINEAR, warmup_steps=100)
    assert objective.ramp(0) == 0.0 and objective.ramp(50) == 0.5 and objective.ramp(500) == 1.0
    model = mlp_model("flowmap")
    out = objective.loss(
        model, CASE_2D.batch(32, gen()), gen(1), ExactGaussianVelocity(CASE_2D), step=25
    )
    assert out.metrics["ramp"] == 0.25
    assert out.metrics["residual"] > 0 and out.metrics["tangent_sq"] > 0
    assert out.metrics["surrogate"] == out.loss.item()


def test_loss_depends_only_on_the_generator() -> None:
    model = mlp_model("flowmap")
    batch = CASE_2D.batch(32, gen())
    objective = build_objective("fmm", LINEAR, window=4)
    torch.manual_seed(0)
    a = objective.loss(model, batch, gen(5)).loss.item()
    torch.manual_seed(1)
    b = objective.loss(model, batch, gen(5)).loss.item()
    c = objective.loss(model, batch, gen(6)).loss.item()
    assert a == b and a != c


def test_hyperparameters_are_validated_and_resolved() -> None:
    objective = build_objective("fmm", LINEAR, window=4)
    assert objective.hparams["window"] == 4 and objective.hparams["forward_only"] is False
    assert objective.times.window == pytest.approx(0.25)
    with pytest.raises(ObjectiveError, match="unknown hyper-parameter"):
        build_objective("lmd", LINEAR, windoww=2)
    with pytest.raises(ObjectiveError, match="must be a"):
        build_objective("lmd", LINEAR, forward_only="yes")
    with pytest.raises(ObjectiveError, match="symmetric"):
        build_objective("fmm", LINEAR, forward_only=True)
    with pytest.raises(ObjectiveError, match="window"):
        build_objective("fmm", LINEAR, window=0)
    with pytest.raises(ObjectiveError, match="diag_frac"):
        build_objective("lsd", LINEAR, diag_frac=1.0)
    with pytest.raises(ObjectiveError):
        build_objective("sd", LINEAR, lsd_weight=0.0)
    with pytest.raises(ObjectiveError):
        build_objective("pfmm", LINEAR, steps=0)
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope", LINEAR)


def test_wrong_model_or_missing_teacher_raise() -> None:
    batch = CASE_2D.batch(8, gen())
    with pytest.raises(ObjectiveError, match="velocity"):
        build_objective("velocity", LINEAR).loss(mlp_model("flowmap"), batch, gen())
    with pytest.raises(ObjectiveError, match="teacher"):
        build_objective("lmd", LINEAR).loss(mlp_model("flowmap"), batch, gen())
    with pytest.raises(ObjectiveError, match="flow map teacher"):
        build_objective("pfmm", LINEAR).loss(
            mlp_model("flowmap"), batch, gen(), teacher=ExactGaussianVelocity(CASE_2D)
        )


def test_lmd_teacher_input_grad_changes_only_the_gradient() -> None:
    torch.manual_seed(0)
    model = mlp_model("flowmap")
    batch = CASE_2D.batch(64, gen())
    teacher = ExactGaussianVelocity(CASE_2D)
    grads, values = [], []
    for flag in (False, True):
        model.zero_grad()
        out = build_objective("lmd", LINEAR, teacher_input_grad=flag).loss(
            model, batch, gen(1), teacher
        )
        out.loss.backward()
        values.append(out.loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("name", sorted(ALL_OBJECTIVES))
def test_objectives_run_under_mixed_precision_autocast(name: str) -> None:
    """Under bf16 autocast the JVPs still run (in float32) and the loss back-propagates."""
    torch.manual_seed(0)
    objective = build_objective(name, LINEAR, **FAST_HPARAMS.get(name, {}))
    model = mlp_model(objective.model_kind, width=32, depth=2)
    teacher = _teacher_for(
        objective, lambda kind, shp: mlp_model(kind, shp, width=32, depth=2), (2,)
    )
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = objective.loss(model, CASE_2D.batch(16, gen()), gen(1), teacher=teacher)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(
        p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters()
    )


# ------------------------------------------------------------------------------------------
# AYF on the checkerboard: the implementation against the discrete-eps loss, adaptive weight
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ayf_emd", "ayf_lmd"])
def test_ayf_matches_discrete_loss_on_checkerboard_from_teacher_warm_start(name: str) -> None:
    """Same check as above on checkerboard data with the map warm-started from a velocity model."""
    from anystep.core.data import get_dataset
    from anystep.core.warmstart import flowmap_from_velocity

    torch.manual_seed(0)
    velocity = mlp_model("velocity", width=32, depth=2, fourier_features=4).double()
    model = mlp_model("flowmap", width=32, depth=2, fourier_features=4).double()
    model.ansatz = "residual"
    flowmap_from_velocity(model, velocity)
    with torch.no_grad():  # move off the warm start so that every tangent term is non-zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = build_objective(name, LINEAR, tangent_norm=False)
    g = gen(3)
    n = 128
    x1 = get_dataset("checkerboard").sample(n, g).double()
    batch = Batch(x0=torch.randn(n, 2, generator=g, dtype=torch.float64), x1=x1, z=torch.zeros(n, 2, dtype=torch.float64))
    model.zero_grad()
    objective.loss(model, batch, gen(4), teacher=velocity).loss.backward()
    surrogate = torch.cat([p.grad.flatten() for p in model.parameters()])
    pair = objective.times.sample(n, gen(4)).to(batch.x0)
    s, t = pair.s, pair.t
    x = LINEAR.interpolate(batch.x0, batch.x1, s).I_t
    eps = 1e-6
    with torch.no_grad():
        if name == "ayf_emd":
            s2 = s + eps * (t - s)
            target = model(x + (s2 - s)[:, None] * velocity(x, s), s2, t)
        else:
            t2 = t + eps * (s - t)
            y = model(x, s, t2)
            target = y + (t - t2)[:, None] * velocity(y, t2)
    model.zero_grad()
    ((model(x, s, t) - target).pow(2).mean(1).mean() / (2 * eps)).backward()
    discrete = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.nn.functional.cosine_similarity(surrogate, discrete, dim=0) > 0.9999
    assert float(surrogate.norm() / discrete.norm()) == pytest.approx(1.0, rel=1e-3)


def test_ayf_adaptive_weight_learns_the_log_variance_and_checkpoints() -> None:
    from anystep.training.ayf import LogVarianceWeight

    objective = build_objective("ayf_lmd", LINEAR, adaptive=True, adaptive_lr=0.05)
    assert isinstance(objective.weight_net, LogVarianceWeight)
    g = gen(5)
    for _ in range(400):  # sq_norm = 4 everywhere: u -> log 4
        s = torch.rand(256, generator=g)
        t = s + (1 - s) * torch.rand(256, generator=g)
        lam, _ = objective._adaptive_weight(s, t, torch.full((256,), 4.0))
    assert float(lam.mean()) == pytest.approx(0.25, rel=0.1)
    state = objective.state_dict()
    import json

    fresh = build_objective("ayf_lmd", LINEAR, adaptive=True, adaptive_lr=0.05)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    s = torch.rand(8, generator=g)
    assert torch.allclose(fresh.weight_net(s, s), objective.weight_net(s, s))
    # the map's loss still backpropagates and reports the log-variance
    model = mlp_model("flowmap")
    out = objective.loss(model, CASE_2D.batch(32, gen()), gen(1), ExactGaussianVelocity(CASE_2D))
    out.loss.backward()
    assert "log_var" in out.metrics
    assert build_objective("ayf_lmd", LINEAR).state_dict() == {}
