"""Samplers: K steps of a flow map on any time grid, and ODE sampling of velocity models.

With the semigroup law (eq. 3.6), ``x_{t_k} = X_{t_{k-1}, t_k}(x_{t_{k-1}})`` on a grid
``0 = t_0 < ... < t_K = 1`` gives samples of rho_1 from ``x_0 ~ rho_0`` in K network
evaluations. Running the grid backwards (``X_{1,0}``) encodes data into base samples,
since flow maps are invertible (Proposition 3.3).

Samplers are pure functions of their inputs; with :func:`~anystep.core.noise.base_noise`
a sample depends only on its own seed, not on the batch it is drawn in. Grids come
from :mod:`anystep.core.grid`, solver tableaux from :mod:`anystep.core.tableaux`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import solvers as _solvers
from .grid import GridError, make_grid
from .noise import base_noise, sample_seeds
from .tableaux import DEFAULT_MAX_NFE

__all__ = ["GridError", "SampleResult", "base_noise", "make_grid", "sample_flowmap", "sample_ode", "sample_seeds"]


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes:
        x: ``[B, *shape]`` final samples (data space forward, base space in reverse).
        nfe: number of batched network evaluations.
        grid: ``[K + 1]`` times actually traversed (reversed when encoding).
        trajectory: ``[K + 1, B, *shape]`` states on the grid, if requested.
    """

    x: Tensor
    nfe: int
    grid: Tensor
    trajectory: Tensor | None = field(default=None, repr=False)


@torch.no_grad()
def sample_flowmap(
    model: nn.Module,
    x: Tensor,
    steps: int | None = 1,
    grid: Sequence[float] | Tensor | None = None,
    *,
    reverse: bool = False,
    return_trajectory: bool = False,
) -> SampleResult:
    """K-step flow-map sampling ``x_{t_k} = X_{t_{k-1}, t_k}(x_{t_{k-1}})``.

    Args:
        model: flow map, ``model(x [B,*shape], s [B], t [B]) -> [B,*shape]``.
        x: ``[B, *shape]``; base samples ``x0`` (forward) or data ``x1`` (reverse).
        steps: K for a uniform grid.
        grid: custom increasing grid from 0 to 1 (overrides ``steps``).
        reverse: run ``X_{1,0}`` along the reversed grid (data -> base).
        return_trajectory: also return the states on the grid.

    Returns:
        SampleResult with ``nfe = K``.
    """
    g = make_grid(None if grid is not None else steps, grid)
    if reverse:
        g = g.flip(0)
    B = x.shape[0]
    traj = [x] if return_trajectory else None
    for k in range(g.numel() - 1):
        s = torch.full((B,), float(g[k]), dtype=x.dtype, device=x.device)
        t = torch.full((B,), float(g[k + 1]), dtype=x.dtype, device=x.device)
        x = model(x, s, t)
        if traj is not None:
            traj.append(x)
    return SampleResult(
        x=x, nfe=g.numel() - 1, grid=g, trajectory=torch.stack(traj) if traj is not None else None
    )


@torch.no_grad()
def sample_ode(
    velocity: nn.Module,
    x: Tensor,
    *,
    solver: str = "dopri5",
    steps: int | None = None,
    nfe: int | None = None,
    rtol: float = 1e-5,
    reverse: bool = False,
    max_nfe: int | None = DEFAULT_MAX_NFE,
) -> SampleResult:
    """Sample (or encode, with ``reverse``) by integrating ``dx/dt = b_t(x)`` (eq. 3.1).

    Args:
        velocity: ``velocity(x [B,*shape], t [B]) -> [B,*shape]``.
        x: ``[B, *shape]`` start state.
        solver: ``euler``, ``heun``, ``rk4`` or ``dopri5``.
        steps / nfe: budget of fixed-step solvers (default 100 steps).
        rtol: dopri5 tolerance (atol = rtol).
        reverse: integrate from t=1 to t=0.
        max_nfe: dopri5: bound on evaluations (SolverFailedError beyond it).

    Returns:
        SampleResult with the measured ``nfe``.
    """
    t0, t1 = (1.0, 0.0) if reverse else (0.0, 1.0)
    if solver != "dopri5" and steps is None and nfe is None:
        steps = 100
    sol = _solvers.solve(velocity, x, t0, t1, method=solver, steps=steps, nfe=nfe, rtol=rtol, max_nfe=max_nfe)
    g = torch.tensor([t0, t1], dtype=torch.float64)
    return SampleResult(x=sol.x, nfe=sol.nfe, grid=g)
