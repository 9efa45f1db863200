"""Butcher tableaux of the ODE solvers for ``dx/dt = b_t(x)`` (eq. 3.1), stated once.

:mod:`anystep.core.solvers` (torch, whole batches) and the server's step-level
scheduler (numpy, one stage per tick) both derive their stages from these tables,
so a solver's name, order, number of evaluations per step and coefficients live in
one place.

An explicit Runge-Kutta step of size ``h`` from ``(x, t)`` evaluates, for stage
``j = 0..S-1``, ``k_j = b(x + h sum_{l<j} A_jl k_l, t + c_j h)`` and returns
``x + h sum_j b_j k_j``. Embedded pairs (dopri5) also carry ``b_err = b5 - b4``.
"""

from __future__ import annotations

from dataclasses import dataclass

from anystep.errors import AnystepError


class SolverError(AnystepError):
    """An unknown solver or a solver option that does not apply; the message says which to use."""


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta scheme.

    Attributes:
        name: solver name (``euler``, ``heun``, ``rk4``, ``dopri5``).
        order: convergence order of the propagated solution.
        c: ``[S]`` stage times as fractions of the step.
        a: ``[S][S]`` lower-triangular stage coefficients (rows padded with zeros).
        b: ``[S]`` weights of the solution.
        b_err: ``[S]`` weights of the error estimate (embedded pairs only).
        fsal: the last stage equals the first stage of the next step (first same as last).
        adaptive: the step size is chosen by an error controller.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None
    fsal: bool = False
    adaptive: bool = False

    @property
    def stages(self) -> int:
        """Evaluations of ``b`` per step (S)."""
        return len(self.c)


def _pad(rows: list[list[float]], size: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(r + [0.0] * (size - len(r))) for r in rows)


_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]

TABLEAUX: dict[str, Tableau] = {
    "euler": Tableau("euler", 1, (0.0,), ((0.0,),), (1.0,)),
    "heun": Tableau("heun", 2, (0.0, 1.0), _pad([[], [1.0]], 2), (0.5, 0.5)),
    "rk4": Tableau(
        "rk4",
        4,
        (0.0, 0.5, 0.5, 1.0),
        _pad([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], 4),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    ),
    # Dormand-Prince 5(4)
    "dopri5": Tableau(
        "dopri5",
        5,
        (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        _pad(
            [
                [],
                [1 / 5],
                [3 / 40, 9 / 40],
                [44 / 45, -56 / 15, 32 / 9],
                [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
                [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
                [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
            ],
            7,
        ),
        tuple(_B5),
        tuple(b5 - b4 for b5, b4 in zip(_B5, _B4)),
        fsal=True,
        adaptive=True,
    ),
}

SOLVERS: tuple[str, ...] = tuple(TABLEAUX)
"""Every solver name, in the order offered to users."""
FIXED_SOLVERS: tuple[str, ...] = tuple(n for n, tb in TABLEAUX.items() if not tb.adaptive)
"""Fixed-step solvers (``euler``, ``heun``, ``rk4``)."""
DEFAULT_SOLVER = "euler"
"""The solver a velocity model uses when a request names none and gives ``steps``."""


@dataclass(frozen=True)
class Dopri5Control:
    """Step-size control of dopri5 (shared by the torch solver and the staged scheduler).

    ``h <- h * clip(safety * err^(-1/5), min_factor, max_factor)``; a step is accepted
    when the scaled RMS error ``err <= 1``.
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    exponent: float = -0.2
    h0_fraction: float = 0.01
    """Initial step as a fraction of ``|t1 - t0|``."""


DOPRI5 = Dopri5Control()

DEFAULT_MAX_NFE = 1000
"""Default bound on dopri5 evaluations per sample (the solver fails beyond it)."""


def get_tableau(name: str) -> Tableau:
    """The tableau of a solver name, or a :class:`SolverError` listing the valid names."""
    try:
        return TABLEAUX[name]
    except (KeyError, TypeError):
        raise SolverError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}") from None
