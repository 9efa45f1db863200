"""Checkerboard: which lever makes one-step maps sharper per unit of CPU (issue 13).

Each variant is the benchmark's LMD row (``checkerboard-lmd``, the shared budget of
:class:`~anystep.benchmarks.checkerboard_methods.Settings`, warm start ``v_st = b_s`` from the
benchmark's teacher ``runs/checkerboard/si``) with one change; it trains into
``runs/cb_lever/<name>`` (a finished run is reused, an interrupted one resumed) and is scored
with the benchmark's own estimator (:func:`~anystep.benchmarks.checkerboard_eval.score_samples`
on the benchmark's 100,000 base points, the teacher's dopri5 samples from the benchmark's
evaluation cache), at K = 1, 2, 4, 8 steps.

Usage::

    python -m anystep.benchmarks.checkerboard_lever train NAME [NAME ...]   # one thread, resumable
    python -m anystep.benchmarks.checkerboard_lever report                  # score + write results
    python -m anystep.benchmarks.checkerboard_lever list

Run training through the team's slot lock (one thread, nice 19). ``report`` scores every
finished run and writes ``benchmarks/results/checkerboard_lever.{md,json}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FF", "RECORD", "VARIANTS", "XL", "XXL", "Variant", "continued", "main"]

from anystep.benchmarks.checkerboard_variant_runs import (
    BENCH_DIR,
    Subcommand,
    run_finished,
    scoring_setup,
    train_runs,
    variant_cli,
    variant_config,
)

LEVER_DIR = Path("runs/cb_lever")
RECORD = "lever_record.json"  # the training record of a finished variant run (``run_finished``)
RESULTS = Path("benchmarks/results")


@dataclass(frozen=True)
class Variant:
    """One run: the benchmark's ``base`` row with TrainConfig overrides.

    Attributes:
        name: run directory name under ``runs/cb_lever``.
        label: row label.
        factor: what differs from the baseline, in words.
        sets: ``key=value`` overrides (dotted TrainConfig keys; values JSON).
        base: benchmark method key the config starts from.
        init_from: another variant whose weights this one continues (else the base's warm start).
        teacher_from: another variant whose model is the frozen teacher (else the base's teacher;
            PFMM distils a Fourier-feature FMM N=4 variant).
    """

    name: str
    label: str
    factor: str
    sets: dict[str, Any] = field(default_factory=dict)
    base: str = "lmd"
    init_from: str | None = None
    teacher_from: str | None = None


def _ff(m: int, sigma: float) -> dict[str, Any]:
    return {"model.backbone.x_features": m, "model.backbone.x_feature_scale": sigma}


def _start(frac: float) -> dict[str, Any]:
    return {"objective_hparams.start_frac": frac}


FF = _ff(64, 1.0)


XL = {"max_steps": 6000, "lr": 5e-4, "ckpt_every": 500}  # the benchmark's lmd_xl continuation budget
XXL = {"max_steps": 12000, "lr": 3e-4, "ckpt_every": 500}  # a further continuation of an _xl run

# Benchmark rows scored beside the variants (their run directories in runs/checkerboard).
REFERENCES = {"lmd": "LMD (benchmark row)", "lmd_xl": "LMD, +6000 steps (benchmark row)",
              "lmd_both": "LMD, both directions (benchmark row)",
              "lmd_both_xl": "LMD, both directions, +3000+8000 steps (benchmark row)",
              "fmm1": "FMM, N=1 (benchmark row)", "fmm4": "FMM, N=4 (benchmark row)",
              "fmm4_xl": "FMM, N=4, +4000 steps (benchmark row)", "pfmm": "PFMM, N=1 (benchmark row)",
              "pfmm_xl": "PFMM, N=1, from FMM N=4 +4000 (benchmark row)", "emd": "EMD (benchmark row)",
              "ee": "EE (benchmark row)", "lsd": "LSD (benchmark row)", "ayf_lmd": "AYF-LMD (benchmark row)"}

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", "LMD (benchmark row, retrained here)", "baseline: the benchmark's LMD row"),
        Variant("ff64_s1", "LMD + Fourier features of x (64, sigma 1)", "x_features 64, sigma 1", _ff(64, 1.0)),
        Variant("ff64_s2", "LMD + Fourier features of x (64, sigma 2)", "x_features 64, sigma 2", _ff(64, 2.0)),
        Variant("ff64_s05", "LMD + Fourier features of x (64, sigma 0.5)", "x_features 64, sigma 0.5", _ff(64, 0.5)),
        Variant("ff128_s1", "LMD + Fourier features of x (128, sigma 1)", "x_features 128, sigma 1", _ff(128, 1.0)),
        Variant("ff64_s4", "LMD + Fourier features of x (64, sigma 4)", "x_features 64, sigma 4", _ff(64, 4.0)),
        Variant("base_1500", "LMD, 1500 steps", "baseline with 1.5x the steps (equal wall time check)",
                {"max_steps": 1500}),
        Variant("ff64_s1_xl", "LMD + Fourier features of x (64, sigma 1), +6000 steps",
                "ff64_s1 continued like the benchmark's lmd_xl (6000 steps, lr 5e-4 cosine)",
                {**_ff(64, 1.0), **XL}, init_from="ff64_s1"),
        Variant("ff64_s05_xl", "LMD + Fourier features of x (64, sigma 0.5), +6000 steps",
                "ff64_s05 continued like the benchmark's lmd_xl (6000 steps, lr 5e-4 cosine)",
                {**_ff(64, 0.5), **XL}, init_from="ff64_s05"),
        Variant("start50", "LMD, half of each batch at s = 0", "start_frac 0.5 (s = 0 rows: the maps X_0t)",
                {"objective_hparams.start_frac": 0.5}),
        Variant("ff64_s1_start50", "LMD + Fourier features of x (64, sigma 1) + half of each batch at s = 0",
                "x_features 64, sigma 1, start_frac 0.5", {**_ff(64, 1.0), "objective_hparams.start_frac": 0.5}),
        Variant("ff64_s1_start50_xl", "LMD + Fourier features of x + half of each batch at s = 0, +6000 steps",
                "ff64_s1_start50 continued like the benchmark's lmd_xl (6000 steps, lr 5e-4 cosine)",
                {**_ff(64, 1.0), "objective_hparams.start_frac": 0.5, **XL}, init_from="ff64_s1_start50"),
        Variant("ff_both", "LMD both directions + Fourier features of x (64, sigma 1)",
                "both directions, x_features 64, sigma 1", _ff(64, 1.0), base="lmd_both"),
        Variant("ff64_s1_start50_xxl", "LMD + Fourier features of x + half of each batch at s = 0, +6000+12000 steps",
                "ff64_s1_start50_xl continued 12000 steps (lr 3e-4 cosine): 19,000 steps in all",
                {**_ff(64, 1.0), "objective_hparams.start_frac": 0.5, **XXL}, init_from="ff64_s1_start50_xl"),
        Variant("ff64_s1_start50_x3l", "LMD + Fourier features of x + half of each batch at s = 0, +6000+12000+12000",
                "ff64_s1_start50_xxl continued 12000 steps (lr 3e-4 cosine): 31,000 steps in all",
                {**FF, **_start(0.5), **XXL}, init_from="ff64_s1_start50_xxl"),
        Variant("ff64_s1_start25", "LMD + Fourier features of x + a quarter of each batch at s = 0",
                "x_features 64, sigma 1, start_frac 0.25", {**FF, **_start(0.25)}),
        Variant("ff64_s1_start25_xl", "LMD + Fourier features of x + a quarter of each batch at s = 0, +6000 steps",
                "ff64_s1_start25 continued like the benchmark's lmd_xl (6000 steps, lr 5e-4 cosine)",
                {**FF, **_start(0.25), **XL}, init_from="ff64_s1_start25"),
        # issue 13: the same two levers on the other families (their benchmark rows' warm start and budget)
        Variant("fmm1_ff_start50", "FMM N=1 + Fourier features of x + half of each batch at s in {0, 1}",
                "fmm1 with x_features 64, sigma 1, start_frac 0.5 (both directions: s = 0 and s = 1 rows)",
                {**FF, **_start(0.5)}, base="fmm1"),
        Variant("fmm4_ff", "FMM N=4 + Fourier features of x", "fmm4 with x_features 64, sigma 1 (no start_frac: "
                "s = 0 rows would leave the window |t - s| <= 1/4)", FF, base="fmm4"),
        Variant("pfmm_ff_start50", "PFMM N=1 from FMM N=4 + Fourier features, half of each batch at s = 0",
                "pfmm distilling fmm4_ff (teacher and warm start), x_features 64, sigma 1, start_frac 0.5",
                {**FF, **_start(0.5)}, base="pfmm", init_from="fmm4_ff", teacher_from="fmm4_ff"),
        Variant("pfmm_start50", "PFMM N=1 (benchmark's FMM N=4 teacher), half of each batch at s = 0",
                "pfmm with start_frac 0.5 (teacher and warm start: the benchmark's fmm4, no Fourier features)",
                _start(0.5), base="pfmm"),
        Variant("pfmm_xl_start50", "PFMM N=1 from FMM N=4 +4000, half of each batch at s = 0",
                "pfmm_xl (teacher and warm start: the benchmark's fmm4_xl, 5000 steps, lr 1e-3) with start_frac 0.5",
                _start(0.5), base="pfmm_xl"),
        Variant("emd_ff_start50", "EMD + Fourier features of x + half of each batch at s = 0",
                "emd with x_features 64, sigma 1, start_frac 0.5", {**FF, **_start(0.5)}, base="emd"),
        Variant("ee_ff_start50", "EE + Fourier features of x + half of each batch at s = 0",
                "ee with x_features 64, sigma 1, start_frac 0.5", {**FF, **_start(0.5)}, base="ee"),
        Variant("ee_ff", "EE + Fourier features of x", "ee with x_features 64, sigma 1 (ee_ff_start50 diverged)",
                FF, base="ee"),
        Variant("ee_start50", "EE, half of each batch at s = 0", "ee with start_frac 0.5 (ee_ff_start50 diverged)",
                _start(0.5), base="ee"),
        Variant("ayf_lmd_ff", "AYF-LMD + Fourier features of x", "ayf_lmd with x_features 64, sigma 1", FF,
                base="ayf_lmd"),
        Variant("lsd_ff_start", "LSD + Fourier features of x + half of the off-diagonal rows at s = 0",
                "lsd with x_features 64, sigma 1, start_frac 0.125 (LSD draws 3/4 of each batch on the diagonal)",
                {**FF, **_start(0.125)}, base="lsd"),
        Variant("ayf_lmd_ff_start50", "AYF-LMD + Fourier features of x + half of each batch at s = 0",
                "ayf_lmd with x_features 64, sigma 1, start_frac 0.5", {**FF, **_start(0.5)}, base="ayf_lmd"),
    )
}


def continued(v: Variant, budget: dict[str, Any] = XL, name: str | None = None, *,
              change: dict[str, Any] | None = None, note: str = "", teacher_from: str | None = None) -> Variant:
    """``v`` continued from its own weights with ``budget`` (default: as ``lmd_xl``), optionally one change.

    Args:
        v: the variant whose run is continued.
        budget: the continuation's ``max_steps`` / ``lr`` / ``ckpt_every`` (:data:`XL`, :data:`XXL`).
        name: the new variant's name (default ``<v.name>_xl``).
        change: overrides the continuation changes besides the budget (e.g. ``start_frac``).
        note: text appended to the description, saying what ``change`` / ``teacher_from`` change.
        teacher_from: a new teacher run (default: ``v``'s).
    """
    n = budget["max_steps"]
    factor = f"{v.name} continued {n} steps (lr {budget['lr']:g} cosine){note}"
    return Variant(name or f"{v.name}_xl", f"{v.label}, +{n} steps{note}",
                   factor if name else f"{factor}, as the benchmark's _xl rows",
                   {**v.sets, **(change or {}), **budget}, base=v.base, init_from=v.name,
                   teacher_from=teacher_from or v.teacher_from)


# Continuations of the family variants (fmm4 as the benchmark's fmm4_xl: 4000 steps, lr 5e-4); none for
# ee_ff_start50 (diverged) and ayf_lmd_ff_start50 (worse than its row).
VARIANTS.update({f"{n}_xl": continued(VARIANTS[n]) for n in (
    "fmm1_ff_start50", "pfmm_ff_start50", "pfmm_start50", "emd_ff_start50", "lsd_ff_start")})
VARIANTS["fmm4_ff_xl"] = continued(VARIANTS["fmm4_ff"], {"max_steps": 4000, "lr": 5e-4, "ckpt_every": 500})
# PFMM is bounded by its FMM N=4 teacher (pfmm_ff_start50 distils the 1000-step fmm4_ff): the same from fmm4_ff_xl.
VARIANTS["pfmm_ffxl_start50"] = Variant(
    "pfmm_ffxl_start50", "PFMM N=1 from FMM N=4 +4000 + Fourier features, half of each batch at s = 0",
    "pfmm distilling fmm4_ff_xl (teacher and warm start), x_features 64, sigma 1, start_frac 0.5",
    {**FF, **_start(0.5)}, base="pfmm", init_from="fmm4_ff_xl", teacher_from="fmm4_ff_xl")
VARIANTS["pfmm_ffxl_start50_xl"] = continued(VARIANTS["pfmm_ffxl_start50"])
# 12000 more steps at lr 3e-4 cosine (LMD's _xxl / _x3l schedule) of the best runs of each family.
for _old, _new in (("pfmm_ffxl_start50_xl", "pfmm_ffxl_start50_xxl"), ("pfmm_ffxl_start50_xxl", "pfmm_ffxl_start50_x3l"),
                   ("lsd_ff_start_xl", "lsd_ff_start_xxl"), ("fmm1_ff_start50_xl", "fmm1_ff_start50_xxl"),
                   ("emd_ff_start50_xl", "emd_ff_start50_xxl")):
    VARIANTS[_new] = continued(VARIANTS[_old], XXL, _new)


# Fifth session: FMM N=4 (PFMM's teacher) continued; PFMM continued with that sharper teacher; the benchmark's
# lmd_both_xl (the best four-step map, no features) continued for the 1.2x four-step goal.
VARIANTS["fmm4_ff_xxl"] = continued(VARIANTS["fmm4_ff_xl"], XXL, "fmm4_ff_xxl")
VARIANTS["pfmm_ffxxl_x4l"] = continued(VARIANTS["pfmm_ffxl_start50_x3l"], XXL, "pfmm_ffxxl_x4l",
                                      note=", teacher fmm4_ff_xxl", teacher_from="fmm4_ff_xxl")
VARIANTS["lmd_both_xl_xxl"] = Variant(
    "lmd_both_xl_xxl", "LMD both directions (benchmark row lmd_both_xl), +12000 steps",
    "the benchmark's lmd_both_xl continued 12000 steps (lr 0.0003 cosine)",
    dict(XXL), base="lmd_both", init_from="bench:lmd_both_xl")

for _old, _new in (("ff64_s1_start50_x3l", "ff64_s1_start50_x4l"), ("lsd_ff_start_xxl", "lsd_ff_start_x3l"),
                   ("emd_ff_start50_xxl", "emd_ff_start50_x3l")):
    VARIANTS[_new] = continued(VARIANTS[_old], XXL, _new)

# One map for both goals (one step <= 1.5x, four steps <= 1.2x): the 31,000-step start_frac 0.5 map continued
# with a quarter of each batch at s = 0 (start_frac 0.25 kept most of the one-step gain and more of K = 4).
VARIANTS["ff64_s1_start50_x3l_s25"] = continued(VARIANTS["ff64_s1_start50_x3l"], XXL, "ff64_s1_start50_x3l_s25",
                                               change=_start(0.25), note=" with start_frac 0.25")

# Seventh session: the four-step map (lmd_both_xl_xxl, 1.19x on the benchmark's draw, 1.23 +- 0.03 over draws)
# continued once more, for margin on the 1.2x four-step goal.
VARIANTS["lmd_both_xl_x3l"] = continued(VARIANTS["lmd_both_xl_xxl"], XXL, "lmd_both_xl_x3l")
# PFMM's bound is its teacher's K-step map: fmm4_ff_xxl is 0.133 at four steps but 0.067 at eight (jumps of
# 1/8 lie inside its |t - s| <= 1/4 window), so the same continuation against eight teacher steps per jump.
VARIANTS["pfmm_ffxxl_k8_x5l"] = continued(VARIANTS["pfmm_ffxxl_x4l"], XXL, "pfmm_ffxxl_k8_x5l",
                                         change={"objective_hparams.steps": 8},
                                         note=", teacher fmm4_ff_xxl composed over 8 steps (steps 8)")
VARIANTS["pfmm_ffxxl_k8_x6l"] = continued(VARIANTS["pfmm_ffxxl_k8_x5l"], XXL, "pfmm_ffxxl_k8_x6l")
# PFMM now sits ~1.4x above its teacher's eight-step KL (as LMD's one-step map above dopri5): the teacher next.
VARIANTS["fmm4_ff_x3l"] = continued(VARIANTS["fmm4_ff_xxl"], XXL, "fmm4_ff_x3l")
# The teacher did not improve (0.132 / 0.072 at four / eight steps): PFMM once more against fmm4_ff_xxl.
VARIANTS["pfmm_ffxxl_k8_x7l"] = continued(VARIANTS["pfmm_ffxxl_k8_x6l"], XXL, "pfmm_ffxxl_k8_x7l")
# LSD (2.92x at 31,000 steps) and EMD (4.71x) once more: each took under ten minutes of one core; LSD
# (2.56x at 43,000) twice more.
for _old, _new in (("lsd_ff_start_x3l", "lsd_ff_start_x4l"), ("emd_ff_start50_x3l", "emd_ff_start50_x4l"),
                   ("lsd_ff_start_x4l", "lsd_ff_start_x5l"), ("lsd_ff_start_x5l", "lsd_ff_start_x6l")):
    VARIANTS[_new] = continued(VARIANTS[_old], XXL, _new)
# FMM N=4's error grows towards its window's edge (fmm4_ff_xxl: KL 0.133 / 0.116 / 0.087 / 0.067 at K = 4 / 5 /
# 6 / 8, 0.75 at K = 3, outside it): a share of each batch on the edge |t - s| = 1/4 (edge_frac), the four-step
# sampler's jumps.
VARIANTS.update({v.name: v for v in (
    Variant("fmm4_ff_edge25", "FMM N=4 + Fourier features of x, a quarter of each batch on |t - s| = 1/4",
            "fmm4 with x_features 64, sigma 1, edge_frac 0.25", {**FF, "objective_hparams.edge_frac": 0.25},
            base="fmm4"),
    Variant("fmm4_ff_edge50", "FMM N=4 + Fourier features of x, half of each batch on |t - s| = 1/4",
            "fmm4 with x_features 64, sigma 1, edge_frac 0.5", {**FF, "objective_hparams.edge_frac": 0.5},
            base="fmm4"),
    # ... and, as FMM regresses dX/dt onto the one-sample dI_t, four times the batch (equal steps).
    Variant("fmm4_ff_b2048", "FMM N=4 + Fourier features of x, batch 2048",
            "fmm4 with x_features 64, sigma 1, batch 2048 (4x the samples per step)", {**FF, "batch_size": 2048},
            base="fmm4"),
)})
# Eighth session: the shortcut map's last gain came from repeating a flat continuation at lr 1e-4 instead of
# 3e-4 (2.04x -> 1.86x); the same for the best map of each family still short of its goal.
for _old in ("lmd_both_xl_x3l", "pfmm_ffxxl_k8_x7l", "fmm4_ff_x3l", "lsd_ff_start_x5l", "emd_ff_start50_x4l"):
    VARIANTS[f"{_old}_lr1e4"] = continued(VARIANTS[_old], {**XXL, "lr": 1e-4}, f"{_old}_lr1e4")
# PFMM 1.68x -> 1.58x and the four-step LMD map 1.22x -> 1.18x from them (LSD, FMM N=4 flat): those two once
# more at lr 1e-4 (the next continuation's number, the peak lr as suffix).
for _old, _new in (("pfmm_ffxxl_k8_x7l_lr1e4", "pfmm_ffxxl_k8_x8l_lr1e4"), ("lmd_both_xl_x3l_lr1e4", "lmd_both_xl_x4l_lr1e4")):
    VARIANTS[_new] = continued(VARIANTS[_old], {**XXL, "lr": 1e-4}, _new)
# Ninth session: FMM N=4 with start rows on the four-step grid (start_frac with window 1/4: s = k/4, t within
# the window; training/times.py), the analogue of LMD's s = 0 rows for a sampler that starts at k/4.
VARIANTS.update({v.name: v for v in (
    Variant("fmm4_ff_grid50", "FMM N=4 + Fourier features of x, half of each batch starting at s = k/4",
            "fmm4 with x_features 64, sigma 1, start_frac 0.5 (s on the four-step grid)", {**FF, **_start(0.5)},
            base="fmm4"),
)})
# ... and with minibatch-OT pairs (x0, x1): FMM N=4 regresses on the interpolant, whose OT paths are straighter
# and whose one-sample target varies less; the map learns that coupling's flow (same ends, rho_0 -> rho_1).
OT = {"coupling": "minibatch_ot"}
VARIANTS.update({v.name: v for v in (
    Variant("fmm4_ff_ot", "FMM N=4 + Fourier features of x, minibatch-OT coupling",
            "fmm4 with x_features 64, sigma 1, coupling minibatch_ot", {**FF, **OT}, base="fmm4"),
    Variant("fmm1_ff_start50_ot", "FMM N=1 + Fourier features of x + half of each batch at s in {0, 1}, minibatch OT",
            "fmm1_ff_start50 with coupling minibatch_ot", {**FF, **_start(0.5), **OT}, base="fmm1"),
    Variant("lsd_ff_start_ot", "LSD + Fourier features of x + half of the off-diagonal rows at s = 0, minibatch OT",
            "lsd_ff_start with coupling minibatch_ot", {**FF, **_start(0.125), **OT}, base="lsd"),
)})
for _old, _new in (("fmm4_ff_x3l_lr1e4", "fmm4_ff_x4l_ot"), ("fmm1_ff_start50_xxl", "fmm1_ff_start50_x3l_ot"),
                   ("lsd_ff_start_x5l", "lsd_ff_start_x6l_ot")):
    VARIANTS[_new] = continued(VARIANTS[_old], XL, _new, change=OT, note=", minibatch-OT coupling")
VARIANTS["fmm1_ff_start50_x4l_ot"] = continued(VARIANTS["fmm1_ff_start50_x3l_ot"], XXL, "fmm1_ff_start50_x4l_ot")
VARIANTS["fmm4_ff_x5l_ot_grid50"] = continued(VARIANTS["fmm4_ff_x4l_ot"], XL, "fmm4_ff_x5l_ot_grid50",
                                              change={**OT, **_start(0.5)},
                                              note=", minibatch OT, half of each batch starting at s = k/4")
VARIANTS["fmm4_ff_x6l_ot_grid50"] = continued(VARIANTS["fmm4_ff_x5l_ot_grid50"], XXL, "fmm4_ff_x6l_ot_grid50")
VARIANTS["fmm4_ff_x4l_grid50"] = continued(VARIANTS["fmm4_ff_x3l_lr1e4"], XXL, "fmm4_ff_x4l_grid50",
                                           change=_start(0.5), note=", half of each batch starting at s = k/4")


def _run_path(name: str) -> Path:
    """A variant's run directory, or the benchmark's own (``bench:<key>``: ``runs/checkerboard/<key>``)."""
    return BENCH_DIR / name.removeprefix("bench:") if name.startswith("bench:") else LEVER_DIR / name


def _cfg(v: Variant):
    return variant_config(v.base, v.sets, f"checkerboard_lever {v.name}",
                          init_from=None if v.init_from is None else _run_path(v.init_from),
                          teacher_from=None if v.teacher_from is None else _run_path(v.teacher_from))


def train(names: list[str]) -> None:
    """Train (or reuse / resume) the variants ``names`` one after the other, one thread."""
    train_runs(names, lambda name: _cfg(VARIANTS[name]), LEVER_DIR, RECORD)


def timing(names: list[str], steps: int = 60, reps: int = 3) -> dict[str, Any]:
    """ms per training step of ``names``, side by side: ``reps`` rounds of ``steps``-step runs
    (A, B, A, B, ...: every variant sees the same contention), median of steps 20..``steps``.

    Writes ``runs/cb_lever/timing.json``; the report prints it.
    """
    import statistics
    import tempfile

    import torch

    from anystep.benchmarks.common import load_average
    from anystep.training.config import apply_overrides
    from anystep.training.trainer import Trainer, read_log

    torch.set_num_threads(1)
    per: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for _ in range(reps):
        for name in names:
            cfg = apply_overrides(_cfg(VARIANTS[name]), [f"max_steps={steps}", "log_every=10",
                                                         f"ckpt_every={steps}", "lr_warmup_steps=5"])
            with tempfile.TemporaryDirectory() as tmp:
                Trainer(cfg, Path(tmp) / "run", eval_fn=None, progress=False).fit()
                rows = {r["step"]: r["time"] for r in read_log(Path(tmp) / "run") if "loss" in r}
            per[name].append(1000.0 * (rows[steps] - rows[20]) / (steps - 20))
            loads.append((load_average() or [None])[0])
            print(f"[timing] {name}: {per[name][-1]:.1f} ms/step", flush=True)
    out = {"steps": steps, "reps": reps, "ms_per_step": {n: statistics.median(v) for n, v in per.items()},
           "all": per, "load_avg": loads}
    (LEVER_DIR / "timing.json").write_text(json.dumps(out, indent=1))
    return out


def _finished(name: str) -> bool:
    return run_finished(LEVER_DIR / name, RECORD)


def report() -> None:
    """Score every finished variant and write ``checkerboard_lever.{md,json}``."""
    import numpy as np
    import torch

    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.benchmarks.common import load_average, machine_info, write_results
    from anystep.training.trainer import read_log

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    setup = scoring_setup()
    ctx, cache, m_si, settings, x0 = setup.ctx, setup.cache, setup.teacher, setup.settings, setup.ctx.x0
    rows: list[dict[str, Any]] = []
    for key, label in REFERENCES.items():
        d = BENCH_DIR / key
        if not (d / "model.safetensors").is_file():
            continue
        rows_log = [r for r in read_log(d) if "loss" in r]
        scores = _scores(d, cache.key("row", d), ctx, x0, LEVER_DIR / f"ref_{key}_scores.json")
        steps = int(rows_log[-1]["step"]) if rows_log else None
        secs = float(rows_log[-1]["time"]) if rows_log else None
        rows.append({"name": f"bench:{key}", "label": label, "factor": "benchmark row (trained by checkerboard.py)",
                     "sets": {}, "base": key, "seconds": secs, "steps": steps,
                     "ms_per_step": 1000 * secs / steps if steps else None, "load_avg": None, "params": None,
                     "metrics": {str(k): s.__dict__ for k, s in scores.items()}})
    for name, v in VARIANTS.items():
        if not _finished(name):
            continue
        rec = json.loads((LEVER_DIR / name / RECORD).read_text())
        scores = _scores(LEVER_DIR / name, cache.key("row", LEVER_DIR / name), ctx, x0,
                         LEVER_DIR / name / "lever_scores.json")
        rows.append({"name": name, "label": v.label, "factor": v.factor, "sets": v.sets, "base": v.base,
                     "seconds": rec["seconds"], "steps": rec["steps"], "ms_per_step": rec["ms_per_step"],
                     "load_avg": rec["load_avg"], "params": rec["params"],
                     "metrics": {str(k): s.__dict__ for k, s in scores.items()}})
        print(f"[{name}] KL " + ", ".join(f"K={k}: {scores[k].kl:.4f}" for k in EVAL_STEPS), flush=True)
    res = {"machine": machine_info().describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "teacher_kl": m_si.kl, "teacher_blur": ctx.blur.equivalent(m_si.kl),
           "blur_curve": ctx.blur.to_dict(), "settings": settings, "rows": rows,
           "eval_seconds": time.perf_counter() - t0, "load_avg": load_average(),
           "timing": json.loads((LEVER_DIR / "timing.json").read_text()) if (LEVER_DIR / "timing.json").is_file()
           else None}
    write_results(RESULTS, "checkerboard_lever", res, _markdown(res, EVAL_STEPS, np))


def _scores(run_dir: Path, key: str, ctx, x0, path: Path) -> dict[int, Any]:
    """Metrics at K = 1, 2, 4, 8 of the model in ``run_dir``; cached in the JSON file ``path``
    under the benchmark's cache key (weights, teacher and evaluation settings)."""
    import torch

    from anystep.benchmarks.checkerboard_cache import metrics_from_json, metrics_to_json
    from anystep.benchmarks.checkerboard_eval import sample_map, score_samples
    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.core.modeldir import load_model_dir

    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return metrics_from_json(saved["metrics"])
    model = load_model_dir(run_dir).model.eval()
    scores = {}
    for k in EVAL_STEPS:
        with torch.no_grad():
            x1 = sample_map(model, x0, k)
        scores[k] = score_samples(x1, ctx, nfe=k)
    path.write_text(json.dumps({"key": key, "metrics": metrics_to_json(scores)}))
    return scores


def _blur(b: float | None) -> str:
    from anystep.benchmarks.common import fmt

    if b is None or b == float("inf"):
        return "> 0.3"
    return fmt(b)


def _markdown(res: dict[str, Any], steps, np) -> str:
    from anystep.benchmarks.common import (
        existing_notes,
        fmt,
        markdown_table,
        notes_section,
    )

    t = res["teacher_kl"]
    lines = [
        "# Checkerboard: a lever for sharper one-step maps (issue 13)",
        "",
        ("- Command: `python -m anystep.benchmarks.checkerboard_lever train NAME` per variant (one thread, "
        "nice 19, at most two at a time), then `python -m anystep.benchmarks.checkerboard_lever report`"),
        f"- Machine: {res['machine']}; other processes shared the 2 cores (load average per run below)",
        f"- Date: {res['date']}",
        ("- Every variant: a benchmark row (column `base`: its preset, teacher and warm start; the shared "
        "budget MLP 256 x 4, 1000 Adam steps, batch 512, lr 1e-3 cosine to 1e-5, EMA 0.999; LMD, EMD, "
        "AYF-LMD, FMM, EE and LSD start from the benchmark's teacher `runs/checkerboard/si`, v_st = b_s, PFMM "
        "from its FMM N=4 teacher) with the change in its row; `_xl` / `_xxl` / `_x3l` / `_x4l` rows, and every row whose change says \"continued\", continue another "
        "variant's weights (`steps`: their own). `bench:` rows are "
        "the benchmark's own run directories, scored here."),
        (f"- Scored like `checkerboard.md`: 100,000 shared base points, `score_samples`; teacher dopri5 KL "
        f"**{fmt(t, 4)}** (blur {_blur(res['teacher_blur'])}); ratios are KL / {fmt(t, 3)}."),
        "",
    ]
    head = ["Variant", "change", "steps", "train s", "ms/step", "load"]
    kl_rows, ratio_rows, blur_rows = [], [], []
    bench = {r["base"]: r["metrics"] for r in res["rows"] if r["name"].startswith("bench:")}
    for r in res["rows"]:
        m = r["metrics"]
        base = [r["name"], r["factor"], r["steps"], fmt(r["seconds"]), fmt(r["ms_per_step"]), fmt(r["load_avg"])]
        kl_rows.append(base + [fmt(m[str(k)]["kl"]) for k in steps])
        long = r["name"].endswith(("_xl", "_xxl", "_x3l")) and f"{r['base']}_xl" in bench
        ref = bench.get(f"{r['base']}_xl" if long else r["base"])
        vs = [fmt(m[str(k)]["kl"] / ref[str(k)]["kl"]) if ref and not r["name"].startswith("bench:") else "-"
              for k in (1, 4)]
        ratio_rows.append([r["name"], r["base"]] + [fmt(m[str(k)]["kl"] / t) for k in steps]
                          + [fmt(m["1"]["coupling_l2"])] + vs)
        blur_rows.append([r["name"]] + [_blur(m[str(k)]["blur"]) for k in steps])
    lines += ["## KL(rho_1 || rho_hat_1) at K steps", "",
              markdown_table(head + [f"K={k}" for k in steps], kl_rows), "",
              "## KL / teacher's dopri5 KL, and the one-step coupling error", "",
              ("`vs base` = the variant's KL over its base benchmark row's (1000 steps) at K = 1 and 4: "
               "below 1 the change helped (`_xl` / `_xxl` / `_x3l` / `_x4l` variants: over the base's `_xl` row where it has "
               "one, `lmd_xl`, 7000 steps)."), "",
              markdown_table(["Variant", "base"] + [f"K={k}" for k in steps]
                             + ["coupling K=1", "vs base K=1", "vs base K=4"], ratio_rows), "",
              "## Blur equivalent (sigma)", "",
              markdown_table(["Variant"] + [f"K={k}" for k in steps], blur_rows), ""]
    tm = res.get("timing")
    if tm:
        lines += [(f"## Cost per step, side by side ({tm['reps']} interleaved rounds of {tm['steps']}-step runs, "
                  f"median of steps 20-{tm['steps']}; 1-min load {', '.join(fmt(v) for v in tm['load_avg'])})"), "",
                  markdown_table(["Variant", "ms/step (median)", "all rounds"],
                                 [[n, fmt(v), ", ".join(fmt(x) for x in tm["all"][n])]
                                  for n, v in tm["ms_per_step"].items()]), ""]
    notes = existing_notes(RESULTS / "checkerboard_lever.md")
    lines += notes_section(notes or None, placeholder="")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``train NAME...``, ``timing NAME...``, ``report``, ``list`` (``checkerboard_variant_runs.variant_cli``)."""
    return variant_cli(
        argv, module="anystep.benchmarks.checkerboard_lever",
        description="Train and score the one-step lever variants of the checkerboard (runs/cb_lever/<name>, "
                    "resumable).",
        variants=VARIANTS, train=train, report=report, finished=_finished, run_dir=LEVER_DIR,
        list_line=lambda v, done: f"{v.name:10s} {'done' if done else '    '}  {v.factor}",
        report_help="score the finished variants, write benchmarks/results/checkerboard_lever.*",
        extra=[Subcommand("timing", "ms per step of variants side by side (interleaved short runs), write "
                                    "runs/cb_lever/timing.json", lambda a: timing(a.names), takes_names=True)])


if __name__ == "__main__":
    raise SystemExit(main())
