"""The digits benchmark's models and options: :data:`METHODS`, :class:`MethodSpec`, :class:`BenchConfig`.

Each :class:`MethodSpec` names the ``anystep train`` preset a model starts from, its
teacher and the overrides the benchmark applies (a shorter, faster schedule than the
presets', to fit a 2-core CPU); :mod:`anystep.benchmarks.digits_train` trains them and
:mod:`anystep.benchmarks.digits` runs the whole benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anystep.benchmarks.digits_classifier import REPO_ROOT
from anystep.errors import AnystepError

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_STEPS",
    "FAMILY_METHODS",
    "METHODS",
    "MODELS_DIR",
    "RESULTS_DIR",
    "TEACHER_EULER_STEPS",
    "BenchConfig",
    "BenchError",
    "MethodSpec",
]

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_STEPS = (1, 2, 4, 8)
TEACHER_EULER_STEPS = (1, 2, 4, 8, 16, 32, 64)


class BenchError(AnystepError):
    """Invalid benchmark option; the message says how to fix it."""


@dataclass(frozen=True)
class MethodSpec:
    """How one model of the benchmark is trained.

    Attributes:
        name: method name (``teacher``, ``lmd``, ``fmm4``, ``pfmm``, ``lsd``).
        preset: ``anystep train`` preset it starts from.
        teacher: method whose model is the frozen teacher (None: no teacher).
        steps: optimisation steps (full run).
        quick_steps: optimisation steps with ``--quick``.
        overrides: ``--set`` style overrides applied to the preset (both modes).
        description: one line for the report.
        init_from: method whose final weights initialise this one (a second training
            stage), or None (PFMM always warm-starts from its teacher).
    """

    name: str
    preset: str
    teacher: str | None
    steps: int
    quick_steps: int
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    init_from: str | None = None


# Shared overrides: a shorter, faster schedule than the presets' paper-style one
# (lr 1e-4 decayed by 0.992 per 1000 steps over 2e4 steps), to fit a 2-core CPU.
_FAST = {
    "batch_size": 128,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 100,
    "lr_min": 1e-5,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "log_every": 50,
    "ckpt_every": 500,
    "eval_every": -1,
}

METHODS: dict[str, MethodSpec] = {
    "teacher": MethodSpec(
        "teacher", "digits-velocity", None, 1500, 20, dict(_FAST), "SI velocity b_t (eq. 3.14)"
    ),
    "lmd": MethodSpec(
        "lmd", "digits-lmd", "teacher", 3000, 10, {**_FAST, "batch_size": 64},
        "Lagrangian map distillation (eq. 3.7)",
    ),
    "lmd_long": MethodSpec(
        "lmd_long", "digits-lmd", "teacher", 4000, 10, {"lr": 3e-4},
        "LMD continued from lmd with the preset's own schedule (batch 256, lr 3e-4 stepped, no clip)",
        init_from="lmd",
    ),
    "fmm4": MethodSpec(
        "fmm4", "digits-fmm4", None, 600, 10, {**_FAST, "batch_size": 64},
        "flow map matching, |t-s|<=1/4 (eq. 3.15)",
    ),
    "pfmm": MethodSpec(
        "pfmm", "digits-pfmm", "fmm4", 400, 10,
        {**_FAST, "batch_size": 64, "lr": 3e-4, "lr_warmup_steps": 0},
        "progressive FMM of fmm4 into one step (eq. 3.16)",
    ),
    "lsd": MethodSpec(
        "lsd", "digits-lsd", None, 1000, 10, {**_FAST, "batch_size": 64},
        "Lagrangian self-distillation (successors §2)",
    ),
    # issue 14: the few-step family at LMD's budget (not in the default set: --methods shortcut,meanflow)
    "shortcut": MethodSpec(
        "shortcut", "digits-shortcut", None, 3000, 10, {**_FAST, "batch_size": 64},
        "shortcut model: flow matching + dyadic self-consistency (K = 1, 2, ..., 64 only)",
    ),
    "meanflow": MethodSpec(
        "meanflow", "digits-meanflow", None, 3000, 10, {**_FAST, "batch_size": 64},
        "MeanFlow identity (Eulerian eq., stop-grad target, adaptive weight p = 1)",
    ),
    "meanflow_u0": MethodSpec(
        "meanflow_u0", "digits-meanflow", None, 3000, 10,
        {**_FAST, "batch_size": 64, "objective_hparams.time_kind": "uniform", "objective_hparams.adaptive_p": 0.0},
        "MeanFlow with uniform times and unit weight (p = 0): the checkerboard benchmark row's settings",
    ),
    "meanflow_uniform": MethodSpec(
        "meanflow_uniform", "digits-meanflow", None, 3000, 10,
        {**_FAST, "batch_size": 64, "objective_hparams.time_kind": "uniform"},
        "MeanFlow with uniform times (more long jumps than logit-normal), published weight p = 1",
    ),
    # the same two rows started from the teacher's weights (v_st = b_s: the flow-matching solution of
    # shortcut's d = 0 velocity and MeanFlow's u at r = t), so training only has to learn the long jumps
    "shortcut_warm": MethodSpec(
        "shortcut_warm", "digits-shortcut", None, 3000, 10, {**_FAST, "batch_size": 64},
        "shortcut model started from the teacher's weights (v_st = b_s; anystep.core.warmstart)",
        init_from="teacher",
    ),
    # the checkerboard's shortcut levers on top (family.md: minibatch OT, half the self-consistency rows at
    # 2d = 1, the published EMA bootstrap target)
    "shortcut_warm_ot": MethodSpec(
        "shortcut_warm_ot", "digits-shortcut", None, 3000, 10,
        {**_FAST, "batch_size": 64, "coupling": "minibatch_ot", "objective_hparams.top_frac": 0.5,
         "objective_hparams.target_ema": 0.999},
        "shortcut_warm + minibatch OT, top_frac 0.5, EMA bootstrap target 0.999 (the checkerboard's levers)",
        init_from="teacher",
    ),
    # lmd_long's second stage for shortcut: shortcut_warm continued with the preset's own schedule (batch 256,
    # lr 3e-4 stepped, no clip), 4000 steps, so shortcut gets the budget of the benchmark's best LMD row
    "shortcut_long": MethodSpec(
        "shortcut_long", "digits-shortcut", None, 4000, 10, {"lr": 3e-4},
        "shortcut_warm continued with the preset's own schedule (batch 256, lr 3e-4 stepped, no clip), as lmd_long",
        init_from="shortcut_warm",
    ),
    # ... and with half the self-consistency rows on the one-step jump (top_frac 0.5, the checkerboard's lever
    # that helped its one-step map, family.md), the only change
    "shortcut_long_top50": MethodSpec(
        "shortcut_long_top50", "digits-shortcut", None, 4000, 10, {"lr": 3e-4, "objective_hparams.top_frac": 0.5},
        "shortcut_long with half the self-consistency rows at 2d = 1 (top_frac 0.5)",
        init_from="shortcut_warm",
    ),
    "meanflow_warm": MethodSpec(
        "meanflow_warm", "digits-meanflow", None, 3000, 10, {**_FAST, "batch_size": 64},
        "MeanFlow (published settings) started from the teacher's weights (v_st = b_s; anystep.core.warmstart)",
        init_from="teacher",
    ),
}
"""The benchmark's models, in training order (teachers first)."""

FAMILY_METHODS = ("shortcut", "meanflow", "meanflow_u0", "meanflow_uniform", "shortcut_warm", "meanflow_warm",
                  "shortcut_warm_ot", "shortcut_long", "shortcut_long_top50")
"""Rows of issue 14, trained only when named in ``--methods``."""

DEFAULT_METHODS = tuple(m for m in METHODS if m not in FAMILY_METHODS)
"""The default ``--methods``."""


@dataclass
class BenchConfig:
    """Options of one benchmark run (see ``--help``)."""

    out: Path = RESULTS_DIR
    runs: Path = REPO_ROOT / "runs" / "digits"
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: tuple[int, ...] = DEFAULT_STEPS
    n: int = 2000
    seed: int = 0
    quick: bool = False
    rtol: float = 1e-5
    bundle: bool = False
    grid_samples: int = 16
    command: str = ""
