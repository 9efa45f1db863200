"""Progressive distillation (Salimans & Ho 2022) as a flow-map objective: one round of eq. C.18.

A round halves the step count of a frozen map. The teacher ``X`` (a flow map, e.g. the
4-step FMM map or the student of the previous round) is accurate for jumps of
``Δt = 1/(2N)``; the student ``X̂`` learns jumps of ``2Δt = 1/N`` from its two-step target

    L_PD = E_{t ~ U[0, 1 - 2Δt]} E_{x ~ rho_t} | X̂_{t,t+2Δt}(x) - sg(X_{t+Δt,t+2Δt}(X_{t,t+Δt}(x))) |^2 / d   (C.18)

with ``x = I_t`` from the interpolant and the teacher evaluated without gradient.
``steps`` is the student's N; ``on_grid=True`` draws ``t`` only on the student's grid
``{0, 1/N, ..., 1 - 1/N}`` (the original paper's discrete times), the default draws it
continuously as in C.18.

Rounds. Each round is one training run (the trainer is unchanged): round ``r`` trains
``steps = N_r`` with ``--teacher`` the previous model and ``--init-from`` the same
directory (the student starts as its teacher, as in the paper), e.g. from a 4-step map
``pd_schedule(4) == [2, 1]``: run ``steps=2`` against the FMM N=4 map, then ``steps=1``
against that student. Each round's target is the previous round's frozen map, so errors
compound over rounds.

What the trained model supports: jumps of exactly ``1/N`` -- ``steps = N`` on the uniform
grid (with ``on_grid``: starting on it) -- not other step counts (a one-step PD model at
two steps evaluates untrained pairs), not non-uniform grids, not inversion (``t < s``).
Compare PFMM (eq. 3.16), which trains every gap ``|t - s| <= 1/N`` and so keeps
``steps >= N``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import FlowObjective, ObjectiveError
from anystep.training.jvp import sq

__all__ = ["ProgressiveDistillation", "pd_schedule"]


def pd_schedule(teacher_steps: int) -> list[int]:
    """Student step counts of successive rounds from a ``teacher_steps``-step map: halve until 1.

    Args:
        teacher_steps: K, a power of two >= 2.

    Returns:
        ``[K/2, K/4, ..., 1]`` (one entry per round).

    Raises:
        ObjectiveError: ``K`` is not a power of two >= 2.
    """
    K = teacher_steps
    if isinstance(K, bool) or not isinstance(K, int) or K < 2 or K & (K - 1):
        raise ObjectiveError(
            f"teacher_steps={K!r} must be a power of two >= 2 (each round halves it)"
        )
    out = []
    while K > 1:
        K //= 2
        out.append(K)
    return out


@register
class ProgressiveDistillation(FlowObjective):
    """One progressive-distillation round, eq. C.18 (module docstring).

    Hyper-parameters: ``steps`` N (the student's step count, >= 1; the teacher takes
    2N steps of ``1/(2N)``), ``on_grid`` (False: continuous ``t`` as in C.18).
    """

    name = "pd"
    model_kind = "flowmap"
    teacher_kind = "flowmap"
    defaults: ClassVar[dict[str, Any]] = {"steps": 1, "on_grid": False}

    def _check(self) -> None:
        if self.hparams["steps"] < 1:
            raise ObjectiveError(
                f"pd: steps={self.hparams['steps']} must be >= 1 (the student's step count N)"
            )

    def supported_steps(self) -> tuple[int, ...] | None:
        """Step counts the trained map supports: exactly N, on the uniform grid."""
        return (self.hparams["steps"],)

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        N = self.hparams["steps"]
        B = batch.x0.shape[0]
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        start = torch.floor(u * N) / N if self.hparams["on_grid"] else u * (1.0 - 1.0 / N)
        t = start.to(batch.x0)
        dt = torch.full_like(t, 0.5 / N)
        x = self._interp(batch, t).I_t
        with torch.no_grad():
            target = teacher(teacher(x, t, t + dt), t + dt, t + 2 * dt)
        loss = sq(model(x, t, t + 2 * dt) - target).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "pd": value})
