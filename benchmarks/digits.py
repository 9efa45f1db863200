"""Digits benchmark: the paper's image pipeline (Sec. 4.2, Table 1) on scikit-learn's 8x8 digits.

Trains (or reuses) five models with the two-time U-Net and scores every sampler with
the same offline metric (:mod:`anystep.benchmarks.digits_classifier`):

* ``teacher``: SI velocity ``b_t`` (eq. 3.14), sampled with Euler at 1..64 steps and
  dopri5 (the baseline of Table 1);
* ``lmd``: Lagrangian map distillation of the teacher (eq. 3.7);
* ``fmm4``: flow map matching with ``|t - s| <= 1/4`` (eq. 3.15), a 4-step map;
* ``pfmm``: progressive flow map matching (eq. 3.16) of ``fmm4`` into one step;
* ``lsd``: Lagrangian self-distillation (successors §2), no teacher.

Metrics per method and step count: digits-FD (features of the real train split vs
samples), Teacher-FD (teacher dopri5 samples vs samples; the paper's T-FID) and
class-coverage entropy. All samplers start from the same base noise (sample ``i``
uses seed ``seed + i``). Results go to ``<out>/digits.json``, ``<out>/digits.md`` and
one grid per method ``<out>/digits_<method>.png`` (rows: step counts).

Usage::

    python -m anystep.benchmarks.digits                     # full run (~CPU minutes, see --help)
    python -m anystep.benchmarks.digits --quick --out /tmp/q  # seconds-scale smoke run
    python -m anystep.benchmarks.digits --bundle            # also refresh models/digits*

Training settings are the presets ``digits-*`` of ``anystep train`` with the
overrides in :data:`METHODS` (shorter runs and a larger learning rate than the
presets' paper-style schedule, to fit a 2-core CPU budget); they are written to
the results JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from anystep.benchmarks.common import int_list
from anystep.benchmarks.digits_bundle import bundle_models
from anystep.benchmarks.digits_classifier import REPO_ROOT, DigitsMetric
from anystep.benchmarks.digits_eval import EvalRow, evaluate_flowmap, evaluate_teacher
from anystep.benchmarks.digits_methods import (  # noqa: F401 - re-exported
    DEFAULT_METHODS,
    DEFAULT_STEPS,
    FAMILY_METHODS,
    METHODS,
    MODELS_DIR,
    RESULTS_DIR,
    TEACHER_EULER_STEPS,
    BenchConfig,
    BenchError,
    MethodSpec,
)
from anystep.benchmarks.digits_report import _goal, _machine, render_markdown, write_grid
from anystep.benchmarks.digits_train import _method_config, train_method  # noqa: F401 - re-exported
from anystep.errors import AnystepError

__all__ = [
    "METHODS",
    "BenchConfig",
    "EvalRow",
    "MethodSpec",
    "bundle_models",
    "evaluate_flowmap",
    "evaluate_teacher",
    "main",
    "render_markdown",
    "run_benchmark",
    "train_method",
    "write_grid",
]


def run_benchmark(cfg: BenchConfig, log: Any = print) -> dict[str, Any]:
    """Train (or reuse) the models, score every sampler, write JSON, Markdown and grids.

    Returns:
        The results dict written to ``<out>/digits.json``.
    """
    from anystep.benchmarks.fid import fid_status
    from anystep.core.data import DigitsDataset
    from anystep.core.modeldir import load_model_dir
    from anystep.core.samplers import base_noise, sample_seeds

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise BenchError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    # teachers of selected methods are trained too
    needed: list[str] = []
    for m in METHODS:
        if m in cfg.methods or any(m in (METHODS[x].teacher, METHODS[x].init_from) for x in cfg.methods):
            needed.append(m)
    if "teacher" not in needed:
        needed.insert(0, "teacher")  # Teacher-FD needs the teacher's samples
    t_start = time.perf_counter()
    cfg.runs.mkdir(parents=True, exist_ok=True)
    training = []
    for m in needed:
        log(f"[train] {m} ({METHODS[m].preset}) ...")
        rec = train_method(METHODS[m], cfg.runs, quick=cfg.quick)
        log(f"[train] {m}: {'reused' if rec['reused'] else 'trained'} {rec['steps']} steps, "
            f"loss {rec['final_loss']}, {rec['train_seconds']} s")
        training.append(rec)

    log("[eval] classifier and reference features ...")
    metric = DigitsMetric.create()
    test = DigitsDataset(split="test").tensor
    floor = {"test_vs_train_fd": metric.digits_fd(test), "n_test": len(test)}
    x0 = base_noise(sample_seeds(cfg.seed, cfg.n), (1, 8, 8))
    rows: list[EvalRow] = []
    grids: list[str] = []
    teacher = load_model_dir(cfg.runs / "teacher").model
    euler = TEACHER_EULER_STEPS if not cfg.quick else (1, 4)
    log("[eval] teacher: dopri5 and Euler ...")
    t_rows, t_samples = evaluate_teacher(teacher, x0, metric, euler_steps=euler, rtol=cfg.rtol)
    rows += t_rows
    ref = t_samples["dopri5"]
    cfg.out.mkdir(parents=True, exist_ok=True)
    grid_rows = [("data", DigitsDataset(split="train").tensor), ("dopri5", ref)]
    grid_rows += [(f"euler {k}", t_samples[f"euler{k}"]) for k in euler]
    grids.append(str(write_grid(cfg.out / "digits_teacher.png", grid_rows, per_row=cfg.grid_samples).name))
    for m in cfg.methods:
        if m == "teacher":
            continue
        log(f"[eval] {m}: steps {list(cfg.steps)} ...")
        model = load_model_dir(cfg.runs / m).model
        m_rows, m_samples = evaluate_flowmap(m, model, x0, metric, tuple(cfg.steps), ref)
        rows += m_rows
        grid_rows = [(f"{k} step{'s' if k > 1 else ''}", m_samples[str(k)]) for k in cfg.steps]
        grids.append(str(write_grid(cfg.out / f"digits_{m}.png", grid_rows, per_row=cfg.grid_samples).name))

    result: dict[str, Any] = {
        "benchmark": "digits",
        "command": cfg.command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": _machine(),
        "quick": cfg.quick,
        "n": cfg.n,
        "seed": cfg.seed,
        "dopri5_rtol": cfg.rtol,
        "classifier": asdict(metric.classifier.report),
        "floor": floor,
        "inception_fid": fid_status(),
        "rows": [asdict(r) for r in rows],
        "goal": _goal(rows),
        "training": training,
        "methods": {m: {"preset": METHODS[m].preset, "description": METHODS[m].description,
                        "teacher": METHODS[m].teacher} for m in needed},
        "grids": grids,
    }
    if cfg.bundle:
        candidates = [m for m in ("lmd", "lmd_long", "pfmm", "lsd", "fmm4") if m in cfg.methods]
        if candidates:
            best = min(
                candidates,
                key=lambda m: next(r.digits_fd for r in rows if r.method == m and r.steps == 1),
            ) if 1 in cfg.steps else candidates[0]
            result["bundled"] = {"flowmap_method": best, **bundle_models(cfg.runs, best)}
            log(f"[bundle] models/digits <- {best}; models/digits-teacher <- teacher")
    result["total_seconds"] = time.perf_counter() - t_start
    (cfg.out / "digits.json").write_text(json.dumps(result, indent=2) + "\n")
    (cfg.out / "digits.md").write_text(render_markdown(result))
    log(f"[done] wrote {cfg.out / 'digits.json'}, {cfg.out / 'digits.md'} and {len(grids)} grids "
        f"in {result['total_seconds']:.0f} s")
    return result


def _method_list(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in METHODS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad or text!r}; choose from {','.join(METHODS)}")
    return vals


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m anystep.benchmarks.digits``)."""
    parser = argparse.ArgumentParser(
        prog="python -m anystep.benchmarks.digits",
        description=(
            "Train (or reuse) the digits teacher, LMD, FMM-4, PFMM and LSD models and score "
            "digits-FD, Teacher-FD and class coverage at 1, 2, 4, 8 steps (teacher: Euler 1-64 and dopri5)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="tiny training and 256 samples (a smoke run, not a result)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS_DIR}; --quick: runs folder)")
    parser.add_argument("--runs", type=Path, default=None, help="training run folders (default runs/digits or runs/digits-quick)")
    parser.add_argument("--methods", type=_method_list, default=DEFAULT_METHODS,
                        help="comma list of " + ",".join(METHODS) + " (default: all but " + ",".join(FAMILY_METHODS) + ")")
    parser.add_argument("--steps", type=int_list, default=DEFAULT_STEPS, help="flow-map step counts (default 1,2,4,8)")
    parser.add_argument("-n", "--n", type=int, default=None, help="samples per sampler (default 2000; --quick 256)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses base-noise seed SEED+i")
    parser.add_argument("--rtol", type=float, default=1e-5, help="teacher dopri5 tolerance")
    parser.add_argument("--bundle", action="store_true", help="copy the teacher and the best 1-step map to models/")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    runs = args.runs or (REPO_ROOT / "runs" / ("digits-quick" if args.quick else "digits"))
    out = args.out or (runs / "results" if args.quick else RESULTS_DIR)
    n = args.n or (256 if args.quick else 2000)
    if n < 16:
        parser.error("-n must be at least 16")
    cfg = BenchConfig(
        out=out, runs=runs, methods=args.methods, steps=args.steps, n=n, seed=args.seed, quick=args.quick,
        rtol=args.rtol, bundle=args.bundle,
        command="python -m anystep.benchmarks.digits " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    try:
        run_benchmark(cfg)
    except AnystepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
