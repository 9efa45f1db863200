"""Map distillation from a known velocity ``b_t``: LMD (Alg. 1, eq. 3.7) and EMD (Alg. 2, eq. 3.9).

The pieces every flow-map objective shares live in their own modules, which the
objectives import directly; the public names are re-exported here for callers of the
pre-split module:

* :mod:`anystep.training.flow_objective`: :class:`FlowObjective` (hyper-parameter
  defaults/validation and the time sampler), :class:`ObjectiveError`, ``TIME_DEFAULTS``.
* :mod:`anystep.training.jvp`: :func:`jvp_times` (forward-mode ``∂_t X_{s,t}`` and
  ``∂_s X_{s,t} + ∇X_{s,t}·b_s``, the derivatives eqs. 3.7 and 3.9 need), :func:`sq`
  and :func:`bcast`.
* :mod:`anystep.training.conditioning`: :class:`Condition` / :func:`draw_condition`
  (labels, label dropout, guidance scales of class-conditional training).
* :mod:`anystep.training.teacher`: :func:`teacher_velocity` / :func:`teacher_target`
  (the frozen teacher's velocity, guided for a conditional map).

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from anystep.training.base import LossOutput, register
from anystep.training.conditioning import COND_DEFAULTS, Condition, conditioning_of, draw_condition
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import Tangent, bcast, jvp_times, sq
from anystep.training.teacher import teacher_target, teacher_velocity

__all__ = [
    "COND_DEFAULTS",
    "EMD",
    "LMD",
    "TIME_DEFAULTS",
    "Condition",
    "FlowObjective",
    "ObjectiveError",
    "Tangent",
    "bcast",
    "conditioning_of",
    "draw_condition",
    "jvp_times",
    "sq",
    "teacher_target",
    "teacher_velocity",
]


@register
class LMD(FlowObjective):
    """Lagrangian map distillation (Alg. 1, eq. 3.7).

    ``L_LMD = E_{(s,t) ~ w} E | ∂_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s)) |^2 / d``

    with ``I_s ~ rho_s`` from the interpolant, ``∂_t X`` from one JVP with tangent
    ``(dx, ds, dt) = (0, 0, 1)`` that also returns ``X_{s,t}(I_s)``, and the frozen teacher
    ``b`` evaluated without gradient (``teacher_input_grad=False``: the teacher output is a
    stop-gradient target; True back-propagates through ``b_t``'s input ``X_{s,t}(I_s)``
    as in the exact gradient of eq. 3.7). Default weight: forward only, ``s <= t``.

    Class-conditional map: ``X_{s,t}(x; y, w)`` with ``y`` from the batch and ``w`` drawn per
    example from ``[guidance_min, guidance_max]``; ``b_t`` is the guided teacher
    ``b^w_t(x; y)`` (:func:`teacher_target`), so the map learns the guided flow at every ``w``.
    """

    name = "lmd"
    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {**TIME_DEFAULTS, "teacher_input_grad": False, **COND_DEFAULTS}

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        cond = draw_condition(model, batch, generator, self.hparams, guided=True)
        fn = model if cond.y is None else functools.partial(model, **cond.kwargs())
        out = jvp_times(fn, I_s, pair.s, pair.t, dt=1.0)
        X_st, dt_X = out.value, out.tangent
        if self.hparams["teacher_input_grad"]:
            b_t = teacher_target(teacher, X_st, pair.t, cond)
        else:
            with torch.no_grad():
                b_t = teacher_target(teacher, X_st.detach(), pair.t, cond)
        loss = sq(dt_X - b_t).mean()
        return LossOutput(
            loss=loss, metrics={"loss": float(loss.detach()), "lmd": float(loss.detach())}
        )


@register
class EMD(FlowObjective):
    """Eulerian map distillation (Alg. 2, eq. 3.9).

    ``L_EMD = E_{(s,t) ~ w} E | ∂_s X_{s,t}(I_s) + ∇X_{s,t}(I_s)·b_s(I_s) |^2 / d``

    One JVP with tangent ``(dx, ds, dt) = (b_s(I_s), 1, 0)`` gives both terms at once
    (footnote 2). The teacher ``b_s(I_s)`` is computed without gradient (Alg. 2 writes
    ``b_{t_i}``; eq. 3.9, which we follow, has ``b_s``). Default weight: forward only.
    A class-conditional map is distilled from the guided teacher ``b^w_s(x; y)`` as in :class:`LMD`.
    """

    name = "emd"
    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {**TIME_DEFAULTS, **COND_DEFAULTS}

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        cond = draw_condition(model, batch, generator, self.hparams, guided=True)
        with torch.no_grad():
            b_s = teacher_target(teacher, I_s, pair.s, cond)
        fn = model if cond.y is None else functools.partial(model, **cond.kwargs())
        out = jvp_times(fn, I_s, pair.s, pair.t, dx=b_s, ds=1.0)
        loss = sq(out.tangent).mean()
        return LossOutput(
            loss=loss, metrics={"loss": float(loss.detach()), "emd": float(loss.detach())}
        )
