"""Time grids ``0 = t_0 < t_1 < ... < t_K = 1`` of K-step sampling (eq. 3.6), stated once.

The CLI, export, benchmarks, the server's HTTP validation and the samplers all build
and check grids here: :func:`parse_grid` turns user text (``"0,0.5,1"``) or a list
into floats, :func:`check_grid` validates it, :func:`make_grid` returns the tensor
the torch samplers traverse, :func:`uniform_grid` the float64 numpy grid the server
steps along.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from anystep.errors import AnystepError


class GridError(AnystepError):
    """A time grid is malformed; the message says how to fix it.

    Attributes:
        field: the parameter at fault (``"grid"`` or ``"steps"``), for HTTP error bodies.
    """

    def __init__(self, message: str, field: str = "grid") -> None:
        super().__init__(message)
        self.field = field


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_grid(value: str | Sequence[Any]) -> list[float]:
    """Times from text ``"0,0.5,1"`` or a list of numbers (no range checks; see :func:`check_grid`).

    Raises:
        GridError: not comma-separated numbers / not a list of numbers.
    """
    if isinstance(value, str):
        parts = value.replace(" ", "").split(",")
        if not value.strip() or any(p == "" for p in parts):
            raise GridError(f"grid must be comma-separated times such as 0,0.5,1, got {_show(value)}")
        out = []
        for p in parts:
            try:
                out.append(float(p))
            except ValueError:
                raise GridError(f"grid entry {_show(p)} is not a number; use times such as 0,0.5,1") from None
        return out
    if isinstance(value, (list, tuple)) and not any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
    ):
        return [float(v) for v in value]
    raise GridError(f"grid must be a list of numbers such as [0, 0.5, 1], got {_show(value)}")


def check_grid(grid: Sequence[float], max_steps: int | None = None) -> list[float]:
    """Validate a forward grid: starts at 0, ends at 1, strictly increases, at most ``max_steps`` steps.

    Returns:
        The times as a list of floats.

    Raises:
        GridError: saying what to change.
    """
    g = [float(v) for v in grid]
    if len(g) < 2:
        raise GridError("a grid needs at least two times, e.g. 0,1 (one step) or 0,0.5,1")
    if max_steps is not None and len(g) - 1 > max_steps:
        raise GridError(f"the grid has {len(g) - 1} steps; at most {max_steps} are allowed")
    if not all(math.isfinite(v) for v in g):
        raise GridError("grid times must be finite numbers")
    if g[0] != 0.0 or g[-1] != 1.0:
        raise GridError(f"a grid must start at 0 and end at 1 (got {g[0]:g} .. {g[-1]:g}); times lie in [0, 1]")
    if any(b <= a for a, b in itertools.pairwise(g)):
        raise GridError("grid times must strictly increase, e.g. 0,0.25,0.5,1")
    return g


def check_steps(steps: Any, max_steps: int | None = None) -> int:
    """A step count K: an integer in ``1..max_steps``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GridError(f"steps must be an integer >= 1, got {_show(steps)}", "steps")
    if max_steps is not None and steps > max_steps:
        raise GridError(f"steps={steps} is out of range; use 1..{max_steps}", "steps")
    return int(steps)


def uniform_grid(steps: int) -> np.ndarray:
    """``[K + 1]`` float64 uniform grid ``t_k = k / K``."""
    return np.linspace(0.0, 1.0, check_steps(steps) + 1, dtype=np.float64)


def make_grid(steps: int | None = None, grid: Sequence[float] | Any | None = None):
    """Build the forward time grid ``0 = t_0 < t_1 < ... < t_K = 1`` as a torch tensor.

    Args:
        steps: K, for a uniform grid. Giving both ``steps`` and ``grid`` is an error
            unless they agree (say which to keep).
        grid: custom times; must start at 0, end at 1 and strictly increase.

    Returns:
        ``[K + 1]`` float64 tensor.
    """
    import torch

    if grid is not None:
        values = grid.flatten().tolist() if hasattr(grid, "flatten") else list(grid)
        g = check_grid(values)
        if steps is not None and steps != len(g) - 1:
            raise GridError(
                f"steps={steps} disagrees with a grid of {len(g) - 1} steps; give one of them (keep grid or steps)",
                "steps",
            )
        return torch.tensor(g, dtype=torch.float64)
    return torch.from_numpy(uniform_grid(steps if steps is not None else 0))
