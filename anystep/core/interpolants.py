"""Stochastic interpolants ``I_t = alpha_t x0 + beta_t x1 + gamma_t z`` (Definition 3.9, eq. 3.12).

Time convention: ``t = 0`` is the base rho_0, ``t = 1`` the data rho_1. Boundary
conditions of Definition 3.9: ``alpha_0 = beta_1 = 1``, ``alpha_1 = beta_0 = 0``,
``gamma_0 = gamma_1 = 0``. The velocity ``b_t(x) = E[dI_t/dt | I_t = x]`` (eq. 3.13) is
what a teacher learns by regressing on ``dI_t`` (eq. 3.14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import InterpolantConfig

# Derivatives of sqrt-type coefficients blow up at the end points; they are
# evaluated on [EPS, 1 - EPS] (the values themselves are exact everywhere).
EPS = 1e-5


def broadcast_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Reshape per-sample times for broadcasting against ``x``.

    Args:
        t: scalar, ``[]`` or ``[B]`` times.
        x: ``[B, *shape]`` batch.

    Returns:
        ``[B, 1, ..., 1]`` tensor (same dtype/device as ``x``).
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"times must be a scalar or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}"
        )
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass
class InterpolantSample:
    """One draw of the interpolant.

    Attributes:
        I_t: ``[B, *shape]`` the interpolant at per-sample times ``t``.
        dI_t: ``[B, *shape]`` its time derivative ``d/dt I_t`` (the regression target of eq. 3.14).
        t: ``[B]`` the times.
    """

    I_t: Tensor
    dI_t: Tensor
    t: Tensor


class Interpolant:
    """Base class: subclasses give ``alpha, beta`` and their derivatives; ``gamma`` is shared.

    ``gamma_t = sqrt(a t (1 - t))`` with ``a = config.gamma`` (0 disables the latent term).
    """

    name = "base"

    def __init__(self, gamma: float = 0.0) -> None:
        if gamma < 0:
            raise ValueError("gamma must be >= 0 (it scales gamma_t = sqrt(a t (1-t)))")
        self.a = float(gamma)

    # -- coefficients ---------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def beta(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_beta(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def gamma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.clamp(self.a * t * (1 - t), min=0.0))

    def d_gamma(self, t: Tensor) -> Tensor:
        if self.a == 0:
            return torch.zeros_like(t)
        tc = t.clamp(EPS, 1 - EPS)
        return self.a * (1 - 2 * tc) / (2 * torch.sqrt(self.a * tc * (1 - tc)))

    # -- sampling -------------------------------------------------------------------
    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> InterpolantSample:
        """Evaluate ``I_t`` (eq. 3.12) and ``dI_t/dt``.

        Args:
            x0: ``[B, *shape]`` base samples.
            x1: ``[B, *shape]`` data samples (coupled with ``x0``).
            t: ``[B]`` times in ``[0, 1]``.
            z: ``[B, *shape]`` standard normal latent; required when ``gamma > 0``.

        Returns:
            InterpolantSample with ``I_t`` and ``dI_t`` of shape ``[B, *shape]``.
        """
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
        tb = broadcast_time(t, x0)
        I_t = self.alpha(tb) * x0 + self.beta(tb) * x1
        dI_t = self.d_alpha(tb) * x0 + self.d_beta(tb) * x1
        if self.a > 0:
            if z is None:
                raise ValueError("this interpolant has gamma > 0: pass z ~ N(0, I) of x0's shape")
            I_t = I_t + self.gamma(tb) * z
            dI_t = dI_t + self.d_gamma(tb) * z
        return InterpolantSample(I_t=I_t, dI_t=dI_t, t=tb.reshape(-1))

    def boundary_errors(self) -> dict[str, float]:
        """Absolute violations of the boundary conditions of Definition 3.9."""
        zero = torch.zeros(1, dtype=torch.float64)
        one = torch.ones(1, dtype=torch.float64)
        return {
            "alpha_0 - 1": abs(float(self.alpha(zero)) - 1),
            "alpha_1": abs(float(self.alpha(one))),
            "beta_0": abs(float(self.beta(zero))),
            "beta_1 - 1": abs(float(self.beta(one)) - 1),
            "gamma_0": abs(float(self.gamma(zero))),
            "gamma_1": abs(float(self.gamma(one))),
        }

    def check_boundary_conditions(self, tol: float = 1e-6) -> None:
        """Raise ValueError if Definition 3.9's boundary conditions fail by more than ``tol``."""
        bad = {k: v for k, v in self.boundary_errors().items() if v > tol}
        if bad:
            raise ValueError(f"interpolant {self.name!r} violates Definition 3.9: {bad}")


class LinearInterpolant(Interpolant):
    """``alpha_t = 1 - t, beta_t = t``: flow matching / rectified flow."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def beta(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_beta(self, t):
        return torch.ones_like(t)


class TrigInterpolant(Interpolant):
    """``alpha_t = cos(pi t / 2), beta_t = sin(pi t / 2)`` (also variance preserving)."""

    name = "trig"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def beta(self, t):
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_beta(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class VPInterpolant(Interpolant):
    """Variance-preserving diffusion: ``alpha_t = sqrt(1 - t^2), beta_t = t`` (Section 3.4).

    With a Gaussian base this is the paper's ``alpha = 0, beta = t, gamma = sqrt(1 - t^2)``
    with the Gaussian written as ``x0``. ``d_alpha`` is singular at ``t = 1`` and is
    evaluated at ``min(t, 1 - EPS)``.
    """

    name = "vp"

    def alpha(self, t):
        return torch.sqrt(torch.clamp(1 - t * t, min=0.0))

    def beta(self, t):
        return t

    def d_alpha(self, t):
        tc = t.clamp(max=1 - EPS)
        return -tc / torch.sqrt(1 - tc * tc)

    def d_beta(self, t):
        return torch.ones_like(t)


INTERPOLANTS: dict[str, type[Interpolant]] = {
    "linear": LinearInterpolant,
    "trig": TrigInterpolant,
    "vp": VPInterpolant,
}


def build_interpolant(cfg: InterpolantConfig | str = "linear", gamma: float = 0.0) -> Interpolant:
    """Build an interpolant from its config (or name)."""
    if isinstance(cfg, str):
        cfg = InterpolantConfig(name=cfg, gamma=gamma)
    if cfg.name not in INTERPOLANTS:
        raise ValueError(f"unknown interpolant {cfg.name!r}; choose from {sorted(INTERPOLANTS)}")
    return INTERPOLANTS[cfg.name](gamma=cfg.gamma)
