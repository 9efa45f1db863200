"""Velocity regression: stochastic interpolant / flow matching (eq. 3.14).

``L_b = E_t E | b_t(I_t) - dI_t/dt |^2 / d`` with ``I_t = alpha_t x0 + beta_t x1 + gamma_t z``
(eq. 3.12). Its minimiser is ``b_t(x) = E[dI_t/dt | I_t = x]`` (eq. 3.13), the velocity of
the probability-flow ODE (eq. 3.1) that the distillation objectives use as a teacher.

Class-conditional velocity ``b_t(x; y)`` (classifier-free guidance): with probability
``label_dropout`` a label is replaced by the null class ``∅``, so the same network learns
``b_t(x; ∅)`` (the unconditional velocity) as well; the guided velocity
``b(x, ∅) + w (b(x, y) - b(x, ∅))`` (:class:`anystep.core.flowmap.GuidedVelocity`) is the
teacher of the conditional distillation objectives.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from typing import Any, ClassVar

from anystep.training.base import LossOutput, register
from anystep.training.conditioning import draw_condition
from anystep.training.flow_objective import FlowObjective
from anystep.training.jvp import sq

__all__ = ["VelocityMatching"]


@register
class VelocityMatching(FlowObjective):
    """Flow matching / SI regression of a velocity model (eq. 3.14).

    Hyper-parameters: ``time_kind`` (``"uniform"`` or ``"logit_normal"``), ``logit_mean``,
    ``logit_std``: the distribution of ``t``; ``label_dropout`` (class-conditional models
    only): probability of training on the null class ``∅`` instead of the label.
    """

    name = "velocity"
    model_kind = "velocity"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = {
        "time_kind": "uniform",
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "label_dropout": 0.1,
    }

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """``|b_t(I_t) - dI_t|^2 / d`` averaged over the batch (``x0, x1, z: [B, *shape]``)."""
        self._check_inputs(model, teacher)
        t = self.times.sample_t(batch.x0.shape[0], generator).to(batch.x0)
        sample = self._interp(batch, t)
        cond = draw_condition(model, batch, generator, self.hparams, guided=False)
        loss = sq(model(sample.I_t, t, **cond.kwargs()) - sample.dI_t).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "velocity": value})
