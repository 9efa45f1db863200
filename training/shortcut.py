"""Shortcut models (Frans, Hafner, Levine, Abbeel 2024) as a flow-map objective.

A shortcut model ``s_θ(x_t, t, d)`` takes a step of size ``d`` with ``x_{t+d} = x_t +
d s_θ(x_t, t, d)``; its time runs as ours (``t = 0`` noise/base, ``t = 1`` data), so it is
our slope on the pair ``(t, t + d)``: ``s_θ(x, t, d) = v_{t,t+d}(x)`` and
``X_{t,t+d}(x) = x + d v_{t,t+d}(x)``. Training (Frans et al. eqs. 4-5) mixes

* flow matching at ``d = 0`` (here: the diagonal ``v_{t,t}``, which the tangent condition
  makes the velocity): ``|v_{t,t}(I_t) - dI_t|^2`` on a fraction ``fm_frac`` of each batch
  (published: 3/4), ``t ~ U[0, 1]``;
* self-consistency on dyadic steps ``2d ∈ {1, 1/2, ..., 2^{-(L-1)}}`` (``L = levels``;
  published ``M = 2^L = 128`` base steps, so ``L = 7``), the level drawn uniformly per row and
  the start ``t`` uniform on the multiples of ``2d`` in ``[0, 1 - 2d]``:

      L_SC = E | v_{t,t+2d}(x_t) - sg(½ [v_{t,t+d}(x_t) + v_{t+d,t+2d}(x'_{t+d})]) |^2,
      x'_{t+d} = x_t + d v_{t,t+d}(x_t),     x_t = I_t,

  where at the finest level the two half steps ``d = 2^{-L}`` use ``d = 0`` (the velocity,
  two Euler steps), as the published code identifies its smallest step with flow
  matching. In map form the target is the two-step composition
  ``X_{t+d,t+2d} ∘ X_{t,t+d}``, i.e. the progressive target of eq. 3.16/C.18 with K = 2 on
  a dyadic grid; since ``½(v_1 + v_2) = (X_{t+d,t+2d}(X_{t,t+d}(x)) - x)/(2d)`` we compute it
  through the model's forward map (``sg`` = ``torch.no_grad``). The target network is the
  current weights (``target_ema = 0``, our default) or, with ``target_ema > 0``, an EMA of
  them (:class:`~anystep.training.target_net.TargetNetwork`): the published code computes the
  bootstrap from its EMA weights (``bootstrap_ema = 1``, ``target_update_rate = 0.999``).

The two terms are the means over their rows, weighted ``fm_frac`` and ``1 - fm_frac``
(the batch mix of the paper). ``|·|^2`` is divided by the dimension (``sq``).

What the trained model supports: only steps on the dyadic uniform grids it was trained
on -- ``steps = K`` with ``K = 2^j``, ``j = 0..L-1`` (jumps ``X_{k/K,(k+1)/K}``), plus the
velocity ``v_{t,t}`` for ODE sampling; non-uniform grids, other step counts and
backward maps (inversion) are outside its training set.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import bcast as _bcast
from anystep.training.jvp import sq
from anystep.training.target_net import TargetNetwork

__all__ = ["Shortcut", "dyadic_steps"]

# top_frac (not published): fraction of the self-consistency rows put on the largest step 2d = 1;
# start_frac (not published; TIME_DEFAULTS' key, which shortcut reads this way): fraction of the
# self-consistency rows whose jump starts at t = 0 (level still uniform)
# target_ema: decay of the bootstrap target's EMA (0 = the online weights; the published code: 0.999)
SHORTCUT_DEFAULTS: dict[str, Any] = {**TIME_DEFAULTS, "levels": 7, "fm_frac": 0.75, "top_frac": 0.0,
                                     "target_ema": 0.0}


def dyadic_steps(levels: int) -> list[int]:
    """Step counts ``K = 2^j`` (``j = 0..levels-1``) a shortcut model is trained for.

    Args:
        levels: ``L`` (>= 1), the number of self-consistency levels.

    Returns:
        ``[1, 2, 4, ..., 2^(L-1)]``.
    """
    return [2**j for j in range(int(levels))]


@register
class Shortcut(FlowObjective):
    """Shortcut-model loss: flow matching at ``d = 0`` + dyadic self-consistency (module docstring).

    Hyper-parameters: ``levels`` L (default 7: ``2d`` from 1 down to 1/64, half steps of
    1/128 use the velocity), ``fm_frac`` (fraction of rows for flow matching, in (0, 1),
    default 0.75), ``top_frac`` (not published: the share of the self-consistency rows drawn
    at the largest step ``2d = 1`` -- the one-step jump -- the others at a uniform level;
    default 0, every row at a uniform level as in the paper), ``start_frac`` (not published:
    the share of the self-consistency rows, after the ``top_frac`` ones, whose jump starts at
    ``t = 0`` -- ``X_{0,2d}``, the first step of every dyadic chain from the base, the
    analogue of the time samplers' ``start_frac`` (``training/times.py``) -- at a uniform
    level; default 0, the start uniform on the level's grid as in the paper; on the
    checkerboard 0.5 did not help, results/family.md). The other
    generic time settings are refused when set (times are dyadic; ``unread``). ``target_ema`` (default 0: the
    online weights under ``torch.no_grad``): decay of an EMA of the weights that computes the
    self-consistency target instead (the published code's ``bootstrap_ema``, decay 0.999); it is
    saved with the checkpoint (:meth:`state_dict`).
    Metrics: ``loss``, ``shortcut_fm``, ``shortcut_sc``.
    """

    name = "shortcut"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(SHORTCUT_DEFAULTS)
    unread: ClassVar[dict[str, str]] = {
        **{key: "shortcut draws its own dyadic times (levels, fm_frac, top_frac, start_frac set them)"
           for key in ("time_kind", "window", "forward_only", "diag_frac", "logit_mean", "logit_std")},
        "edge_frac": "shortcut draws its own dyadic steps (use top_frac for more rows on the largest step, 2d = 1)",
    }

    def __init__(self, interpolant: Any, **hparams: Any) -> None:
        super().__init__(interpolant, **hparams)
        self._target = TargetNetwork(self.name, self.hparams["target_ema"])

    def state_dict(self) -> dict[str, Any]:
        """The bootstrap target network for checkpoints (``{}`` with ``target_ema = 0`` or before step 1)."""
        return self._target.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._target.load_state_dict(state)

    def _check(self) -> None:
        h = self.hparams
        if not 0.0 <= h["target_ema"] < 1.0:
            raise ObjectiveError(
                f"shortcut: target_ema={h['target_ema']} must be in [0, 1) (0: the online weights; published 0.999)"
            )
        if not 1 <= h["levels"] <= 20:
            raise ObjectiveError(
                f"shortcut: levels={h['levels']} must be in 1..20 (published: 7, i.e. 128 base steps)"
            )
        if not 0.0 < h["fm_frac"] < 1.0:
            raise ObjectiveError(
                f"shortcut: fm_frac={h['fm_frac']} must be in (0, 1): the rest of the batch trains self-consistency"
            )
        if not 0.0 <= h["top_frac"] <= 1.0:
            raise ObjectiveError(
                f"shortcut: top_frac={h['top_frac']} must be in [0, 1] (share of the self-consistency rows at 2d = 1; "
                "0 = the published uniform level draw)"
            )
        if h["top_frac"] + h["start_frac"] > 1.0:
            raise ObjectiveError(
                f"shortcut: top_frac + start_frac = {h['top_frac'] + h['start_frac']} must be <= 1 (shares of the "
                "self-consistency rows at 2d = 1 and starting at t = 0)"
            )

    def supported_steps(self) -> tuple[int, ...] | None:
        """Step counts the trained map supports (uniform grids only): ``1, 2, ..., 2^(L-1)``."""
        return tuple(dyadic_steps(self.hparams["levels"]))

    def _top_rows(self, n_sc: int) -> int:
        return min(n_sc, round(self.hparams["top_frac"] * n_sc))

    def _start_rows(self, n_sc: int) -> int:
        return min(n_sc - self._top_rows(n_sc), round(self.hparams["start_frac"] * n_sc))

    def _rows(self, B: int) -> int:
        n = round(self.hparams["fm_frac"] * B)
        return min(max(n, 1), B - 1) if B >= 2 else B

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        h = self.hparams
        B = batch.x0.shape[0]
        n_fm = self._rows(B)
        L = h["levels"]
        # flow matching rows: t ~ U[0, 1]
        t_fm = torch.rand(n_fm, generator=generator)
        # self-consistency rows: level j -> full step 2d = 2^-j, start on its grid
        n_sc = B - n_fm
        j = torch.randint(0, L, (n_sc,), generator=generator)
        j[: self._top_rows(n_sc)] = 0  # top_frac: the leading rows take the one-step jump 2d = 1
        sections = (2.0**j).to(torch.float64)  # 1 / (2d)
        k = torch.floor(torch.rand(n_sc, generator=generator, dtype=torch.float64) * sections)
        n_top = self._top_rows(n_sc)
        k[n_top : n_top + self._start_rows(n_sc)] = 0.0  # start_frac: the next rows start at t = 0
        t_sc = (k / sections).float()
        two_d = (1.0 / sections).float()
        finest = j == L - 1

        like = batch.x0
        t_fm, t_sc, two_d, finest = (
            t_fm.to(like),
            t_sc.to(like),
            two_d.to(like),
            finest.to(like.device),
        )
        fm = self._interp_rows(batch, slice(0, n_fm), t_fm)
        l_fm = sq(model.velocity(fm.I_t, t_fm) - fm.dI_t).mean()
        total = h["fm_frac"] * l_fm
        metrics = {"shortcut_fm": float(l_fm.detach())}
        if n_sc > 0:
            x = self._interp_rows(batch, slice(n_fm, B), t_sc).I_t
            d = 0.5 * two_d
            target = self._two_half_steps(self._target.get(model, step), x, t_sc, d, finest)
            pred = model(x, t_sc, t_sc + two_d)
            # slope-space error |v_pred - v_tgt|^2 = |X_pred - X_tgt|^2 / (2d)^2
            l_sc = (sq(pred - target) / two_d.pow(2)).mean()
            total = total + (1.0 - h["fm_frac"]) * l_sc
            metrics["shortcut_sc"] = float(l_sc.detach())
        metrics["loss"] = float(total.detach())
        return LossOutput(loss=total, metrics=metrics)

    def _interp_rows(self, batch, rows: slice, t: Tensor):
        z = None if batch.z is None else batch.z[rows]
        return self.interpolant.interpolate(batch.x0[rows], batch.x1[rows], t, z)

    @staticmethod
    @torch.no_grad()
    def _two_half_steps(model, x: Tensor, t: Tensor, d: Tensor, finest: Tensor) -> Tensor:
        """``sg(X_{t+d,t+2d}(X_{t,t+d}(x)))``; rows with ``finest`` use Euler steps of ``v_{τ,τ}``."""
        out = torch.empty_like(x)
        fine, coarse = finest, ~finest
        if coarse.any():
            xc, tc, dc = x[coarse], t[coarse], d[coarse]
            out[coarse] = model(model(xc, tc, tc + dc), tc + dc, tc + 2 * dc)
        if fine.any():
            xf, tf, df = x[fine], t[fine], d[fine]
            mid = xf + _bcast(df, xf) * model.velocity(xf, tf)
            out[fine] = mid + _bcast(df, xf) * model.velocity(mid, tf + df)
        return out
