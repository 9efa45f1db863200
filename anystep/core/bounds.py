"""Error bounds of the distillation objectives (paper Props. 3.7 and 3.8, App. A).

For a flow map ``X`` of the velocity ``b`` and an approximation ``X_hat``, with
``rho_1^b = X_{0,1} # rho_0`` and ``rho_hat_1 = X_hat_{0,1} # rho_0``:

* Prop. 3.7 (Lagrangian, eq. 3.10 / A.16)::

      W_2^2(rho_1^b, rho_hat_1) <= E|X_{0,1}(x0) - X_hat_{0,1}(x0)|^2
                                <= e^{1 + 2 int_0^1 |C_t| dt} int_0^1 E|b_t(X_hat_{0,t}(x0)) - ∂_t X_hat_{0,t}(x0)|^2 dt

  with ``C_t`` the one-sided Lipschitz constant of ``b_t`` (Assumption 3.1):
  ``(b_t(x) - b_t(y))·(x - y) <= C_t |x - y|^2``.
* Prop. 3.8 (Eulerian, eq. 3.11)::

      W_2^2(rho_1^b, rho_hat_1) <= e int_0^1 E|∂_s X_hat_{s,1}(I_s) + ∇X_hat_{s,1}(I_s) b_s(I_s)|^2 ds.

The functions here evaluate the right-hand sides (full squared norms, not divided by the
dimension) by the midpoint rule in time and forward-mode derivatives
(``torch.func.jvp``), and ``C_t`` for a velocity model as the largest eigenvalue of the
symmetric part of its Jacobian over sample points (exact for affine ``b``, a lower estimate
of the supremum otherwise). Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BoundCheck",
    "eulerian_defect",
    "lagrangian_defect",
    "one_sided_lipschitz",
]

FlowMapFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # X_hat(x [B, d], s [B], t [B]) -> [B, d]
VelocityFn = Callable[[Tensor, Tensor], Tensor]  # b(x [B, d], t [B]) -> [B, d]


def _midpoints(n: int) -> Tensor:
    if n < 1:
        raise ValueError(f"need at least one quadrature point, got {n}")
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def lagrangian_defect(X_hat: FlowMapFn, b: VelocityFn, x0: Tensor, n_times: int = 32) -> float:
    """``int_0^1 E|b_t(X_hat_{0,t}(x0)) - ∂_t X_hat_{0,t}(x0)|^2 dt`` (eq. 3.10, middle term).

    Args:
        X_hat: the approximate flow map.
        b: the velocity whose flow ``X_hat`` approximates.
        x0: ``[n, d]`` base samples.
        n_times: midpoint-rule nodes in ``t``.

    Returns:
        The defect (float).
    """
    total = 0.0
    s = torch.zeros(x0.shape[0], dtype=x0.dtype)
    for t_val in _midpoints(n_times):
        t = torch.full_like(s, float(t_val))
        x_t, dt_x = torch.func.jvp(lambda tt: X_hat(x0, s, tt), (t,), (torch.ones_like(t),))
        with torch.no_grad():
            r = b(x_t.detach(), t) - dt_x.detach()
        total += float(r.pow(2).sum(1).mean()) / n_times
    return total


def eulerian_defect(X_hat: FlowMapFn, b: VelocityFn, x0: Tensor, x1: Tensor, n_times: int = 32) -> float:
    """``int_0^1 E|∂_s X_hat_{s,1}(I_s) + ∇X_hat_{s,1}(I_s) b_s(I_s)|^2 ds`` (eq. 3.11).

    ``I_s = (1 - s) x0 + s x1`` (the linear interpolant, ``gamma = 0``).

    Args:
        X_hat: the approximate flow map.
        b: the velocity.
        x0, x1: ``[n, d]`` coupled base and data samples.
        n_times: midpoint-rule nodes in ``s``.

    Returns:
        The defect (float).
    """
    total = 0.0
    one = torch.ones(x0.shape[0], dtype=x0.dtype)
    for s_val in _midpoints(n_times):
        s = torch.full_like(one, float(s_val))
        I_s = (1 - s_val) * x0 + s_val * x1
        with torch.no_grad():
            b_s = b(I_s, s)
        _, r = torch.func.jvp(lambda xx, ss: X_hat(xx, ss, one), (I_s, s), (b_s, torch.ones_like(s)))
        total += float(r.detach().pow(2).sum(1).mean()) / n_times
    return total


def one_sided_lipschitz(b: VelocityFn, points: Callable[[float], Tensor], n_times: int = 32) -> Tensor:
    """``C_t`` at the midpoint nodes: max over ``points(t)`` of ``lambda_max(sym ∇b_t(x))``.

    Args:
        b: the velocity.
        points: ``points(t) -> [n, d]`` where to look (e.g. samples of ``I_t``).
        n_times: midpoint-rule nodes.

    Returns:
        ``[n_times]`` float64; ``int_0^1 |C_t| dt ≈ C.abs().mean()``.
    """
    out = []
    for t_val in _midpoints(n_times):
        x = points(float(t_val)).detach()
        t = torch.full((x.shape[0],), float(t_val), dtype=x.dtype)
        jac = torch.func.vmap(torch.func.jacrev(lambda xi, ti: b(xi[None], ti[None])[0]))(x, t)  # [n, d, d]
        sym = 0.5 * (jac + jac.transpose(1, 2))
        out.append(float(torch.linalg.eigvalsh(sym.double()).max()))
    return torch.tensor(out, dtype=torch.float64)


@dataclass(frozen=True)
class BoundCheck:
    """Both sides of Props. 3.7 / 3.8 for one map.

    Attributes:
        w2: ``W_2^2(rho_1^b, rho_hat_1)`` (measured, e.g. exact OT on samples).
        coupling: ``E|X_{0,1}(x0) - X_hat_{0,1}(x0)|^2`` (>= W_2^2; what the proofs bound).
        lagrangian_defect: middle term of eq. 3.10.
        lipschitz_integral: ``int_0^1 |C_t| dt``.
        eulerian_defect: integral of eq. 3.11.
    """

    w2: float
    coupling: float
    lagrangian_defect: float
    lipschitz_integral: float
    eulerian_defect: float

    @property
    def lmd_bound(self) -> float:
        """``e^{1 + 2 int |C_t|} x lagrangian_defect`` (Prop. 3.7)."""
        return math.exp(1.0 + 2.0 * self.lipschitz_integral) * self.lagrangian_defect

    @property
    def emd_bound(self) -> float:
        """``e x eulerian_defect`` (Prop. 3.8)."""
        return math.e * self.eulerian_defect

    def to_dict(self) -> dict[str, float]:
        """JSON form with both bounds and whether they hold (against the coupling error)."""
        return {"w2": self.w2, "coupling": self.coupling, "lagrangian_defect": self.lagrangian_defect,
                "lipschitz_integral": self.lipschitz_integral, "lmd_bound": self.lmd_bound,
                "eulerian_defect": self.eulerian_defect, "emd_bound": self.emd_bound,
                "lmd_holds": self.coupling <= self.lmd_bound, "emd_holds": self.coupling <= self.emd_bound}
