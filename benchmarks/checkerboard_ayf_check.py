"""AYF on the checkerboard: short runs from the teacher warm start, one ingredient at a time.

Diagnoses the Align Your Flow objectives (``training/ayf.py``) against LMD on the same
start, teacher, batch and learning rate, without the trainer (plain Adam with a cosine
decay, gradient clip 1, no EMA), and scores the raw weights every quarter of the run::

    python -m anystep.benchmarks.checkerboard_ayf_check --teacher runs/checkerboard/si --steps 400

Each variant is ``objective`` or ``objective:{json hparams}`` on top of the objective's own
defaults, not the presets' (``"lr"`` in the JSON sets the learning rate). Columns: one-step KL, one-step coupling error to the teacher's dopri5
samples on the same ``x0``, four-step KL (``n`` points, the benchmark's estimator). Writes
``OUT/checkerboard_ayf_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anystep.benchmarks.common import command_line, machine_info, markdown_table, write_results

__all__ = ["DEFAULT_VARIANTS", "main", "run_variant"]

MODULE = "anystep.benchmarks.checkerboard_ayf_check"
DEFAULT_VARIANTS = (  # objective class defaults: tangent_norm on, adaptive off (the presets turn it on)
    "lmd",
    'ayf_lmd:{"adaptive": false}',
    'ayf_lmd:{"adaptive": true}',
    'ayf_emd:{"adaptive": false}',
    'ayf_emd:{"adaptive": true}',
)


def _flowmap_config(teacher_cfg):
    from anystep.core.config import ModelConfig

    d = teacher_cfg.to_dict()
    d.pop("provenance", None)
    d["kind"], d["ansatz"] = "flowmap", "residual"
    d["backbone"]["time_inputs"] = 2
    return ModelConfig.from_dict(d)


def run_variant(variant: str, teacher, teacher_cfg, x0, x_si, steps: int, batch: int, score) -> dict[str, Any]:
    """Train one variant from ``v_st = b_s`` and score it at 0, 1/4, ..., 1 of the run."""
    from anystep.core.data import get_dataset
    from anystep.core.flowmap import build_model
    from anystep.core.interpolants import build_interpolant
    from anystep.core.warmstart import flowmap_from_velocity
    from anystep.training.base import Batch, build_objective

    name, _, hp = variant.partition(":")
    hparams = json.loads(hp) if hp else {}
    lr = float(hparams.pop("lr", 1e-3))
    torch.manual_seed(0)
    model = build_model(_flowmap_config(teacher_cfg))
    flowmap_from_velocity(model, teacher)
    objective = build_objective(name, build_interpolant(teacher_cfg.interpolant), **hparams)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    ds = get_dataset("checkerboard")
    n = len(x0)
    rows, t0 = [], time.perf_counter()
    every = max(1, steps // 4)
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            with torch.no_grad():
                x1 = model(x0, torch.zeros(n), torch.ones(n))
                x4 = x0
                for k in range(4):
                    x4 = model(x4, torch.full((n,), k / 4), torch.full((n,), (k + 1) / 4))
            rows.append({"step": step, "kl1": score(x1), "coupling1": float((x1 - x_si).pow(2).sum(1).mean()),
                         "kl4": score(x4)})
        if step == steps:
            break
        b = Batch(x0=torch.randn(batch, 2, generator=g), x1=ds.sample(batch, g), z=torch.randn(batch, 2, generator=g))
        out = objective.loss(model, b, g, teacher=teacher, step=step)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return {"variant": variant, "lr": lr, "seconds": time.perf_counter() - t0, "trace": rows}


def main(argv: list[str] | None = None) -> int:
    """Entry point (exit status 2 on bad options)."""
    from anystep.core.data import checkerboard_density
    from anystep.core.metrics import kl_divergence_2d
    from anystep.core.modeldir import load_model_dir
    from anystep.core.samplers import sample_ode

    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="velocity model directory (the benchmark's runs/checkerboard/si)")
    p.add_argument("--steps", type=int, default=400, help="Adam steps per variant (default 400)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n", type=int, default=30_000, help="evaluation points (default 30,000)")
    p.add_argument("--variants", default=";".join(DEFAULT_VARIANTS),
                   help="';'-separated variants, each objective[:{json hparams}]")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.steps < 4 or args.n < 1000:
        print("error: need --steps >= 4 and --n >= 1000", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    lm = load_model_dir(args.teacher)
    teacher = lm.model.eval().requires_grad_(False)
    x0 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_si = sample_ode(teacher, x0, solver="dopri5", rtol=1e-4).x

    def score(x):
        return kl_divergence_2d(None, x.double().numpy(), bins=100, target_density=checkerboard_density)

    kl_t = score(x_si)
    results = []
    for v in args.variants.split(";"):
        r = run_variant(v.strip(), teacher, lm.config, x0, x_si, args.steps, args.batch_size, score)
        print(v, json.dumps(r["trace"][-1]), flush=True)
        results.append(r)
    res = {"benchmark": "checkerboard_ayf_check", "command": command_line(argv or sys.argv[1:], module=MODULE),
           "machine_description": machine_info().describe(), "teacher_kl": kl_t, "n": args.n,
           "steps": args.steps, "batch_size": args.batch_size, "results": results}
    lines = ["# AYF vs LMD from the teacher warm start (checkerboard)", "",
             f"- Command: `{res['command']}`", f"- Machine: {res['machine_description']}",
             (f"- Teacher dopri5 KL on these {args.n:,} points: {kl_t:.4f}; batch {args.batch_size}, "
              f"{args.steps} Adam steps, cosine lr, grad clip 1, no EMA; start v_st = b_s."), ""]
    body = []
    for r in results:
        for row in r["trace"]:
            body.append([r["variant"], row["step"], row["kl1"], row["kl1"] / kl_t, row["coupling1"], row["kl4"],
                         row["kl4"] / kl_t])
    lines.append(markdown_table(["variant", "step", "KL 1", "/teacher", "coupling 1", "KL 4", "/teacher"], body))
    write_results(Path(args.out), "checkerboard_ayf_check", res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
