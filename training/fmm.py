"""Direct flow map matching (Alg. 3, eq. 3.15) and progressive flow map matching (Alg. 4, eq. 3.16).

Time convention: ``t = 0`` base, ``t = 1`` data.

Progressive distillation with ``M < K`` teacher steps (Sec. 3.4, after Lemma 3.12) is a
trainer-level loop; :func:`progressive_schedule` gives its rounds. Round ``r`` trains a
student with ``pfmm`` hyper-parameters ``steps=M, window=N_r`` (``N_r = schedule[r]``:
student jumps ``|t - s| <= 1/N_r``, each made of ``M`` teacher jumps of ``<= 1/(M N_r)``);
the student is warm-started from the teacher's weights, and after the round it becomes
the teacher of the next round. After the last round (``N = 1``) the student is a one-step
map. With ``M >= K`` this is the single round ``steps=K, window=1`` of Alg. 4.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import jvp_times, sq

__all__ = ["FMM", "PFMM", "progressive_schedule", "teacher_grid"]


def progressive_schedule(K: int, M: int) -> list[int]:
    """Step counts of the student after each round of progressive map distillation.

    A K-step teacher (accurate for jumps ``|t - s| <= 1/K``) is distilled with ``M``
    teacher steps per student jump; each round divides the step count by ``M`` (rounded
    up), so there are ``ceil(log_M K)`` rounds (Sec. 3.4: "take M = 2 and then minimize
    (3.16) ceil(log_2 K) times to obtain a one-step map").

    Args:
        K: steps the initial teacher needs (>= 1).
        M: teacher steps per student jump in each round (>= 2).

    Returns:
        ``[N_1, ..., N_R]`` with ``N_r = ceil(K / M^r)`` and ``N_R = 1``; empty when ``K = 1``.
        Round ``r`` uses ``pfmm`` with ``steps=M, window=N_r``.

    Raises:
        ObjectiveError: if ``K < 1`` or ``M < 2``.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ObjectiveError(f"K={K!r} must be an integer >= 1 (steps of the teacher map)")
    if isinstance(M, bool) or not isinstance(M, int) or M < 2:
        raise ObjectiveError(f"M={M!r} must be an integer >= 2 (teacher steps per round)")
    schedule: list[int] = []
    n = K
    while n > 1:
        n = -(-n // M)  # ceil(n / M) == ceil(K / M^r)
        schedule.append(n)
    return schedule


def teacher_grid(s: torch.Tensor, t: torch.Tensor, K: int) -> torch.Tensor:
    """Uniform K-step grid from ``s`` to ``t`` for the teacher composition of eq. 3.16.

    The paper indexes ``t_k = s + (k - 1)(t - s)`` for ``k = 1..K`` and composes
    ``X̂_{t_{K-1},t_K} ∘ ... ∘ X̂_{t_1,t_2}``; the evident intent (a K-step teacher covering
    ``[s, t]``) is ``t_k = s + k (t - s) / K`` for ``k = 0..K``, which we use.

    Args:
        s: ``[B]`` start times.
        t: ``[B]`` end times.
        K: number of teacher steps (>= 1).

    Returns:
        ``[K + 1, B]`` grid with row 0 equal to ``s`` and row K equal to ``t``.
    """
    frac = torch.arange(K + 1, dtype=s.dtype, device=s.device) / K
    grid = s[None, :] + frac[:, None] * (t - s)[None, :]
    grid[-1] = t
    return grid


@register
class FMM(FlowObjective):
    """Flow map matching (Alg. 3, eq. 3.15).

    ``L_FMM = E_{(s,t) ~ w} E [ |∂_t X_{s,t}(Y) - dI_t|^2 + |X_{s,t}(Y) - I_t|^2 ] / d``
    with ``Y = X_{t,s}(I_t)`` (gradient flows through both maps). One JVP of ``X_{s,·}(Y)``
    in its end time, with ``Y`` held fixed (the partial derivative of eq. A.7), gives both
    ``X_{s,t}(Y)`` and ``∂_t X_{s,t}(Y)``.

    The weight must be symmetric, ``w_{s,t} = w_{t,s}`` (Prop. 3.11 remark): it is
    ``1(|t - s| <= 1/K)`` with ``K = window`` (``window=1``: the full square, a one-step map;
    ``window=4``: the paper's ``|t - s| <= 0.25`` 4-step map). ``forward_only`` must stay False.
    ``invertibility_weight`` scales the second term (1 in eq. 3.15).
    """

    name = "fmm"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = {
        **TIME_DEFAULTS,
        "forward_only": False,
        "invertibility_weight": 1.0,
    }

    def _check(self) -> None:
        if self.hparams["forward_only"]:
            raise ObjectiveError(
                "fmm: forward_only must be False: eq. 3.15 learns X_{s,t} and its inverse X_{t,s}, "
                "so the weight must be symmetric (w_{s,t} = w_{t,s})"
            )
        if self.hparams["invertibility_weight"] < 0:
            raise ObjectiveError("fmm: invertibility_weight must be >= 0 (eq. 3.15 uses 1)")

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        sample = self._interp(batch, pair.t)
        I_t, dI_t = sample.I_t, sample.dI_t
        Y = model(I_t, pair.t, pair.s)  # X_{t,s}(I_t)
        out = jvp_times(model, Y, pair.s, pair.t, dt=1.0)  # X_{s,t}(Y), ∂_t X_{s,t}(Y)
        l_dt = sq(out.tangent - dI_t).mean()
        l_inv = sq(out.value - I_t).mean()
        loss = l_dt + self.hparams["invertibility_weight"] * l_inv
        return LossOutput(
            loss=loss,
            metrics={
                "loss": float(loss.detach()),
                "fmm_dt": float(l_dt.detach()),
                "fmm_inv": float(l_inv.detach()),
            },
        )


@register
class PFMM(FlowObjective):
    """Progressive flow map matching (Alg. 4, eq. 3.16).

    ``L_PFMM = E_{(s,t) ~ w} E | X̌_{s,t}(I_s) - (X̂_{t_{K-1},t_K} ∘ ... ∘ X̂_{t_0,t_1})(I_s) |^2 / d``

    with the frozen K-step teacher ``X̂`` (``teacher``, a flow map) composed on the uniform
    grid of :func:`teacher_grid` without gradient, and the student ``X̌`` = ``model``.
    Hyper-parameters: ``steps`` = K teacher steps per student jump; ``window`` = N, student
    jumps ``|t - s| <= 1/N`` (1 for a one-step student); forward only by default.
    """

    name = "pfmm"
    model_kind = "flowmap"
    teacher_kind = "flowmap"
    defaults: ClassVar[dict[str, Any]] = {**TIME_DEFAULTS, "steps": 4}

    def _check(self) -> None:
        if self.hparams["steps"] < 1:
            raise ObjectiveError(
                f"pfmm: steps={self.hparams['steps']} must be >= 1 (teacher steps K)"
            )

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        grid = teacher_grid(pair.s, pair.t, self.hparams["steps"])
        with torch.no_grad():
            target = I_s
            for k in range(self.hparams["steps"]):
                target = teacher(target, grid[k], grid[k + 1])
        loss = sq(model(I_s, pair.s, pair.t) - target).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "pfmm": value})
