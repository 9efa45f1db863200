"""Parameterisation wrappers: a backbone ``F`` becomes a flow map or a velocity model.

Kept separate from the networks (as EDM separates preconditioning from networks).

Flow map ansaetze (both satisfy ``X_{s,s} = id`` exactly, the boundary condition of eq. 3.5):

* ``residual``: ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` with ``v_{s,t} = F(x, s, t)``.
* ``convex`` (paper eq. 4.1): ``X_{s,t}(x) = (1 - t + s) x + (t - s) f_{s,t}(x)`` with
  ``f = F(x, s, t)``; equivalently the residual form with ``v_{s,t} = f_{s,t} - x``.

The tangent condition ``lim_{s->t} d/dt X_{s,t}(x) = v_{t,t}(x) = b_t(x)`` makes the
diagonal ``v_{t,t}`` a velocity model (used by self-distillation, successors §2).

Conditioning (class labels ``y``, guidance scale ``w``) passes through the wrappers to
the backbone unchanged: ``X_{s,t}(x; y, w) = x + (t - s) v_{s,t}(x; y, w)``. ``y`` holds
labels ``0..num_classes-1`` or the null class ``num_classes`` (None means null); ``w`` is
taken only by flow maps distilled from a guided teacher. :class:`GuidedVelocity` is the
classifier-free-guided velocity ``b^w_t(x; y) = b_t(x; ∅) + w (b_t(x; y) - b_t(x; ∅))``
and :class:`Conditioned` binds ``(y, w)`` to a model so that every solver and sampler
(which call ``model(x, s, t)`` / ``model(x, t)``) works on conditional models unchanged.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .interpolants import broadcast_time


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """Return per-sample times ``[B]`` in x's dtype/device."""
    return broadcast_time(t, x).reshape(-1)


def _cond(y: Tensor | int | None, w: Tensor | float | None, x: Tensor) -> dict[str, Tensor]:
    """Backbone keyword arguments for the conditioning given (none when unconditional).

    A Python int ``y`` / float ``w`` is broadcast to ``[B]``; tensors pass unchanged (the
    backbone checks their shapes and ranges).
    """
    out: dict[str, Tensor] = {}
    if y is not None:
        if isinstance(y, bool) or not isinstance(y, (int, Tensor)):
            raise ValueError(f"y must be an int or an integer tensor of shape [B], got {type(y).__name__}")
        out["y"] = torch.full((x.shape[0],), int(y), dtype=torch.int64, device=x.device) if isinstance(y, int) else y
    if w is not None:
        if isinstance(w, bool) or not isinstance(w, (int, float, Tensor)):
            raise ValueError(f"w must be a number or a tensor of shape [B], got {type(w).__name__}")
        out["w"] = w if isinstance(w, Tensor) else torch.full((x.shape[0],), float(w), dtype=x.dtype, device=x.device)
    return out


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

    def slope(
        self,
        x: Tensor,
        s: Tensor | float,
        t: Tensor | float,
        y: Tensor | int | None = None,
        w: Tensor | float | None = None,
    ) -> Tensor:
        """``v_{s,t}(x)`` such that ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)``.

        Args:
            x: ``[B, *shape]`` points at time ``s``.
            s: ``[B]`` (or scalar) start times.
            t: ``[B]`` (or scalar) end times.
            y: conditional models: labels ``[B]`` (or an int); None is the null class.
            w: models with a guidance input: scales ``[B]`` (or a float).

        Returns:
            ``[B, *shape]`` slope.
        """
        s_, t_ = _times(s, x), _times(t, x)
        out = self.backbone(x, s_, t_, **_cond(y, w, x))
        if self.ansatz == "convex":
            out = out - x
        return out

    def forward(
        self,
        x: Tensor,
        s: Tensor | float,
        t: Tensor | float,
        y: Tensor | int | None = None,
        w: Tensor | float | None = None,
    ) -> Tensor:
        """``X_{s,t}(x)`` (Definition 3.2): jump from time ``s`` to time ``t``.

        Args:
            x: ``[B, *shape]`` points at time ``s``.
            s: ``[B]`` (or scalar) start times in [0, 1].
            t: ``[B]`` (or scalar) end times in [0, 1]; ``t < s`` runs the map backwards.
            y: conditional models: labels ``[B]`` (or an int); None is the null class.
            w: models with a guidance input: scales ``[B]`` (or a float).

        Returns:
            ``X_st``: ``[B, *shape]`` points at time ``t``.
        """
        s_, t_ = _times(s, x), _times(t, x)
        v_st = self.slope(x, s_, t_, y, w)
        return x + broadcast_time(t_ - s_, x) * v_st

    def velocity(
        self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None, w: Tensor | float | None = None
    ) -> Tensor:
        """Diagonal ``v_{t,t}(x)``, the velocity ``b_t`` by the tangent condition.

        Args:
            x: ``[B, *shape]``; t: ``[B]`` or scalar; y, w: as in :meth:`forward`.

        Returns:
            ``[B, *shape]``.
        """
        t_ = _times(t, x)
        return self.slope(x, t_, t_, y, w)


class VelocityModel(nn.Module):
    """Velocity field ``b_t(x)`` of the probability-flow ODE (eq. 3.1) around ``F(x, t)``."""

    kind = "velocity"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """``b_t(x; y)``: ``x [B, *shape]``, ``t [B]`` or scalar, ``y [B]`` labels -> ``[B, *shape]``.

        ``y`` (conditional models only) holds labels or the null class; None is the null class.
        """
        return self.backbone(x, _times(t, x), **_cond(y, None, x))

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """Alias of :meth:`forward` so velocity models and flow maps share the velocity view."""
        return self(x, t, y)


class GuidedVelocity(nn.Module):
    """Classifier-free-guided velocity ``b^w_t(x; y) = b_t(x; ∅) + w (b_t(x; y) - b_t(x; ∅))``.

    One evaluation runs the conditional velocity model on ``[x; x]`` with labels
    ``[y; ∅]`` in one batched call: two network evaluations per sample (``nfe_per_call
    = 2``). ``w = 1`` is the conditional velocity, ``w = 0`` the unconditional one. It
    is a velocity model (``kind = "velocity"``), so every ODE solver integrates it.

    Args:
        velocity: a class-conditional :class:`VelocityModel` (or a flow map, whose
            diagonal ``v_{t,t}`` is used).
        y: labels ``[B]`` (or an int) of the batch that will be integrated.
        w: guidance scales ``[B]`` (or a float).
        null_class: index of ``∅`` (the model's ``num_classes``).
    """

    kind = "velocity"
    nfe_per_call = 2

    def __init__(self, velocity: nn.Module, y: Tensor | int, w: Tensor | float, null_class: int) -> None:
        super().__init__()
        self.b = velocity
        self.y, self.w, self.null_class = y, w, int(null_class)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``b^w_t(x; y)``: ``x [B, *shape]``, ``t [B]`` or scalar -> ``[B, *shape]``."""
        return guided_velocity(self.b, x, _times(t, x), self.y, self.w, self.null_class)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Alias of :meth:`forward`."""
        return self(x, t)


def guided_velocity(
    velocity: nn.Module,
    x: Tensor,
    t: Tensor,
    y: Tensor | int,
    w: Tensor | float,
    null_class: int,
) -> Tensor:
    """Classifier-free guidance ``b(x, ∅) + w (b(x, y) - b(x, ∅))`` in one batched call.

    Args:
        velocity: conditional velocity model ``b_t(x; y)`` (or a flow map: its diagonal).
        x: ``[B, *shape]``; t: ``[B]`` times.
        y: labels ``[B]`` or an int.
        w: guidance scales ``[B]`` or a float.
        null_class: the label of ``∅``.

    Returns:
        ``[B, *shape]`` guided velocity.
    """
    cond = _cond(y, w, x)
    b = x.shape[0]
    y_ = cond["y"]
    w_ = broadcast_time(cond["w"].to(x.dtype), x)
    labels = torch.cat([y_, torch.full_like(y_, int(null_class))])
    xx, tt = torch.cat([x, x]), torch.cat([t, t])
    out = velocity.velocity(xx, tt, labels) if getattr(velocity, "kind", None) == "flowmap" else velocity(xx, tt, labels)
    b_y, b_null = out[:b], out[b:]
    return b_null + w_ * (b_y - b_null)


class Conditioned(nn.Module):
    """A model with its conditioning ``(y, w)`` bound: same call signature as the unconditional model.

    ``Conditioned(flowmap, y, w)(x, s, t) = flowmap(x, s, t, y=y, w=w)`` and
    ``Conditioned(velocity, y)(x, t) = velocity(x, t, y=y)``, so solvers, samplers and
    exporters written for ``model(x, s, t)`` / ``model(x, t)`` handle conditional models.
    ``y`` and ``w`` are per-sample ``[B]`` tensors (or scalars) for the batch it is called on.

    Args:
        model: a :class:`FlowMap` or :class:`VelocityModel`.
        y: labels (None: null class).
        w: guidance scales (flow maps with a guidance input only).
    """

    def __init__(self, model: nn.Module, y: Tensor | int | None = None, w: Tensor | float | None = None) -> None:
        super().__init__()
        self.model = model
        self.kind = getattr(model, "kind", None)
        self.y, self.w = y, w

    def _kw(self) -> dict:
        return {"y": self.y} if self.kind == "velocity" else {"y": self.y, "w": self.w}

    def forward(self, x: Tensor, *times: Tensor | float) -> Tensor:
        """``model(x, *times, y, w)``."""
        return self.model(x, *times, **self._kw())

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``model.velocity(x, t, y, w)``."""
        return self.model.velocity(x, t, **self._kw())

    def slope(self, x: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """``model.slope(x, s, t, y, w)`` (flow maps)."""
        return self.model.slope(x, s, t, **self._kw())


def load_state_allowing_new_conditioning(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load ``state`` into ``model``; only the conditioning embeddings may be missing from it.

    Warm-starting a class-conditional model from an unconditional one with the same
    backbone: the class/guidance embeddings (``*.cond.*``) start at exactly zero, so the
    conditional model computes the unconditional function until trained.

    Args:
        model: the model to initialise.
        state: a state dict of a model with the same backbone settings.

    Returns:
        The names of the parameters that kept their (zero) initialisation.

    Raises:
        ValueError: any other missing or unexpected key, or a shape mismatch.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    not_cond = [k for k in missing if ".cond." not in f".{k}"]
    if not_cond or unexpected:
        raise ValueError(
            f"warm start state does not match the model: missing {not_cond[:5]}, unexpected {unexpected[:5]}; "
            "use a model with the same backbone settings"
        )
    model.load_state_dict(state, strict=False)
    return missing


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the (randomly initialised) model a :class:`ModelConfig` describes."""
    from .networks import build_backbone

    backbone = build_backbone(
        config.backbone,
        num_classes=getattr(config, "num_classes", 0),
        guidance_input=getattr(config, "guidance_input", False),
    )
    if config.kind == "flowmap":
        return FlowMap(backbone, ansatz=config.ansatz)
    return VelocityModel(backbone)


def is_flowmap(model: nn.Module) -> bool:
    """True for objects with the flow-map call signature ``model(x, s, t)``."""
    return getattr(model, "kind", None) == "flowmap"
