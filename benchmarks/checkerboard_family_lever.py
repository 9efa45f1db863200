"""Checkerboard: do issue 13's one-step levers help MeanFlow and shortcut models (issue 14)?

Each variant is a family row of the checkerboard benchmark (``meanflow``, ``meanflow_ot``,
``shortcut``, ``shortcut_ot`` of :data:`~anystep.benchmarks.checkerboard_methods.METHODS`,
the shared budget of :class:`~anystep.benchmarks.checkerboard_methods.Settings`, warm start
``v_st = b_s`` from the benchmark's teacher ``runs/checkerboard/si``) with the changes in its
row: random Fourier features of ``x`` (``model.backbone.x_features``), the minibatch-OT
coupling, and a concentration of the batch on the pairs that make up the one-step map
(MeanFlow: ``start_frac`` rows ``s = 0`` or ``end_frac`` rows ``t = 1``; shortcut:
``start_frac`` self-consistency rows starting at ``t = 0``). A variant trains into
``runs/family_lever/<name>`` (a finished run is reused, an interrupted one resumed) and is
scored like :mod:`~anystep.benchmarks.checkerboard_lever` (the benchmark's estimator on its
100,000 shared base points, K = 1, 2, 4, 8).

Usage::

    python -m anystep.benchmarks.checkerboard_family_lever train NAME [NAME ...]   # one thread
    python -m anystep.benchmarks.checkerboard_family_lever report                  # score, print
    python -m anystep.benchmarks.checkerboard_family_lever list

Run training through the team's slot lock (one thread, nice 19). ``report`` scores every
finished variant and writes ``runs/family_lever/report.{json,md}`` (the table that
``benchmarks/results/family.md`` quotes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_lever import FF, RECORD, XL, XXL, Variant, continued
from anystep.benchmarks.checkerboard_variant_runs import (
    BENCH_DIR,
    run_finished,
    scoring_setup,
    train_runs,
    variant_cli,
    variant_config,
)

__all__ = ["VARIANTS", "main"]

RUN_DIR = Path("runs/family_lever")


# Rows scored beside the variants: the benchmark rows and the OT ablations of family.md (trained there).
REFERENCES = {
    "bench:meanflow": (BENCH_DIR / "meanflow", "benchmark row (uniform times, p = 0, diag 0.75)"),
    "bench:shortcut": (BENCH_DIR / "shortcut", "benchmark row (L = 7, fm_frac 0.25)"),
    "abl:mf_ot": (Path("runs/family/cb/ablations/mf_ot"), "meanflow + minibatch OT (family.md ablation)"),
    "abl:sc_ot": (Path("runs/family/cb/ablations/sc_ot"), "shortcut + minibatch OT (family.md ablation)"),
}


def _h(**kw: Any) -> dict[str, Any]:
    return {f"objective_hparams.{k}": v for k, v in kw.items()}


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # shortcut (benchmark row: L = 7, fm_frac 0.25)
        Variant("sc_ff", "Shortcut + Fourier features of x", "x_features 64, sigma 1", FF, base="shortcut"),
        Variant("sc_ot_ff", "Shortcut, OT + Fourier features of x", "minibatch OT, x_features 64, sigma 1",
                FF, base="shortcut_ot"),
        Variant("sc_ot_start50", "Shortcut, OT, half the self-consistency rows from t = 0",
                "minibatch OT, start_frac 0.5", _h(start_frac=0.5), base="shortcut_ot"),
        Variant("sc_ot_ff_start50", "Shortcut, OT + Fourier features, half the SC rows from t = 0",
                "minibatch OT, x_features 64, sigma 1, start_frac 0.5", {**FF, **_h(start_frac=0.5)},
                base="shortcut_ot"),
        Variant("sc_ot_ff_top50", "Shortcut, OT + Fourier features, half the SC rows at 2d = 1",
                "minibatch OT, x_features 64, sigma 1, top_frac 0.5", {**FF, **_h(top_frac=0.5)},
                base="shortcut_ot"),
        # MeanFlow (benchmark row: uniform times, p = 0, diag 0.75)
        Variant("mf_ff", "MeanFlow + Fourier features of x", "x_features 64, sigma 1", FF, base="meanflow"),
        Variant("mf_ot_ff", "MeanFlow, OT + Fourier features of x", "minibatch OT, x_features 64, sigma 1",
                FF, base="meanflow_ot"),
        Variant("mf_ot_ff_start25", "MeanFlow, OT + Fourier features, a quarter of the batch at s = 0",
                "minibatch OT, x_features 64, sigma 1, diag 0.5, start_frac 0.25",
                {**FF, **_h(diag_frac=0.5, start_frac=0.25)}, base="meanflow_ot"),
        Variant("mf_ot_ff_tm", "MeanFlow, OT + Fourier features, the map's own velocity as tangent",
                "minibatch OT, x_features 64, sigma 1, tangent 'model' (one-sample noise dominates the long "
                "jumps with Fourier features)", {**FF, **_h(tangent="model")}, base="meanflow_ot"),
        Variant("mf_ot_end25", "MeanFlow, OT, a quarter of the batch at t = 1",
                "minibatch OT, diag 0.5, end_frac 0.25", _h(diag_frac=0.5, end_frac=0.25), base="meanflow_ot"),
        Variant("mf_ot_ff_end25", "MeanFlow, OT + Fourier features, a quarter of the batch at t = 1",
                "minibatch OT, x_features 64, sigma 1, diag 0.5, end_frac 0.25",
                {**FF, **_h(diag_frac=0.5, end_frac=0.25)}, base="meanflow_ot"),
    )
}


def _xl(name: str) -> Variant:
    """``name`` continued for 6000 steps at lr 5e-4 cosine (like the benchmark's ``*_xl`` rows)."""
    v = VARIANTS[name]
    return Variant(f"{name}_xl", f"{v.label}, +6000 steps", f"{name} continued 6000 steps, lr 5e-4 cosine",
                   {**v.sets, **XL}, base=v.base, init_from=name)


for _name in ("sc_ot_ff", "sc_ot_ff_start50", "sc_ot_ff_top50", "mf_ot_ff", "mf_ot_ff_start25", "mf_ot_ff_tm", "mf_ot_ff_end25"):
    VARIANTS[f"{_name}_xl"] = _xl(_name)


# The best shortcut variant, continued like LMD's best (ff64_s1_start50 _xxl / _x3l: 19,000 / 31,000 steps).
VARIANTS["sc_ot_ff_top50_xxl"] = continued(VARIANTS["sc_ot_ff_top50_xl"], XXL, "sc_ot_ff_top50_xxl")
VARIANTS["sc_ot_ff_top50_x3l"] = continued(VARIANTS["sc_ot_ff_top50_xxl"], XXL, "sc_ot_ff_top50_x3l")
# Fifth session: the best MeanFlow (mf_ot_ff_xl, 7000 steps) continued like LMD's _xxl (19,000 steps in all).
VARIANTS["mf_ot_ff_xxl"] = continued(VARIANTS["mf_ot_ff_xl"], XXL, "mf_ot_ff_xxl")
# Fifth session: the published bootstrap target (an EMA of the weights, shortcut's target_ema): at 1000 steps
# from the teacher (decay 0.99: a 100-step horizon), and as the same +12,000-step continuation as _x3l (0.999).
VARIANTS["sc_ot_ff_top50_ema99"] = Variant(
    "sc_ot_ff_top50_ema99", "Shortcut, OT + Fourier features, half the SC rows at 2d = 1, EMA target 0.99",
    "sc_ot_ff_top50 with the self-consistency target from an EMA of the weights (target_ema 0.99)",
    {**VARIANTS["sc_ot_ff_top50"].sets, **_h(target_ema=0.99)}, base="shortcut_ot")
VARIANTS["sc_ot_ff_top50_ema_x3l"] = continued(
    VARIANTS["sc_ot_ff_top50_xxl"], XXL, "sc_ot_ff_top50_ema_x3l", change=_h(target_ema=0.999),
    note=" with target_ema 0.999 (the published bootstrap_ema); _x3l is the same without it")
VARIANTS["sc_ot_ff_top50_ema_x4l"] = continued(VARIANTS["sc_ot_ff_top50_ema_x3l"], XXL, "sc_ot_ff_top50_ema_x4l")
VARIANTS["sc_ot_ff_top50_ema_x5l"] = continued(VARIANTS["sc_ot_ff_top50_ema_x4l"], XXL, "sc_ot_ff_top50_ema_x5l")
# Seventh session: once more (67,000 steps: 2.06x) and again (79,000: 2.04x) for the 2x one-step goal.
VARIANTS["sc_ot_ff_top50_ema_x6l"] = continued(VARIANTS["sc_ot_ff_top50_ema_x5l"], XXL, "sc_ot_ff_top50_ema_x6l")
VARIANTS["sc_ot_ff_top50_ema_x7l"] = continued(VARIANTS["sc_ot_ff_top50_ema_x6l"], XXL, "sc_ot_ff_top50_ema_x7l")
# 0.115 -> 0.108 -> 0.107: flat. Every continuation restarts at lr 3e-4; the same 12,000 steps from 1e-4 (1.86x).
VARIANTS["sc_ot_ff_top50_ema_x7l_lr1e4"] = continued(
    VARIANTS["sc_ot_ff_top50_ema_x7l"], {**XXL, "lr": 1e-4}, "sc_ot_ff_top50_ema_x7l_lr1e4")
# Eighth session: the 1.86x shortcut map (1.94 +- 0.10 over draws, four of six within 2x) once more at lr 1e-4.
VARIANTS["sc_ot_ff_top50_ema_x8l_lr1e4"] = continued(
    VARIANTS["sc_ot_ff_top50_ema_x7l_lr1e4"], {**XXL, "lr": 1e-4}, "sc_ot_ff_top50_ema_x8l_lr1e4")
# Eighth session: the same low-lr continuation for the best MeanFlow map (mf_ot_ff_xxl, 6.77x at 19,000 steps).
VARIANTS["mf_ot_ff_xxl_lr1e4"] = continued(VARIANTS["mf_ot_ff_xxl"], {**XXL, "lr": 1e-4}, "mf_ot_ff_xxl_lr1e4")


def _cfg(v: Variant):
    return variant_config(v.base, v.sets, f"checkerboard_family_lever {v.name}",
                          init_from=None if v.init_from is None else RUN_DIR / v.init_from)


def train(names: list[str]) -> None:
    """Train (or reuse / resume) the variants ``names`` one after the other, one thread."""
    train_runs(names, lambda name: _cfg(VARIANTS[name]), RUN_DIR, RECORD)


def _finished(name: str) -> bool:
    return run_finished(RUN_DIR / name, RECORD)


def report() -> dict[str, Any]:
    """Score every finished variant (and the four benchmark rows) at K = 1, 2, 4, 8."""
    import torch

    from anystep.benchmarks.checkerboard_lever import _scores
    from anystep.benchmarks.checkerboard_methods import EVAL_STEPS
    from anystep.benchmarks.common import fmt, load_average, machine_info, markdown_table

    torch.set_num_threads(1)
    setup = scoring_setup(blur=False)
    ctx, cache, x0 = setup.ctx, setup.cache, setup.ctx.x0
    teacher = setup.teacher.kl
    rows = []
    runs = [(name, d, factor, None) for name, (d, factor) in REFERENCES.items()]
    runs += [(n, RUN_DIR / n, v.factor, v) for n, v in VARIANTS.items() if _finished(n)]
    for name, d, factor, v in runs:
        if not (d / "model.safetensors").is_file():
            continue
        path = d / "lever_scores.json" if v is not None else RUN_DIR / f"ref_{name.split(':')[1]}_scores.json"
        scores = _scores(d, cache.key("row", d), ctx, x0, path)
        rec = json.loads((d / RECORD).read_text()) if v is not None else {}
        rows.append({"name": name, "base": v.base if v else name.split(":")[1], "factor": factor,
                     "sets": v.sets if v else {}, "steps": rec.get("steps"), "seconds": rec.get("seconds"),
                     "load_avg": rec.get("load_avg"),
                     "kl": {str(k): scores[k].kl for k in EVAL_STEPS},
                     "coupling_l2": scores[1].coupling_l2})
        print(f"[{name}] KL " + ", ".join(f"K={k}: {scores[k].kl:.4f}" for k in EVAL_STEPS), flush=True)
    res = {"machine": machine_info().describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "teacher_kl": teacher, "load_avg": load_average(), "rows": rows}
    table = [[r["name"], r["base"], r["factor"], r["steps"] or "", fmt(r["seconds"])]
             + [f"{fmt(r['kl'][str(k)])} ({fmt(r['kl'][str(k)] / teacher)})" for k in EVAL_STEPS]
             + [fmt(r["coupling_l2"])] for r in rows]
    md = "\n".join([f"Teacher dopri5 KL {fmt(teacher, 4)}; {res['machine']}; {res['date']}", "",
                    markdown_table(["variant", "base row", "change", "steps", "train s"]
                                   + [f"K={k}" for k in EVAL_STEPS] + ["coupling K=1"], table), ""])
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "report.json").write_text(json.dumps(res, indent=1))
    (RUN_DIR / "report.md").write_text(md)
    print(md, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI: ``train NAME...``, ``report``, ``list`` (``checkerboard_variant_runs.variant_cli``)."""
    return variant_cli(
        argv, module="anystep.benchmarks.checkerboard_family_lever",
        description="Train and score issue 13's one-step levers on the MeanFlow and shortcut rows of the "
                    "checkerboard (runs/family_lever/<name>, resumable).",
        variants=VARIANTS, train=train, report=report, finished=_finished, run_dir=RUN_DIR,
        list_line=lambda v, done: f"{v.name:22s} {'done' if done else '    '}  {v.base:12s} {v.factor}",
        report_help="score the finished variants, write runs/family_lever/report.*")


if __name__ == "__main__":
    raise SystemExit(main())
