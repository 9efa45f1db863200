"""Consistency distillation (``cd``, eq. C.9) and consistency training (``ct``, eq. C.14), in our convention.

A consistency function maps a point at any time onto the data end of its trajectory.
In App. C.1 (diffusion time, data at 0) it is ``f_t(x) = X_{t_max - t, t_max}(x)``
(eq. C.7); with our times (``t = 0`` base, ``t = 1`` data) it is simply the flow map into
``t = 1``: ``f_s(x) = X_{s,1}(x) = x + (1 - s) v_{s,1}(x)``, whose boundary condition
``f_1 = id`` holds exactly by the ansatz. Discretise ``[0, 1]`` as
``0 = τ_0 < τ_1 < ... < τ_N = 1`` with ``τ_i = 1 - (1 - i/N)^ρ`` (``ρ = 1`` uniform;
``ρ > 1`` concentrates points near the data, the role of Karras' grid, eq. C.8). For
``i ~ U{0, ..., N-1}`` and ``x_{τ_i} = I_{τ_i}`` from the interpolant:

* ``cd`` (eq. C.9): ``E | X_{τ_i,1}(x_{τ_i}) - sg(X⁻_{τ_{i+1},1}(x̂_{τ_{i+1}})) |^2``, where
  ``x̂_{τ_{i+1}}`` is **one ODE step** of the frozen teacher velocity ``b`` from ``τ_i`` to
  ``τ_{i+1}`` (``solver="heun"``, as Song et al. 2023, or ``"euler"``) -- our time runs the
  other way, so this is eq. C.9's step from ``t_{i+1}`` towards the data;
* ``ct`` (eq. C.14): the same with ``x̂_{τ_{i+1}} = I_{τ_{i+1}}`` from the **same draw**
  ``(x0, x1, z)`` (the one-sample estimator C.12-C.13); no teacher. The stop-gradient on
  the target is essential (C.15-C.16: its continuous-time limit is our ``ee``).

``X⁻`` is the **target network**: an EMA of the online weights with decay ``target_ema``
(updated once per optimisation step, before the step's loss; Song et al. 2023 use 0.95
for CD; 0 -- the online weights under stop-gradient -- is iCT's choice and the ``ct``
default). The target EMA (:class:`~anystep.training.target_net.TargetNetwork`) lives in the objective and is saved with the trainer's
checkpoint (:meth:`_Consistency.state_dict`: its weights in ``objective.safetensors``, its
last update step in ``state.json``), so a resumed run continues with the same target.

What such a model can and cannot do (the cost of a one-time map):

* Only pairs ``(s, 1)`` are trained: ``X_{s,t}`` for ``t < 1`` is not, so a K-step grid
  cannot be composed (``X_{t_{k},t_{k+1}}`` is undefined) and the map does not invert
  (``X_{1,0}`` is untrained). One step ``X_{0,1}`` is the model.
* Multi-step sampling therefore **re-noises** (Song et al. 2023, Alg. 1;
  :func:`consistency_sample`): ``x̂ = X_{0,1}(x_0)``; for each later grid time ``τ_k < 1``
  draw fresh ``x_0' ~ rho_0`` (and ``z``), set ``x_{τ_k} = I_{τ_k}(x_0', x̂)`` -- a sample of
  ``rho_{τ_k}`` when ``x̂ ~ rho_1`` and the coupling is independent -- and jump again,
  ``x̂ = X_{τ_k,1}(x_{τ_k})``. K steps cost K evaluations and K - 1 fresh noise draws, the
  result is stochastic given ``x_0`` (the coupling ``x_0 -> x̂`` is lost), and errors are
  not corrected along a trajectory as in a two-time map.
* In the server, ``steps = K`` composes ``X_{t_k, t_{k+1}}`` on a grid; for these models
  only ``steps = 1`` (the grid ``0, 1``) is within the trained region ``{(s, 1)}``, so the
  model directory records ``supported_steps = [1]`` (:meth:`_Consistency.supported_steps`)
  and ``anystep sample`` / ``POST /generate`` refuse larger K (exit 2 / HTTP 422
  ``unsupported_steps``); the re-noising sampler is Python only, not served.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anystep.core.samplers import SampleResult, make_grid
from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import FlowObjective, ObjectiveError
from anystep.training.jvp import bcast, sq
from anystep.training.target_net import TargetNetwork
from anystep.training.teacher import teacher_velocity

__all__ = [
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "consistency_grid",
    "consistency_sample",
]

_CM_DEFAULTS: dict[str, Any] = {"N": 32, "grid_rho": 1.0, "target_ema": 0.95}


def consistency_grid(n_steps: int, rho: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """The discretisation ``τ_i = 1 - (1 - i/N)^ρ``, ``i = 0..N`` (our analogue of eq. C.8).

    Args:
        n_steps: N >= 1.
        rho: >= 1; 1 is uniform, larger values put more points near ``t = 1`` (data).
        dtype: of the result.

    Returns:
        ``[N + 1]`` increasing times from 0 to 1.
    """
    i = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    grid = 1.0 - (1.0 - i) ** rho
    grid[0], grid[-1] = 0.0, 1.0
    return grid.to(dtype)


class _Consistency(FlowObjective):
    """Shared machinery: grid, index sampling, target network (see module docstring)."""

    model_kind = "flowmap"

    def __init__(self, interpolant: Any, **hparams: Any) -> None:
        super().__init__(interpolant, **hparams)
        self.grid = consistency_grid(self.hparams["N"], self.hparams["grid_rho"])
        self._target = TargetNetwork(self.name, self.hparams["target_ema"])

    def _check(self) -> None:
        h = self.hparams
        if h["N"] < 1:
            raise ObjectiveError(
                f"{self.name}: N={h['N']} must be >= 1 (intervals of the discretisation)"
            )
        if h["grid_rho"] < 1.0:
            raise ObjectiveError(
                f"{self.name}: grid_rho={h['grid_rho']} must be >= 1 (1 = uniform grid)"
            )
        if not 0.0 <= h["target_ema"] < 1.0:
            raise ObjectiveError(
                f"{self.name}: target_ema={h['target_ema']} must be in [0, 1) (0: online weights)"
            )

    def supported_steps(self) -> tuple[int, ...] | None:
        """Step counts of grid composition the map supports: only 1 (``X_{0,1}``); K > 1 re-noises."""
        return (1,)

    def target_network(self, model: nn.Module, step: int) -> nn.Module:
        """``X⁻``: the EMA target (updated once per ``step``), or ``model`` itself when decay is 0."""
        return self._target.get(model, step)

    def state_dict(self) -> dict[str, Any]:
        """The target network for checkpoints (:meth:`TargetNetwork.state_dict`); ``{}`` if none yet."""
        return self._target.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``{}``: no target yet, it starts from the weights at first use)."""
        self._target.load_state_dict(state)

    def _pair(self, batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        B = batch.x0.shape[0]
        i = torch.randint(0, self.hparams["N"], (B,), generator=generator)
        return self.grid[i].to(batch.x0), self.grid[i + 1].to(batch.x0)

    def _next_point(self, batch, x: Tensor, s: Tensor, s_next: Tensor, teacher) -> Tensor:
        raise NotImplementedError

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See the module docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        s, s_next = self._pair(batch, generator)
        x = self._interp(batch, s).I_t
        one = torch.ones_like(s)
        target_net = self.target_network(model, step)
        with torch.no_grad():
            x_next = self._next_point(batch, x, s, s_next, teacher)
            target = target_net(x_next, s_next, one)
        loss = sq(model(x, s, one) - target).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, self.name: value})


@register
class ConsistencyDistillation(_Consistency):
    """Consistency distillation, eq. C.9 (module docstring).

    Hyper-parameters: ``N`` (32), ``grid_rho`` (1 = uniform), ``target_ema``
    (0.95), ``solver`` (``"heun"`` or ``"euler"``: the teacher's one ODE step).
    """

    name = "cd"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {**_CM_DEFAULTS, "solver": "heun"}

    def _check(self) -> None:
        super()._check()
        if self.hparams["solver"] not in ("heun", "euler"):
            raise ObjectiveError(f"cd: solver={self.hparams['solver']!r} must be 'heun' or 'euler'")

    def _next_point(self, batch, x, s, s_next, teacher) -> Tensor:
        h = bcast(s_next - s, x)
        b0 = teacher_velocity(teacher, x, s)
        euler = x + h * b0
        if self.hparams["solver"] == "euler":
            return euler
        return x + 0.5 * h * (b0 + teacher_velocity(teacher, euler, s_next))


@register
class ConsistencyTraining(_Consistency):
    """Consistency training, eq. C.14 (module docstring): ``x̂_{τ_{i+1}} = I_{τ_{i+1}}``, same draw.

    Hyper-parameters: ``N`` (32), ``grid_rho`` (1), ``target_ema`` (0: iCT).
    """

    name = "ct"
    teacher_kind = None
    defaults: ClassVar[dict[str, Any]] = {**_CM_DEFAULTS, "target_ema": 0.0}

    def _next_point(self, batch, x, s, s_next, teacher) -> Tensor:
        return self._interp(batch, s_next).I_t


@torch.no_grad()
def consistency_sample(
    model: nn.Module,
    x0: Tensor,
    interpolant: Any,
    steps: int | None = 1,
    grid: Any = None,
    *,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Multi-step sampling of a consistency model by re-noising (Song et al. 2023, Alg. 1).

    ``x̂ = X_{0,1}(x_0)``; for every grid time ``0 < τ_k < 1``: fresh ``x_0' ~ N(0, I)`` and
    ``z ~ N(0, I)``, ``x_{τ_k} = I_{τ_k}(x_0', x̂, z)``, ``x̂ = X_{τ_k,1}(x_{τ_k})``. Assumes a
    Gaussian base and an independent coupling (then ``x_{τ_k} ~ rho_{τ_k}`` when
    ``x̂ ~ rho_1``).

    Args:
        model: a consistency map (only ``X_{s,1}`` is used).
        x0: ``[B, *shape]`` base samples.
        interpolant: the model's interpolant (``anystep.core.interpolants``).
        steps: K for a uniform grid.
        grid: custom increasing grid from 0 to 1 (overrides ``steps``).
        generator: source of the re-noising draws (CPU generator).

    Returns:
        SampleResult with ``nfe = K`` and the grid.
    """
    g = make_grid(None if grid is not None else steps, grid)
    B = x0.shape[0]
    one = torch.ones(B, dtype=x0.dtype, device=x0.device)
    x = model(x0, torch.zeros_like(one), one)
    for tau in g[1:-1].tolist():
        noise = torch.randn(x.shape, generator=generator).to(x)
        z = torch.randn(x.shape, generator=generator).to(x)
        t = torch.full_like(one, tau)
        x_tau = interpolant.interpolate(noise, x, t, z).I_t
        x = model(x_tau, t, one)
    return SampleResult(x=x, nfe=g.numel() - 1, grid=g)
