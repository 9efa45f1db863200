"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025) as a flow-map objective, in our convention.

MeanFlow learns the *average velocity* ``u(z, r, t) = 1/(t - r) ∫_r^t v(z_τ, τ) dτ`` with
noise at ``t = 1`` and data at ``t = 0``, so ``z_r = z_t - (t - r) u(z_t, r, t)``. With our
times (``t = 0`` base, ``t = 1`` data: ``s = 1 - t_MF`` is the source, ``t = 1 - r_MF`` the
target) this is exactly our slope, ``u = -v_{s,t}`` in ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)``,
and the PF-ODE velocity is ``b = -v_MF``. The average-velocity definition reads

    (t - s) v_{s,t}(x_s) = ∫_s^t b_τ(x_τ) dτ        along a trajectory dx_τ/dτ = b_τ(x_τ),

and differentiating in ``s`` along the trajectory gives the **MeanFlow identity**

    v_{s,t}(x) = b_s(x) + (t - s) [∂_s v_{s,t}(x) + ∇v_{s,t}(x) · b_s(x)]              (MF)

(MeanFlow eq. 6 in their variables). Substituting ``X = x + (t - s) v`` shows that (MF) *is*
the Eulerian equation (eq. 3.8): ``∂_s X_{s,t}(x) + ∇X_{s,t}(x)·b_s(x) =
b_s - v + (t - s)(∂_s v + ∇v·b_s)``, i.e. the Eulerian residual equals ``v_tgt - v``.

The loss replaces ``b_s`` by the one-sample velocity ``dI_s`` of the interpolant (as our
``ee`` does) and puts the **whole target** under stop-gradient:

    v_tgt = dI_s + (t - s) [∂_s v + ∇v · dI_s]       (one JVP of v along (dI_s, 1, 0))
    L_MF  = E_{(s,t)} E  sg(w) |v_{s,t}(I_s) - sg(v_tgt)|^2 / d,
    w     = 1 / (|Δ|^2 + c)^p,   Δ = v - v_tgt   (adaptive weighting, |·| the full norm)

Relation to ``ee`` (successors §1, ``training/eulerian.py``): both minimise the square of the
same one-sample Eulerian residual ``R = ∂_s X + ∇X·dI_s = v_tgt - v`` -- the loss values
coincide at ``p = 0`` -- but they stop different parts of it. ``ee`` keeps the gradient
of ``∂_s X = -v + (t - s) ∂_s v`` (it back-propagates through a time derivative of the
network) and stops only ``∇X·dI_s``; MeanFlow keeps only ``v`` itself (plain regression
onto a frozen target, no derivative of the network in the backward pass). In both cases
``R`` is linear in ``dI_s`` and the gradient factor depends only on ``I_s``, so
``E[dI_s | I_s] = b_s`` makes the expected gradient vanish at the true map (``p = 0``).
The adaptive weight depends on ``dI_s`` through ``Δ``; when the conditional law of
``dI_s`` given ``I_s`` is symmetric about ``b_s`` (e.g. Gaussian to Gaussian) the weighted
gradient still vanishes there, in general ``p > 0`` trades this exactness for robustness.

Published ingredients kept as hyper-parameters: ``diag_frac = 0.75`` (MeanFlow draws
``r ≠ t`` for 25% of the batch; rows with ``s = t`` are flow matching, since ``t - s = 0``
cancels the JVP term), adaptive weighting ``p = 1``, ``c = 1e-3``, logit-normal times
(``lognorm(-0.4, 1.0)`` in their time is ``logit_mean = +0.4`` in ours, because
``1 - sigmoid(a) = sigmoid(-a)``), pairs ordered forward (``s <= t``).

Variance: ``dI_s`` enters the target twice, as ``b_s`` and through ``(t - s) ∇v·dI_s``; for
a map with a large Jacobian the second term can make the off-diagonal target much noisier
than flow matching. ``tangent = "model"`` (not the
published recipe; the form of later MeanFlow variants and of our Eulerian self-distillation)
replaces ``dI_s`` off the diagonal by the map's own stop-gradient velocity
``u = sg(v_{s,s}(I_s))``: ``v_tgt = u + (t - s)[∂_s v + ∇v·u]``, a deterministic function of
``I_s`` that the exact map satisfies exactly (no noise to average out); the diagonal rows
keep the flow-matching target ``dI_s``, which is what trains ``v_{s,s}``. It costs one more
(gradient-free) evaluation per step. Use it with ``adaptive_p = 0``: the adaptive weight
``1/(|Δ|^2 + c)`` turns the small deterministic residuals into gradients of size ``~Δ/c``
(on the Gaussian test case it stalls training). On the checkerboard it did worse than the
published target at the benchmark's budget (results/family.md): the residual there is the
bootstrapped target's error more than ``dI_s``'s noise. Measured by jump length
(``anystep.benchmarks.checkerboard_family``), the one-sample noise is 10-20 per dimension
at the long jumps against a residual of 120-470: the rest is the network's own JVP term
``(t - s)(∂_s v + ∇v·b_s)``, 20-100x the true flow's and growing with training.

Two more options that are not in the published recipe (both off by default; results in
``benchmarks/results/family.md``): ``gap_kind`` redraws the off-diagonal pairs with more
long jumps -- gap ``u = t - s`` of density 1 (``"uniform"``) or ``2u`` (``"long"``) and
``s ~ U[0, 1 - u]`` -- where uniform pairs on the triangle have ``2(1 - u)`` (1% of the map
rows with ``u > 0.9``) and the published logit-normal pairs almost none (about 1e-5 of the
map rows, 3e-6 of a batch);
``jvp_warmup = N`` ramps the JVP term of the target, ``v_tgt = dI_s + λ (t - s)[∂_s v +
∇v·dI_s]`` with ``λ = min(1, (step + 1) / N)``, so that early targets stay near flow
matching (a curriculum; the loss is MeanFlow's from step ``N - 1`` on).

Concentrating the batch on the one-step map (not published, off by default): the
generic ``start_frac`` (``training/times.py``) puts that fraction of each batch, after the
diagonal rows, at ``s = 0`` (the maps ``X_{0,t}``, the Lagrangian characteristic, issue 13's
lever for LMD); ``end_frac`` puts the next fraction at ``t = 1`` (MeanFlow's ``r = 0``: the
jumps ``X_{s,1}`` onto the data) with ``s`` a single time of ``time_kind``. (MF) is a
derivative in ``s`` at fixed ``t``: its information travels from the diagonal ``s = t`` back
along ``s``, so the row ``t = 1`` is the Eulerian characteristic that ends at ``X_{0,1}``.
Both are mixtures with the base weight, so the minimiser is unchanged; they need
``diag_frac + start_frac + end_frac <= 1`` and ``gap_kind = "triangle"``. On the
checkerboard both hurt (results/family.md: ``start_frac`` 0.25 diverged, ``end_frac`` 0.25
is 2.4x worse at one step): they put more of the batch on the long jumps, whose
bootstrapped targets are the most wrong.

What the trained model supports: a forward two-time map on the whole triangle
``0 <= s <= t <= 1``, so any forward grid and any step count; it is not trained for
``t < s`` (no inversion) unless ``forward_only=False`` -- (MF) holds for every pair, so
with the symmetric weight it also learns the backward map.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import bcast as _bcast
from anystep.training.jvp import jvp_times, sq
from anystep.training.times import TimePair

__all__ = ["GAP_KINDS", "MeanFlow", "adaptive_weight", "slope_fn"]

MEANFLOW_DEFAULTS: dict[str, Any] = {
    **TIME_DEFAULTS,
    "time_kind": "logit_normal",
    "logit_mean": 0.4,
    "logit_std": 1.0,
    "diag_frac": 0.75,
    "adaptive_p": 1.0,
    "adaptive_c": 1e-3,
    "tangent": "sample",  # "sample": dI_s (MeanFlow); "model": sg(v_{s,s}(I_s)) off the diagonal
    "gap_kind": "triangle",  # off-diagonal pairs: "triangle" (time_kind's), "uniform" / "long" gap (not published)
    "jvp_warmup": 0,  # steps over which the JVP term of the target ramps from 0 to 1 (0: MeanFlow, off)
    "end_frac": 0.0,  # fraction of each batch with t = 1 (MeanFlow's r = 0), s a single time (0: MeanFlow, off)
}

# density of the gap u = t - s of the off-diagonal pairs for each gap_kind (s | u ~ U[0, 1 - u])
GAP_KINDS = {"triangle": "time_kind's pairs (uniform: 2(1 - u))", "uniform": "1", "long": "2u"}


def slope_fn(model: nn.Module, objective: str):
    """The slope ``v_{s,t}(x)`` of a flow map (``model.slope``), as ``fn(x, s, t)``.

    Args:
        model: a flow map with ``slope(x, s, t)`` (``anystep.core.flowmap.FlowMap``).
        objective: objective name for the error message.

    Raises:
        ObjectiveError: the model has no ``slope`` (not an ``x + (t - s) v`` flow map).
    """
    fn = getattr(model, "slope", None)
    if fn is None:
        raise ObjectiveError(
            f"{objective} regresses the slope v_st of X_st(x) = x + (t - s) v_st(x): the model needs a "
            "slope(x, s, t) method (build it with anystep.core.flowmap.build_model)"
        )
    return fn


def adaptive_weight(delta: Tensor, p: float, c: float) -> Tensor:
    """MeanFlow's adaptive loss weight ``w = 1 / (|Δ|^2 + c)^p`` (stop-gradient).

    Args:
        delta: ``[B, *shape]`` residual ``v - v_tgt``.
        p: power (0: unit weight; MeanFlow's default 1).
        c: small constant (MeanFlow: 1e-3).

    Returns:
        ``[B]`` detached weights (the full squared norm, not the per-dimension mean).
    """
    if p == 0.0:
        return torch.ones(delta.shape[0], dtype=delta.dtype, device=delta.device)
    norm2 = delta.detach().pow(2).flatten(1).sum(dim=1)
    return (norm2 + c).pow(-p)


@register
class MeanFlow(FlowObjective):
    """MeanFlow identity loss (see module docstring for the derivation and the equation).

    ``L = E sg(w) |v_{s,t}(I_s) - sg(dI_s + (t - s)[∂_s v + ∇v·dI_s])|^2 / d``.

    Hyper-parameters: ``adaptive_p`` (p >= 0, default 1), ``adaptive_c`` (c > 0, default
    1e-3), ``diag_frac`` (default 0.75), ``tangent`` (``"sample"``: MeanFlow's ``dI_s``;
    ``"model"``: the map's own velocity off the diagonal), ``gap_kind`` (``"triangle"``:
    the time sampler's pairs, MeanFlow; ``"uniform"`` / ``"long"``: more long jumps, not
    published), ``jvp_warmup`` (steps of the JVP-term ramp; 0 = off, MeanFlow), ``start_frac`` /
    ``end_frac`` (shares of the batch at ``s = 0`` / ``t = 1``; 0 = off, MeanFlow) and the
    time settings (logit-normal ``(0.4, 1.0)`` by default; forward only). Metrics: ``loss``, ``meanflow_mse`` (the
    unweighted ``E|Δ|^2/d``), ``meanflow_fm`` (its value on the diagonal rows).
    """

    name = "meanflow"
    model_kind = "flowmap"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = dict(MEANFLOW_DEFAULTS)

    def _check(self) -> None:
        h = self.hparams
        if h["adaptive_p"] < 0:
            raise ObjectiveError(
                f"meanflow: adaptive_p={h['adaptive_p']} must be >= 0 (0 = unit weight, 1 = MeanFlow)"
            )
        if not h["adaptive_c"] > 0:
            raise ObjectiveError(
                f"meanflow: adaptive_c={h['adaptive_c']} must be > 0 (MeanFlow uses 1e-3)"
            )
        if h["gap_kind"] not in GAP_KINDS:
            raise ObjectiveError(
                f"meanflow: gap_kind={h['gap_kind']!r} must be one of {sorted(GAP_KINDS)} (triangle = MeanFlow)"
            )
        if h["gap_kind"] != "triangle" and (
            h["time_kind"] != "uniform" or not h["forward_only"] or float(h["window"]) != 1.0
        ):
            raise ObjectiveError(
                f"meanflow: gap_kind={h['gap_kind']!r} draws its own forward pairs on the whole triangle; "
                "set time_kind='uniform', forward_only=true and window=1 (or use gap_kind='triangle')"
            )
        if not 0.0 <= h["end_frac"] < 1.0 or h["diag_frac"] + h["start_frac"] + h["end_frac"] > 1.0:
            raise ObjectiveError(
                f"meanflow: end_frac={h['end_frac']} must be in [0, 1) with diag_frac + start_frac + end_frac <= 1 "
                f"(diag_frac={h['diag_frac']}, start_frac={h['start_frac']}): the share of rows with t = 1"
            )
        if h["gap_kind"] != "triangle" and (h["start_frac"] > 0 or h["end_frac"] > 0):
            raise ObjectiveError(
                f"meanflow: gap_kind={h['gap_kind']!r} redraws every off-diagonal row; use it with start_frac=0 and "
                "end_frac=0 (or gap_kind='triangle')"
            )
        if h["edge_frac"] > 0:
            raise ObjectiveError(
                f"meanflow: edge_frac={h['edge_frac']} is not supported (its rows would collide with end_frac's); "
                "set edge_frac=0"
            )
        if h["jvp_warmup"] < 0:
            raise ObjectiveError(f"meanflow: jvp_warmup={h['jvp_warmup']} must be >= 0 steps (0 = off)")
        if h["tangent"] not in ("sample", "model"):
            raise ObjectiveError(
                f"meanflow: tangent={h['tangent']!r} must be 'sample' (MeanFlow: dI_s) or 'model' (sg v_ss)"
            )

    def supported_steps(self) -> tuple[int, ...] | None:
        """Step counts the trained map supports: None = any K on any forward grid."""
        return None

    def sample_pairs(self, batch_size: int, generator: torch.Generator) -> TimePair:
        """The ``(s, t)`` pairs of one batch: the time sampler's, off-diagonal rows redrawn by ``gap_kind``.

        ``gap_kind = "triangle"`` (MeanFlow) keeps the time sampler's pairs. ``"uniform"`` /
        ``"long"`` redraw each off-diagonal row with gap ``u = t - s`` of density 1 / ``2u`` on
        ``[0, 1]`` and ``s ~ U[0, 1 - u]``: 10% / 19% of those rows have ``u > 0.9``, against
        1% for uniform pairs on the triangle (density ``2(1 - u)``). ``end_frac > 0`` (with
        ``gap_kind = "triangle"``) moves that share of the rows after the diagonal and the
        ``start_frac`` rows to ``t = 1`` (:meth:`_end_rows`).

        Returns:
            :class:`~anystep.training.times.TimePair` (CPU, float32), diagonal rows first.
        """
        pair = self.times.sample(batch_size, generator)
        kind = self.hparams["gap_kind"]
        n_off = int((~pair.diag).sum())
        if self.hparams["end_frac"] > 0:
            return self._end_rows(pair, generator)
        if kind == "triangle" or n_off == 0:
            return pair
        p = torch.rand(n_off, generator=generator, dtype=torch.float64)
        u = p if kind == "uniform" else p.sqrt()
        s_off = (1.0 - u) * torch.rand(n_off, generator=generator, dtype=torch.float64)
        t_off = torch.clamp(s_off + u, max=1.0)
        s, t = pair.s.clone(), pair.t.clone()
        s[~pair.diag], t[~pair.diag] = s_off.float(), t_off.float()
        return TimePair(s=s, t=t, diag=pair.diag)

    def _end_rows(self, pair: TimePair, generator: torch.Generator) -> TimePair:
        """Put ``round(end_frac * B)`` rows after the diagonal and ``start_frac`` rows at ``t = 1``.

        Those rows are the sampler's i.i.d. off-diagonal draws, so replacing the leading ones
        keeps the rest a draw of the base weight; ``s`` is a single time of ``time_kind``.
        """
        B = pair.s.shape[0]
        first = pair.n_diag + min(round(self.times.start_frac * B), B - pair.n_diag)
        n_end = min(round(self.hparams["end_frac"] * B), B - first)
        s, t = pair.s.clone(), pair.t.clone()
        s[first : first + n_end] = self.times.sample_t(n_end, generator)
        t[first : first + n_end] = 1.0
        return TimePair(s=s, t=t, diag=pair.diag)

    def jvp_scale(self, step: int) -> float:
        """Factor of the JVP term ``(t - s)[∂_s v + ∇v·u]`` in the target at ``step`` (1 after the warm-up)."""
        n = int(self.hparams["jvp_warmup"])
        return 1.0 if n <= 0 else min(1.0, (int(step) + 1) / n)

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        h = self.hparams
        pair = self.sample_pairs(batch.x0.shape[0], generator).to(batch.x0)
        sample = self._interp(batch, pair.s)
        I_s, dI_s = sample.I_t, sample.dI_t
        velocity = dI_s
        if h["tangent"] == "model":  # the map's own velocity b_s ~ v_{s,s}(I_s), no gradient
            with torch.no_grad():
                u = model.velocity(I_s, pair.s).to(dI_s)
            on_diag = _bcast(pair.t == pair.s, dI_s)
            velocity = torch.where(on_diag, dI_s, u)  # the diagonal keeps flow matching
        # one JVP of the slope along (velocity, 1, 0): value v (with gradient), tangent dv/ds
        out = jvp_times(slope_fn(model, self.name), I_s, pair.s, pair.t, dx=velocity, ds=1.0)
        v = out.value
        with torch.no_grad():
            jvp_term = _bcast(pair.t - pair.s, v).to(v) * out.tangent.detach()
            scale = self.jvp_scale(step)
            target = velocity.to(v) + (jvp_term if scale == 1.0 else scale * jvp_term)
        delta = v - target
        w = adaptive_weight(delta, h["adaptive_p"], h["adaptive_c"])
        per_row = sq(delta)
        loss = (w * per_row).mean()
        metrics = {"loss": float(loss.detach()), "meanflow_mse": float(per_row.detach().mean())}
        if pair.diag.any():
            metrics["meanflow_fm"] = float(per_row.detach()[pair.diag.to(per_row.device)].mean())
        return LossOutput(loss=loss, metrics=metrics)
