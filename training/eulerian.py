"""Direct Eulerian estimation (successors §1, App. B.2) and the denoiser negative control (App. B.1).

No teacher: ``b_s`` is replaced by the single-sample ``dI_s/ds`` of the interpolant.

* ``ee_naive`` (eq. B.6): ``E | ∂_s X_{s,t}(I_s) + ∇X_{s,t}(I_s)·dI_s |^2``. BIASED: since
  ``E|a + Y|^2 = |a + E[Y | I_s]|^2 + E Var(Y | I_s)`` the optimiser is also rewarded for
  shrinking ``∇X`` (eq. B.9), so its minimiser is not the flow map. Kept as a documented
  baseline; do not use it to train models.
* ``ee``: ``E | ∂_s X_{s,t}(I_s) + stopgrad(∇X_{s,t}(I_s)·dI_s) |^2`` (the continuous-time
  limit of consistency training, eq. C.16). The stop-gradient is on the JVP term only;
  ``∂_s X`` keeps its gradient, so by the tower property the expected gradient is
  ``2 E[(∂_s X + ∇X·b_s)·∇_θ ∂_s X]``, which vanishes at the true map.
* ``denoiser`` (eq. B.1): ``E | ∂_t X_{s,t}(I_s) - dI_t |^2`` with ``I_s`` and ``dI_t`` from the
  same draw ``(x0, x1, z)``, i.e. FMM with ``X_{t,s}(I_t)`` replaced by ``I_s``. Its
  minimiser is the denoiser ``E[I_t | I_s = x]`` (eq. B.2), not the flow map; with an
  independent coupling ``X_{0,1}(x) = E[x1]`` (eq. B.5). A negative control.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective
from anystep.training.jvp import jvp_times, sq

__all__ = ["Denoiser", "EulerianEstimation", "NaiveEulerianEstimation"]


@register
class EulerianEstimation(FlowObjective):
    """Eulerian estimation with a stop-gradient (successors §1, ``L_EE``).

    ``L_EE = E_{(s,t) ~ w} E | ∂_s X_{s,t}(I_s) + stopgrad(∇X_{s,t}(I_s)·dI_s) |^2 / d``.
    Two JVPs: tangent ``(0, 1, 0)`` with gradient for ``∂_s X``, and ``(dI_s, 0, 0)`` under
    ``torch.no_grad`` for the stopped term. Default weight: forward only.
    """

    name = "ee"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(TIME_DEFAULTS)

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        sample = self._interp(batch, pair.s)
        I_s, dI_s = sample.I_t, sample.dI_t
        ds_X = jvp_times(model, I_s, pair.s, pair.t, ds=1.0).tangent
        with torch.no_grad():
            grad_X_dI = jvp_times(model, I_s, pair.s, pair.t, dx=dI_s).tangent
        loss = sq(ds_X + grad_X_dI).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "ee": value})


@register
class NaiveEulerianEstimation(FlowObjective):
    """Naive (biased) Eulerian estimation, eq. B.6: no stop-gradient (see module docstring).

    ``L_E = E_{(s,t) ~ w} E | ∂_s X_{s,t}(I_s) + ∇X_{s,t}(I_s)·dI_s |^2 / d``, one JVP with
    tangent ``(dI_s, 1, 0)``.
    """

    name = "ee_naive"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(TIME_DEFAULTS)

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        sample = self._interp(batch, pair.s)
        out = jvp_times(model, sample.I_t, pair.s, pair.t, dx=sample.dI_t, ds=1.0)
        loss = sq(out.tangent).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "ee_naive": value})


@register
class Denoiser(FlowObjective):
    """Denoiser loss, eq. B.1 (negative control; converges to ``E[I_t | I_s = x]``, eq. B.2).

    ``L = E_{(s,t) ~ w} E | ∂_t X_{s,t}(I_s) - dI_t |^2 / d`` with ``I_s, dI_t`` from one draw
    ``(x0, x1, z)``. Default weight: forward only (the paper integrates over the square;
    set ``forward_only=False`` for that).
    """

    name = "denoiser"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(TIME_DEFAULTS)

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        dI_t = self._interp(batch, pair.t).dI_t
        dt_X = jvp_times(model, I_s, pair.s, pair.t, dt=1.0).tangent
        loss = sq(dt_X - dI_t).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "denoiser": value})
