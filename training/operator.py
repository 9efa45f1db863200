"""Neural-operator trajectory regression (Zheng et al. 2023) as a flow-map objective, eq. C.17.

    L_FNO = ∫_0^1 E_{x ~ rho_0} | X̂_{0,t}(x) - X_{0,t}(x) |^2 dt                       (C.17)

where ``X_{0,t}`` is the teacher's flow, obtained by integrating its probability-flow ODE
``dx/dt = b_t(x)``. As in the paper, the trajectories are **pre-generated**, not simulated
during training: on the first call the objective draws ``bank_size`` base points
``x ~ N(0, I)`` from its own generator (seeded by ``bank_seed``, so a resumed run rebuilds
the identical bank) and integrates them with dopri5 (``rtol``; atol = rtol) through the
times ``t_j = j / bank_times``, ``j = 0..T`` (one solve per interval, continuing from the
previous end point). Each training step then draws ``B`` (trajectory, time) pairs
``(x^{(k)}, t_j)``, ``j ~ U{1..T}``, and regresses ``X̂_{0,t_j}(x^{(k)})`` onto the stored
``X_{0,t_j}(x^{(k)})``: the ``dt`` integral of C.17 becomes the mean over the grid times.
The batch from the trainer only supplies shape, dtype and device (the regression set is
the bank); the base must be the standard Gaussian of every preset.

Cost: ``bank_size`` dopri5 trajectories of the teacher up front (a fixed data set, reused
for every step; memory ``(T + 1) x bank_size x d`` floats), then one network evaluation
per row and no JVP.

What the trained model supports: only jumps from ``s = 0``: ``X_{0,t}`` for the bank's
times ``t_j`` (in particular one step ``X_{0,1}``). ``X_{s,t}`` with ``s > 0`` is never
trained, so K-step composition, non-uniform grids and inversion are outside its support.
The base points are a finite set: more than ``bank_size`` distinct ``x`` are never seen
(overfitting to the bank is this method's known failure mode).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anystep.core.solvers import dopri5
from anystep.training.base import LossOutput, register
from anystep.training.flow_objective import FlowObjective, ObjectiveError
from anystep.training.jvp import sq
from anystep.training.teacher import teacher_velocity

__all__ = ["TrajectoryBank", "TrajectoryRegression", "generate_trajectories"]


class TrajectoryBank:
    """Pre-generated teacher trajectories.

    Attributes:
        times: ``[T + 1]`` grid from 0 to 1.
        states: ``[T + 1, n, *shape]``; ``states[j] = X_{0,t_j}(states[0])``.
        nfe: batched teacher evaluations spent generating them.
    """

    def __init__(self, times: Tensor, states: Tensor, nfe: int) -> None:
        self.times = times
        self.states = states
        self.nfe = nfe


@torch.no_grad()
def generate_trajectories(
    teacher: nn.Module,
    x0: Tensor,
    n_times: int,
    *,
    rtol: float = 1e-5,
    chunk: int = 8192,
) -> TrajectoryBank:
    """Integrate the teacher's ODE from ``x0`` through ``t_j = j / n_times`` with dopri5.

    Args:
        teacher: velocity model ``b(x, t)`` (or a flow map, via its diagonal velocity).
        x0: ``[n, *shape]`` base points.
        n_times: T >= 1 grid intervals.
        rtol: dopri5 tolerance (atol = rtol).
        chunk: rows integrated together.

    Returns:
        :class:`TrajectoryBank` with ``states`` of shape ``[T + 1, n, *shape]``.
    """

    def b(x: Tensor, t: Tensor) -> Tensor:
        return teacher_velocity(teacher, x, t)

    times = torch.linspace(0.0, 1.0, n_times + 1, dtype=torch.float64)
    out = [x0]
    nfe = 0
    x = x0
    for j in range(n_times):
        parts = []
        for c in x.split(chunk):
            sol = dopri5(b, c, float(times[j]), float(times[j + 1]), rtol=rtol, atol=rtol)
            parts.append(sol.x)
            nfe += sol.nfe
        x = torch.cat(parts)
        out.append(x)
    return TrajectoryBank(times=times, states=torch.stack(out), nfe=nfe)


@register
class TrajectoryRegression(FlowObjective):
    """Trajectory regression on pre-generated dopri5 trajectories, eq. C.17 (module docstring).

    Hyper-parameters: ``bank_size`` (trajectories, default 20000), ``bank_times`` T
    (grid intervals, default 16), ``bank_seed`` (0), ``rtol`` (dopri5 tolerance, 1e-5).
    """

    name = "operator"
    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {
        "bank_size": 20_000,
        "bank_times": 16,
        "bank_seed": 0,
        "rtol": 1e-5,
    }

    def __init__(self, interpolant: Any, **hparams: Any) -> None:
        super().__init__(interpolant, **hparams)
        self.bank: TrajectoryBank | None = None

    def _check(self) -> None:
        h = self.hparams
        if h["bank_size"] < 1:
            raise ObjectiveError(
                f"operator: bank_size={h['bank_size']} must be >= 1 (number of trajectories)"
            )
        if h["bank_times"] < 1:
            raise ObjectiveError(
                f"operator: bank_times={h['bank_times']} must be >= 1 (grid intervals)"
            )
        if not h["rtol"] > 0:
            raise ObjectiveError(f"operator: rtol={h['rtol']} must be > 0")

    def supported_steps(self) -> tuple[int, ...] | None:
        """Step counts the trained map supports: only 1 (jumps start at ``s = 0``)."""
        return (1,)

    def build_bank(self, teacher: nn.Module, like: Tensor) -> TrajectoryBank:
        """Generate (once) the trajectory bank on ``like``'s device and dtype."""
        if self.bank is None:
            h = self.hparams
            g = torch.Generator().manual_seed(int(h["bank_seed"]))
            x0 = torch.randn((h["bank_size"], *like.shape[1:]), generator=g).to(like)
            self.bank = generate_trajectories(teacher, x0, h["bank_times"], rtol=h["rtol"])
        return self.bank

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` only fixes the number of rows, dtype and device."""
        self._check_inputs(model, teacher)
        bank = self.build_bank(teacher, batch.x0)
        B = batch.x0.shape[0]
        n, T = bank.states.shape[1], bank.states.shape[0] - 1
        k = torch.randint(0, n, (B,), generator=generator).to(bank.states.device)
        j = torch.randint(1, T + 1, (B,), generator=generator).to(bank.states.device)
        x0 = bank.states[0, k]
        target = bank.states[j, k]
        t = bank.times.to(bank.states)[j]
        loss = sq(model(x0, torch.zeros_like(t), t) - target).mean()
        value = float(loss.detach())
        return LossOutput(loss=loss, metrics={"loss": value, "operator": value})
