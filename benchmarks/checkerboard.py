"""The paper's 2D checkerboard experiment (Sec. 4.1, App. D.1, Table 3, Figs. 3 and 5), every objective.

One command trains, evaluates, plots and bundles::

    python -m anystep.benchmarks.checkerboard            # full run (see --help for the budget)
    python -m anystep.benchmarks.checkerboard --quick    # a few minutes, small net

Stages (methods that do not depend on each other run one after the other in this
process, each with the same backbone, the same number of optimisation steps, the same
batch size and learning-rate schedule, and the same seed):

1. the stochastic-interpolant teacher velocity ``b_t`` (eq. 3.14, preset
   ``checkerboard-velocity``), the reference "SI" of Table 3;
2. the flow maps: LMD (eq. 3.7) and EMD (eq. 3.9) distilled from the teacher; FMM
   (eq. 3.15) with ``N = 1`` (whole square) and ``N = 4`` (window ``|t - s| <= 1/4``);
   PFMM (eq. 3.16) distilling the 4-step FMM map into one step, warm-started from it;
   the stop-gradient Eulerian estimator (successors §1); LSD / ESD / PSD
   self-distillation (successors §2); AYF-EMD / AYF-LMD from the teacher (successors §3);
   optionally the negative controls ``ee_naive`` (eq. B.6) and ``denoiser`` (eq. B.1);
3. evaluation on ``n`` base points ``x0 ~ N(0, I)`` shared by every method: for each map
   and K = 1, 2, 4, 8 uniform steps, ``KL(rho_1 || rho_hat_1)``
   (:func:`anystep.core.metrics.kl_divergence_2d` with the exact checkerboard density),
   ``W_2^2`` to fresh target samples and to the teacher's samples (exact OT on a
   subsample, :func:`anystep.core.metrics.w2_squared`), and the coupling error
   ``E|X^SI_{0,1}(x0) - X_hat_{0,1}(x0)|^2`` against the dopri5 teacher on the same
   ``x0`` (:func:`anystep.core.metrics.coupling_l2`); the teacher itself with dopri5 and
   Euler 1, 2, 4, 8, 16; and the estimator floors (fresh data samples scored the same way);
4. figures (Fig. 3 top and bottom, every method at every step count, Fig. 5) and
   ``checkerboard.json`` / ``checkerboard.md`` in ``--out``;
5. the best one-step map (lowest one-step KL) and the teacher are copied to
   ``models/checkerboard`` and ``models/checkerboard-teacher`` (full runs only), with the
   preset, method, budget, command and scores in ``config.json``'s provenance.

Training runs live in ``--work-dir`` (default ``runs/checkerboard``, git-ignored). A run
whose directory already holds a finished model trained with the identical config is
reused, an interrupted one is resumed from its checkpoint, so the command can be
re-run after an interruption.

Time convention: ``t = 0`` base (Gaussian), ``t = 1`` data (checkerboard).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anystep.benchmarks.common import (
    NOTES_BEGIN,
    NOTES_END,
    Stopwatch,
    command_line,
    existing_notes,
    fmt,
    load_average,
    machine_info,
    markdown_table,
    pyplot,
    write_results,
)
from anystep.errors import AnystepError

__all__ = [
    "METHODS",
    "BenchmarkError",
    "EvalContext",
    "MethodSpec",
    "Settings",
    "StepMetrics",
    "build_parser",
    "build_train_config",
    "main",
    "resolve_methods",
    "run",
    "score_samples",
]

MODULE = "anystep.benchmarks.checkerboard"
EVAL_STEPS = (1, 2, 4, 8)
EULER_STEPS = (1, 2, 4, 8, 16)
OUTSIDE_COLOUR = "#ffd400"  # yellow: samples that land off the board (Fig. 3, bottom)


class BenchmarkError(AnystepError):
    """Invalid benchmark options or run directories; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One row of the benchmark.

    Attributes:
        key: short name used on the command line and as the run directory (``"lmd"``).
        label: row label in tables and figures (``"LMD"``).
        preset: training preset the config starts from (``anystep.training.presets``).
        objective: objective replacing the preset's (negative controls), or None.
        hparams: objective hyper-parameters added to the preset's.
        teacher: key of the method whose model is the frozen teacher, or None.
        init_from: key of the method whose weights warm-start this one, or None.
        table3_steps: steps at which the paper's Table 3 scores the method (FMM N=4: 4).
        paper: the paper's Table 3 numbers ``{"kl", "w2_target", "w2_teacher", "l2"}``.
        one_step: True when the map is meant to be used in one step (candidate for the
            bundled model; FMM N=4 is a 4-step map, negative controls never qualify).
        control: negative control (biased or wrong minimiser), reported but never bundled.
        note: one line on what the row is.
    """

    key: str
    label: str
    preset: str
    objective: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    init_from: str | None = None
    table3_steps: int = 1
    paper: dict[str, float | None] = field(default_factory=dict)
    one_step: bool = True
    control: bool = False
    note: str = ""

    @property
    def kind(self) -> str:
        """``"velocity"`` for the teacher, ``"flowmap"`` for every other row."""
        return "velocity" if self.key == "si" else "flowmap"


def _paper(kl: float, w2: float, w2t: float | None, l2: float | None) -> dict[str, float | None]:
    return {"kl": kl, "w2_target": w2, "w2_teacher": w2t, "l2": l2}


METHODS: dict[str, MethodSpec] = {
    m.key: m
    for m in (
        MethodSpec("si", "SI (teacher)", "checkerboard-velocity", paper=_paper(0.020, 0.026, 0.0, 0.0),
                   one_step=False, note="velocity b_t (eq. 3.14); sampled with dopri5 / Euler"),
        MethodSpec("lmd", "LMD", "checkerboard-lmd", teacher="si", paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="Lagrangian map distillation (eq. 3.7)"),
        MethodSpec("emd", "EMD", "checkerboard-emd", teacher="si", paper=_paper(0.079, 0.029, 0.010, 0.011),
                   note="Eulerian map distillation (eq. 3.9)"),
        MethodSpec("fmm1", "FMM, N=1", "checkerboard-fmm1", paper=_paper(0.104, 0.021, None, 0.026),
                   note="flow map matching (eq. 3.15) on the whole square"),
        MethodSpec("fmm4", "FMM, N=4", "checkerboard-fmm4", table3_steps=4, one_step=False,
                   paper=_paper(0.045, 0.014, None, 0.024),
                   note="flow map matching with |t-s| <= 1/4; a 4-step map (PFMM's teacher)"),
        MethodSpec("pfmm", "PFMM, N=1", "checkerboard-pfmm", teacher="fmm4", init_from="fmm4",
                   paper=_paper(0.043, 0.014, None, 0.023),
                   note="progressive FMM (eq. 3.16): FMM N=4 (4 steps) distilled to one step"),
        MethodSpec("ee", "EE (stop-grad)", "checkerboard-ee",
                   note="Eulerian estimation with stop-gradient (successors §1), no teacher"),
        MethodSpec("lsd", "LSD", "checkerboard-lsd", note="Lagrangian self-distillation (successors §2)"),
        MethodSpec("esd", "ESD", "checkerboard-esd", note="Eulerian self-distillation (successors §2)"),
        MethodSpec("psd", "PSD", "checkerboard-psd", note="progressive self-distillation (successors §2)"),
        MethodSpec("ayf_emd", "AYF-EMD", "checkerboard-ayf-emd", teacher="si",
                   note="Align Your Flow, Eulerian (successors §3)"),
        MethodSpec("ayf_lmd", "AYF-LMD", "checkerboard-ayf-lmd", teacher="si",
                   note="Align Your Flow, Lagrangian (successors §3)"),
        MethodSpec("ee_naive", "EE naive (control)", "checkerboard-ee", objective="ee_naive", control=True,
                   note="negative control: biased Eulerian estimator without stop-gradient (eq. B.6)"),
        MethodSpec("denoiser", "Denoiser (control)", "checkerboard-ee", objective="denoiser", control=True,
                   note="negative control: converges to the denoiser E[I_t | I_s] (eq. B.1), not the map"),
    )
}
DEFAULT_METHODS = ("si", "lmd", "emd", "fmm1", "fmm4", "pfmm", "ee", "lsd", "esd", "psd", "ayf_emd", "ayf_lmd")


def resolve_methods(requested: Sequence[str] | str | None) -> list[MethodSpec]:
    """The methods to run, with their dependencies, in a valid training order.

    Args:
        requested: keys (or one comma-separated string); None or ``"all"`` for the
            default set, ``"all+controls"`` adds the negative controls.

    Returns:
        Specs in :data:`METHODS` order; the teacher ``si`` is always included (every
        metric is relative to it), and a method's teacher / warm start comes first.

    Raises:
        BenchmarkError: an unknown key.
    """
    if requested is None:
        keys = list(DEFAULT_METHODS)
    else:
        items = requested.split(",") if isinstance(requested, str) else list(requested)
        keys = []
        for item in (s.strip().lower().replace("-", "_") for s in items):
            if not item:
                continue
            if item == "all":
                keys += list(DEFAULT_METHODS)
            elif item in ("all+controls", "all_controls", "everything"):
                keys += list(METHODS)
            elif item in METHODS:
                keys.append(item)
            else:
                raise BenchmarkError(
                    f"--methods: unknown method {item!r}; choose from {', '.join(METHODS)} "
                    "(or 'all', 'all+controls')"
                )
    wanted = set(keys) | {"si"}
    changed = True
    while changed:
        changed = False
        for k in list(wanted):
            for dep in (METHODS[k].teacher, METHODS[k].init_from):
                if dep is not None and dep not in wanted:
                    wanted.add(dep)
                    changed = True
    return [METHODS[k] for k in METHODS if k in wanted]


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything the benchmark's numbers depend on (recorded in the JSON).

    Attributes:
        quick: the ``--quick`` preset of the other fields.
        width: MLP hidden width (paper: 512) for every model.
        depth: MLP hidden layers (paper: 6).
        steps: optimisation steps per method (paper: 5e4).
        batch_size: samples per step.
        lr: peak learning rate (Adam).
        lr_min: final learning rate of the cosine decay.
        lr_warmup_steps: linear warm-up.
        ema_decay: EMA of the weights used for evaluation.
        grad_clip: global gradient-norm clip (None: off).
        seed: seed of every training run and of the evaluation draws.
        n_samples: base points per evaluation (KL and coupling use all of them).
        w2_samples: subsample size for the exact-OT ``W_2^2``.
        kl_bins: histogram cells per axis of the KL estimator.
        kl_range: ``(lo, hi)`` of the KL grid on both axes.
        rtol: dopri5 tolerance (atol = rtol) for the teacher's reference samples.
        threads: ``torch.set_num_threads``.
        size_samples: base points (the first ones of the shared ``x0``) for the
            teacher-size comparison.
        teacher_sizes: extra teacher nets ``(width, depth)`` for the size comparison.
        methods: keys of the methods run.
    """

    quick: bool = False
    width: int = 256
    depth: int = 4
    steps: int = 6000
    batch_size: int = 1000
    lr: float = 1e-3
    lr_min: float = 1e-5
    lr_warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    n_samples: int = 200_000
    w2_samples: int = 3000
    kl_bins: int = 100
    kl_range: tuple[float, float] = (-4.5, 4.5)
    rtol: float = 1e-4
    threads: int = 2
    size_samples: int = 50_000
    teacher_sizes: tuple[tuple[int, int], ...] = ()
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise BenchmarkError(msg)

        for name in ("width", "depth", "steps", "batch_size", "threads"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        need(self.n_samples >= 1000, f"--n-samples must be >= 1000 (the issue asks for >= 20000), got {self.n_samples}")
        need(self.w2_samples >= 100, f"--w2-samples must be >= 100, got {self.w2_samples}")
        need(self.lr > 0 and 0 <= self.lr_min <= self.lr, f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        need(0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        need(self.rtol > 0, f"--rtol must be > 0, got {self.rtol}")
        need(self.kl_bins >= 10, f"kl_bins must be >= 10, got {self.kl_bins}")


QUICK = {
    "width": 64, "depth": 3, "steps": 300, "batch_size": 256, "lr": 2e-3, "lr_warmup_steps": 20,
    "ema_decay": 0.99, "n_samples": 20_000, "w2_samples": 1000, "rtol": 1e-4,
}


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def build_train_config(spec: MethodSpec, settings: Settings, work_dir: Path, *, width: int | None = None,
                       depth: int | None = None):
    """The :class:`~anystep.training.config.TrainConfig` of one method.

    Starts from the method's preset (paper architecture and objective settings) and
    overrides the budget shared by all methods: network size, steps, batch size, Adam
    with linear warm-up and cosine decay from ``lr`` to ``lr_min``, EMA, gradient clip,
    seed; no periodic evaluation (this benchmark evaluates at the end), a checkpoint
    every 1000 steps (so interrupted runs resume).

    Args:
        spec: the method.
        settings: the shared budget.
        work_dir: folder of the run directories (teachers are ``work_dir/<key>``).
        width, depth: override the network size (teacher-size comparison).

    Returns:
        The TrainConfig.
    """
    from anystep.training.config import apply_overrides
    from anystep.training.presets import get_preset

    cfg = get_preset(spec.preset)
    sets = [
        f"model.backbone.width={width or settings.width}",
        f"model.backbone.depth={depth or settings.depth}",
        f"max_steps={settings.steps}",
        f"batch_size={settings.batch_size}",
        f"lr={settings.lr}",
        "lr_schedule=cosine",
        f"lr_min={settings.lr_min}",
        "lr_decay_start=0",
        f"lr_warmup_steps={min(settings.lr_warmup_steps, settings.steps - 1)}",
        f"ema_decay={settings.ema_decay}",
        f"grad_clip={json.dumps(settings.grad_clip)}",
        f"seed={settings.seed}",
        "eval_every=-1",
        f"ckpt_every={min(1000, settings.steps)}",
        f"log_every={max(1, min(100, settings.steps // 10))}",
        "device=cpu",
    ]
    if spec.objective is not None:
        sets.append(f"objective={spec.objective}")
    for k, v in spec.hparams.items():
        sets.append(f"objective_hparams.{k}={json.dumps(v)}")
    cfg = apply_overrides(cfg, sets)
    changes: dict[str, Any] = {}
    if spec.teacher is not None:
        changes["teacher"] = str(work_dir / spec.teacher)
    if spec.init_from is not None:
        changes["init_from"] = str(work_dir / spec.init_from)
    if spec.objective is not None:
        changes["preset"] = f"{spec.preset} (objective={spec.objective})"
    return cfg.replace(**changes) if changes else cfg


@dataclass
class TrainRecord:
    """How one model was trained.

    Attributes:
        key: method key (or ``si_WxD`` for the size comparison).
        run_dir: its run/model directory.
        objective: objective name.
        preset: preset name recorded in the model's provenance.
        steps: optimisation steps.
        seconds: training wall time (from the run's log when reused).
        ms_per_step: ``1000 * seconds / steps``.
        final_loss: last logged loss.
        reused: True when a finished run with the identical config was found.
        resumed_from: checkpoint step it resumed from, or None.
        load_avg: 1-minute load average when training ended (other processes share the CPU).
        params: number of parameters.
    """

    key: str
    run_dir: str
    objective: str
    preset: str | None
    steps: int
    seconds: float
    ms_per_step: float
    final_loss: float | None
    reused: bool
    resumed_from: int | None
    load_avg: float | None
    params: int




def train_one(key: str, cfg, run_dir: Path, *, fresh: bool, progress: bool, log) -> TrainRecord:
    """Train (or reuse / resume) one run directory.

    Args:
        key: method key.
        cfg: its TrainConfig.
        run_dir: run directory.
        fresh: delete an existing run directory first.
        progress: tqdm progress bar.
        log: ``log(str)`` for one-line status messages.

    Returns:
        :class:`TrainRecord`.

    Raises:
        BenchmarkError: the directory holds a run of another config (and not ``fresh``).
    """
    from anystep.core.modeldir import load_model_dir
    from anystep.training.checkpoint import find_checkpoint
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import TRAIN_CONFIG_NAME, Trainer, read_log

    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    saved_cfg = run_dir / TRAIN_CONFIG_NAME
    reused = False
    resume = False
    if saved_cfg.is_file():
        same = TrainConfig.load(saved_cfg).to_dict() == cfg.to_dict()
        if not same:
            raise BenchmarkError(
                f"{run_dir} holds a run with a different config; pass --retrain {key} (or --fresh) to "
                "retrain it, or choose another --work-dir"
            )
        if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
            reused = True
        elif find_checkpoint(run_dir) is not None:
            resume = True
        else:
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise BenchmarkError(f"{run_dir} exists and is not a benchmark run; remove it or pass --fresh")

    resumed_from = None
    if reused:
        log(f"[{key}] reusing the finished run in {run_dir}")
    else:
        log(f"[{key}] training {cfg.objective} for {cfg.max_steps} steps -> {run_dir}"
            + (" (resuming)" if resume else ""))
        res = Trainer(cfg, run_dir, resume=resume, eval_fn=None, progress=progress).fit()
        resumed_from = res.resumed_from
    rows = [r for r in read_log(run_dir) if "loss" in r]
    seconds = float(rows[-1]["time"]) if rows else float("nan")
    final_loss = float(rows[-1]["loss"]) if rows else None
    model = load_model_dir(run_dir).model
    rec = TrainRecord(
        key=key,
        run_dir=str(run_dir),
        objective=cfg.objective,
        preset=cfg.preset,
        steps=int(cfg.max_steps),
        seconds=seconds,
        ms_per_step=1000.0 * seconds / max(1, cfg.max_steps),
        final_loss=final_loss,
        reused=reused,
        resumed_from=resumed_from,
        load_avg=(load_average() or [None])[0],
        params=int(sum(p.numel() for p in model.parameters())),
    )
    log(f"[{key}] done: {rec.seconds:.0f} s ({rec.ms_per_step:.1f} ms/step), final loss {fmt(final_loss)}")
    return rec


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


@dataclass
class StepMetrics:
    """Scores of one set of samples ``x_hat_1 = X_hat(x0)`` (Table 3 columns, plus extras).

    Attributes:
        kl: ``KL(rho_1 || rho_hat_1)`` (histogram estimator, exact target density).
        kl_ratio: ``kl`` divided by the dopri5 teacher's ``kl`` (None for the floor rows).
        w2_target: ``W_2^2`` to fresh checkerboard samples (subsample).
        w2_teacher: ``W_2^2`` to the dopri5 teacher's samples (subsample).
        coupling_l2: ``E|X^SI_{0,1}(x0) - X_hat(x0)|^2`` on the shared ``x0`` (None when
            the samples do not come from the shared ``x0``).
        outside: fraction of samples off the board (target density 0; yellow in Fig. 3).
        nfe: network evaluations per sample.
    """

    kl: float
    kl_ratio: float | None
    w2_target: float
    w2_teacher: float | None
    coupling_l2: float | None
    outside: float
    nfe: int | None = None


@dataclass
class EvalContext:
    """What every method is scored against.

    Attributes:
        x0: ``[n, 2]`` shared base points.
        x_si: ``[n, 2]`` the dopri5 teacher ``X^SI_{0,1}(x0)``.
        target_w2: ``[w2_samples, 2]`` fresh checkerboard samples for ``W_2^2``.
        settings: the benchmark settings.
        kl_teacher: the teacher's dopri5 KL (denominator of ``kl_ratio``), set once known.
    """

    x0: Tensor
    x_si: Tensor | None
    target_w2: np.ndarray
    settings: Settings
    kl_teacher: float | None = None


def _kl(x: np.ndarray, settings: Settings) -> float:
    from anystep.core.data import checkerboard_density
    from anystep.core.metrics import kl_divergence_2d

    return float(kl_divergence_2d(None, x, bins=settings.kl_bins, range_=tuple(settings.kl_range),
                                  target_density=checkerboard_density))


def _outside(x: np.ndarray) -> float:
    from anystep.core.data import checkerboard_density

    finite = np.all(np.isfinite(x), axis=1)
    dens = np.zeros(len(x))
    dens[finite] = checkerboard_density(x[finite])
    return float(np.mean(dens <= 0))


def score_samples(x: Tensor | np.ndarray, ctx: EvalContext, *, coupled: bool = True,
                  nfe: int | None = None) -> StepMetrics:
    """Score samples ``[n, 2]`` (rows from ``ctx.x0`` when ``coupled``) with every metric.

    ``W_2^2`` subsamples ``settings.w2_samples`` rows with a fixed seed (the same rows for
    every method: common random numbers), against ``ctx.target_w2`` and against the
    teacher's samples. Non-finite rows count as off the board and in the KL overflow
    cell; they are dropped for ``W_2^2`` and make ``coupling_l2`` infinite.

    Args:
        x: samples ``[n, 2]``.
        ctx: evaluation context.
        coupled: row ``i`` was produced from ``ctx.x0[i]`` (else no coupling error).
        nfe: network evaluations per sample, recorded as is.

    Returns:
        :class:`StepMetrics`.
    """
    from anystep.core.metrics import coupling_l2, w2_squared

    s = ctx.settings
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BenchmarkError(f"score_samples needs [n, 2] samples, got shape {list(arr.shape)}")
    finite = np.all(np.isfinite(arr), axis=1)
    kl = _kl(arr, s)
    ok = arr[finite]
    w2_t = float(w2_squared(ok, ctx.target_w2, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else float("inf")
    w2_s = None
    l2 = None
    if ctx.x_si is not None:
        ref = ctx.x_si.double().numpy()
        w2_s = float(w2_squared(ok, ref, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else float("inf")
        if coupled and arr.shape == ref.shape:
            l2 = float(coupling_l2(ref, arr)) if finite.all() else float("inf")
    ratio = kl / ctx.kl_teacher if ctx.kl_teacher else None
    return StepMetrics(kl=kl, kl_ratio=ratio, w2_target=w2_t, w2_teacher=w2_s, coupling_l2=l2,
                       outside=_outside(arr), nfe=nfe)


@torch.no_grad()
def _sample_map(model: nn.Module, x0: Tensor, steps: int, chunk: int = 50_000) -> Tensor:
    from anystep.core.samplers import sample_flowmap

    return torch.cat([sample_flowmap(model, c, steps=steps).x for c in x0.split(chunk)])


@torch.no_grad()
def _sample_ode(model: nn.Module, x0: Tensor, solver: str, steps: int | None, rtol: float,
                chunk: int = 25_000) -> tuple[Tensor, int]:
    from anystep.core.samplers import sample_ode

    outs, nfe = [], 0
    for c in x0.split(chunk):
        res = sample_ode(model, c, solver=solver, steps=steps, rtol=rtol)
        outs.append(res.x)
        nfe = max(nfe, res.nfe)
    return torch.cat(outs), nfe


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------

LIM = 4.5  # half-width of the plotted square (the board is [-4, 4]^2)


def _hist_panel(ax, x: np.ndarray, title: str) -> None:
    """2D histogram of samples on ``[-LIM, LIM]^2`` (the look of Fig. 3, top)."""
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=180, range=[[-LIM, LIM], [-LIM, LIM]])
    ax.imshow(np.sqrt(h.T), origin="lower", extent=(-LIM, LIM, -LIM, LIM), cmap="viridis",
              interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _base_colours(x0: np.ndarray) -> np.ndarray:
    """Colour of each base point ``[n, 2] -> [n, 3]`` RGB: its angle in base space.

    The hue runs from green through blue and magenta to red (0.25 -> 0.97), skipping
    the yellow that marks off-board points; points near the origin are paler.
    """
    from matplotlib.colors import hsv_to_rgb

    angle = (np.arctan2(x0[:, 1], x0[:, 0]) + np.pi) / (2 * np.pi)
    radius = np.linalg.norm(x0, axis=1)
    hsv = np.stack([0.25 + 0.72 * angle, 0.35 + 0.6 * np.tanh(radius), np.full(len(x0), 0.85)], axis=1)
    return hsv_to_rgb(hsv)


def _assignment_panel(ax, x0: np.ndarray, x: np.ndarray, title: str) -> None:
    """Fig. 3 bottom: where each base point lands, coloured by its base angle; off-board points yellow."""
    from anystep.core.data import checkerboard_density

    cols = _base_colours(x0)
    finite = np.all(np.isfinite(x), axis=1)
    dens = np.zeros(len(x))
    dens[finite] = checkerboard_density(x[finite])
    off = dens <= 0
    ax.scatter(x[~off, 0], x[~off, 1], c=cols[~off], s=0.3, linewidths=0, rasterized=True)
    ax.scatter(x[off & finite, 0], x[off & finite, 1], c=OUTSIDE_COLOUR, s=1.2, linewidths=0, rasterized=True)
    ax.set_xlim(-LIM, LIM)
    ax.set_ylim(-LIM, LIM)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _coupling_panel(ax, x0: np.ndarray, err: np.ndarray, title: str):
    """Fig. 5: coupling error ``|X^SI(x0) - X_hat(x0)|^2`` as colour over the base points."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    e = np.where(np.isfinite(err), err, 1e3)
    order = np.argsort(e)  # large errors on top
    sc = ax.scatter(x0[order, 0], x0[order, 1], c=np.clip(e[order], 1e-3, 1e2), s=0.5, linewidths=0,
                    cmap=plt.get_cmap("magma"), norm=LogNorm(vmin=1e-3, vmax=1e2), rasterized=True)
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return sc


def _grid(n: int, ncols: int) -> tuple[int, int]:
    return max(1, math.ceil(n / ncols)), min(n, ncols)


def make_figures(out_dir: Path, specs: list[MethodSpec], samples: dict[str, dict[int, np.ndarray]],
                 x0: np.ndarray, x_si: np.ndarray, euler: dict[int, np.ndarray], data: np.ndarray,
                 metrics: dict[str, dict[int, StepMetrics]], teacher_metrics: StepMetrics,
                 n_points: int = 20_000) -> list[str]:
    """Write the figures; return their file names.

    * ``checkerboard_fig3.png``: the paper's Fig. 3 (top: sample histograms of SI
      (dopri5), FMM N=1, FMM N=4 (4 steps), PFMM, LMD, EMD; bottom: their base-point
      assignments), with KL in the titles.
    * ``checkerboard_samples.png``: every method at 1, 2, 4, 8 steps (SI: Euler).
    * ``checkerboard_assignment.png``: every method's one-step assignment.
    * ``checkerboard_coupling.png``: Fig. 5 for every method (one step).
    """
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    m = min(n_points, len(x0))
    sub = slice(0, m)
    flow = [s for s in specs if s.kind == "flowmap"]

    def title(label: str, met: StepMetrics | None, steps: int | None = None) -> str:
        st = "" if steps is None else f", {steps} step{'s' if steps != 1 else ''}"
        return f"{label}{st}\nKL {met.kl:.3f}" if met is not None else f"{label}{st}"

    # Fig. 3 (paper layout)
    fig3 = [("SI (dopri5)", x_si, teacher_metrics, None)]
    for key, k in (("fmm1", 1), ("fmm4", 4), ("pfmm", 1), ("lmd", 1), ("emd", 1)):
        if key in samples:
            fig3.append((METHODS[key].label, samples[key][k], metrics[key][k], k))
    fig, axes = plt.subplots(2, len(fig3), figsize=(2.2 * len(fig3), 4.6), squeeze=False)
    for j, (label, x, met, k) in enumerate(fig3):
        _hist_panel(axes[0, j], x, title(label, met, k))
        _assignment_panel(axes[1, j], x0[sub], x[sub], "assignment")
    fig.suptitle("Checkerboard (paper Fig. 3): samples (top) and base-point assignment (bottom; yellow = off board)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_fig3.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_fig3.png")

    # every method at every step count
    rows = [("SI (Euler)", {k: euler[k] for k in EVAL_STEPS if k in euler}, None)] + [
        (s.label, samples[s.key], metrics[s.key]) for s in flow
    ]
    fig, axes = plt.subplots(len(rows) + 1, len(EVAL_STEPS), figsize=(1.9 * len(EVAL_STEPS), 1.95 * (len(rows) + 1)),
                             squeeze=False)
    _hist_panel(axes[0, 0], data, "target data")
    _hist_panel(axes[0, 1], x_si, title("SI dopri5", teacher_metrics))
    for j in range(2, len(EVAL_STEPS)):
        axes[0, j].axis("off")
    for i, (label, xs, mets) in enumerate(rows, start=1):
        for j, k in enumerate(EVAL_STEPS):
            if k in xs:
                met = mets[k] if mets is not None else None
                _hist_panel(axes[i, j], xs[k], title(label, met, k) if met else f"{label}, {k} steps")
            else:
                axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_samples.png", dpi=90)
    plt.close(fig)
    written.append("checkerboard_samples.png")

    # assignment, every method, one step
    panels = [("SI (dopri5)", x_si, teacher_metrics)] + [(s.label, samples[s.key][1], metrics[s.key][1]) for s in flow]
    nr, nc = _grid(len(panels), 5)
    fig, axes = plt.subplots(nr, nc, figsize=(2.3 * nc, 2.45 * nr), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, x, met) in zip(axes.flat, panels):
        _assignment_panel(ax, x0[sub], x[sub], f"{label}, 1 step\noff board {100 * met.outside:.1f}%")
    fig.suptitle("Where each base point lands (colour = angle of x0; yellow = off the board)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_assignment.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_assignment.png")

    # Fig. 5: coupling error over the base points
    nr, nc = _grid(len(flow), 4)
    fig, axes = plt.subplots(nr, nc, figsize=(2.6 * nc, 2.6 * nr), squeeze=False)
    for ax in axes.flat[len(flow):]:
        ax.axis("off")
    sc = None
    for ax, s in zip(axes.flat, flow):
        err = np.sum((samples[s.key][1][sub] - x_si[sub]) ** 2, axis=1)
        frac = float(np.mean(~(err <= 1.0)))
        sc = _coupling_panel(ax, x0[sub], err, f"{s.label}\nL2 {metrics[s.key][1].coupling_l2:.3f}, "
                                               f"|err|^2>1: {100 * frac:.1f}%")
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.8, label="|X^SI_{0,1}(x0) - X_{0,1}(x0)|^2")
    fig.suptitle("Coupling error vs. the dopri5 teacher over base points x0 (paper Fig. 5), one step", fontsize=9)
    fig.savefig(out_dir / "checkerboard_coupling.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_coupling.png")
    return written


# --------------------------------------------------------------------------------------
# bundling
# --------------------------------------------------------------------------------------


def bundle_models(bundle_dir: Path, best: MethodSpec, work_dir: Path, command: str,
                  scores: dict[str, Any], teacher_scores: dict[str, Any]) -> dict[str, str]:
    """Copy the best one-step map and the teacher to ``bundle_dir/checkerboard[-teacher]``.

    The weights are re-saved unchanged; ``config.json``'s provenance gains the benchmark
    record (method, preset, command, scores) and the teacher path is rewritten to the
    bundled teacher (the run directory's absolute path is kept as ``trained_teacher``).

    Returns:
        ``{"checkerboard": path, "checkerboard-teacher": path}``.
    """
    from anystep.core.config import ModelConfig
    from anystep.core.modeldir import load_model_dir, model_dir_sha256, save_model_dir

    out: dict[str, str] = {}
    for name, key, extra in (
        ("checkerboard-teacher", "si", {"role": "teacher velocity of models/checkerboard (ODE baseline)",
                                        "benchmark_scores": teacher_scores}),
        ("checkerboard", best.key, {"role": "best one-step checkerboard flow map of the benchmark",
                                    "method": best.key, "method_label": best.label,
                                    "benchmark_scores": scores}),
    ):
        src = work_dir / key
        lm = load_model_dir(src)
        prov = dict(lm.config.provenance)
        prov.update(extra)
        prov["benchmark"] = "anystep.benchmarks.checkerboard (results: benchmarks/results/checkerboard.md)"
        prov["benchmark_command"] = command
        prov["source_run_sha256"] = model_dir_sha256(src)
        if prov.get("teacher"):
            prov["trained_teacher"] = prov["teacher"]
            prov["teacher"] = "models/checkerboard-teacher" if key != "pfmm" else prov["teacher"]
        cfg = ModelConfig.from_dict({**lm.config.to_dict(), "provenance": json.loads(json.dumps(prov))})
        dest = bundle_dir / name
        save_model_dir(dest, lm.model, cfg)
        out[name] = str(dest)
    return out


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------




DEFAULT_NOTES = (
    "_Hand-written notes on what was tried to reach the goal go here; this block is kept "
    "when the file is regenerated._\n"
)


def render_markdown(res: dict[str, Any], specs: list[MethodSpec], notes: str | None) -> str:
    """The Markdown report (Table 3 layout, step columns, baselines, floors, timing)."""
    s = res["settings"]
    mets = res["methods"]
    t = res["teacher"]
    kl_si = t["dopri5"]["kl"]
    lines = [
        "# Checkerboard: the paper's 2D experiment (Sec. 4.1, Table 3, Figs. 3 and 5)",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {res['machine_description']}",
        (f"- Date: {res['finished']}; wall time {res['timing']['total_s'] / 60:.1f} min "
         f"(training {res['timing']['train_s'] / 60:.1f} min, evaluation {res['timing']['eval_s'] / 60:.1f} min)"),
        (f"- Budget (identical for every model): MLP {s['width']} wide x {s['depth']} hidden layers, "
         f"{s['steps']} Adam steps, batch {s['batch_size']}, lr {s['lr']:g} (warm-up {s['lr_warmup_steps']}, "
         f"cosine to {s['lr_min']:g}), EMA {s['ema_decay']}, grad clip {s['grad_clip']}, seed {s['seed']}, "
         f"{s['threads']} torch thread(s). Paper: 512 x 6, 5e4 steps."),
        (f"- Evaluation: {s['n_samples']:,} base points x0 ~ N(0, I) shared by all rows. "
         f"KL(rho_1 || rho_hat_1): `kl_divergence_2d` with the exact checkerboard density, "
         f"{s['kl_bins']}x{s['kl_bins']} cells on [{s['kl_range'][0]}, {s['kl_range'][1]}]^2 plus an overflow "
         f"cell. W2^2: exact OT (POT) between {s['w2_samples']:,}-point subsamples (same rows for every method). "
         f"Coupling L2: E|X^SI_01(x0) - X_01(x0)|^2 over all x0, X^SI = teacher + dopri5 "
         f"(rtol {s['rtol']:g}, {t['dopri5']['nfe']} NFE)."),
        ("- The KL and W2 estimators are biased upwards by finite samples: their floors (the same "
         "estimator on fresh exact checkerboard samples) are given below the goal table. Ratios are to the "
         "teacher's dopri5 KL on the same estimator, as the issue asks."),
        "",
        "## Table 3 (paper layout)",
        "",
        "One step except FMM N=4 (4 steps, as in the paper). Paper numbers in brackets.",
        "",
    ]
    rows = [["SI (dopri5)", kl_si, "1.00 [1.00]", "[0.020]", t["dopri5"]["w2_target"], "[0.026]", 0.0, "[0.0]",
             0.0, "[0.000]"]]
    for sp in specs:
        if sp.kind != "flowmap" or not sp.paper:
            continue
        k = sp.table3_steps
        m = mets[sp.key]["steps"][str(k)]
        p = sp.paper
        pr = p["kl"] / 0.020
        rows.append([
            sp.label + ("" if k == 1 else f" ({k} steps)"), m["kl"], f"{fmt(m['kl_ratio'], 3)} [{pr:.2f}]",
            f"[{fmt(p['kl'])}]", m["w2_target"], f"[{fmt(p['w2_target'])}]", m["w2_teacher"],
            f"[{fmt(p['w2_teacher'])}]", m["coupling_l2"], f"[{fmt(p['l2'])}]",
        ])
    lines.append(markdown_table(
        ["Method", "KL", "KL / SI", "paper KL", "W2² target", "paper", "W2² teacher", "paper", "L2 coupling", "paper"],
        rows))
    lines += ["", "## Every method at K = 1, 2, 4, 8 steps", ""]
    flow = [sp for sp in specs if sp.kind == "flowmap"]
    for metric, title in (("kl", "KL(rho_1 || rho_hat_1)"), ("kl_ratio", "KL / teacher's dopri5 KL"),
                          ("w2_target", "W2² to the target"), ("w2_teacher", "W2² to the teacher's samples"),
                          ("coupling_l2", "Coupling L2 vs. the dopri5 teacher"),
                          ("outside", "Fraction of samples off the board")):
        lines += [f"### {title}", ""]
        body = []
        for sp in flow:
            body.append([sp.label] + [mets[sp.key]["steps"][str(k)][metric] for k in EVAL_STEPS])
        lines += [markdown_table(["Method"] + [f"K={k}" for k in EVAL_STEPS], body), ""]

    lines += ["## Teacher baselines (SI velocity + ODE solver)", ""]
    body = [["dopri5", t["dopri5"]["nfe"], t["dopri5"]["kl"], 1.0, t["dopri5"]["w2_target"], 0.0, 0.0,
             t["dopri5"]["outside"]]]
    for k in EULER_STEPS:
        e = t["euler"][str(k)]
        body.append([f"Euler {k}", k, e["kl"], e["kl_ratio"], e["w2_target"], e["w2_teacher"], e["coupling_l2"],
                     e["outside"]])
    lines += [markdown_table(["Solver", "NFE", "KL", "KL / dopri5", "W2² target", "W2² teacher", "L2 coupling",
                              "off board"], body), ""]

    lines += ["## Goal: one-step KL <= 1.5x and four-step KL <= 1.2x the teacher's", ""]
    g = res["goal"]
    body = []
    for sp in flow:
        r1 = mets[sp.key]["steps"]["1"]["kl_ratio"]
        r4 = mets[sp.key]["steps"]["4"]["kl_ratio"]
        body.append([sp.label, r1, "yes" if r1 is not None and r1 <= 1.5 else "no", r4,
                     "yes" if r4 is not None and r4 <= 1.2 else "no"])
    lines += [markdown_table(["Method", "KL ratio K=1", "<= 1.5", "KL ratio K=4", "<= 1.2"], body), ""]
    lines += [(f"Best one-step map: **{g['best_one_step']}** (ratio {fmt(g['best_one_step_ratio'])}); "
               f"best four-step: **{g['best_four_step']}** (ratio {fmt(g['best_four_step_ratio'])}). "
               f"Goal met: one-step {'yes' if g['one_step_met'] else 'no'}, four-step "
               f"{'yes' if g['four_step_met'] else 'no'}."), ""]
    fl = res["floors"]
    lines += [
        "Estimator floors (fresh checkerboard samples scored like a model): "
        f"KL {fmt(fl['kl'])} with {s['n_samples']:,} samples, W2² {fmt(fl['w2'])} between two "
        f"{s['w2_samples']:,}-point samples. Excess KL over the floor, ratio to the teacher's excess: "
        + ", ".join(
            f"{sp.label} K=1 {fmt(_excess_ratio(mets[sp.key]['steps']['1']['kl'], kl_si, fl['kl']))}"
            for sp in flow if sp.one_step and not sp.control
        )
        + ".",
        "",
    ]

    if res.get("failed"):
        lines += ["## Runs that failed", ""]
        lines += [f"- `{k}`: {v}" for k, v in res["failed"].items()]
        lines.append("")

    if res.get("teacher_sizes"):
        n_sz = res["teacher_sizes"][0]["n"]
        lines += ["## Teacher network size (same steps, batch and schedule; dopri5)", "",
                  (f"Scored on the first {n_sz:,} base points (KL floor at this n: "
                   f"{fmt(res['teacher_sizes'][0]['kl_floor'])})."), ""]
        body = [[f"{r['width']} x {r['depth']}", r["params"], r["kl"], r["outside"], r["w2_target"], r["seconds"],
                 r["ms_per_step"]] for r in res["teacher_sizes"]]
        lines += [markdown_table(["MLP", "params", "KL", "off board", "W2² target", "train s", "ms/step"], body), ""]

    lines += ["## Timing (this machine; other processes shared the 2 cores)", ""]
    body = []
    for key, tr in res["training"].items():
        body.append([key, tr["objective"], tr["steps"], tr["seconds"], tr["ms_per_step"], tr["load_avg"],
                     "reused" if tr["reused"] else ("resumed" if tr["resumed_from"] else "trained")])
    lines += [markdown_table(["Run", "Objective", "Steps", "Seconds", "ms/step", "load avg (1 min)", ""], body), ""]
    ev = res["timing"]["eval_sections"]
    lines += ["Evaluation: " + ", ".join(f"{k} {v:.0f} s" for k, v in ev.items()) + ".", ""]

    if res.get("bundled"):
        b = res["bundled"]
        lines += ["## Bundled models", "",
                  (f"- `{b['checkerboard']}`: {g['best_one_step']} (one step), "
                   f"try `anystep sample models/checkerboard --steps 1 -n 5000 --out cb.png`"),
                  f"- `{b['checkerboard-teacher']}`: the SI teacher velocity (`--solver dopri5`)", ""]

    lines += ["## Figures", ""]
    for f in res["figures"]:
        lines.append(f"- [{f}]({f})")
    lines += ["", "## Methods", ""]
    for sp in specs:
        extra = f" (teacher: {sp.teacher}" + (f", warm start: {sp.init_from}" if sp.init_from else "") + ")" \
            if sp.teacher else ""
        lines.append(f"- **{sp.label}** (`{sp.key}`, preset `{sp.preset}`"
                     + (f", objective `{sp.objective}`" if sp.objective else "") + f"): {sp.note}{extra}")
    lines += ["", "## Investigation notes", "", NOTES_BEGIN, (notes or DEFAULT_NOTES).rstrip("\n"), NOTES_END, ""]
    return "\n".join(lines)


def _excess_ratio(kl: float, kl_teacher: float, floor: float) -> float | None:
    den = kl_teacher - floor
    if den <= 0:
        return None
    return (kl - floor) / den


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def run(settings: Settings, *, out_dir: Path, work_dir: Path, bundle_dir: Path | None,
        fresh: bool | Sequence[str] = False,
        progress: bool = False, figures: bool = True, command: str | None = None, log=print) -> dict[str, Any]:
    """Train every method, evaluate, plot, write the results, bundle the best map.

    Args:
        settings: budget and evaluation settings.
        out_dir: results folder (``checkerboard.json``, ``.md``, figures).
        work_dir: run directories (one per method).
        bundle_dir: where to write ``checkerboard`` and ``checkerboard-teacher``, or None.
        fresh: retrain runs that already exist: True for all, or the keys to retrain
            (e.g. ``["ayf_lmd", "si_512x6"]``).
        progress: tqdm bars while training.
        figures: write the figures.
        command: command line recorded in the results.
        log: status printer.

    Returns:
        The results dictionary written to ``checkerboard.json``.
    """
    from anystep.core.data import get_dataset
    from anystep.core.modeldir import load_model_dir

    torch.set_num_threads(settings.threads)
    log(f"[setup] torch threads: {settings.threads}; 1-minute load average {(load_average() or [None])[0]}")
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    specs = resolve_methods(list(settings.methods) if settings.methods else None)
    settings = replace(settings, methods=tuple(s.key for s in specs))
    work_dir.mkdir(parents=True, exist_ok=True)
    sw = Stopwatch()

    # ---- training ------------------------------------------------------------------
    def _fresh(key: str) -> bool:
        return fresh is True or (not isinstance(fresh, bool) and key in set(fresh))

    training: dict[str, TrainRecord] = {}
    failed: dict[str, str] = {}
    for spec in specs:
        deps = [d for d in (spec.teacher, spec.init_from) if d is not None and d in failed]
        if deps:
            failed[spec.key] = f"skipped: its teacher/warm start {deps[0]!r} failed"
            log(f"[{spec.key}] {failed[spec.key]}")
            continue
        cfg = build_train_config(spec, settings, work_dir)
        try:
            with sw(f"train {spec.key}"):
                training[spec.key] = train_one(spec.key, cfg, work_dir / spec.key, fresh=_fresh(spec.key),
                                               progress=progress,
                                               log=log)
        except BenchmarkError:
            raise
        except (AnystepError, ValueError, RuntimeError) as e:  # e.g. TrainingError: the loss became NaN
            if spec.key == "si":
                raise BenchmarkError(f"the teacher failed to train: {e}") from e
            failed[spec.key] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            log(f"[{spec.key}] FAILED: {failed[spec.key]}")
    specs = [s for s in specs if s.key not in failed]
    size_records: list[tuple[int, int, TrainRecord]] = []
    for w, d in settings.teacher_sizes:
        if (w, d) == (settings.width, settings.depth):
            continue
        key = f"si_{w}x{d}"
        cfg = build_train_config(METHODS["si"], settings, work_dir, width=w, depth=d)
        with sw(f"train {key}"):
            size_records.append((w, d, train_one(key, cfg, work_dir / key, fresh=_fresh(key), progress=progress,
                                                 log=log)))
    train_s = sw.total

    # ---- evaluation ----------------------------------------------------------------
    t_eval = time.perf_counter()
    ev = Stopwatch()
    g = torch.Generator().manual_seed(10_000 + settings.seed)
    x0 = torch.randn(settings.n_samples, 2, generator=g)
    ds = get_dataset("checkerboard")
    target_w2 = ds.sample(settings.w2_samples, torch.Generator().manual_seed(20_000 + settings.seed)).double().numpy()
    ctx = EvalContext(x0=x0, x_si=None, target_w2=target_w2, settings=settings)

    teacher = load_model_dir(work_dir / "si").model
    log(f"[eval] teacher dopri5 on {settings.n_samples:,} points (rtol {settings.rtol:g})")
    with ev("teacher dopri5"):
        x_si, nfe_si = _sample_ode(teacher, x0, "dopri5", None, settings.rtol)
    ctx.x_si = x_si
    with ev("metrics"):
        m_si = score_samples(x_si, ctx, nfe=nfe_si)
    ctx.kl_teacher = m_si.kl
    m_si.kl_ratio = 1.0
    log(f"[eval] teacher dopri5: KL {m_si.kl:.4f}, NFE {nfe_si}")
    euler: dict[int, np.ndarray] = {}
    euler_m: dict[str, StepMetrics] = {}
    for k in EULER_STEPS:
        with ev("teacher euler"):
            xe, _ = _sample_ode(teacher, x0, "euler", k, settings.rtol, chunk=50_000)
        with ev("metrics"):
            euler_m[str(k)] = score_samples(xe, ctx, nfe=k)
        euler[k] = xe.numpy()

    # floors: exact samples scored like a model
    with ev("metrics"):
        data = ds.sample(settings.n_samples, torch.Generator().manual_seed(30_000 + settings.seed)).double().numpy()
        floors = {
            "kl": _kl(data, settings),
            "w2": float(__import__("anystep.core.metrics", fromlist=["w2_squared"]).w2_squared(
                data[: settings.w2_samples], target_w2, max_samples=settings.w2_samples, seed=settings.seed)),
            "outside": _outside(data),
        }

    samples: dict[str, dict[int, np.ndarray]] = {}
    metrics: dict[str, dict[int, StepMetrics]] = {}
    for spec in specs:
        if spec.kind != "flowmap":
            continue
        model = load_model_dir(work_dir / spec.key).model
        samples[spec.key], metrics[spec.key] = {}, {}
        for k in EVAL_STEPS:
            with ev("flow-map sampling"):
                xk = _sample_map(model, x0, k)
            with ev("metrics"):
                metrics[spec.key][k] = score_samples(xk, ctx, nfe=k)
            samples[spec.key][k] = xk.numpy()
        log(f"[eval] {spec.label}: KL " + ", ".join(f"K={k} {metrics[spec.key][k].kl:.4f}" for k in EVAL_STEPS))

    size_rows = []
    if size_records:
        # every teacher on the same first size_samples base points (dopri5 on all n is costly for 512 x 6)
        n_sz = min(settings.size_samples, settings.n_samples)
        sctx = EvalContext(x0=x0[:n_sz], x_si=None, target_w2=target_w2, settings=settings)
        with ev("teacher sizes"):
            sz_floor = _kl(data[:n_sz], settings)
        for w, d, rec in [(settings.width, settings.depth, training["si"])] + size_records:
            with ev("teacher sizes"):
                xs = x_si[:n_sz] if rec.key == "si" else _sample_ode(
                    load_model_dir(rec.run_dir).model, x0[:n_sz], "dopri5", None, settings.rtol)[0]
                ms = score_samples(xs, sctx)
            size_rows.append({"width": w, "depth": d, "params": rec.params, "n": n_sz, "kl": ms.kl,
                              "kl_floor": sz_floor, "w2_target": ms.w2_target, "outside": ms.outside,
                              "seconds": rec.seconds, "ms_per_step": rec.ms_per_step})
            log(f"[eval] teacher {w}x{d}: KL {ms.kl:.4f} on {n_sz:,} points")

    # ---- goal, figures, bundle -------------------------------------------------------
    cands = [s for s in specs if s.kind == "flowmap" and s.one_step and not s.control]
    allmaps = [s for s in specs if s.kind == "flowmap" and not s.control]
    best1 = min(cands, key=lambda s: metrics[s.key][1].kl) if cands else None
    best4 = min(allmaps, key=lambda s: metrics[s.key][4].kl) if allmaps else None
    goal = {
        "one_step_target_ratio": 1.5,
        "four_step_target_ratio": 1.2,
        "best_one_step": best1.label if best1 else None,
        "best_one_step_key": best1.key if best1 else None,
        "best_one_step_ratio": metrics[best1.key][1].kl_ratio if best1 else None,
        "best_four_step": best4.label if best4 else None,
        "best_four_step_ratio": metrics[best4.key][4].kl_ratio if best4 else None,
    }
    goal["one_step_met"] = bool(goal["best_one_step_ratio"] is not None and goal["best_one_step_ratio"] <= 1.5)
    goal["four_step_met"] = bool(goal["best_four_step_ratio"] is not None and goal["best_four_step_ratio"] <= 1.2)

    fig_names: list[str] = []
    if figures:
        with ev("figures"):
            fig_names = make_figures(out_dir, specs, samples, x0.numpy(), x_si.numpy(), euler, data, metrics, m_si)
    eval_s = time.perf_counter() - t_eval

    command = command or command_line(module=MODULE)
    bundled = None
    if bundle_dir is not None and best1 is not None:
        scores = {f"K={k}": {"kl": metrics[best1.key][k].kl, "kl_ratio": metrics[best1.key][k].kl_ratio}
                  for k in EVAL_STEPS}
        bundled = bundle_models(bundle_dir, best1, work_dir, command, scores,
                                {"dopri5": {"kl": m_si.kl, "nfe": nfe_si}})
        log(f"[bundle] {best1.label} -> {bundled['checkerboard']}, teacher -> {bundled['checkerboard-teacher']}")

    res: dict[str, Any] = {
        "benchmark": "checkerboard",
        "paper": "Boffi, Albergo, Vanden-Eijnden, Flow map matching (arXiv 2406.07507), Sec. 4.1, Table 3",
        "command": command,
        "machine": asdict(machine_info()),
        "machine_description": machine_info().describe(),
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "training": {k: asdict(v) for k, v in training.items()}
        | {f"si_{w}x{d}": asdict(r) for w, d, r in size_records},
        "teacher": {"dopri5": asdict(m_si) | {"nfe": nfe_si}, "euler": {k: asdict(v) for k, v in euler_m.items()}},
        "floors": floors,
        "methods": {
            s.key: {
                "label": s.label,
                "objective": s.objective or training[s.key].objective,
                "preset": s.preset,
                "teacher": s.teacher,
                "init_from": s.init_from,
                "control": s.control,
                "paper_table3": s.paper or None,
                "table3_steps": s.table3_steps,
                "steps": {str(k): asdict(metrics[s.key][k]) for k in EVAL_STEPS},
            }
            for s in specs
            if s.kind == "flowmap"
        },
        "teacher_sizes": size_rows,
        "failed": failed,
        "goal": goal,
        "figures": fig_names,
        "bundled": bundled,
        "timing": {
            "train_s": train_s,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - t_start,
            "train_sections": sw.seconds,
            "eval_sections": ev.seconds,
        },
    }
    md_path = out_dir / "checkerboard.md"
    notes = existing_notes(md_path)
    md = render_markdown(res, specs, notes)
    paths = write_results(out_dir, "checkerboard", res, md)
    log(f"[done] {paths.json} and {paths.markdown} ({res['timing']['total_s'] / 60:.1f} min)")
    return res


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

HELP_EPILOG = """\
what it does:
  trains the SI teacher velocity and every flow-map objective (LMD, EMD, FMM N=1/N=4,
  PFMM from FMM N=4, EE, LSD/ESD/PSD, AYF-EMD/AYF-LMD; --methods all+controls adds the
  negative controls ee_naive and denoiser) with one shared budget, scores each map at
  1, 2, 4, 8 steps (KL with the exact density, W2^2 to target and teacher, coupling L2
  vs. the dopri5 teacher) and the teacher with dopri5 and Euler 1-16, and writes
  OUT/checkerboard.json, OUT/checkerboard.md and OUT/checkerboard_*.png; a full run
  copies the best one-step map and the teacher to models/checkerboard and
  models/checkerboard-teacher.

budget:
  default (full): MLP 256 x 4, 6000 Adam steps, batch 1000, for each of the 12
  models: one step of all 12 costs about 0.3 s on 2 idle cores (JVP objectives
  40-50 ms, the teacher 11 ms), so about 30 min of training plus about 10 min of
  evaluation (200,000 points, dopri5 teacher); --quick: MLP 64 x 3, 300 steps,
  20,000 evaluation points, a few minutes. Finished runs in --work-dir are reused
  and interrupted ones resumed, so re-running continues where it stopped.

examples:
  python -m anystep.benchmarks.checkerboard
  python -m anystep.benchmarks.checkerboard --quick --out /tmp/cb
  python -m anystep.benchmarks.checkerboard --methods lmd,pfmm --steps 8000
  python -m anystep.benchmarks.checkerboard --teacher-sizes 128x4,512x6
"""


def _size_list(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)[xX](\d+)", item)
        if not m:
            raise argparse.ArgumentTypeError(f"{item!r}: write WIDTHxDEPTH, e.g. 128x4,512x6")
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.checkerboard``."""
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Reproduce the paper's 2D checkerboard experiment (Table 3, Figs. 3 and 5) for every "
                    "objective, with one shared training budget, and bundle the best one-step map.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Settings()
    p.add_argument("--quick", action="store_true",
                   help=f"small and fast: {', '.join(f'{k}={v}' for k, v in QUICK.items())}; no bundling")
    p.add_argument("--steps", type=int, default=None, help=f"optimisation steps per model (default {d.steps})")
    p.add_argument("--width", type=int, default=None, help=f"MLP hidden width (default {d.width}; paper 512)")
    p.add_argument("--depth", type=int, default=None, help=f"MLP hidden layers (default {d.depth}; paper 6)")
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods (default all: " + ",".join(DEFAULT_METHODS)
                        + "; 'all+controls' adds ee_naive,denoiser); teachers are added automatically")
    p.add_argument("--n-samples", type=int, default=None,
                   help=f"evaluation points (default {d.n_samples:,}; >= 20,000 recommended: the KL estimator's "
                        "floor is about (occupied cells)/(2n))")
    p.add_argument("--w2-samples", type=int, default=None,
                   help=f"subsample for the exact-OT W2^2 (default {d.w2_samples})")
    p.add_argument("--rtol", type=float, default=None, help=f"dopri5 tolerance of the teacher reference (default {d.rtol:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run and of the evaluation draws (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 2 when the 1-minute load average is below 1, else 1: on a "
                        "shared 2-core machine two threads of a busy process spin on each other and run "
                        "5-10x slower than one)")
    p.add_argument("--teacher-sizes", type=_size_list, default=(),
                   help="also train teachers of these sizes (e.g. 128x4,512x6) with the same budget and "
                        "report their dopri5 KL (network-size check)")
    p.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    p.add_argument("--work-dir", default=None,
                   help="run directories (default runs/checkerboard, or runs/checkerboard-quick with --quick)")
    p.add_argument("--bundle-dir", default=None,
                   help="where to write checkerboard/ and checkerboard-teacher/ (default models for a full run)")
    p.add_argument("--no-bundle", action="store_true", help="do not write the bundled models")
    p.add_argument("--fresh", action="store_true", help="retrain every run that already exists in --work-dir")
    p.add_argument("--retrain", default=None, metavar="KEYS",
                   help="retrain only these runs (comma-separated keys, e.g. ayf_lmd,si_512x6); needed when a "
                        "method's settings changed since its run was trained")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--progress", action="store_true", help="show tqdm progress bars while training")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve ``--quick`` and the explicit options into :class:`Settings`."""
    base = dict(QUICK) if args.quick else {}
    for name in ("steps", "width", "depth", "batch_size", "lr", "n_samples", "w2_samples", "rtol"):
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    methods = tuple(s.key for s in resolve_methods(args.methods)) if args.methods else ()
    threads = args.threads
    if threads is None:
        load = (load_average() or [None])[0]
        threads = 2 if load is not None and load < 1.0 else 1
    return Settings(quick=bool(args.quick), seed=args.seed, threads=threads, teacher_sizes=args.teacher_sizes,
                    methods=methods, **base)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for invalid options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except BenchmarkError as e:
        parser.error(str(e))
    work_dir = Path(args.work_dir or ("runs/checkerboard-quick" if args.quick else "runs/checkerboard"))
    bundle_dir = None
    if not args.no_bundle:
        if args.bundle_dir is not None:
            bundle_dir = Path(args.bundle_dir)
        elif not args.quick:
            bundle_dir = Path("models")
    try:
        fresh: bool | list[str] = True if args.fresh else [k.strip() for k in (args.retrain or "").split(",") if k.strip()]
        run(settings, out_dir=Path(args.out), work_dir=work_dir, bundle_dir=bundle_dir, fresh=fresh,
            progress=args.progress, figures=not args.no_figures,
            command=command_line(sys.argv[1:] if argv is None else argv, module=MODULE),
            log=lambda msg: print(msg, flush=True))
    except (BenchmarkError, AnystepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
