"""The sampling contract: which parameters a request may combine, and what it costs.

One function, :func:`resolve_sampling`, turns user parameters (``steps``, ``grid``,
``solver``, ``rtol``, ``max_nfe``) into a :class:`SamplingSpec` for a flow map or a
velocity model, rejecting conflicts instead of silently dropping one side. The CLI and
the HTTP layer both call it (HTTP maps :class:`ParamError` to 422 naming ``field``).

:func:`parse_int` / :func:`parse_float` are the strict parsers of user text: only ASCII
digits (``"12"``, ``"-3"``, ``"+4"``) are integers -- ``"²"``, ``"١٢"``, ``"1_000"``,
``"1.0"`` and ``" 1"`` with inner spaces are not, whatever ``str.isdigit`` or ``int()``
would accept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anystep.errors import AnystepError

from .grid import GridError, check_grid, check_steps, uniform_grid
from .tableaux import DEFAULT_MAX_NFE, DEFAULT_SOLVER, SOLVERS, TABLEAUX

_INT_RE = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

RTOL_RANGE = (1e-8, 0.5)
"""Accepted dopri5 tolerances."""


class ParamError(AnystepError):
    """A parameter is malformed or conflicts with another; the message says which to keep.

    Attributes:
        field: the parameter at fault (for HTTP error bodies and CLI hints).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_int(name: str, text: str) -> int:
    """An integer from text: optional sign and 1..30 ASCII digits, surrounding spaces allowed."""
    t = text.strip(" \t") if isinstance(text, str) else None
    if t is None or not _INT_RE.fullmatch(t):
        raise ParamError(f"{name} must be an integer (ASCII digits), got {_show(text)}", name)
    return int(t)


def parse_float(name: str, text: str) -> float:
    """A finite number from text in ASCII decimal notation (``1e-3``, ``0.5``; no ``nan``/``inf``)."""
    t = text.strip(" \t") if isinstance(text, str) else None
    if t is None or not _FLOAT_RE.fullmatch(t):
        raise ParamError(f"{name} must be a finite number, got {_show(text)}", name)
    v = float(t)
    if not math.isfinite(v):
        raise ParamError(f"{name} must be a finite number, got {_show(text)}", name)
    return v


@dataclass
class SamplingSpec:
    """A resolved sampling request (forward direction).

    Attributes:
        method: ``"flowmap"`` or a solver name of :data:`~anystep.core.tableaux.SOLVERS`.
        grid: ``[K + 1]`` float64 forward times (``[0, 1]`` for dopri5).
        steps: K (0 for dopri5 until it reports its accepted steps).
        stages: evaluations per step (1 for flow maps and Euler).
        nfe: evaluations per sample: exact for fixed steps, the bound ``max_nfe`` for dopri5.
        rtol: dopri5 tolerance (atol = rtol); None otherwise.
        max_nfe: dopri5's bound on evaluations per sample; None otherwise.
        custom_grid: the caller gave the grid.
    """

    method: str
    grid: np.ndarray
    steps: int
    stages: int
    nfe: int
    rtol: float | None = None
    max_nfe: int | None = None
    custom_grid: bool = False

    @property
    def adaptive(self) -> bool:
        return self.method == "dopri5"


def resolve_sampling(
    kind: str,
    *,
    steps: int | None = None,
    grid: Sequence[float] | str | None = None,
    solver: str | None = None,
    rtol: float | None = None,
    max_nfe: int | None = None,
    max_steps: int | None = None,
    supported_steps: Sequence[int] | None = None,
    default_solver: str = DEFAULT_SOLVER,
    default_rtol: float = 1e-5,
    default_max_nfe: int = DEFAULT_MAX_NFE,
) -> SamplingSpec:
    """Resolve and validate the sampling parameters of one request.

    Flow maps take ``steps`` *or* ``grid``; velocity models take a ``solver`` with
    ``steps`` or ``grid`` (fixed-step solvers) or ``rtol``/``max_nfe`` (dopri5).

    Args:
        kind: ``"flowmap"`` or ``"velocity"``.
        steps: K for a uniform grid (default 1 for flow maps, 100 for ODE solvers when
            ``default_solver`` is used without steps... see below: callers pass it).
        grid: custom forward times (list or ``"0,0.5,1"``).
        solver: velocity models: ``euler``, ``heun``, ``rk4`` or ``dopri5``.
        rtol: dopri5 tolerance.
        max_nfe: dopri5 bound on evaluations per sample.
        max_steps: most steps K allowed.
        supported_steps: flow maps: the only K the model was trained for (its config's
            ``supported_steps``: shortcut ``1, 2, 4, ...``, consistency ``1``, PD ``N``), on
            the uniform grid; None: any K and any grid. Absent ``steps`` then means the
            smallest supported K when 1 is not supported (a PD model's own N).
        default_solver / default_rtol / default_max_nfe: what an absent parameter means.

    Returns:
        The :class:`SamplingSpec`.

    Raises:
        ParamError / GridError: a malformed value or a conflict, naming the field to drop;
        :class:`UnsupportedStepsError` for a step count or grid outside ``supported_steps``.
    """
    from .grid import parse_grid

    if grid is not None and steps is not None:
        raise ParamError(
            "give steps or grid, not both: keep grid for custom times, or steps for a uniform grid", "steps"
        )
    if kind == "flowmap":
        for name, value in (("solver", solver), ("rtol", rtol), ("max_nfe", max_nfe)):
            if value is not None:
                raise ParamError(
                    f"a flow map takes steps or grid, not {name}; drop {name} (or pick a velocity model)", name
                )
        method = "flowmap"
    elif kind == "velocity":
        method = solver if solver is not None else default_solver
        if method not in TABLEAUX:
            raise ParamError(f"solver {_show(method)} is not available; use one of {', '.join(SOLVERS)}", "solver")
    else:
        raise ParamError(f"unknown model kind {kind!r}; expected 'flowmap' or 'velocity'", "model")

    if method == "dopri5":
        if steps is not None:
            raise ParamError(
                "dopri5 picks its own steps: drop steps (bound the work with max_nfe), "
                "or keep steps with solver=euler/heun/rk4",
                "steps",
            )
        if grid is not None:
            raise ParamError("dopri5 picks its own steps: drop grid, or keep grid with solver=euler/heun/rk4", "grid")
        r = default_rtol if rtol is None else float(rtol)
        if not (RTOL_RANGE[0] <= r <= RTOL_RANGE[1]):
            raise ParamError(f"rtol={r:g} is out of range; use {RTOL_RANGE[0]:g}..{RTOL_RANGE[1]:g}", "rtol")
        m = default_max_nfe if max_nfe is None else max_nfe
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 7:
            raise ParamError(f"max_nfe must be an integer >= 7 (one dopri5 step), got {_show(m)}", "max_nfe")
        return SamplingSpec("dopri5", np.array([0.0, 1.0]), 0, 7, int(m), rtol=r, max_nfe=int(m))

    for name, value in (("rtol", rtol), ("max_nfe", max_nfe)):
        if value is not None:
            raise ParamError(f"{name} applies to solver=dopri5 only; drop {name} or set solver=dopri5", name)
    supported = None if method != "flowmap" or supported_steps is None else tuple(sorted(supported_steps))
    if grid is not None:
        try:
            g = np.asarray(check_grid(parse_grid(grid), max_steps), dtype=np.float64)
        except GridError as e:
            raise ParamError(str(e), "grid") from None
        custom = True
        if supported is not None:
            _check_supported_grid(g, supported)
    else:
        if steps is None:
            steps = 1 if supported is None or 1 in supported else supported[0]
        try:
            g = uniform_grid(check_steps(steps, max_steps))
        except GridError as e:
            raise ParamError(str(e), "steps") from None
        custom = False
        if supported is not None and int(steps) not in supported:
            raise UnsupportedStepsError(
                f"steps={int(steps)} is not supported by this model: it was trained for the uniform "
                f"K-step grid with K in {_list(supported)} only (other K compose pairs (s, t) it never fitted); "
                f"use steps={_nearest(int(steps), supported)} or another of {_list(supported)}",
                "steps",
                supported,
            )
    stages = 1 if method == "flowmap" else TABLEAUX[method].stages
    K = int(g.size - 1)
    return SamplingSpec(method, g, K, stages, K * stages, custom_grid=custom)


class UnsupportedStepsError(ParamError):
    """A step count or grid outside the model's ``supported_steps`` (issue 14).

    Attributes:
        supported: the step counts the model supports (uniform grids).
    """

    def __init__(self, message: str, field: str, supported: Sequence[int]) -> None:
        super().__init__(message, field)
        self.supported = [int(k) for k in supported]


def _list(values: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def _nearest(k: int, supported: Sequence[int]) -> int:
    return min(supported, key=lambda s: (abs(s - k), s))


def _check_supported_grid(g: np.ndarray, supported: Sequence[int]) -> None:
    """Accept a custom grid only if it is the uniform grid of a supported K."""
    K = int(g.size - 1)
    if K in supported and np.allclose(g, uniform_grid(K), rtol=0.0, atol=1e-9):
        return
    raise UnsupportedStepsError(
        f"this model supports only uniform grids with K in {_list(supported)} steps (t_k = k/K), "
        f"not the custom grid of {K} step{'s' if K != 1 else ''}; drop grid and use steps={_nearest(K, supported)} "
        f"or another of {_list(supported)}",
        "grid",
        supported,
    )


def check_budget(n: int, spec: SamplingSpec, max_compute: int) -> int:
    """The request's cost ``n x nfe`` (sample-evaluations), or a ParamError above ``max_compute``."""
    cost = int(n) * int(spec.nfe)
    if cost > max_compute:
        bound = "max_nfe" if spec.adaptive else "steps"
        raise ParamError(
            f"n x nfe = {n} x {spec.nfe} = {cost} exceeds the compute budget of {max_compute} "
            f"sample-evaluations per request; lower n or {bound}",
            "n",
        )
    return cost
