"""Checkerboard benchmark: the metrics of Table 3 on shared base points, and the blur equivalent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anystep.benchmarks.checkerboard_methods import BenchmarkError, Settings

__all__ = [
    "BoundContext",
    "EvalContext",
    "StepMetrics",
    "board_kl",
    "bound_context",
    "map_bounds",
    "round_trip",
    "sample_map",
    "sample_ode",
    "score_samples",
]


@dataclass
class StepMetrics:
    """Scores of one set of samples ``x_hat_1 = X_hat(x0)`` (Table 3 columns, plus extras).

    Attributes:
        kl: ``KL(rho_1 || rho_hat_1)`` (histogram estimator, exact target density).
        kl_ratio: ``kl`` divided by the dopri5 teacher's ``kl`` (None for the floor rows).
        w2_target: ``W_2^2`` to fresh checkerboard samples (subsample).
        w2_teacher: ``W_2^2`` to the dopri5 teacher's samples (subsample).
        coupling_l2: ``E|X^SI_{0,1}(x0) - X_hat(x0)|^2`` on the shared ``x0`` (None when
            the samples do not come from the shared ``x0``).
        outside: fraction of samples off the board (target density 0; yellow in Fig. 3).
        nfe: network evaluations per sample.
        blur: blur equivalent of ``kl`` (:meth:`anystep.core.metrics.BlurCurve.equivalent`;
            ``0`` at or below the estimator's floor, ``inf`` beyond the largest blur).
    """

    kl: float
    kl_ratio: float | None
    w2_target: float
    w2_teacher: float | None
    coupling_l2: float | None
    outside: float
    nfe: int | None = None
    blur: float | None = None


@dataclass
class EvalContext:
    """What every method is scored against.

    Attributes:
        x0: ``[n, 2]`` shared base points.
        x_si: ``[n, 2]`` the dopri5 teacher ``X^SI_{0,1}(x0)``.
        target_w2: ``[w2_samples, 2]`` fresh checkerboard samples for ``W_2^2``.
        settings: the benchmark settings.
        kl_teacher: the teacher's dopri5 KL (denominator of ``kl_ratio``), set once known.
        blur: the :class:`~anystep.core.metrics.BlurCurve` of this sample size, once known.
    """

    x0: Tensor
    x_si: Tensor | None
    target_w2: np.ndarray
    settings: Settings
    kl_teacher: float | None = None
    blur: Any = None


def board_kl(x: np.ndarray, settings: Settings) -> float:
    """KL(rho_1 || rho_hat_1) of samples ``x`` ``[n, 2]`` against the exact board density (the benchmark's cells)."""
    from anystep.core.data import checkerboard_density
    from anystep.core.metrics import kl_divergence_2d

    return float(kl_divergence_2d(None, x, bins=settings.kl_bins, range_=tuple(settings.kl_range),
                                  target_density=checkerboard_density))


def _outside(x: np.ndarray) -> float:
    from anystep.core.data import checkerboard_density

    finite = np.all(np.isfinite(x), axis=1)
    dens = np.zeros(len(x))
    dens[finite] = checkerboard_density(x[finite])
    return float(np.mean(dens <= 0))


def score_samples(x: Tensor | np.ndarray, ctx: EvalContext, *, coupled: bool = True,
                  nfe: int | None = None) -> StepMetrics:
    """Score samples ``[n, 2]`` (rows from ``ctx.x0`` when ``coupled``) with every metric.

    ``W_2^2`` subsamples ``settings.w2_samples`` rows with a fixed seed (the same rows for
    every method: common random numbers), against ``ctx.target_w2`` and against the
    teacher's samples. Non-finite rows count as off the board and in the KL overflow
    cell; they are dropped for ``W_2^2`` and make ``coupling_l2`` infinite.

    Args:
        x: samples ``[n, 2]``.
        ctx: evaluation context.
        coupled: row ``i`` was produced from ``ctx.x0[i]`` (else no coupling error).
        nfe: network evaluations per sample, recorded as is.

    Returns:
        :class:`StepMetrics`.
    """
    from anystep.core.metrics import coupling_l2, w2_squared

    s = ctx.settings
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BenchmarkError(f"score_samples needs [n, 2] samples, got shape {list(arr.shape)}")
    finite = np.all(np.isfinite(arr), axis=1)
    kl = board_kl(arr, s)
    ok = arr[finite]
    w2_t = float(w2_squared(ok, ctx.target_w2, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else float("inf")
    w2_s = None
    l2 = None
    if ctx.x_si is not None:
        ref = ctx.x_si.double().numpy()
        w2_s = float(w2_squared(ok, ref, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else float("inf")
        if coupled and arr.shape == ref.shape:
            l2 = float(coupling_l2(ref, arr)) if finite.all() else float("inf")
    ratio = kl / ctx.kl_teacher if ctx.kl_teacher else None
    return StepMetrics(kl=kl, kl_ratio=ratio, w2_target=w2_t, w2_teacher=w2_s, coupling_l2=l2,
                       outside=_outside(arr), nfe=nfe,
                       blur=ctx.blur.equivalent(kl) if ctx.blur is not None else None)


@torch.no_grad()
def sample_map(model: nn.Module, x0: Tensor, steps: int, chunk: int = 50_000) -> Tensor:
    from anystep.core.samplers import sample_flowmap

    return torch.cat([sample_flowmap(model, c, steps=steps).x for c in x0.split(chunk)])


@torch.no_grad()
def sample_ode(model: nn.Module, x0: Tensor, solver: str, steps: int | None, rtol: float,
                chunk: int = 25_000) -> tuple[Tensor, int]:
    from anystep.core.samplers import sample_ode

    outs, nfe = [], 0
    for c in x0.split(chunk):
        res = sample_ode(model, c, solver=solver, steps=steps, rtol=rtol)
        outs.append(res.x)
        nfe = max(nfe, res.nfe)
    return torch.cat(outs), nfe



# --------------------------------------------------------------------------------------
# Props. 3.7 / 3.8: both sides for a trained map
# --------------------------------------------------------------------------------------


@dataclass
class BoundContext:
    """Shared inputs of the bound terms: base/data points, ``int |C_t|`` of the teacher.

    Attributes:
        x0: ``[n, 2]`` base points (the first ``n`` of the shared ``x0``), float64.
        x1: ``[n, 2]`` data points coupled independently with ``x0`` (for ``I_s``).
        n: number of points.
        n_times: midpoint-rule nodes of the time integrals.
        lipschitz_integral: ``int_0^1 |C_t| dt`` of the teacher, ``C_t`` the largest
            eigenvalue of ``sym(∇b_t)`` over samples of ``I_t`` (a lower estimate of the sup).
        lmd_factor: ``e^{1 + 2 int |C_t|}`` (Prop. 3.7).
    """

    x0: Tensor
    x1: Tensor
    n: int
    n_times: int
    lipschitz_integral: float
    lmd_factor: float


def bound_context(teacher: nn.Module, x0: Tensor, data: np.ndarray, settings: Settings,
                  n_times: int = 32, lipschitz_points: int = 512) -> BoundContext:
    """Build :class:`BoundContext` for the teacher ``b`` (velocity model)."""
    from anystep.core.bounds import one_sided_lipschitz

    n = min(settings.bound_samples, len(x0), len(data))
    xb0 = x0[:n].double()
    xb1 = torch.as_tensor(data[:n], dtype=torch.float64)
    b = _double(teacher)
    m = min(lipschitz_points, n)
    c = one_sided_lipschitz(b, lambda t: (1 - t) * xb0[:m] + t * xb1[:m], n_times=n_times)
    integral = float(c.abs().mean())
    return BoundContext(x0=xb0, x1=xb1, n=n, n_times=n_times, lipschitz_integral=integral,
                        lmd_factor=math.exp(1.0 + 2.0 * integral))


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval().requires_grad_(False)


def map_bounds(model: nn.Module, teacher: nn.Module, ctx: BoundContext, one_step: StepMetrics) -> dict[str, Any]:
    """Both sides of Props. 3.7 and 3.8 for one map (see :mod:`anystep.core.bounds`).

    The measured side is ``W_2^2`` to the teacher's dopri5 samples (``one_step.w2_teacher``)
    and the coupling error ``E|X^SI_{0,1}(x0) - X_hat_{0,1}(x0)|^2`` (``one_step.coupling_l2``,
    which the proofs bound); the bounds use the Lagrangian / Eulerian defects against the
    teacher velocity on ``ctx.n`` points.
    """
    from anystep.core.bounds import BoundCheck, eulerian_defect, lagrangian_defect

    X_hat, b = _double(model), _double(teacher)
    chk = BoundCheck(
        w2=float(one_step.w2_teacher if one_step.w2_teacher is not None else float("nan")),
        coupling=float(one_step.coupling_l2 if one_step.coupling_l2 is not None else float("nan")),
        lagrangian_defect=lagrangian_defect(X_hat, b, ctx.x0, n_times=ctx.n_times),
        lipschitz_integral=ctx.lipschitz_integral,
        eulerian_defect=eulerian_defect(X_hat, b, ctx.x0, ctx.x1, n_times=ctx.n_times),
    )
    return chk.to_dict()


@torch.no_grad()
def round_trip(model: nn.Module, x0: Tensor, x1: np.ndarray, n: int = 20_000) -> dict[str, float]:
    """Inversion error of a map trained on both directions (what ``/encode`` relies on).

    Returns:
        ``{"encode_decode": E|X_{1,0}(X_{0,1}(x0)) - x0|^2, "decode_encode":
        E|X_{0,1}(X_{1,0}(x1)) - x1|^2, "n": n}`` with ``x1`` exact data samples.
    """
    m = min(n, len(x0), len(x1))
    a = x0[:m]
    b = torch.as_tensor(x1[:m], dtype=a.dtype)
    zero, one = torch.zeros(m), torch.ones(m)
    ed = model(model(a, zero, one), one, zero)
    de = model(model(b, one, zero), zero, one)
    return {"encode_decode": float((ed - a).pow(2).sum(1).mean()), "decode_encode": float((de - b).pow(2).sum(1).mean()),
            "n": m}
