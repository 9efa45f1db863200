"""Checkerboard: train the candidate for ``models/checkerboard`` with the one-step lever (issue 13).

The bundled map must be trained on both time directions (``/encode`` runs ``X_{1,0}``). The
lever of ``benchmarks/results/checkerboard_lever.md`` -- random Fourier features of ``x``
(64, sigma 1) and half of each batch on the end-point maps (``start_frac = 0.5``) -- is applied
to the benchmark's ``lmd_both`` row (warm start ``v_st = b_s`` from the benchmark's teacher
``runs/checkerboard/si``). In both-directions mode the start rows alternate ``s = 0`` (the maps
``X_{0,t}`` that make up ``/generate``'s one-step map) and ``s = 1`` (the maps ``X_{1,t}`` that
make up ``/encode``'s ``X_{1,0}``); both halves are kept, since the bundle must invert.

Two stages, each a resumable run directory under ``runs/cb_bundle`` (a finished one is reused):

* ``ff_both_start``: 1000 steps, the benchmark's shared budget;
* ``ff_both_start_xl``: continues it for ``XL_STEPS`` steps (lr 5e-4 cosine, checkpoint every 500).

Usage (from the repository root, through a training slot)::

    python -m anystep.benchmarks.checkerboard_bundle_train train
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "Stage", "main", "stage_config"]

BENCH_DIR = Path("runs/checkerboard")  # the benchmark's work dir: teacher si, evaluation cache
BUNDLE_RUNS = Path("runs/cb_bundle")
XL_STEPS = 8000

LEVER = {"model.backbone.x_features": 64, "model.backbone.x_feature_scale": 1.0,
         "objective_hparams.start_frac": 0.5}


@dataclass(frozen=True)
class Stage:
    """One training stage: the benchmark's ``lmd_both`` row with TrainConfig overrides.

    Attributes:
        name: run directory name under ``runs/cb_bundle``.
        sets: ``key=value`` overrides (dotted TrainConfig keys; values JSON).
        init_from: the stage whose weights this one continues (else the teacher warm start).
    """

    name: str
    sets: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ff_both_start", {**LEVER, "ckpt_every": 500}),
        Stage("ff_both_start_xl", {**LEVER, "max_steps": XL_STEPS, "lr": 5e-4, "ckpt_every": 500},
              init_from="ff_both_start"),
    )
}


def stage_config(stage: Stage):
    """The TrainConfig of ``stage`` (built like the benchmark's and the lever's rows)."""
    from anystep.benchmarks.checkerboard_methods import METHODS, Settings
    from anystep.benchmarks.checkerboard_train import build_train_config
    from anystep.training.config import apply_overrides

    cfg = build_train_config(METHODS["lmd_both"], Settings(), BENCH_DIR)
    cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in stage.sets.items()])
    if stage.init_from is not None:
        cfg = cfg.replace(init_from=str(BUNDLE_RUNS / stage.init_from))
    return cfg.replace(preset=f"{cfg.preset} (checkerboard_bundle_train {stage.name})")


def train(names: list[str]) -> None:
    """Train (or reuse / resume) ``names`` one after the other on one thread."""
    import torch

    from anystep.benchmarks.checkerboard_train import train_one

    torch.set_num_threads(1)
    for name in names:
        rec = train_one(name, stage_config(STAGES[name]), BUNDLE_RUNS / name, fresh=False, progress=False,
                        log=lambda m: print(m, flush=True))
        (BUNDLE_RUNS / name / "train_record.json").write_text(json.dumps(rec.__dict__, indent=1))
        print(f"[{name}] done: {rec.steps} steps, {rec.seconds:.0f} s, final loss {rec.final_loss}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``train [NAME ...]`` (default: every stage, in order)."""
    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.checkerboard_bundle_train",
                                description="Train the candidate for models/checkerboard (LMD both directions "
                                            "+ Fourier features of x + start_frac 0.5) into runs/cb_bundle "
                                            "(resumable).")
    sub = p.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("train", help="train (reuse / resume) the stages, one thread")
    tp.add_argument("names", nargs="*", help=f"stages ({', '.join(STAGES)}); default: all, in order")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if not (BENCH_DIR / "si" / "model.safetensors").is_file():
        print("error: the benchmark's teacher runs/checkerboard/si is missing; run from the repository root "
              "after python -m anystep.benchmarks.checkerboard", flush=True)
        return 2
    train(args.names or list(STAGES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
