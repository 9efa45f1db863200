"""Checkerboard benchmark: the metrics of Table 3 on shared base points, and the blur equivalent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from anystep.benchmarks.checkerboard_methods import BenchmarkError, Settings

__all__ = ["EvalContext", "StepMetrics", "sample_map", "sample_ode", "score_samples"]


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
    """

    kl: float
    kl_ratio: float | None
    w2_target: float
    w2_teacher: float | None
    coupling_l2: float | None
    outside: float
    nfe: int | None = None


@dataclass
class EvalContext:
    """What every method is scored against.

    Attributes:
        x0: ``[n, 2]`` shared base points.
        x_si: ``[n, 2]`` the dopri5 teacher ``X^SI_{0,1}(x0)``.
        target_w2: ``[w2_samples, 2]`` fresh checkerboard samples for ``W_2^2``.
        settings: the benchmark settings.
        kl_teacher: the teacher's dopri5 KL (denominator of ``kl_ratio``), set once known.
    """

    x0: Tensor
    x_si: Tensor | None
    target_w2: np.ndarray
    settings: Settings
    kl_teacher: float | None = None


def _kl(x: np.ndarray, settings: Settings) -> float:
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
    kl = _kl(arr, s)
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
                       outside=_outside(arr), nfe=nfe)


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

