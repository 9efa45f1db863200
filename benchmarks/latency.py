"""Sampler latency against ODE solvers, across inference engines, with the quality bought.

The mission's claim: a flow map ``X_{s,t}`` sampled with K = 1..4 steps of the
semigroup composition (eq. 3.6) reaches its teacher's quality at a small fraction
of an ODE solver's cost on the probability-flow ODE ``dx/dt = b_t(x)`` (eq. 3.1).
This benchmark puts numbers on it, for each bundled model pair
``models/<name>`` (flow map) + ``models/<name>-teacher`` (velocity)::

    python -m anystep.benchmarks.latency            # full run (minutes; ONNX exports are cached)
    python -m anystep.benchmarks.latency --quick    # about a minute, a smoke run, not a result

Tables (all methods of one table are timed in ONE interleaved run, see
:func:`interleaved_timing`, so their ratios are comparable on a noisy machine):

1. **Samplers** (PyTorch eager, :func:`anystep.core.samplers.sample_flowmap` /
   :func:`~anystep.core.samplers.sample_ode`): the flow map at K = 1, 2, 4, 8 steps;
   the teacher with Euler, Heun and RK4 at matched NFE (plus larger NFE for the
   Pareto curves) and dopri5 at rtol 1e-3 / 1e-5 (NFE measured). For each: NFE,
   latency per batch (median and p95 after warm-up) at batch sizes 1, 16, 256,
   throughput (samples/s at the median) and the quality of the samples
   (checkerboard: ``KL(rho_1 || rho_hat_1)`` with the exact density and ``W_2^2``;
   digits: digits-FD and Teacher-FD), on the same base points for every method.
2. **Engines**: the same flow-map rows (and the teacher with RK4 / dopri5) through
   the serving engines (:mod:`anystep.server.engines`): torch eager, ONNX Runtime
   with the single-step graph (``step(x, s, t)`` called K times) and with the fused
   K-step graph (:mod:`anystep.export.fused`, one call), and TensorRT where an
   NVIDIA GPU and the ``tensorrt`` package exist (skipped with the reason otherwise).
3. **Pareto plot** ``latency.png``: quality against median latency (log scale), one
   curve per method, one panel per model and batch size.

Results: ``benchmarks/results/latency.{json,md,png}`` naming the machine, the
versions and the exact command. Hand-written notes between the
``investigation-notes`` markers of ``latency.md`` survive a re-run.

Time convention: ``t = 0`` base (Gaussian), ``t = 1`` data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.benchmarks.common import (
    command_line,
    existing_notes,
    load_average,
    machine_info,
    versions,
    write_results,
)
from anystep.errors import AnystepError

__all__ = [
    "QUICK",
    "BenchSettings",
    "EngineRow",
    "LatencyBenchError",
    "LatencyStats",
    "MethodSpec",
    "SamplerRow",
    "build_parser",
    "interleaved_timing",
    "main",
    "pareto_front",
    "percentile",
    "render_markdown",
    "run",
    "solver_methods",
    "summarize",
]

MODULE = "anystep.benchmarks.latency"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_SPEEDUP = 20.0
GOAL_KL_RATIO = 1.5
GOAL_ONNX_SPEEDUP = 1.5


class LatencyBenchError(AnystepError):
    """Invalid benchmark options or model directories; the message says how to fix it."""


from anystep.benchmarks.latency_report import make_plot, render_markdown
from anystep.benchmarks.timing import (
    LatencyStats,
    TimingResult,
    interleaved_timing,
    pareto_front,
    percentile,
    summarize,
)
from anystep.core.tableaux import FIXED_SOLVERS, TABLEAUX

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
# models and quality
# --------------------------------------------------------------------------------------


@dataclass
class ModelPair:
    """A flow map and its teacher (either may be absent).

    Attributes:
        name: pair name (``"checkerboard"``).
        flowmap: loaded flow map or None.
        teacher: loaded velocity model or None.
        flowmap_dir, teacher_dir: their directories.
        dataset: data set name of the models' configs.
        data_shape: shape of one sample.
    """

    name: str
    flowmap: Any
    teacher: Any
    flowmap_dir: Path | None
    teacher_dir: Path | None
    dataset: str
    data_shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        from anystep.core.modeldir import model_dir_sha256

        out: dict[str, Any] = {"dataset": self.dataset, "data_shape": list(self.data_shape)}
        for role, loaded, d in (("flowmap", self.flowmap, self.flowmap_dir), ("teacher", self.teacher, self.teacher_dir)):
            if loaded is None:
                out[role] = None
                continue
            cfg = loaded.config
            prov = dict(cfg.provenance or {})
            out[role] = {
                "dir": str(d),
                "sha256": model_dir_sha256(d),
                "kind": cfg.kind,
                "backbone": asdict(cfg.backbone),
                "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
                "provenance": {k: prov[k] for k in list(prov)[:12]},
            }
        return out


def load_pair(name: str, models_dir: Path) -> ModelPair:
    """Load ``<models_dir>/<name>`` (flow map) and ``<models_dir>/<name>-teacher`` (velocity).

    Raises:
        LatencyBenchError: neither directory exists, a directory holds the wrong kind of
            model, the two disagree on data set or shape, or the base is not Gaussian.
    """
    from anystep.core.modeldir import load_model_dir

    fm_dir, te_dir = models_dir / name, models_dir / f"{name}-teacher"
    fm = load_model_dir(fm_dir) if fm_dir.is_dir() else None
    te = load_model_dir(te_dir) if te_dir.is_dir() else None
    if fm is None and te is None:
        hint = f" (python -m anystep.benchmarks.{name} bundles it)" if name in ("checkerboard", "digits") else ""
        raise LatencyBenchError(
            f"no model {name!r}: neither {fm_dir} nor {te_dir} exists; train/bundle it first{hint} "
            "or pass --models-dir"
        )
    if fm is not None and fm.config.kind != "flowmap":
        raise LatencyBenchError(f"{fm_dir} holds a {fm.config.kind} model; <name> must be the flow map")
    if te is not None and te.config.kind != "velocity":
        raise LatencyBenchError(f"{te_dir} holds a {te.config.kind} model; <name>-teacher must be a velocity model")
    cfgs = [m.config for m in (fm, te) if m is not None]
    datasets = {c.dataset for c in cfgs}
    shapes = {tuple(c.data_shape) for c in cfgs}
    if len(datasets) > 1 or len(shapes) > 1:
        raise LatencyBenchError(f"{fm_dir} and {te_dir} disagree on data set/shape: {datasets}, {shapes}")
    for c in cfgs:
        if getattr(c, "base", "gaussian") not in (None, "gaussian"):
            raise LatencyBenchError(f"{name}: base {c.base!r} is not supported; the benchmark draws x0 ~ N(0, I)")
    return ModelPair(name=name, flowmap=fm, teacher=te, flowmap_dir=fm_dir if fm else None,
                     teacher_dir=te_dir if te else None, dataset=str(cfgs[0].dataset),
                     data_shape=tuple(int(d) for d in cfgs[0].data_shape))


class QualityScorer:
    """Scores samples ``[n, *shape]`` (model units) with the data set's metric.

    * 2D data (``[n, 2]``): ``KL(rho_1 || rho_hat_1)``
      (:func:`anystep.core.metrics.kl_divergence_2d`; the exact density for the
      checkerboard, fresh target samples otherwise) and ``W_2^2`` to fresh target samples
      (:func:`anystep.core.metrics.w2_squared`, exact OT on a fixed subsample).
    * digits: digits-FD and Teacher-FD (:class:`anystep.benchmarks.digits_classifier.DigitsMetric`).
    * anything else: no metric (latency only).

    Attributes:
        primary: name of the headline metric (``"kl"``, ``"digits_fd"`` or None); lower is better.
        floor: the primary metric of real data scored the same way (the estimator's floor).
    """

    def __init__(self, dataset: str, data_shape: tuple[int, ...], settings: BenchSettings) -> None:
        self.dataset = dataset
        self.data_shape = data_shape
        self.settings = settings
        self.primary: str | None = None
        self.floor: dict[str, float] | None = None
        self._metric = None
        self._target_w2: np.ndarray | None = None
        self._target_kl: np.ndarray | None = None
        self._density = None
        if tuple(data_shape) == (2,):
            from anystep.core.data import get_dataset

            ds = get_dataset(dataset)
            g = torch.Generator().manual_seed(10_000 + settings.seed)
            self._target_w2 = ds.sample(settings.w2_samples, g).double().numpy()
            if dataset == "checkerboard":
                from anystep.core.data import checkerboard_density

                self._density = checkerboard_density
            else:
                self._target_kl = ds.sample(settings.n_quality, g).double().numpy()
            self.primary = "kl"
            floor = ds.sample(settings.n_quality, torch.Generator().manual_seed(20_000 + settings.seed))
            self.floor = self.score(floor)
        elif dataset == "digits":
            from anystep.benchmarks.digits_classifier import DigitsMetric
            from anystep.core.data import DigitsDataset

            self._metric = DigitsMetric.create()
            self.primary = "digits_fd"
            self.floor = {"digits_fd": float(self._metric.digits_fd(DigitsDataset(split="test").tensor))}

    def score(self, x: Tensor | np.ndarray, teacher: Tensor | np.ndarray | None = None) -> dict[str, float]:
        """Quality of samples ``x`` ``[n, *shape]``; ``teacher`` samples enable Teacher-FD."""
        s = self.settings
        if self.primary == "kl":
            from anystep.core.metrics import kl_divergence_2d, w2_squared

            arr = x.detach().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
            kl = float(kl_divergence_2d(self._target_kl, arr, bins=s.kl_bins, range_=tuple(s.kl_range),
                                        target_density=self._density))
            ok = arr[np.all(np.isfinite(arr), axis=1)]
            w2 = float(w2_squared(ok, self._target_w2, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else math.inf
            out = {"kl": kl, "w2": w2}
            if self.floor is not None:  # minus the estimator's finite-sample bias (data scored the same way)
                out["kl_excess"] = kl - self.floor["kl"]
            return out
        if self.primary == "digits_fd":
            xs = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
            xs = torch.nan_to_num(xs.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
            sc = self._metric.score(xs, teacher=None if teacher is None else torch.as_tensor(teacher).float().clamp(-1, 1))
            out = {"digits_fd": float(sc.digits_fd), "entropy": float(sc.coverage.entropy)}
            if sc.teacher_fd is not None:
                out["teacher_fd"] = float(sc.teacher_fd)
            return out
        return {}


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


# --------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------


@dataclass
class EngineRow(SamplerRow):
    """A row of the engine table.

    Attributes:
        engine: ``torch``, ``onnx``, ``onnx-fused`` or ``tensorrt``.
        max_abs_diff: largest ``|x - x_torch|`` against torch eager on the quality set.
    """

    engine: str = "torch"
    max_abs_diff: float | None = None




def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can (an NVIDIA GPU and the package)."""
    if not torch.cuda.is_available():
        return "no NVIDIA GPU on this machine (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'anystep[gpu]')"
    return None


def ensure_export(model_dir: Path, work_dir: Path, *, fused_steps: int | None = None, solver: str = "euler",
                  exporter: str = "auto", log: Callable[[str], None] = print) -> Path:
    """The ONNX export of ``model_dir`` (single step, or a fused K-step graph), cached.

    Cached under ``work_dir/exports/<dir name>-<sha[:12]>-<graph>``, keyed by the model
    directory's content hash, so a re-run does not re-export.

    Returns:
        The folder holding ``model.onnx`` and ``anystep-export.json``.
    """
    from anystep.core.modeldir import model_dir_sha256
    from anystep.export.onnx_export import OnnxOptions, export_onnx

    sha = model_dir_sha256(model_dir)[:12]
    tag = "step" if fused_steps is None else f"fused{fused_steps}-{solver}"
    out = work_dir / "exports" / f"{model_dir.name}-{sha}-{tag}-{exporter}"
    if (out / "model.onnx").is_file() and (out / "anystep-export.json").is_file():
        return out
    t0 = time.perf_counter()
    log(f"[export] {model_dir.name}: {tag} ONNX graph -> {out}")
    opts = OnnxOptions(fused_steps=fused_steps, solver=solver, exporter=exporter)
    export_onnx(model_dir, out, opts, overwrite=True)
    log(f"[export] {model_dir.name}: {tag} done in {time.perf_counter() - t0:.0f} s")
    return out


class FusedOnnx:
    """A fused K-step sampler graph ``x0 -> x1`` on ONNX Runtime (CPU).

    Args:
        folder: export folder (``model.onnx`` + manifest).
        threads: intra-op threads.
    """

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x0: np.ndarray) -> np.ndarray:
        (y,) = self.session.run([self.output_name], {self.input_name: x0})
        return y


def _engine_flowmap_loop(engine: Any, K: int) -> Callable[[np.ndarray], np.ndarray]:
    """K-step flow-map sampling (eq. 3.6) through ``engine.step`` with per-sample times."""
    grid = np.linspace(0.0, 1.0, K + 1).astype(np.float32)
    cache: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def run(x: np.ndarray) -> np.ndarray:
        B = x.shape[0]
        times = cache.get(B)
        if times is None:
            times = [(np.full(B, grid[k], np.float32), np.full(B, grid[k + 1], np.float32)) for k in range(K)]
            cache[B] = times
        for s, t in times:
            x = engine.step(x, s, t)
        return x

    return run


def _engine_ode(engine: Any, solver: str, nfe: int | None, rtol: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """An ODE solve (eq. 3.1) whose velocity evaluations go through ``engine.velocity``."""
    from anystep.core.samplers import sample_ode

    def b(x: Tensor, t: Tensor) -> Tensor:
        return torch.from_numpy(engine.velocity(x.numpy(), t.to(torch.float32).numpy()))

    def run(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x)
        if solver == "dopri5":
            return sample_ode(b, xt, solver="dopri5", rtol=rtol).x.numpy()
        return sample_ode(b, xt, solver=solver, nfe=nfe).x.numpy()

    return run


@dataclass
class EngineCase:
    """One (engine, method) cell: a numpy sampler ``x0 -> x1`` and its NFE."""

    engine: str
    spec: MethodSpec
    run: Callable[[np.ndarray], np.ndarray]


def build_engine_cases(pair: ModelPair, settings: BenchSettings, work_dir: Path,
                       log: Callable[[str], None]) -> tuple[list[EngineCase], list[dict[str, str]]]:
    """The cells of the engine table and the engines skipped (with the reason)."""
    from anystep.server.engines import OnnxEngine, TensorRTEngine, TorchEngine, find_onnx_artifact

    cases: list[EngineCase] = []
    skipped: list[dict[str, str]] = []
    fm_specs = [MethodSpec(key=f"flowmap-{k}", family="flow map", steps=k, nfe=k) for k in settings.engine_steps]
    te_specs: list[MethodSpec] = []
    if settings.engine_teacher and pair.teacher is not None:
        te_specs = [MethodSpec(key="rk4-8", family="rk4", steps=2, nfe=8),
                    MethodSpec(key=f"dopri5-{min(settings.rtols):g}", family="dopri5", rtol=min(settings.rtols))]
    shape = pair.data_shape
    fm_ok = pair.flowmap is not None
    for eng in settings.engines:
        try:
            if eng == "torch":
                if fm_ok:
                    e = TorchEngine(pair.flowmap.model, shape, threads=settings.threads)
                    cases += [EngineCase("torch", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
                if te_specs:
                    e = TorchEngine(pair.teacher.model, shape, threads=settings.threads)
                    cases += [EngineCase("torch", s, _engine_ode(e, s.family, s.nfe, s.rtol)) for s in te_specs]
            elif eng == "onnx":
                if fm_ok:
                    d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
                    e = OnnxEngine(find_onnx_artifact(d), shape, kind="flowmap", providers=["CPUExecutionProvider"],
                                   intra_op_threads=settings.threads)
                    cases += [EngineCase("onnx", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
                if te_specs:
                    d = ensure_export(pair.teacher_dir, work_dir, exporter=settings.exporter, log=log)
                    e = OnnxEngine(find_onnx_artifact(d), shape, kind="velocity", providers=["CPUExecutionProvider"],
                                   intra_op_threads=settings.threads)
                    cases += [EngineCase("onnx", s, _engine_ode(e, s.family, s.nfe, s.rtol)) for s in te_specs]
            elif eng == "onnx-fused":
                if fm_ok:
                    for s in fm_specs:
                        d = ensure_export(pair.flowmap_dir, work_dir, fused_steps=s.steps, exporter=settings.exporter,
                                          log=log)
                        cases.append(EngineCase("onnx-fused", s, FusedOnnx(d, settings.threads)))
                for s in te_specs:
                    if s.family == "dopri5":
                        skipped.append({"engine": "onnx-fused", "method": s.label,
                                        "reason": "adaptive dopri5 cannot be unrolled into a fixed graph"})
                        continue
                    d = ensure_export(pair.teacher_dir, work_dir, fused_steps=s.steps, solver=s.family,
                                      exporter=settings.exporter, log=log)
                    cases.append(EngineCase("onnx-fused", s, FusedOnnx(d, settings.threads)))
            elif eng == "tensorrt":
                reason = tensorrt_unavailable_reason()
                if reason is not None:
                    skipped.append({"engine": "tensorrt", "method": "all", "reason": reason})
                    continue
                if fm_ok:  # pragma: no cover - needs a GPU
                    d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
                    e = TensorRTEngine(find_onnx_artifact(d), shape, max_batch=max(settings.batch_sizes))
                    cases += [EngineCase("tensorrt", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
        except ImportError as exc:
            skipped.append({"engine": eng, "method": "all", "reason": f"missing package: {exc}"})
        except AnystepError as exc:
            skipped.append({"engine": eng, "method": "all", "reason": str(exc).splitlines()[0]})
    return cases, skipped


# --------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------


def profile_call(fn: Callable[[], Any], *, calls: int = 200, top: int = 12) -> dict[str, Any]:
    """Where the time of ``fn`` goes: torch profiler operator table and cProfile functions.

    Args:
        fn: zero-argument call to profile (run once untimed first).
        calls: calls profiled.
        top: rows kept per table.

    Returns:
        ``{"wall_ms_per_call", "torch_ops": [{"name", "self_cpu_us_per_call", "calls_per_call"}],
        "python": [{"function", "tottime_us_per_call", "cumtime_us_per_call"}]}``.
    """
    import cProfile
    import pstats

    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = (time.perf_counter() - t0) / calls
    out: dict[str, Any] = {"wall_ms_per_call": wall * 1000.0, "calls": calls}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out["torch_ops"] = [
            {"name": e.key, "self_cpu_us_per_call": e.self_cpu_time_total / calls, "calls_per_call": e.count / calls}
            for e in rows
        ]
        out["torch_self_cpu_us_per_call"] = sum(e.self_cpu_time_total for e in prof.key_averages()) / calls
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - profiler unavailable
        out["torch_ops_error"] = str(exc)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    st = pstats.Stats(pr)
    items = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # by tottime
    out["python"] = [
        {"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "tottime_us_per_call": v[2] / calls * 1e6,
         "cumtime_us_per_call": v[3] / calls * 1e6}
        for k, v in items
    ]
    return out


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def _time_table(fns_by_batch: dict[int, dict[str, Callable[[], Any]]], settings: BenchSettings,
                log: Callable[[str], None], what: str) -> dict[int, TimingResult]:
    out: dict[int, TimingResult] = {}
    for b, fns in fns_by_batch.items():
        if not fns:
            continue
        res = interleaved_timing(fns, rounds=settings.rounds, warmup=settings.warmup, block_s=settings.block_s,
                                 budget_s=settings.budget_s, max_call_s=settings.max_call_s,
                                 seed=settings.seed + b, min_rounds=min(3, settings.rounds))
        log(f"[time] {what} batch {b}: {len(fns) - len(res.single_shot)} methods x {res.rounds} rounds in "
            f"{res.wall_s:.1f} s" + (f"; timed once (> {settings.max_call_s:g} s per call): "
                                     f"{', '.join(res.single_shot)}" if res.single_shot else ""))
        out[b] = res
    return out


def _mark_pareto(rows: Sequence[SamplerRow], primary: str | None, batch_sizes: Sequence[int]) -> None:
    if primary is None:
        return
    for b in batch_sizes:
        idx = [i for i, r in enumerate(rows) if b in r.latency and primary in r.quality]
        front = pareto_front([(rows[i].latency[b].median_ms, rows[i].quality[primary]) for i in idx])
        on = {idx[j] for j in front}
        for i in idx:
            rows[i].pareto[b] = i in on


def speedups(rows: Sequence[SamplerRow], primary: str | None, batch_sizes: Sequence[int],
             ref_key: str) -> list[dict[str, Any]]:
    """Speed-up of every flow-map row over the reference row (dopri5 at the tightest rtol).

    Returns:
        One dict per (flow-map row, batch): ``key``, ``batch``, ``speedup`` (reference
        median / row median), ``quality_ratio`` (row / reference primary metric),
        ``excess_ratio`` (the same for the KL minus the estimator floor, 2D only) and
        ``matched`` (quality no worse than the reference's: judged on the excess ratio
        when there is one).
    """
    by_key = {r.key: r for r in rows}
    ref = by_key.get(ref_key)
    out: list[dict[str, Any]] = []
    if ref is None:
        return out
    for r in rows:
        if r.family != "flow map":
            continue
        for b in batch_sizes:
            if b not in r.latency or b not in ref.latency:
                continue
            q = r.quality.get(primary) if primary else None
            qref = ref.quality.get(primary) if primary else None
            ratio = q / qref if (q is not None and qref) else None
            ex, exref = r.quality.get("kl_excess"), ref.quality.get("kl_excess")
            excess = ex / exref if (ex is not None and exref is not None and exref > 0) else None
            judged = excess if excess is not None else ratio
            out.append({"key": r.key, "steps": r.steps, "batch": b,
                        "speedup": ref.latency[b].median_ms / r.latency[b].median_ms,
                        "speedup_p95": ref.latency[b].p95_ms / r.latency[b].p95_ms,
                        "quality_ratio": ratio, "excess_ratio": excess,
                        "matched": (judged is not None and judged <= 1.0)})
    return out


def run_pair(pair: ModelPair, settings: BenchSettings, work_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """All tables of one model pair."""
    torch.manual_seed(settings.seed)
    shape = pair.data_shape
    is_image = len(shape) == 3
    n_q = settings.n_quality_images if is_image else settings.n_quality
    g = torch.Generator().manual_seed(settings.seed)
    x0_quality = torch.randn((n_q, *shape), generator=g)
    x0_batch = {b: torch.randn((b, *shape), generator=torch.Generator().manual_seed(settings.seed + 7 * b))
                for b in settings.batch_sizes}
    log(f"[{pair.name}] quality metric set-up ({'images' if is_image else '2D'}, n={n_q})")
    scorer = QualityScorer(pair.dataset, shape, settings)

    specs = [s for s in solver_methods(settings.steps, settings.solver_nfe, settings.rtols)
             if make_sampler(s, pair, x0_batch[settings.batch_sizes[0]]) is not None]
    # ---- quality (all methods on the same x0) -----------------------------------
    rows: dict[str, SamplerRow] = {}
    samples: dict[str, Tensor] = {}
    teacher_key = f"dopri5-{min(settings.rtols):g}"
    order = sorted(specs, key=lambda s: s.key != teacher_key)  # the teacher reference first (Teacher-FD)
    torch.set_num_threads(settings.quality_threads)  # untimed: use the cores
    for s in order:
        t0 = time.perf_counter()
        with torch.no_grad():
            x, nfe = sample_for_quality(s, pair, x0_quality)
        samples[s.key] = x
        ref = samples.get(teacher_key) if is_image else None
        q = scorer.score(x, teacher=ref)
        rows[s.key] = SamplerRow(key=s.key, label=s.label, family=s.family, steps=s.steps, rtol=s.rtol,
                                 nfe_quality=nfe, quality=q)
        log(f"[{pair.name}] quality {s.label}: nfe {nfe}, "
            + ", ".join(f"{k} {v:.4g}" for k, v in q.items()) + f" ({time.perf_counter() - t0:.1f} s)")
    # ---- latency, interleaved per batch size ------------------------------------
    torch.set_num_threads(settings.threads)
    fns_by_batch = {b: {s.key: make_sampler(s, pair, x0_batch[b]) for s in specs} for b in settings.batch_sizes}
    with torch.no_grad():
        timings = _time_table(fns_by_batch, settings, log, f"{pair.name} samplers")
    for b, res in timings.items():
        for k, secs in res.seconds.items():
            st = summarize(secs)
            rows[k].latency[b] = st
            rows[k].nfe[b] = int(res.outputs[k])
            rows[k].throughput[b] = b / (st.median_ms / 1000.0)
    row_list = [rows[s.key] for s in specs]
    _mark_pareto(row_list, scorer.primary, settings.batch_sizes)

    # ---- engines ------------------------------------------------------------------
    cases, skipped = build_engine_cases(pair, settings, work_dir, log)
    eng_rows: list[EngineRow] = []
    ref_np: dict[str, np.ndarray] = {}
    for c in cases:
        if c.engine == "torch":
            ref_np[c.spec.key] = samples[c.spec.key].numpy() if c.spec.key in samples else None
    for c in cases:
        log(f"[{pair.name}] quality through {c.engine}: {c.spec.label}")
        y = np.concatenate([c.run(np.ascontiguousarray(chunk.numpy())) for chunk in x0_quality.split(25_000)])
        ref = ref_np.get(c.spec.key)
        diff = float(np.max(np.abs(y - ref))) if ref is not None and ref.shape == y.shape else None
        q = scorer.score(torch.from_numpy(y), teacher=samples.get(teacher_key) if is_image else None)
        eng_rows.append(EngineRow(key=c.spec.key, label=c.spec.label, family=c.spec.family, steps=c.spec.steps,
                                  rtol=c.spec.rtol, quality=q, engine=c.engine, max_abs_diff=diff,
                                  nfe_quality=c.spec.nfe))
    fns_eng: dict[int, dict[str, Callable[[], Any]]] = {}
    for b in settings.batch_sizes:
        xb = np.ascontiguousarray(x0_batch[b].numpy())
        fns_eng[b] = {f"{c.engine}|{c.spec.key}": (lambda c=c, xb=xb: c.run(xb)) for c in cases}
    eng_timings = _time_table(fns_eng, settings, log, f"{pair.name} engines")
    by_id = {f"{r.engine}|{r.key}": r for r in eng_rows}
    for b, res in eng_timings.items():
        for k, secs in res.seconds.items():
            st = summarize(secs)
            r = by_id[k]
            r.latency[b] = st
            r.throughput[b] = b / (st.median_ms / 1000.0)
            r.nfe[b] = r.nfe_quality if r.nfe_quality is not None else rows[r.key].nfe.get(b, 0)
            if r.family == "dopri5" and r.key in rows:
                r.nfe[b] = rows[r.key].nfe.get(b, 0)

    result: dict[str, Any] = {
        "models": pair.describe(),
        "quality_metric": scorer.primary,
        "n_quality": n_q,
        "floor": scorer.floor,
        "rows": row_list,
        "speedup_vs": teacher_key,
        "speedups": speedups(row_list, scorer.primary, settings.batch_sizes, teacher_key),
        "engine_rows": eng_rows,
        "engine_skipped": skipped,
        "timing_rounds": {b: {"rounds": r.rounds, "wall_s": r.wall_s} for b, r in timings.items()},
    }
    return result


def evaluate_goals(results: dict[str, Any], settings: BenchSettings) -> list[dict[str, Any]]:
    """The issue's goals this benchmark measures, with what was measured against each."""
    goals: list[dict[str, Any]] = []
    cb = results.get("checkerboard")
    if cb is not None and cb.get("quality_metric") == "kl":
        rows = {r.key: r for r in cb["rows"]}
        fm, ref = rows.get("flowmap-1"), rows.get(cb["speedup_vs"])
        per_batch = []
        excess = None
        if fm is not None and ref is not None:
            kl_ratio = fm.quality["kl"] / ref.quality["kl"] if ref.quality.get("kl") else None
            floor = (cb.get("floor") or {}).get("kl")
            excess = None
            if floor is not None and ref.quality["kl"] - floor > 0:
                excess = (fm.quality["kl"] - floor) / (ref.quality["kl"] - floor)
            judged = excess if excess is not None else kl_ratio
            for b in settings.batch_sizes:
                if b in fm.latency and b in ref.latency:
                    sp = ref.latency[b].median_ms / fm.latency[b].median_ms
                    per_batch.append({"batch": b, "speedup": sp, "kl_ratio": kl_ratio, "excess_kl_ratio": excess,
                                      "met": bool(sp >= GOAL_SPEEDUP and judged is not None
                                                  and judged <= GOAL_KL_RATIO)})
        goals.append({
            "goal": f"flow map steps=1 >= {GOAL_SPEEDUP:g}x faster than dopri5 (rtol {min(settings.rtols):g}) "
                    f"at <= {GOAL_KL_RATIO:g}x its KL (checkerboard)",
            "judged_on": "KL minus the estimator floor (finite-sample bias removed)" if excess is not None
            else "raw KL",
            "per_batch": per_batch,
            "met": bool(per_batch) and all(p["met"] for p in per_batch),
        })
    for name, res in results.items():
        er = {(r.engine, r.key): r for r in res["engine_rows"]}
        ks = sorted(r.steps for r in res["engine_rows"] if r.engine == "torch" and r.family == "flow map"
                    and ("onnx", r.key) in er and 1 in r.latency and 1 in er[("onnx", r.key)].latency)
        if not ks:
            continue
        key = f"flowmap-{ks[0]}"  # the fewest steps: closest to "one step"
        t, o = er[("torch", key)], er[("onnx", key)]
        sp = t.latency[1].median_ms / o.latency[1].median_ms
        f = er.get(("onnx-fused", key))
        goals.append({
            "goal": f"ONNX Runtime >= {GOAL_ONNX_SPEEDUP:g}x torch eager per step at batch 1 on CPU ({name})",
            "steps": ks[0],
            "torch_ms": t.latency[1].median_ms / ks[0], "onnx_ms": o.latency[1].median_ms / ks[0],
            "onnx_fused_ms": f.latency[1].median_ms / ks[0] if f is not None and 1 in f.latency else None,
            "speedup": sp, "met": bool(sp >= GOAL_ONNX_SPEEDUP),
        })
    return goals


def profile_missed(results: dict[str, Any], goals: list[dict[str, Any]], pairs: dict[str, ModelPair],
                   settings: BenchSettings, work_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Profile the calls behind missed goals (one flow-map step at batch 1, dopri5 at batch 1)."""
    out: dict[str, Any] = {}
    for g in goals:
        if g["met"]:
            continue
        if g["goal"].startswith("ONNX"):
            name = g["goal"].rsplit("(", 1)[1].rstrip(")")
            pair = pairs[name]
            from anystep.server.engines import OnnxEngine, TorchEngine, find_onnx_artifact

            x = np.random.default_rng(0).standard_normal((1, *pair.data_shape)).astype(np.float32)
            s, t = np.zeros(1, np.float32), np.ones(1, np.float32)
            te = TorchEngine(pair.flowmap.model, pair.data_shape, threads=settings.threads)
            d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
            oe = OnnxEngine(find_onnx_artifact(d), pair.data_shape, kind="flowmap",
                            providers=["CPUExecutionProvider"], intra_op_threads=settings.threads)
            log(f"[profile] {name}: one step at batch 1, torch vs onnx")
            out[f"{name}: torch engine step, batch 1"] = profile_call(lambda e=te, x=x, s=s, t=t: e.step(x, s, t))
            out[f"{name}: onnx engine step, batch 1"] = profile_call(lambda e=oe, x=x, s=s, t=t: e.step(x, s, t))
        elif g["goal"].startswith("flow map") and "checkerboard" in pairs:
            pair = pairs["checkerboard"]
            x = torch.randn(1, *pair.data_shape, generator=torch.Generator().manual_seed(0))
            spec_fm = MethodSpec(key="flowmap-1", family="flow map", steps=1, nfe=1)
            spec_ref = MethodSpec(key="dopri5", family="dopri5", rtol=min(settings.rtols))
            log("[profile] checkerboard: flow map 1 step and dopri5 at batch 1")
            with torch.no_grad():
                out["checkerboard: flow map K=1, batch 1"] = profile_call(make_sampler(spec_fm, pair, x))
                out["checkerboard: dopri5, batch 1"] = profile_call(make_sampler(spec_ref, pair, x), calls=5)
    return out


def run(settings: BenchSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Run the benchmark and write ``latency.{json,md,png}`` to ``out_dir``.

    Returns:
        The result dict written to ``latency.json`` (with dataclass rows).
    """
    torch.set_num_threads(settings.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    machine = machine_info()
    pairs: dict[str, ModelPair] = {}
    for name in settings.models:
        pairs[name] = load_pair(name, Path(settings.models_dir))
    results: dict[str, Any] = {}
    for name, pair in pairs.items():
        log(f"[{name}] flow map: {pair.flowmap_dir}, teacher: {pair.teacher_dir}")
        results[name] = run_pair(pair, settings, work_dir, log)
    goals = evaluate_goals(results, settings)
    profiles = profile_missed(results, goals, pairs, settings, work_dir, log) if settings.profile else {}
    data = {
        "benchmark": "latency",
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t_start,
        "machine": machine,
        "machine_description": machine.describe(),
        "load_average": load_average(),
        "versions": versions(("torch", "numpy", "onnxruntime", "onnx", "tensorrt")),
        "settings": settings,
        "results": results,
        "goals": goals,
        "profiles": profiles,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        md_path = out_dir / "latency.md"
        notes = existing_notes(md_path)
        png = None
        try:
            png = make_plot(results, settings, out_dir / "latency.png")
        except ImportError as exc:  # pragma: no cover - matplotlib missing
            log(f"[plot] skipped: {exc}")
        data["plot"] = str(png) if png else None
        paths = write_results(out_dir, "latency", data, render_markdown(data, notes))
        log(f"[done] {paths.json}, {paths.markdown}" + (f", {png}" if png else ""))
    return data




# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated integers, e.g. 1,16,256; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be integers >= 1, got {text!r}")
    return vals


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated numbers, e.g. 1e-3,1e-5; got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one value")
    return vals


def _names(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    if not vals:
        raise argparse.ArgumentTypeError("give at least one name")
    return vals


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.latency``."""
    d = BenchSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Time flow-map sampling against the teacher's ODE solvers (and across engines) with the "
                    "quality each buys; writes latency.{json,md,png}.",
    )
    p.add_argument("--quick", action="store_true", help="about a minute: fewer batch sizes, methods, rounds and "
                   "quality samples (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--models", type=_names, default=None, help="pair names (default checkerboard,digits): "
                   "<models-dir>/<name> is the flow map, <models-dir>/<name>-teacher the velocity teacher")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="default 1,16,256")
    p.add_argument("--steps", type=_ints, default=None, help="flow-map steps K (default 1,2,4,8)")
    p.add_argument("--solver-nfe", type=_ints, default=None, help="Euler/Heun/RK4 NFE budgets (default 1,...,32)")
    p.add_argument("--rtols", type=_floats, default=None, help="dopri5 tolerances (default 1e-3,1e-5)")
    p.add_argument("--engines", type=_names, default=None, help="default torch,onnx,onnx-fused,tensorrt")
    p.add_argument("--engine-steps", type=_ints, default=None, help="flow-map K of the engine table (default 1,2,4,8)")
    p.add_argument("--no-engine-teacher", action="store_true", help="engine table: flow map rows only")
    p.add_argument("--n-quality", type=int, default=None, help=f"2D quality points (default {d.n_quality:,})")
    p.add_argument("--n-quality-images", type=int, default=None,
                   help=f"image quality samples (default {d.n_quality_images:,})")
    p.add_argument("--rounds", type=int, default=None, help=f"interleaved timing rounds (default {d.rounds})")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds per timing run, one table and batch size (default {d.budget_s:g})")
    p.add_argument("--max-call-s", type=float, default=None,
                   help=f"a call slower than this is timed once (default {d.max_call_s:g})")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--exporter", default=None, choices=("auto", "dynamo", "torchscript"), help="ONNX exporter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-profile", action="store_true", help="do not profile missed goals")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--work-dir", type=Path, default=None, help="export cache (default runs/latency)")
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Resolve ``--quick`` and explicit options into :class:`BenchSettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("models", "batch_sizes", "steps", "solver_nfe", "rtols", "engines", "engine_steps", "n_quality",
                 "n_quality_images", "rounds", "budget_s", "max_call_s", "threads", "exporter"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    if args.models_dir is not None:
        kw["models_dir"] = args.models_dir
    elif os.environ.get("ANYSTEP_MODELS_DIR"):
        kw["models_dir"] = Path(os.environ["ANYSTEP_MODELS_DIR"])
    if args.no_engine_teacher:
        kw["engine_teacher"] = False
    if args.no_profile:
        kw["profile"] = False
    return BenchSettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.latency``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except LatencyBenchError as e:
        parser.error(str(e))
    out = args.out or REPO_ROOT / "benchmarks" / "results"
    work = args.work_dir or REPO_ROOT / "runs" / "latency"
    from anystep.errors import USER_ERRORS

    try:
        run(settings, out_dir=out, work_dir=work,
            command=command_line(sys.argv[1:] if argv is None else argv, module=MODULE),
            log=lambda m: print(m, flush=True))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
