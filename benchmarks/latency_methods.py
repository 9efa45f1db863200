"""The rows of the latency benchmark: methods, settings, samplers (PyTorch eager, core API).

Split from :mod:`anystep.benchmarks.latency` (the experiment): :class:`MethodSpec` and
:func:`solver_methods` (flow map at K steps; Euler / Heun / RK4 at matched NFE, from
the core tableaux; dopri5 by tolerance), :class:`BenchSettings` (with ``--quick``'s
:data:`QUICK`), the samplers :func:`make_sampler` / :func:`sample_for_quality` calling
:func:`anystep.core.samplers.sample_flowmap` and :func:`~anystep.core.samplers.sample_ode`,
and the table rows :class:`SamplerRow` / :class:`EngineRow`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from anystep.benchmarks.timing import LatencyStats
from anystep.core.tableaux import FIXED_SOLVERS, TABLEAUX
from anystep.errors import AnystepError

if TYPE_CHECKING:
    from anystep.benchmarks.latency_models import ModelPair

__all__ = [
    "QUICK",
    "STAGES",
    "BenchSettings",
    "EngineRow",
    "LatencyBenchError",
    "MethodSpec",
    "SamplerRow",
    "make_sampler",
    "sample_for_quality",
    "solver_methods",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


class LatencyBenchError(AnystepError):
    """Invalid benchmark options or model directories; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One sampler of the solver table.

    Attributes:
        key: unique key, e.g. ``"flowmap-1"``, ``"rk4-8"``, ``"dopri5-1e-05"``.
        family: ``"flow map"``, ``"euler"``, ``"heun"``, ``"rk4"`` or ``"dopri5"``.
        steps: flow-map steps K, or solver steps (None for dopri5).
        nfe: nominal network evaluations per sample (None for dopri5: measured).
        rtol: dopri5 tolerance (``atol = rtol``), else None.
    """

    key: str
    family: str
    steps: int | None = None
    nfe: int | None = None
    rtol: float | None = None

    @property
    def label(self) -> str:
        """Row label, e.g. ``"flow map, K=1"``, ``"RK4, 8 NFE"``, ``"dopri5, rtol 1e-05"``."""
        if self.family == "flow map":
            return f"flow map, K={self.steps}"
        if self.family == "dopri5":
            return f"dopri5, rtol {self.rtol:g}"
        return f"{self.family.capitalize() if self.family != 'rk4' else 'RK4'}, {self.nfe} NFE"

    @property
    def is_flowmap(self) -> bool:
        return self.family == "flow map"


STAGES = {name: TABLEAUX[name].stages for name in FIXED_SOLVERS}  # evaluations per step, from the core tableaux


def solver_methods(
    steps: Sequence[int] = (1, 2, 4, 8),
    solver_nfe: Sequence[int] = (1, 2, 4, 8),
    rtols: Sequence[float] = (1e-3, 1e-5),
    solvers: Sequence[str] = ("euler", "heun", "rk4"),
) -> list[MethodSpec]:
    """The rows of the solver table.

    Args:
        steps: flow-map step counts K (``nfe = K``).
        solver_nfe: NFE budgets of the fixed-step solvers; a solver takes a budget when
            it is a multiple of its stages (Euler 1, Heun 2, RK4 4 evaluations per step).
        rtols: dopri5 tolerances.
        solvers: fixed-step solvers to include.

    Returns:
        Flow-map rows first, then each solver by increasing NFE, then dopri5 by
        decreasing tolerance.

    Raises:
        LatencyBenchError: an unknown solver, or a step count / NFE / tolerance out of range.
    """
    out: list[MethodSpec] = []
    for k in steps:
        if int(k) < 1:
            raise LatencyBenchError(f"flow-map steps must be >= 1, got {k}")
        out.append(MethodSpec(key=f"flowmap-{int(k)}", family="flow map", steps=int(k), nfe=int(k)))
    for s in solvers:
        if s not in STAGES:
            raise LatencyBenchError(f"unknown solver {s!r}; choose from euler, heun, rk4")
        for n in sorted({int(v) for v in solver_nfe}):
            if n < 1:
                raise LatencyBenchError(f"solver NFE must be >= 1, got {n}")
            if n % STAGES[s] == 0:
                out.append(MethodSpec(key=f"{s}-{n}", family=s, steps=n // STAGES[s], nfe=n))
    for r in sorted({float(v) for v in rtols}, reverse=True):
        if not (0 < r < 1):
            raise LatencyBenchError(f"dopri5 rtol must lie in (0, 1), got {r}")
        out.append(MethodSpec(key=f"dopri5-{r:g}", family="dopri5", rtol=r))
    return out


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """Everything that determines a run (written to the results JSON).

    Attributes:
        models: bundled pair names; ``<models_dir>/<name>`` is the flow map and
            ``<models_dir>/<name>-teacher`` the velocity teacher (either may be missing).
        models_dir: folder holding the model directories.
        batch_sizes: batch sizes timed.
        steps: flow-map step counts K.
        solver_nfe: NFE budgets of Euler / Heun / RK4.
        rtols: dopri5 tolerances.
        engines: engines of the engine table (``torch``, ``onnx``, ``onnx-fused``, ``tensorrt``).
        engine_steps: flow-map K of the engine table.
        engine_teacher: also time the teacher (RK4 at 8 NFE, dopri5 at the tightest rtol) per engine.
        n_quality: base points scored per method (2D data sets).
        n_quality_images: base points scored per method (image data sets).
        w2_samples: subsample of the exact-OT ``W_2^2``.
        kl_bins: cells per axis of the KL histogram.
        kl_range: ``(lo, hi)`` of the KL grid on both axes.
        rounds: interleaved timing rounds.
        block_s: target wall time of one block of calls.
        budget_s: wall-time budget of one timing run (one table, one batch size).
        max_call_s: a sampling call slower than this is timed once, not repeated.
        warmup: untimed calls per method first.
        threads: intra-op threads of torch and ONNX Runtime while timing (1: robust on a
            shared CPU, as the server runs).
        quality_threads: torch threads while drawing the (untimed) quality samples.
        exporter: ONNX exporter (``auto``, ``dynamo`` or ``torchscript``).
        seed: base-noise seed.
        quick: a smoke run.
        profile: profile the calls behind a missed goal (torch profiler / cProfile).
    """

    models: tuple[str, ...] = ("checkerboard", "digits")
    models_dir: Path = REPO_ROOT / "models"
    batch_sizes: tuple[int, ...] = (1, 16, 256)
    steps: tuple[int, ...] = (1, 2, 4, 8)
    solver_nfe: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    rtols: tuple[float, ...] = (1e-3, 1e-5)
    engines: tuple[str, ...] = ("torch", "onnx", "onnx-fused", "tensorrt")
    engine_steps: tuple[int, ...] = (1, 2, 4, 8)
    engine_teacher: bool = True
    n_quality: int = 20_000
    n_quality_images: int = 1_000
    w2_samples: int = 2_000
    kl_bins: int = 100
    kl_range: tuple[float, float] = (-4.5, 4.5)
    rounds: int = 15
    block_s: float = 0.05
    budget_s: float = 60.0
    max_call_s: float = 5.0
    warmup: int = 2
    threads: int = 1
    quality_threads: int = 2
    exporter: str = "auto"
    seed: int = 0
    quick: bool = False
    profile: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise LatencyBenchError(msg)

        need(len(self.models) > 0, "--models needs at least one name, e.g. checkerboard,digits")
        need(all(b >= 1 for b in self.batch_sizes) and len(self.batch_sizes) > 0,
             f"--batch-sizes must be integers >= 1, got {self.batch_sizes}")
        need(all(k >= 1 for k in self.steps) and len(self.steps) > 0, f"--steps must be integers >= 1, got {self.steps}")
        need(all(k >= 1 for k in self.engine_steps), f"engine steps must be >= 1, got {self.engine_steps}")
        bad = [e for e in self.engines if e not in ("torch", "onnx", "onnx-fused", "tensorrt")]
        need(not bad, f"unknown engine(s) {bad}; choose from torch,onnx,onnx-fused,tensorrt")
        need(self.n_quality >= 100 and self.n_quality_images >= 16,
             "--n-quality must be >= 100 (2D) and the image count >= 16")
        need(self.rounds >= 1 and self.warmup >= 1, "--rounds and warm-up must be >= 1")
        need(self.threads >= 1 and self.quality_threads >= 1, f"--threads must be >= 1, got {self.threads}")
        need(self.exporter in ("auto", "dynamo", "torchscript"), "--exporter: auto, dynamo or torchscript")
        need(self.block_s > 0 and self.budget_s > 0, "block and budget seconds must be > 0")


QUICK = {
    "batch_sizes": (1, 16),
    "steps": (1, 2, 4),
    "solver_nfe": (1, 2, 4, 8),
    "rtols": (1e-3, 1e-5),
    "engine_steps": (1, 4),
    "n_quality": 4_000,
    "n_quality_images": 256,
    "w2_samples": 500,
    "rounds": 4,
    "block_s": 0.01,
    "budget_s": 8.0,
    "warmup": 1,
    "profile": False,
}
"""Overrides of ``--quick`` (about a minute on two shared cores with small models)."""


# --------------------------------------------------------------------------------------
# samplers (torch eager, core API)
# --------------------------------------------------------------------------------------


def make_sampler(spec: MethodSpec, pair: ModelPair, x0: Tensor) -> Callable[[], int] | None:
    """A zero-argument call running ``spec`` on ``x0`` and returning the NFE (None if its model is missing)."""
    from anystep.core.samplers import sample_flowmap, sample_ode

    if spec.is_flowmap:
        if pair.flowmap is None:
            return None
        model = pair.flowmap.model
        return lambda: sample_flowmap(model, x0, steps=spec.steps).nfe
    if pair.teacher is None:
        return None
    model = pair.teacher.model
    if spec.family == "dopri5":
        return lambda: sample_ode(model, x0, solver="dopri5", rtol=spec.rtol).nfe
    return lambda: sample_ode(model, x0, solver=spec.family, nfe=spec.nfe).nfe


@torch.no_grad()
def sample_for_quality(spec: MethodSpec, pair: ModelPair, x0: Tensor, chunk: int = 25_000) -> tuple[Tensor, int]:
    """Samples of ``spec`` from all of ``x0`` (in chunks) and the NFE (max over chunks)."""
    outs, nfe = [], 0
    for c in x0.split(chunk):
        fn_out = _sample_once(spec, pair, c)
        outs.append(fn_out[0])
        nfe = max(nfe, fn_out[1])
    return torch.cat(outs), nfe


def _sample_once(spec: MethodSpec, pair: ModelPair, x0: Tensor) -> tuple[Tensor, int]:
    from anystep.core.samplers import sample_flowmap, sample_ode

    if spec.is_flowmap:
        r = sample_flowmap(pair.flowmap.model, x0, steps=spec.steps)
    elif spec.family == "dopri5":
        r = sample_ode(pair.teacher.model, x0, solver="dopri5", rtol=spec.rtol)
    else:
        r = sample_ode(pair.teacher.model, x0, solver=spec.family, nfe=spec.nfe)
    return r.x, int(r.nfe)


@dataclass
class SamplerRow:
    """One row of a latency table.

    Attributes:
        key: method key.
        label: row label.
        family: method family (``"flow map"``, ``"euler"``, ... ``"dopri5"``).
        steps: K or solver steps (None for dopri5).
        rtol: dopri5 tolerance or None.
        nfe: ``{batch: NFE of the timed call}`` (dopri5: measured on that batch).
        nfe_quality: NFE on the quality set.
        latency: ``{batch: LatencyStats}``.
        throughput: ``{batch: samples per second at the median latency}``.
        quality: ``{metric: value}`` on the shared quality set.
        pareto: ``{batch: on the quality/latency Pareto front}``.
    """

    key: str
    label: str
    family: str
    steps: int | None
    rtol: float | None
    nfe: dict[int, int] = field(default_factory=dict)
    nfe_quality: int | None = None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    pareto: dict[int, bool] = field(default_factory=dict)





@dataclass
class EngineRow(SamplerRow):
    """A row of the engine table.

    Attributes:
        engine: ``torch``, ``onnx``, ``onnx-fused`` or ``tensorrt``.
        max_abs_diff: largest ``|x - x_torch|`` against torch eager on the quality set.
    """

    engine: str = "torch"
    max_abs_diff: float | None = None
