"""Closed-form Gaussian -> Gaussian flow under the linear interpolant (shared by tests).

x0 ~ N(0, I), x1 ~ N(m, diag(sigma^2)), independent coupling, I_t = (1-t) x0 + t x1.
Per coordinate I_t ~ N(mu_t, S_t^2) with mu_t = t m, S_t^2 = (1-t)^2 + t^2 sigma^2, and
b_t(x) = m + (dS_t/S_t)(x - mu_t),  X_{s,t}(x) = mu_t + (S_t / S_s)(x - mu_s).
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianFlow:
    def __init__(self, m, sigma):
        self.m = torch.as_tensor(m, dtype=torch.float64)
        self.sigma = torch.as_tensor(sigma, dtype=torch.float64)

    def _bt(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return t.reshape(-1, *([1] * (x.ndim - 1)))

    def mu(self, t):
        return t * self.m.to(t.dtype)

    def S(self, t):
        sig = self.sigma.to(t.dtype)
        return torch.sqrt((1 - t) ** 2 + t**2 * sig**2)

    def dS(self, t):
        sig = self.sigma.to(t.dtype)
        return (-(1 - t) + t * sig**2) / self.S(t)

    def b(self, x, t):
        tb = self._bt(t, x)
        return self.m.to(x.dtype) + self.dS(tb) / self.S(tb) * (x - self.mu(tb))

    def X(self, x, s, t):
        sb, tb = self._bt(s, x), self._bt(t, x)
        return self.mu(tb) + self.S(tb) / self.S(sb) * (x - self.mu(sb))


class ExactVelocity(nn.Module):
    kind = "velocity"

    def __init__(self, flow: GaussianFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x, t):
        return self.flow.b(x, t).to(x.dtype)

    def velocity(self, x, t):
        return self(x, t)


class ExactFlowMap(nn.Module):
    kind = "flowmap"

    def __init__(self, flow: GaussianFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x, s, t):
        return self.flow.X(x, s, t).to(x.dtype)
