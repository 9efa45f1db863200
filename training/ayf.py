"""Align Your Flow continuous-time distillation, AYF-EMD and AYF-LMD (successors §3).

AYF writes ``f_θ(x_τ, τ, σ)`` for the map from diffusion time ``τ`` to ``σ`` (noise at large
times). With a decreasing reparametrisation of time onto ours (``t = 0`` base, ``t = 1``
data) the same trajectories give ``f_θ(x, τ, σ) = X_{s,t}(x)`` with source ``s`` and target
``t``; then ``sign(τ - σ)_AYF = sign(t - s)``, ``d/dτ = -d/ds`` and the PF-ODE velocity is
``v_φ = -b`` (the positive speed factor of the reparametrisation goes into the weight).
Substituting into the ε -> 0 gradients of successors §3:

* AYF-EMD: ``∇_θ E[ w' sign(τ-σ) f_θᵀ d/dτ f_θ⁻ ]`` becomes
  ``∇_θ E[ -w' sign(t - s) <X_θ_{s,t}(x_s), sg(g_E)> ]``,
  ``g_E = d/ds X_{s,t}(x_s)`` along the ODE ``= ∂_s X_{s,t}(x_s) + ∇X_{s,t}(x_s)·b_s(x_s)``
  (the Eulerian residual of eq. 3.8/3.9). Check: the ε-target ``X⁻_{s',t}(x_{s'})`` with
  ``s' = s + ε(t - s)`` and ``x_{s'}`` one Euler step is ``X⁻ + ε (t - s) g_E + O(ε^2)``.
* AYF-LMD: ``∇_θ E[ w' sign(σ-τ) f_θᵀ (d/dσ f_θ⁻ - v_φ(f_θ⁻, σ)) ]`` becomes
  ``∇_θ E[ +w' sign(t - s) <X_θ_{s,t}(x_s), sg(g_L)> ]``,
  ``g_L = ∂_t X_{s,t}(x_s) - b_t(X_{s,t}(x_s))`` (the Lagrangian residual of eq. 3.5/3.7).
  Check: with ``t' = t + ε(s - t)`` the target ``x_{t'} + ε (t - s) b_{t'}`` with
  ``x_{t'} = X⁻_{s,t'}(x_s)`` is ``X⁻ - ε (t - s) g_L + O(ε^2)``.

with ``w' = w |t - s|``. ``weighting="gap"`` (default) takes ``w = 1``, so
``w' sign(t - s) = t - s``; ``weighting="unit"`` takes ``w = 1/|t - s|`` (``w' = 1``), which
gives near-diagonal pairs more weight (on the Gaussian test case AYF-LMD converges
markedly faster with it and ``tangent_norm=False``). ``x_s = I_s`` from the
interpolant, ``b`` the frozen teacher velocity. The loss returned is the surrogate
``± mean_i (t_i - s_i) <X_θ, sg(g_i)> / d`` whose gradient is the AYF gradient; its value is
not a distance (the metric ``residual`` = ``E|g|^2/d`` at full ramp is the diagnostic that
goes to 0 at the exact map).

Tangent ``g`` is computed from a stop-gradient copy ``θ⁻`` (a JVP under ``torch.no_grad``;
the parameters are the same numbers). With the ansatz ``X = x + (t - s) v_{s,t}(x)``:

* ``g_E = (b_s(x) - v) + r (t - s) [∂_s v + ∇v·b_s(x)]``,
* ``g_L = (v - b_t(X)) + r (t - s) ∂_t v``,

where ``r = min(1, step / warmup_steps)`` is the tangent warm-up (``r = 1`` gives the exact
residuals; ``r = 0`` plain regression of ``v`` onto the teacher velocity). Tangent
normalisation ``g / (||g|| + c)`` (per sample, over all coordinates; ``c = norm_c = 0.1``)
is on by default (``tangent_norm``). Logit-normal times: ``time_kind="logit_normal"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import TIME_DEFAULTS, FlowObjective, ObjectiveError
from anystep.training.jvp import bcast, jvp_times, sq
from anystep.training.teacher import teacher_velocity

__all__ = ["AYFEMD", "AYFLMD"]

_AYF_DEFAULTS = {
    **TIME_DEFAULTS,
    "tangent_norm": True,
    "norm_c": 0.1,
    "warmup_steps": 0,
    "weighting": "gap",
    "adaptive": False,
    "adaptive_lr": 1e-2,
}


class LogVarianceWeight(torch.nn.Module):
    """Learned per-``(s, t)`` log-variance ``u(s, t)`` of the adaptive weighting (sCM, AYF).

    ``u`` is a linear function of Fourier features of ``(s, t, t - s)``; it is trained on
    ``E[ e^{-u} sg(|w' g|^2 / d) + u ]``, whose minimiser is ``u = log E[|w' g|^2 / d | s, t]``,
    and the map's surrogate is weighted by ``sg(e^{-u})``: every ``(s, t)`` region then
    contributes gradients of the same size. It has its own Adam (the map's optimiser never
    sees it), stepped inside :meth:`_AYF.loss`; its state is in :meth:`_AYF.state_dict`.
    """

    def __init__(self, num_frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.pi * torch.arange(1, num_frequencies + 1, dtype=torch.float32))
        self.linear = torch.nn.Linear(3 * (1 + 2 * num_frequencies), 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """``u(s, t)``: ``s, t [B]`` -> ``[B]``."""
        feats = []
        for x in (s, t, t - s):
            arg = x.float()[:, None] * self.freqs
            feats += [x.float()[:, None], torch.sin(arg), torch.cos(arg)]
        return self.linear(torch.cat(feats, dim=1)).squeeze(1)


class _AYF(FlowObjective):
    """Shared machinery of the two AYF objectives (see module docstring).

    Hyper-parameters: ``tangent_norm`` (bool, True), ``norm_c`` (0.1), ``warmup_steps``
    (0 = no warm-up), ``weighting`` (``"gap"`` or ``"unit"``), ``adaptive`` (learned
    per-``(s, t)`` log-variance weight :class:`LogVarianceWeight`), ``adaptive_lr`` and the time settings
    (``time_kind="logit_normal"`` with ``logit_mean``, ``logit_std`` for logit-normal times).
    """

    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = dict(_AYF_DEFAULTS)
    sign: float = 1.0  # +1 for AYF-LMD, -1 for AYF-EMD

    def _check(self) -> None:
        if self.hparams["weighting"] not in ("gap", "unit"):
            raise ObjectiveError(
                f"{self.name}: weighting={self.hparams['weighting']!r}: use 'gap' (w' = |t - s|) "
                "or 'unit' (w' = 1)"
            )
        if self.hparams["norm_c"] <= 0:
            raise ObjectiveError(f"{self.name}: norm_c must be > 0 (AYF uses 0.1)")
        if self.hparams["warmup_steps"] < 0:
            raise ObjectiveError(f"{self.name}: warmup_steps must be >= 0 (0 disables the warm-up)")
        if self.hparams["adaptive_lr"] <= 0:
            raise ObjectiveError(f"{self.name}: adaptive_lr must be > 0 (Adam learning rate of u(s, t))")
        self.weight_net: LogVarianceWeight | None = None
        self._weight_opt: torch.optim.Optimizer | None = None
        if self.hparams["adaptive"]:
            with torch.random.fork_rng(devices=[]):
                self.weight_net = LogVarianceWeight()
            self._weight_opt = torch.optim.Adam(self.weight_net.parameters(), lr=self.hparams["adaptive_lr"])

    def state_dict(self) -> dict[str, Any]:
        """Learned state (adaptive weight + its Adam) as JSON lists, for checkpoints; ``{}`` if none."""
        if self.weight_net is None:
            return {}
        opt = self._weight_opt.state_dict()
        return {
            "weight_net": {k: v.tolist() for k, v in self.weight_net.state_dict().items()},
            "weight_opt": {
                "param_groups": opt["param_groups"],
                "state": {str(i): {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in st.items()}
                          for i, st in opt["state"].items()},
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a no-op for ``{}`` or without an adaptive weight)."""
        if self.weight_net is None or not state:
            return
        self.weight_net.load_state_dict({k: torch.tensor(v) for k, v in state["weight_net"].items()})
        opt = state["weight_opt"]
        self._weight_opt.load_state_dict({
            "param_groups": opt["param_groups"],
            "state": {int(i): {k: torch.tensor(v, dtype=torch.float32) for k, v in st.items()}
                      for i, st in opt["state"].items()},
        })

    def _adaptive_weight(self, s: Tensor, t: Tensor, sq_norm: Tensor) -> tuple[Tensor, float]:
        """Step ``u(s, t)`` on ``e^{-u} sq_norm + u`` (``sq_norm [B]``, no grad); return ``sg(e^{-u})``."""
        net = self.weight_net.to(s.device)
        with torch.enable_grad():
            u = net(s.detach(), t.detach())
            loss_u = (torch.exp(-u) * sq_norm.detach().float() + u).mean()
            self._weight_opt.zero_grad(set_to_none=True)
            loss_u.backward()
            self._weight_opt.step()
        return torch.exp(-u.detach()).to(sq_norm.dtype), float(u.detach().mean())

    def ramp(self, step: int) -> float:
        """Tangent warm-up ``r = min(1, step / warmup_steps)`` (1 when ``warmup_steps = 0``)."""
        n = self.hparams["warmup_steps"]
        return 1.0 if n <= 0 else min(1.0, max(0.0, step / n))

    def _tangent(
        self, model, x: Tensor, s: Tensor, t: Tensor, teacher, r: float
    ) -> tuple[Tensor, Tensor]:
        """Return ``(g_ramped, g_full)``, both ``[B, *shape]``, without gradient."""
        raise NotImplementedError

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See module docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        if not hasattr(model, "slope"):
            raise ObjectiveError(
                f"{self.name} needs a FlowMap with .slope (X = x + (t - s) v); build it with build_model"
            )
        pair = self._times(batch, generator)
        x = self._interp(batch, pair.s).I_t
        r = self.ramp(step)
        with torch.no_grad():
            g, g_full = self._tangent(model, x, pair.s, pair.t, teacher, r)
            g_norm = g.flatten(1).norm(dim=1)
            if self.hparams["tangent_norm"]:
                g = g / bcast(g_norm + self.hparams["norm_c"], g)
        X_theta = model(x, pair.s, pair.t)
        inner = (X_theta * g).flatten(1).mean(dim=1)  # <X_θ, sg(g)> / d
        w_sign = pair.t - pair.s  # w' sign(t - s) with w' = |t - s|
        if self.hparams["weighting"] == "unit":
            w_sign = torch.sign(w_sign)
        extra: dict[str, float] = {}
        if self.weight_net is not None and model.training:
            gap = (pair.t - pair.s).abs()  # |X - target| / eps = |w' sign g| (∂X/∂v = t - s)
            sq_norm = (w_sign * gap).pow(2) * g.flatten(1).pow(2).mean(dim=1)
            lam, u_mean = self._adaptive_weight(pair.s, pair.t, sq_norm)
            w_sign = w_sign * lam
            extra["log_var"] = u_mean
        loss = (self.sign * w_sign * inner).mean()
        return LossOutput(
            loss=loss,
            metrics={
                **extra,
                "loss": float(loss.detach()),
                "surrogate": float(loss.detach()),
                "residual": float(sq(g_full).mean()),
                "tangent_sq": float(g_norm.pow(2).mean() / g[0].numel()),
                "ramp": r,
            },
        )


@register
class AYFEMD(_AYF):
    """AYF-EMD (continuous-time consistency distillation for two-time maps, successors §3).

    Surrogate ``-mean (t - s) <X_θ_{s,t}(I_s), sg(g_E)>/d`` with
    ``g_E = ∂_s X_{s,t}(I_s) + ∇X_{s,t}(I_s)·b_s(I_s)`` (eq. 3.9's residual).
    """

    name = "ayf_emd"
    sign = -1.0

    def _tangent(self, model, x, s, t, teacher, r):
        b_s = teacher_velocity(teacher, x, s)
        out = jvp_times(model.slope, x, s, t, dx=b_s, ds=1.0)  # v, ∂_s v + ∇v·b_s
        gap = bcast(t - s, x)
        base = b_s - out.value
        return base + r * gap * out.tangent, base + gap * out.tangent


@register
class AYFLMD(_AYF):
    """AYF-LMD (successors §3).

    Surrogate ``+mean (t - s) <X_θ_{s,t}(I_s), sg(g_L)>/d`` with
    ``g_L = ∂_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s))`` (eq. 3.7's residual).
    """

    name = "ayf_lmd"
    sign = 1.0

    def _tangent(self, model, x, s, t, teacher, r):
        out = jvp_times(model.slope, x, s, t, dt=1.0)  # v, ∂_t v
        v, dv = out.value, out.tangent
        gap = bcast(t - s, x)
        b_t = teacher_velocity(teacher, x + gap * v, t)
        base = v - b_t
        return base + r * gap * dv, base + gap * dv
