"""Checkerboard benchmark: the method registry and the shared budget (:class:`Settings`).

A row of the benchmark is a :class:`MethodSpec` in :data:`METHODS`; another objective joins
the benchmark by adding one entry there (its preset, teacher / warm start, paper numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anystep.errors import AnystepError

__all__ = [
    "DEFAULT_METHODS",
    "EULER_STEPS",
    "EVAL_STEPS",
    "METHODS",
    "QUICK",
    "TRAIN_ORDER",
    "BenchmarkError",
    "MethodSpec",
    "Settings",
    "register_method",
    "resolve_methods",
    "train_order",
]

EVAL_STEPS = (1, 2, 4, 8)
EULER_STEPS = (1, 2, 4, 8, 16)


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
        one_step: True when the map is meant to be used in one step (FMM N=4 is a 4-step
            map, negative controls never qualify).
        control: negative control (biased or wrong minimiser), reported but never bundled.
        note: one line on what the row is.
        kind: ``"velocity"`` (the teacher and its first stage) or ``"flowmap"``.
        budget: TrainConfig overrides (dotted key -> value) applied after the shared budget
            in full runs only (``--quick`` keeps the shared one): the teacher's own schedule.
        until: stop after this many of ``max_steps`` steps (a stage of a longer schedule,
            exported from the checkpoint's EMA weights), or None.
        row: reported as a row of the tables (False for intermediate stages).
        config: TrainConfig overrides applied in every run, quick or full (e.g. the
            residual ansatz that the teacher warm start ``v_st = b_s`` needs).
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
    kind: str = "flowmap"
    budget: dict[str, Any] = field(default_factory=dict)
    until: int | None = None
    row: bool = True
    config: dict[str, Any] = field(default_factory=dict)


def _paper(kl: float, w2: float, w2t: float | None, l2: float | None) -> dict[str, float | None]:
    return {"kl": kl, "w2_target": w2, "w2_teacher": w2t, "l2": l2}


# The sharp teacher: t ~ sigmoid(N(1, 1.5^2)) puts more steps near the data (t = 1), where the
# velocity of the board is steep; batch 2048, lr 2e-3 then a cosine anneal.
TEACHER_TIMES = {"time_kind": "logit_normal", "logit_mean": 1.0, "logit_std": 1.5}
TEACHER_STAGE1 = {"max_steps": 30_000, "batch_size": 2048, "lr": 2e-3, "lr_warmup_steps": 500, "ema_decay": 0.9995,
                  "log_every": 250, "ckpt_every": 1000}
TEACHER_STAGE2 = {"max_steps": 3000, "batch_size": 2048, "lr": 8e-4, "lr_warmup_steps": 0, "ema_decay": 0.999,
                  "log_every": 100, "ckpt_every": 500}

RESIDUAL = {"model.ansatz": "residual"}  # X = x + (t - s) v: needed by the warm start v_st = b_s

METHODS: dict[str, MethodSpec] = {
    m.key: m
    for m in (
        MethodSpec("si_pre", "SI stage 1", "checkerboard-velocity", kind="velocity", row=False, one_step=False,
                   hparams=TEACHER_TIMES, budget=TEACHER_STAGE1, until=13_000,
                   note="teacher stage 1: 13,000 steps of a 30,000-step cosine schedule, lr 2e-3, batch 2048"),
        MethodSpec("si", "SI (teacher)", "checkerboard-velocity", kind="velocity", init_from="si_pre",
                   hparams=TEACHER_TIMES, budget=TEACHER_STAGE2, paper=_paper(0.020, 0.026, 0.0, 0.0),
                   one_step=False,
                   note="velocity b_t (eq. 3.14), logit-normal times; stage 2: 3,000-step cosine anneal from "
                        "stage 1; sampled with dopri5 / Euler"),
        MethodSpec("lmd", "LMD", "checkerboard-lmd", teacher="si", init_from="si", config=RESIDUAL,
                   paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="Lagrangian map distillation (eq. 3.7), warm start v_st = b_s from the teacher"),
        MethodSpec("lmd_both", "LMD, both directions", "checkerboard-lmd", teacher="si", init_from="si",
                   config=RESIDUAL, hparams={"forward_only": False},
                   note="LMD on the whole square 0 <= s, t <= 1 (forward and backward maps), so that X_{1,0} "
                        "(/encode) inverts X_{0,1}: the row the benchmark's bundled map comes from"),
        MethodSpec("lmd_both_long", "LMD, both directions, +3000 steps", "checkerboard-lmd", teacher="si",
                   init_from="lmd_both", config=RESIDUAL, hparams={"forward_only": False},
                   budget={"max_steps": 3000, "lr": 5e-4}, control=False,
                   note="lmd_both continued for 3,000 steps (lr 5e-4, cosine): 4x the budget of the other rows, "
                        "a candidate for the bundled model"),
        # issue 13, longer budgets (continuations of the shared-budget rows, warm-restarted cosine at batch
        # 512, checkpoints every 500 steps so that a later session resumes them); per-step costs measured
        # on one core: LMD 144 ms, LMD both 103 ms, FMM N=4 220 ms, PFMM 51 ms (batch 512, load 2-4)
        MethodSpec("lmd_both_xl", "LMD, both directions, +3000+8000 steps", "checkerboard-lmd", teacher="si",
                   init_from="lmd_both_long", config=RESIDUAL, hparams={"forward_only": False},
                   budget={"max_steps": 8000, "lr": 5e-4, "ckpt_every": 500},
                   note="lmd_both_long continued for 8,000 steps (lr 5e-4, cosine): 12x the shared budget in all, "
                        "the benchmark's candidate for the bundled model (models/checkerboard holds the better "
                        "lever map of checkerboard_bundle_train, which a rerun keeps)"),
        MethodSpec("lmd_xl", "LMD, +6000 steps", "checkerboard-lmd", teacher="si", init_from="lmd", config=RESIDUAL,
                   budget={"max_steps": 6000, "lr": 5e-4, "ckpt_every": 500},
                   paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="lmd continued for 6,000 steps (lr 5e-4, cosine): 7x the shared budget in all"),
        # Opt-in (not in DEFAULT_METHODS): LMD with random Fourier features of x (issue 13 lever,
        # checkerboard_lever.md): `--methods lmd_ff,lmd_ff_xl`.
        MethodSpec("lmd_ff", "LMD, Fourier features of x", "checkerboard-lmd-ff", teacher="si", init_from="si",
                   config=RESIDUAL, paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="LMD whose MLP also reads 64 random Fourier features of x (sigma 1; zero columns under the "
                        "warm start v_st = b_s)"),
        MethodSpec("lmd_ff_xl", "LMD, Fourier features of x, +6000 steps", "checkerboard-lmd-ff", teacher="si",
                   init_from="lmd_ff", config=RESIDUAL, budget={"max_steps": 6000, "lr": 5e-4, "ckpt_every": 500},
                   paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="lmd_ff continued for 6,000 steps (lr 5e-4, cosine), as lmd_xl"),
        MethodSpec("lmd_ff_start", "LMD, Fourier features of x, half the batch at s = 0", "checkerboard-lmd-ff",
                   teacher="si", init_from="si", config=RESIDUAL, hparams={"start_frac": 0.5},
                   paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="lmd_ff with start_frac 0.5 (half of each batch on the maps X_0t): the sharpest one-step "
                        "map per step, worse at 2-8 steps"),
        MethodSpec("lmd_ff_start_xl", "LMD, Fourier features of x, half the batch at s = 0, +6000 steps",
                   "checkerboard-lmd-ff", teacher="si", init_from="lmd_ff_start", config=RESIDUAL,
                   hparams={"start_frac": 0.5}, budget={"max_steps": 6000, "lr": 5e-4, "ckpt_every": 500},
                   paper=_paper(0.043, 0.059, 0.032, 0.085),
                   note="lmd_ff_start continued for 6,000 steps (lr 5e-4, cosine), as lmd_xl"),
        MethodSpec("emd", "EMD", "checkerboard-emd", teacher="si", init_from="si", config=RESIDUAL,
                   paper=_paper(0.079, 0.029, 0.010, 0.011),
                   note="Eulerian map distillation (eq. 3.9), warm start v_st = b_s from the teacher"),
        MethodSpec("fmm1", "FMM, N=1", "checkerboard-fmm1", init_from="si", config=RESIDUAL,
                   paper=_paper(0.104, 0.021, None, 0.026),
                   note="flow map matching (eq. 3.15) on the whole square"),
        MethodSpec("fmm4", "FMM, N=4", "checkerboard-fmm4", init_from="si", config=RESIDUAL, table3_steps=4,
                   one_step=False,
                   paper=_paper(0.045, 0.014, None, 0.024),
                   note="flow map matching with |t-s| <= 1/4; a 4-step map (PFMM's teacher)"),
        MethodSpec("pfmm", "PFMM, N=1", "checkerboard-pfmm", teacher="fmm4", init_from="fmm4", config=RESIDUAL,
                   paper=_paper(0.043, 0.014, None, 0.023),
                   note="progressive FMM (eq. 3.16): FMM N=4 (4 steps) distilled to one step"),
        MethodSpec("fmm4_xl", "FMM, N=4, +4000 steps", "checkerboard-fmm4", init_from="fmm4", config=RESIDUAL,
                   table3_steps=4, one_step=False, budget={"max_steps": 4000, "lr": 5e-4, "ckpt_every": 500},
                   paper=_paper(0.045, 0.014, None, 0.024),
                   note="fmm4 continued for 4,000 steps (lr 5e-4, cosine): 5x the shared budget in all"),
        MethodSpec("pfmm_xl", "PFMM, N=1, from FMM N=4 +4000", "checkerboard-pfmm", teacher="fmm4_xl",
                   init_from="fmm4_xl", config=RESIDUAL, budget={"max_steps": 5000, "ckpt_every": 500},
                   paper=_paper(0.043, 0.014, None, 0.023),
                   note="PFMM (eq. 3.16) distilling fmm4_xl into one step, 5,000 steps (lr 1e-3, cosine)"),
        MethodSpec("ee", "EE (stop-grad)", "checkerboard-ee", init_from="si",
                   note="Eulerian estimation with stop-gradient (successors §1), no teacher in the loss; "
                        "minibatch-OT coupling (preset)"),
        MethodSpec("ee_long", "EE (stop-grad), +3000 steps", "checkerboard-ee", init_from="ee",
                   budget={"max_steps": 3000, "ckpt_every": 500},
                   note="ee continued for 3,000 steps at the shared lr 1e-3 (cosine): a stability check of EE at "
                        "the default learning rate; not in the default set (it diverges: results notes)"),
        MethodSpec("lsd", "LSD", "checkerboard-lsd", init_from="si",
                   note="Lagrangian self-distillation (successors §2)"),
        MethodSpec("esd", "ESD", "checkerboard-esd", init_from="si",
                   note="Eulerian self-distillation (successors §2)"),
        MethodSpec("psd", "PSD", "checkerboard-psd", init_from="si", budget={"max_steps": 3000},
                   note="progressive self-distillation (successors §2); 3x the steps (no JVP: about LMD's "
                        "wall-clock)"),
        MethodSpec("ayf_emd", "AYF-EMD", "checkerboard-ayf-emd", teacher="si", init_from="si",
                   note="Align Your Flow, Eulerian (successors §3), adaptive weight (preset)"),
        MethodSpec("ayf_lmd", "AYF-LMD", "checkerboard-ayf-lmd", teacher="si", init_from="si",
                   note="Align Your Flow, Lagrangian (successors §3), adaptive weight (preset)"),
        # issue 14: the rest of the few-step family (training/meanflow.py, shortcut.py, consistency.py,
        # pd.py, operator.py); what each cannot do that a two-time map can is in the results notes
        MethodSpec("meanflow", "MeanFlow", "checkerboard-meanflow", init_from="si",
                   hparams={"time_kind": "uniform", "adaptive_p": 0.0},
                   note="MeanFlow identity: Eulerian eq. with a stop-grad one-sample target; uniform times and "
                        "unit weight (the published p = 1 and logit-normal times: 152x at 1 step, results/family.md)"),
        MethodSpec("meanflow_ot", "MeanFlow, OT coupling", "checkerboard-meanflow-ot", init_from="si",
                   note="MeanFlow with minibatch-OT coupling, uniform times, p = 0 (not the paper's recipe: its "
                        "coupling is independent); the best MeanFlow one-step map measured, results/family.md"),
        MethodSpec("shortcut", "Shortcut", "checkerboard-shortcut", init_from="si", hparams={"fm_frac": 0.25},
                   note="shortcut model: flow matching + dyadic self-consistency (75% of rows: the warm start "
                        "already fits the diagonal); trained for K = 1, 2, ..., 64 only"),
        MethodSpec("shortcut_ot", "Shortcut, OT coupling", "checkerboard-shortcut-ot", init_from="si",
                   note="shortcut model with minibatch-OT coupling, fm_frac 0.25 (not the paper's recipe: its "
                        "coupling is independent); results/family.md"),
        MethodSpec("cd", "CD", "checkerboard-cd", teacher="si", init_from="si",
                   note="consistency distillation (eq. C.9): X_{s,1} only, so K > 1 composes untrained pairs"),
        MethodSpec("ct", "CT", "checkerboard-ct", init_from="si",
                   note="consistency training (eq. C.14): X_{s,1} only, so K > 1 composes untrained pairs"),
        MethodSpec("pd2", "PD round 1 (2 steps)", "checkerboard-pd", teacher="fmm4", init_from="fmm4",
                   config=RESIDUAL, table3_steps=2, one_step=False,
                   note="progressive distillation round 1 (eq. C.18): FMM N=4 -> 2 steps"),
        MethodSpec("pd", "PD, N=1", "checkerboard-pd", hparams={"steps": 1}, teacher="pd2", init_from="pd2",
                   config=RESIDUAL,
                   note="progressive distillation round 2 (eq. C.18): 2 -> 1 step; only K = 1 is trained"),
        MethodSpec("operator", "Operator (C.17)", "checkerboard-operator", teacher="si", init_from="si",
                   note="trajectory regression on 20k dopri5 teacher trajectories (C.17): X_{0,t} only"),
        MethodSpec("ee_naive", "EE naive (control)", "checkerboard-ee", objective="ee_naive", control=True,
                   note="negative control: biased Eulerian estimator without stop-gradient (eq. B.6)"),
        MethodSpec("denoiser", "Denoiser (control)", "checkerboard-ee", objective="denoiser", control=True,
                   note="negative control: converges to the denoiser E[I_t | I_s] (eq. B.1), not the map"),
    )
}
DEFAULT_METHODS: list[str] = ["si", "lmd", "lmd_both", "lmd_both_long", "lmd_both_xl", "lmd_xl", "emd", "fmm1", "fmm4",
                              "pfmm", "fmm4_xl", "pfmm_xl", "ee", "lsd", "esd", "psd", "ayf_emd", "ayf_lmd"]


# Training priority when runs compete for the two worker slots (the rest follow in METHODS order):
# the issue's order of importance, so that an interrupted full run has the rows that matter.
TRAIN_ORDER: list[str] = ["si_pre", "si", "lmd", "fmm4", "lmd_both", "pfmm", "ayf_lmd", "ee", "lmd_both_long",
                          "ayf_emd", "emd", "psd", "lmd_both_xl", "fmm1", "lsd", "esd", "fmm4_xl", "pfmm_xl",
                          "lmd_xl", "ee_long"]


def train_order(keys: Sequence[str]) -> list[str]:
    """``keys`` sorted by :data:`TRAIN_ORDER` (unlisted keys last, in their given order)."""
    rank = {k: i for i, k in enumerate(TRAIN_ORDER)}
    return sorted(keys, key=lambda k: rank.get(k, len(rank)))


def register_method(spec: MethodSpec, *, default: bool = True) -> MethodSpec:
    """Add a row to the benchmark (e.g. a new objective's preset).

    Args:
        spec: the method; its ``teacher`` / ``init_from`` must already be registered.
        default: also run it when ``--methods`` is not given (``all``).

    Returns:
        ``spec``.

    Raises:
        BenchmarkError: the key is taken or a dependency is unknown.
    """
    if spec.key in METHODS:
        raise BenchmarkError(f"method {spec.key!r} is already registered")
    for dep in (spec.teacher, spec.init_from):
        if dep is not None and dep not in METHODS:
            raise BenchmarkError(f"method {spec.key!r}: register its teacher / warm start {dep!r} first")
    METHODS[spec.key] = spec
    if default:
        DEFAULT_METHODS.append(spec.key)
    return spec


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
    wanted = set(keys) | {"si"} | ({"si_pre"} if "si_pre" in METHODS else set())
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
        threads: ``torch.set_num_threads`` of the evaluation (and of training with ``jobs = 1``).
        jobs: training runs at a time (each its own process with one thread); 1 trains in
            this process, one run after the other.
        bound_samples: base points for the terms of Props. 3.7 / 3.8.
        size_samples: base points (the first ones of the shared ``x0``) for the
            teacher-size comparison.
        teacher_sizes: extra teacher nets ``(width, depth)`` for the size comparison.
        methods: keys of the methods run.
    """

    quick: bool = False
    width: int = 256
    depth: int = 4
    steps: int = 1000
    batch_size: int = 512
    lr: float = 1e-3
    lr_min: float = 1e-5
    lr_warmup_steps: int = 50
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    n_samples: int = 100_000
    w2_samples: int = 2000
    kl_bins: int = 100
    kl_range: tuple[float, float] = (-4.5, 4.5)
    rtol: float = 1e-4
    threads: int = 2
    jobs: int = 2
    bound_samples: int = 4000
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
    "ema_decay": 0.99, "n_samples": 20_000, "w2_samples": 1000, "rtol": 1e-4, "bound_samples": 500,
}

