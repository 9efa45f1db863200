"""Closed-form Gaussian -> Gaussian test case for the objectives.

Linear interpolant ``I_t = (1 - t) x0 + t x1`` (``gamma = 0``), independent coupling,
``x0 ~ N(0, I)``, ``x1 ~ N(m, diag(sigma^2))``. Per coordinate ``I_t ~ N(mu_t, S_t^2)`` with

    mu_t = t m,    S_t^2 = (1 - t)^2 + t^2 sigma^2,    S_t' = (t sigma^2 - (1 - t)) / S_t.

Velocity (eq. 3.13, jointly Gaussian conditional mean):
``b_t(x) = E[x1 - x0 | I_t = x] = m + Cov(x1 - x0, I_t) / S_t^2 (x - mu_t)`` with
``Cov(x1 - x0, I_t) = t sigma^2 - (1 - t) = S_t S_t'``, i.e. ``b_t(x) = m + (S_t'/S_t)(x - mu_t)``.

Flow map (Definition 3.2): ``X_{s,t}(x) = mu_t + (S_t / S_s)(x - mu_s)``; indeed
``∂_t X = m + (S_t'/S_s)(x - mu_s) = m + (S_t'/S_t)(X - mu_t) = b_t(X)`` (eq. 3.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from anystep.training.base import Batch


def _b(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class GaussianCase:
    """Target ``N(m, diag(sigma^2))`` with base ``N(0, I)``.

    Args:
        m: ``[d]`` target mean.
        sigma: ``[d]`` target standard deviations (> 0).
    """

    def __init__(self, m: Sequence[float], sigma: Sequence[float]) -> None:
        self.m = torch.tensor(m, dtype=torch.float64)
        self.sigma = torch.tensor(sigma, dtype=torch.float64)
        self.d = self.m.numel()

    def mu(self, t: Tensor, x: Tensor) -> Tensor:
        """``mu_t = t m``: ``[B] -> [B, d]`` in ``x``'s dtype."""
        return _b(t, x) * self.m.to(x)

    def S(self, t: Tensor, x: Tensor) -> Tensor:
        """``S_t = sqrt((1 - t)^2 + t^2 sigma^2)``: ``[B] -> [B, d]``."""
        tb = _b(t, x)
        return torch.sqrt((1 - tb) ** 2 + tb**2 * self.sigma.to(x) ** 2)

    def dS(self, t: Tensor, x: Tensor) -> Tensor:
        """``S_t' = (t sigma^2 - (1 - t)) / S_t``: ``[B] -> [B, d]``."""
        tb = _b(t, x)
        return (tb * self.sigma.to(x) ** 2 - (1 - tb)) / self.S(t, x)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact ``b_t(x)`` (eq. 3.13): ``x [B, d], t [B] -> [B, d]``."""
        return self.m.to(x) + self.dS(t, x) / self.S(t, x) * (x - self.mu(t, x))

    def flow_map(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Exact ``X_{s,t}(x)``: ``x [B, d], s, t [B] -> [B, d]``."""
        return self.mu(t, x) + self.S(t, x) / self.S(s, x) * (x - self.mu(s, x))

    def batch(self, n: int, generator: torch.Generator, dtype=torch.float32) -> Batch:
        """A coupled batch ``(x0, x1, z)`` of ``n`` independent samples."""
        x0 = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        x1 = self.m + self.sigma * torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return Batch(x0=x0.to(dtype), x1=x1.to(dtype), z=z.to(dtype))


class ExactGaussianVelocity(nn.Module):
    """The exact velocity as a (parameter-free) velocity model: ``forward(x, t) = b_t(x)``."""

    kind = "velocity"

    def __init__(self, case: GaussianCase) -> None:
        super().__init__()
        self.case = case

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]) if not torch.is_tensor(t) else t
        return self.case.velocity(x, t)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self(x, t)


class ExactGaussianFlowMap(nn.Module):
    """The exact flow map as a flow-map model: ``forward(x, s, t) = X_{s,t}(x)``."""

    kind = "flowmap"

    def __init__(self, case: GaussianCase) -> None:
        super().__init__()
        self.case = case

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return self.case.flow_map(x, s, t)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        return self.case.velocity(x, t)


class ScaledGaussianFlowMap(nn.Module):
    """``X^θ_{s,t}(x) = mu_t + θ (S_t / S_s)(x - mu_s)``: a one-parameter family, exact at θ = 1.

    Used to measure expected gradients of the Eulerian losses at the true map.
    """

    kind = "flowmap"

    def __init__(self, case: GaussianCase, theta: float = 1.0) -> None:
        super().__init__()
        self.case = case
        self.theta = nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        c = self.case
        return c.mu(t, x) + self.theta.to(x) * c.S(t, x) / c.S(s, x) * (x - c.mu(s, x))


class PowerGaussianFlowMap(nn.Module):
    """``X^θ_{s,t}(x) = mu_t + (S_t / S_s)^θ (x - mu_s)``: keeps ``X_{s,s} = id`` and the
    semigroup property for every θ, but solves eq. 3.5 only at θ = 1."""

    kind = "flowmap"

    def __init__(
        self, case: GaussianCase, theta: float = 1.0, velocity_theta: float | None = None
    ) -> None:
        super().__init__()
        self.case = case
        self.theta = nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))
        self.velocity_theta = velocity_theta

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        c = self.case
        return c.mu(t, x) + (c.S(t, x) / c.S(s, x)) ** self.theta.to(x) * (x - c.mu(s, x))

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Diagonal ``lim_{s->t} ∂_t X^θ_{s,t}`` = ``m + θ (S_t'/S_t)(x - mu_t)``; with
        ``velocity_theta`` set, that θ is used instead (a map inconsistent with its diagonal)."""
        c = self.case
        theta = self.theta.to(x) if self.velocity_theta is None else self.velocity_theta
        return c.m.to(x) + theta * c.dS(t, x) / c.S(t, x) * (x - c.mu(t, x))
