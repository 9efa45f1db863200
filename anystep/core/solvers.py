"""ODE solvers for velocity models ``dx/dt = b_t(x)`` (eq. 3.1): Euler, Heun, RK4, dopri5.

Every solver takes per-sample start/end times and returns an :class:`ODESolution` that
reports the number of function evaluations (NFE). Fixed-step solvers have orders 1, 2
and 4. ``dopri5`` (Dormand-Prince 5(4), FSAL) adapts its step **per sample**, so a
sample's trajectory does not depend on the other samples in its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .interpolants import broadcast_time
from .tableaux import DEFAULT_MAX_NFE, DOPRI5, SOLVERS, TABLEAUX, SolverError, Tableau

Velocity = Callable[[Tensor, Tensor], Tensor]  # b(x [B,*shape], t [B]) -> [B,*shape]


@dataclass
class ODESolution:
    """Result of an ODE solve.

    Attributes:
        x: ``[B, *shape]`` state at the end time.
        nfe: number of batched evaluations of ``b``.
        steps: accepted steps (max over samples for dopri5).
        rejected: rejected steps (dopri5 only; summed over samples).
        trajectory: optional list of ``[B, *shape]`` states at the accepted steps (fixed-step solvers).
    """

    x: Tensor
    nfe: int
    steps: int
    rejected: int = 0
    trajectory: list[Tensor] | None = field(default=None, repr=False)


def _bt(h: Tensor, x: Tensor) -> Tensor:
    return broadcast_time(h, x)


def rk_step(b: Velocity, x: Tensor, t: Tensor, h: Tensor, tableau: Tableau) -> Tensor:
    """One explicit Runge-Kutta step of the given tableau (S evaluations of ``b``).

    ``k_j = b(x + h sum_l A_jl k_l, t + c_j h)``, ``x <- x + h sum_j b_j k_j``.
    """
    hb = _bt(h, x)
    ks: list[Tensor] = []
    for j in range(tableau.stages):
        xj = x
        for a, k in zip(tableau.a[j][:j], ks):
            if a != 0.0:
                xj = xj + (hb * a) * k
        ks.append(b(xj, t + tableau.c[j] * h))
    incr = sum(w * k for w, k in zip(tableau.b, ks) if w != 0.0)
    return x + hb * incr


def euler_step(b: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """One forward-Euler step (order 1)."""
    return rk_step(b, x, t, h, TABLEAUX["euler"])


def heun_step(b: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """One Heun (explicit trapezoid) step (order 2, 2 NFE)."""
    return rk_step(b, x, t, h, TABLEAUX["heun"])


def rk4_step(b: Velocity, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """One classical Runge-Kutta step (order 4, 4 NFE)."""
    return rk_step(b, x, t, h, TABLEAUX["rk4"])


FIXED_STEPPERS = {"euler": (euler_step, 1), "heun": (heun_step, 2), "rk4": (rk4_step, 4)}
"""Fixed-step solvers: ``name -> (stepper, evaluations per step)``, derived from :data:`TABLEAUX`."""


def _as_times(t: Tensor | float, x: Tensor) -> Tensor:
    return broadcast_time(t, x).reshape(-1)


def solve_fixed(
    b: Velocity,
    x: Tensor,
    t0: Tensor | float = 0.0,
    t1: Tensor | float = 1.0,
    *,
    method: str = "euler",
    steps: int | None = None,
    nfe: int | None = None,
    return_trajectory: bool = False,
) -> ODESolution:
    """Integrate ``dx/dt = b_t(x)`` from ``t0`` to ``t1`` with a fixed-step method.

    Args:
        b: velocity ``b(x [B,*shape], t [B]) -> [B,*shape]``.
        x: ``[B, *shape]`` initial state at ``t0``.
        t0, t1: scalar or ``[B]`` start/end times (``t1 < t0`` integrates backwards).
        method: ``"euler"``, ``"heun"`` or ``"rk4"``.
        steps: number of uniform steps; or give ``nfe`` (steps = nfe // evaluations per step).
        return_trajectory: keep the state after every step.

    Returns:
        ODESolution with ``nfe = steps * evaluations per step``.
    """
    if method not in FIXED_STEPPERS:
        raise SolverError(f"unknown fixed-step method {method!r}; choose from {sorted(FIXED_STEPPERS)} or 'dopri5'")
    stepper, per_step = FIXED_STEPPERS[method]
    if steps is None:
        if nfe is None:
            raise SolverError("give steps or nfe")
        steps = nfe // per_step
        if steps < 1:
            raise SolverError(f"nfe={nfe} is below the {per_step} evaluations one {method} step needs")
    if steps < 1:
        raise SolverError(f"steps must be >= 1, got {steps}")
    t0_, t1_ = _as_times(t0, x), _as_times(t1, x)
    h = (t1_ - t0_) / steps
    traj = [x] if return_trajectory else None
    for k in range(steps):
        x = stepper(b, x, t0_ + k * h, h)
        if traj is not None:
            traj.append(x)
    return ODESolution(x=x, nfe=steps * per_step, steps=steps, trajectory=traj)


_DP = TABLEAUX["dopri5"]
_C, _A, _B5, _E = _DP.c, _DP.a, _DP.b, _DP.b_err


class SolverFailedError(SolverError):
    """An adaptive solve did not reach its end time within its evaluation bound."""


def dopri5(
    b: Velocity,
    x: Tensor,
    t0: Tensor | float = 0.0,
    t1: Tensor | float = 1.0,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    h0: float | None = None,
    max_steps: int = 10_000,
    max_nfe: int | None = None,
) -> ODESolution:
    """Adaptive Dormand-Prince 5(4) with per-sample step-size control.

    Each sample keeps its own time and step size; a step is accepted for the samples
    whose scaled RMS error is <= 1 and retried (smaller) for the others. All live
    samples share one batched evaluation of ``b`` per stage, so ``nfe`` counts batched
    calls (first-same-as-last saves one per step). The tableau and the controller are
    :data:`anystep.core.tableaux.TABLEAUX` ``["dopri5"]`` and :data:`~anystep.core.tableaux.DOPRI5`.

    Args:
        b: velocity ``b(x [B,*shape], t [B]) -> [B,*shape]``.
        x: ``[B, *shape]`` initial state at ``t0``.
        t0, t1: scalar or ``[B]`` start/end times.
        rtol, atol: error tolerances (per component, RMS norm per sample).
        h0: initial step magnitude (default ``0.01 * |t1 - t0|``).
        max_steps: safety bound on loop iterations.
        max_nfe: bound on evaluations of ``b`` (None: only ``max_steps``).

    Returns:
        ODESolution; ``steps`` is the largest accepted-step count of any sample.

    Raises:
        SolverFailedError: ``t1`` not reached within ``max_steps`` / ``max_nfe``.
    """
    if rtol <= 0 or atol <= 0:
        raise SolverError("rtol and atol must be > 0")
    ctl = DOPRI5
    t0_, t1_ = _as_times(t0, x), _as_times(t1, x)
    span = t1_ - t0_
    direction = torch.sign(span)
    direction = torch.where(direction == 0, torch.ones_like(direction), direction)
    t = t0_.clone()
    h = ctl.h0_fraction * span.abs().clamp(min=1e-12)
    if h0 is not None:
        h = torch.full_like(t, float(h0))
    done = span.abs() <= 0
    x = x.clone()
    k1 = b(x, t)
    nfe = 1
    accepted = torch.zeros_like(t, dtype=torch.long)
    rejected = 0
    red = tuple(range(1, x.ndim))
    limit = max_nfe if max_nfe is not None else 1 + 6 * max_steps
    for _ in range(max_steps):
        if bool(done.all()):
            break
        if nfe + 6 > limit:
            raise SolverFailedError(
                f"dopri5 needs more than max_nfe={limit} evaluations at rtol={rtol:g}; "
                "raise max_nfe or rtol, or use a fixed-step solver"
            )
        remaining = (t1_ - t).abs()
        hs = torch.minimum(h, remaining) * direction
        hs = torch.where(done, torch.zeros_like(hs), hs)
        hb = _bt(hs, x)
        ks = [k1]
        for i in range(1, 7):
            xi = x + hb * sum(a * k for a, k in zip(_A[i][:i], ks) if a != 0)
            ks.append(b(xi, t + _C[i] * hs))
            nfe += 1
        x5 = x + hb * sum(c * k for c, k in zip(_B5, ks) if c != 0)
        err = hb * sum(e * k for e, k in zip(_E, ks) if e != 0)
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        err_norm = torch.sqrt(torch.mean((err / scale) ** 2, dim=red))
        ok = (err_norm <= 1.0) & ~done
        okb = _bt(ok.to(x.dtype), x).bool()
        x = torch.where(okb, x5, x)
        k1 = torch.where(okb, ks[6], k1)  # FSAL
        t = torch.where(ok, t + hs, t)
        accepted = accepted + ok.long()
        rejected += int(((~ok) & ~done).sum())
        factor = torch.clamp(
            ctl.safety * err_norm.clamp(min=1e-10) ** ctl.exponent, ctl.min_factor, ctl.max_factor
        )
        h = torch.where(done, h, h * factor)
        done = done | ((t1_ - t).abs() <= 1e-12 * (1 + t1_.abs())) | (ok & (remaining <= hs.abs() + 1e-15))
        t = torch.where(done, t1_, t)
    else:
        raise SolverFailedError(f"dopri5 did not reach t1 within max_steps={max_steps}; loosen rtol/atol")
    return ODESolution(x=x, nfe=nfe, steps=int(accepted.max()), rejected=rejected)


def solve(
    b: Velocity,
    x: Tensor,
    t0: Tensor | float = 0.0,
    t1: Tensor | float = 1.0,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    nfe: int | None = None,
    rtol: float = 1e-5,
    atol: float | None = None,
    return_trajectory: bool = False,
    max_nfe: int | None = DEFAULT_MAX_NFE,
) -> ODESolution:
    """Dispatch to a fixed-step solver or dopri5 (``atol`` defaults to ``rtol``; ``max_nfe`` bounds dopri5)."""
    if method == "dopri5":
        return dopri5(b, x, t0, t1, rtol=rtol, atol=atol if atol is not None else rtol, max_nfe=max_nfe)
    if method not in FIXED_STEPPERS:
        raise SolverError(f"unknown solver {method!r}; choose from {list(SOLVERS)}")
    return solve_fixed(b, x, t0, t1, method=method, steps=steps, nfe=nfe, return_trajectory=return_trajectory)
