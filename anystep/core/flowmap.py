"""Parameterisation wrappers: a backbone ``F`` becomes a flow map or a velocity model.

Kept separate from the networks (as EDM separates preconditioning from networks).

Flow map ansaetze (both satisfy ``X_{s,s} = id`` exactly, the boundary condition of eq. 3.5):

* ``residual``: ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` with ``v_{s,t} = F(x, s, t)``.
* ``convex`` (paper eq. 4.1): ``X_{s,t}(x) = (1 - t + s) x + (t - s) f_{s,t}(x)`` with
  ``f = F(x, s, t)``; equivalently the residual form with ``v_{s,t} = f_{s,t} - x``.

The tangent condition ``lim_{s->t} d/dt X_{s,t}(x) = v_{t,t}(x) = b_t(x)`` makes the
diagonal ``v_{t,t}`` a velocity model (used by self-distillation, successors §2).

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from .interpolants import broadcast_time


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """Return per-sample times ``[B]`` in x's dtype/device."""
    return broadcast_time(t, x).reshape(-1)


class FlowMap(nn.Module):
    """Two-time flow map ``X_{s,t}`` around a backbone ``F(x, s, t)``.

    Args:
        backbone: module with ``forward(x, s, t)``, ``x: [B, *shape]``, ``s, t: [B]``.
        ansatz: ``"residual"`` or ``"convex"`` (eq. 4.1).
    """

    kind = "flowmap"

    def __init__(self, backbone: nn.Module, ansatz: str = "residual") -> None:
        super().__init__()
        if ansatz not in ("residual", "convex"):
            raise ValueError(f"ansatz={ansatz!r}: use 'residual' or 'convex'")
        self.backbone = backbone
        self.ansatz = ansatz

    def slope(self, x: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """``v_{s,t}(x)`` such that ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)``.

        Args:
            x: ``[B, *shape]`` points at time ``s``.
            s: ``[B]`` (or scalar) start times.
            t: ``[B]`` (or scalar) end times.

        Returns:
            ``[B, *shape]`` slope.
        """
        s_, t_ = _times(s, x), _times(t, x)
        out = self.backbone(x, s_, t_)
        if self.ansatz == "convex":
            out = out - x
        return out

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """``X_{s,t}(x)`` (Definition 3.2): jump from time ``s`` to time ``t``.

        Args:
            x: ``[B, *shape]`` points at time ``s``.
            s: ``[B]`` (or scalar) start times in [0, 1].
            t: ``[B]`` (or scalar) end times in [0, 1]; ``t < s`` runs the map backwards.

        Returns:
            ``X_st``: ``[B, *shape]`` points at time ``t``.
        """
        s_, t_ = _times(s, x), _times(t, x)
        v_st = self.slope(x, s_, t_)
        return x + broadcast_time(t_ - s_, x) * v_st

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Diagonal ``v_{t,t}(x)``, the velocity ``b_t`` by the tangent condition.

        Args:
            x: ``[B, *shape]``; t: ``[B]`` or scalar.

        Returns:
            ``[B, *shape]``.
        """
        t_ = _times(t, x)
        return self.slope(x, t_, t_)


class VelocityModel(nn.Module):
    """Velocity field ``b_t(x)`` of the probability-flow ODE (eq. 3.1) around ``F(x, t)``."""

    kind = "velocity"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``b_t(x)``: ``x [B, *shape]``, ``t [B]`` or scalar -> ``[B, *shape]``."""
        return self.backbone(x, _times(t, x))

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Alias of :meth:`forward` so velocity models and flow maps share the velocity view."""
        return self(x, t)


class FlowMapFromVelocity(nn.Module):
    """Adapter giving an ODE-solved flow map from a velocity model (for baselines/tests).

    ``X_{s,t}(x)`` is obtained by integrating eq. 3.1 with ``n_steps`` RK4 steps.
    """

    kind = "flowmap"

    def __init__(self, velocity: nn.Module, n_steps: int = 64) -> None:
        super().__init__()
        self.b = velocity
        self.n_steps = int(n_steps)

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        from .solvers import rk4_step

        s_, t_ = _times(s, x), _times(t, x)
        h = (t_ - s_) / self.n_steps
        tau = s_
        for _ in range(self.n_steps):
            x = rk4_step(self.b, x, tau, h)
            tau = tau + h
        return x


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the (randomly initialised) model a :class:`ModelConfig` describes."""
    from .networks import build_backbone

    backbone = build_backbone(config.backbone)
    if config.kind == "flowmap":
        return FlowMap(backbone, ansatz=config.ansatz)
    return VelocityModel(backbone)


def is_flowmap(model: nn.Module) -> bool:
    """True for objects with the flow-map call signature ``model(x, s, t)``."""
    return getattr(model, "kind", None) == "flowmap"
