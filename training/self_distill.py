"""Self-distillation of a flow map (successors §2; Boffi, Albergo, Vanden-Eijnden 2025).

One network ``v̂_{s,t}`` with ``X̂_{s,t}(x) = x + (t - s) v̂_{s,t}(x)`` learns the velocity on
the diagonal (``v̂_{t,t} = b_t`` by the tangent condition) and the map off it:

    L_SD = velocity_weight L_b + lsd_weight L_LSD + esd_weight L_ESD + psd_weight L_PSD

* ``L_b = E | v̂_{t,t}(I_t) - dI_t |^2`` on the diagonal rows (``s = t``; ``diag_frac`` of
  each batch, 3/4 by default) -- eq. 3.14 for the diagonal.
* ``L_LSD = E | ∂_t X̂_{s,t}(I_s) - sg(v̂_{t,t}(X̂_{s,t}(I_s))) |^2`` (Lagrangian, cf. eq. 3.7),
* ``L_ESD = E | ∂_s X̂_{s,t}(I_s) + ∇X̂_{s,t}(I_s)·sg(v̂_{s,s}(I_s)) |^2`` (Eulerian, cf. eq. 3.9),
* ``L_PSD = E | X̂_{s,t}(I_s) - sg(X̂_{u,t}(X̂_{s,u}(I_s))) |^2``, ``u ~ U[s, t]`` (progressive,
  cf. eq. 3.16 with K = 2 and a random midpoint),

each on the off-diagonal rows ``0 <= s < t <= 1``. ``sg`` = stop-gradient: the teacher
terms (the network's own diagonal velocity, or its two-step composition) are evaluated
under ``torch.no_grad``. Each term is the mean over its own rows, so the weights are the
relative weights of the integrals. ``|·|^2`` is divided by the dimension (see ``sq``).

Registered names: ``sd`` (set the weights; defaults to ``lsd_weight=1``, the others 0),
``lsd``, ``esd``, ``psd`` (one distillation term with weight 1). Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import jvp_times, sq

__all__ = ["ESD", "LSD", "PSD", "SelfDistillation"]

_SD_DEFAULTS: dict[str, Any] = {
    **TIME_DEFAULTS,
    "diag_frac": 0.75,
    "velocity_weight": 1.0,
    "lsd_weight": 1.0,
    "esd_weight": 0.0,
    "psd_weight": 0.0,
}


@register
class SelfDistillation(FlowObjective):
    """Linear combination of self-distillation terms (see module docstring).

    Hyper-parameters: ``velocity_weight``, ``lsd_weight``, ``esd_weight``, ``psd_weight``
    (non-negative, at least one distillation weight positive), ``diag_frac`` (fraction of
    rows with ``s = t``, default 0.75, must be in (0, 1)), and the time settings (forward
    only by default; ``window`` K restricts the off-diagonal to ``t - s <= 1/K``).
    """

    name = "sd"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(_SD_DEFAULTS)

    def _check(self) -> None:
        h = self.hparams
        weights = {k: h[k] for k in ("velocity_weight", "lsd_weight", "esd_weight", "psd_weight")}
        if any(w < 0 for w in weights.values()):
            raise ObjectiveError(f"{self.name}: weights must be >= 0, got {weights}")
        if h["lsd_weight"] + h["esd_weight"] + h["psd_weight"] <= 0:
            raise ObjectiveError(
                f"{self.name}: set at least one of lsd_weight, esd_weight, psd_weight > 0 "
                "(or use the 'lsd', 'esd', 'psd' objectives)"
            )
        if not 0.0 < h["diag_frac"] < 1.0:
            raise ObjectiveError(
                f"{self.name}: diag_frac={h['diag_frac']} must be in (0, 1): rows with s = t train "
                "the velocity, the others the map (about 0.75 in practice)"
            )
        if not h["forward_only"]:
            raise ObjectiveError(
                f"{self.name}: self-distillation is defined for s <= t; keep forward_only=True"
            )

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        h = self.hparams
        pair = self._times(batch, generator)
        sample = self._interp(batch, pair.s)
        I_s, dI_s = sample.I_t, sample.dI_t
        d, o = pair.diag, ~pair.diag
        zero = I_s.new_zeros(())
        metrics: dict[str, float] = {}

        l_b = zero
        if d.any():
            l_b = sq(model.velocity(I_s[d], pair.s[d]) - dI_s[d]).mean()
        total = h["velocity_weight"] * l_b
        metrics["sd_velocity"] = float(l_b.detach())

        if o.any():
            x, s, t = I_s[o], pair.s[o], pair.t[o]
            if h["lsd_weight"] > 0:
                l_lsd = self._lsd(model, x, s, t)
                total = total + h["lsd_weight"] * l_lsd
                metrics["lsd"] = float(l_lsd.detach())
            if h["esd_weight"] > 0:
                l_esd = self._esd(model, x, s, t)
                total = total + h["esd_weight"] * l_esd
                metrics["esd"] = float(l_esd.detach())
            if h["psd_weight"] > 0:
                u_frac = torch.rand(x.shape[0], generator=generator).to(s)
                l_psd = self._psd(model, x, s, t, s + u_frac * (t - s))
                total = total + h["psd_weight"] * l_psd
                metrics["psd"] = float(l_psd.detach())
        metrics["loss"] = float(total.detach())
        return LossOutput(loss=total, metrics=metrics)

    # -- terms (x: [n, *shape], s, t, u: [n]) -------------------------------------------
    @staticmethod
    def _lsd(model, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        out = jvp_times(model, x, s, t, dt=1.0)  # X̂_{s,t}(x), ∂_t X̂_{s,t}(x)
        with torch.no_grad():
            target = model.velocity(out.value.detach(), t)  # sg(v̂_{t,t}(X̂_{s,t}(x)))
        return sq(out.tangent - target).mean()

    @staticmethod
    def _esd(model, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            b_s = model.velocity(x, s)  # sg(v̂_{s,s}(x))
        out = jvp_times(model, x, s, t, dx=b_s, ds=1.0)  # ∂_s X̂ + ∇X̂·b_s
        return sq(out.tangent).mean()

    @staticmethod
    def _psd(model, x: Tensor, s: Tensor, t: Tensor, u: Tensor) -> Tensor:
        with torch.no_grad():
            target = model(model(x, s, u), u, t)  # sg(X̂_{u,t}(X̂_{s,u}(x)))
        return sq(model(x, s, t) - target).mean()


@register
class LSD(SelfDistillation):
    """Lagrangian self-distillation: ``L_b + L_LSD`` (successors §2)."""

    name = "lsd"
    defaults: ClassVar[dict[str, Any]] = {**_SD_DEFAULTS, "lsd_weight": 1.0}


@register
class ESD(SelfDistillation):
    """Eulerian self-distillation: ``L_b + L_ESD`` (successors §2)."""

    name = "esd"
    defaults: ClassVar[dict[str, Any]] = {**_SD_DEFAULTS, "lsd_weight": 0.0, "esd_weight": 1.0}


@register
class PSD(SelfDistillation):
    """Progressive self-distillation: ``L_b + L_PSD`` (successors §2)."""

    name = "psd"
    defaults: ClassVar[dict[str, Any]] = {**_SD_DEFAULTS, "lsd_weight": 0.0, "psd_weight": 1.0}
