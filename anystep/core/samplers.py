"""Samplers: K steps of a flow map on any time grid, and ODE sampling of velocity models.

With the semigroup law (eq. 3.6), ``x_{t_k} = X_{t_{k-1}, t_k}(x_{t_{k-1}})`` on a grid
``0 = t_0 < ... < t_K = 1`` gives samples of rho_1 from ``x_0 ~ rho_0`` in K network
evaluations. Running the grid backwards (``X_{1,0}``) encodes data into base samples,
since flow maps are invertible (Proposition 3.3).

Samplers are pure functions of their inputs; with :func:`base_noise` a sample depends
only on its own seed, not on the batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import solvers as _solvers


class GridError(ValueError):
    """A time grid is malformed; the message says how to fix it."""


def make_grid(steps: int | None = None, grid: Sequence[float] | Tensor | None = None) -> Tensor:
    """Build the forward time grid ``0 = t_0 < t_1 < ... < t_K = 1``.

    Args:
        steps: K, for a uniform grid (ignored when ``grid`` is given).
        grid: custom times; must start at 0, end at 1 and strictly increase.

    Returns:
        ``[K + 1]`` float64 tensor.
    """
    if grid is not None:
        g = torch.as_tensor(list(grid) if not isinstance(grid, Tensor) else grid, dtype=torch.float64).flatten()
        if g.numel() < 2:
            raise GridError("a grid needs at least two times, e.g. 0,1 (one step) or 0,0.5,1")
        if not torch.all(torch.isfinite(g)):
            raise GridError("grid times must be finite numbers")
        if g[0] != 0 or g[-1] != 1:
            raise GridError(f"a grid must start at 0 and end at 1 (got {g[0].item():g} .. {g[-1].item():g})")
        if not torch.all(g[1:] > g[:-1]):
            raise GridError("grid times must strictly increase, e.g. 0,0.25,0.5,1")
        if steps is not None and steps != g.numel() - 1:
            raise GridError(f"steps={steps} disagrees with a grid of {g.numel() - 1} steps; give one of them")
        return g
    if steps is None or int(steps) < 1:
        raise GridError(f"steps must be an integer >= 1, got {steps!r}")
    return torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)


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
) -> SampleResult:
    """Sample (or encode, with ``reverse``) by integrating ``dx/dt = b_t(x)`` (eq. 3.1).

    Args:
        velocity: ``velocity(x [B,*shape], t [B]) -> [B,*shape]``.
        x: ``[B, *shape]`` start state.
        solver: ``euler``, ``heun``, ``rk4`` or ``dopri5``.
        steps / nfe: budget of fixed-step solvers (default 100 steps).
        rtol: dopri5 tolerance (atol = rtol).
        reverse: integrate from t=1 to t=0.

    Returns:
        SampleResult with the measured ``nfe``.
    """
    t0, t1 = (1.0, 0.0) if reverse else (0.0, 1.0)
    if solver != "dopri5" and steps is None and nfe is None:
        steps = 100
    sol = _solvers.solve(velocity, x, t0, t1, method=solver, steps=steps, nfe=nfe, rtol=rtol)
    g = torch.tensor([t0, t1], dtype=torch.float64)
    return SampleResult(x=sol.x, nfe=sol.nfe, grid=g)


def base_noise(seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal base samples, row ``i`` drawn from its own ``torch.Generator(seeds[i])``.

    Args:
        seeds: one integer seed per sample.
        shape: shape of one sample.

    Returns:
        ``[len(seeds), *shape]``; row i depends only on ``seeds[i]``.
    """
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=dtype))
    if not rows:
        return torch.zeros((0, *shape), dtype=dtype)
    return torch.stack(rows)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-sample seeds for a request ``(seed, n)``: sample i uses ``seed + i``.

    So the i-th sample of a request is reproducible from ``(seed, i)`` alone.
    """
    return [int(seed) + i for i in range(int(n))]
