"""Checkerboard: how much does a KL figure move with the base points? (the estimator's sampling spread)

Every KL of the checkerboard benchmark and its variant studies is one estimate on the same
100,000 base points (seed 10,000), so ratios near a goal (LMD's one step at 1.49x against
1.5x, a four-step map at 1.19x against 1.2x) need the spread of that estimate. This module
redraws the base points ``R`` times (seeds ``10,000 + 1,000 r``, ``r = 1..R``; ``r = 0`` is
the benchmark's own draw), samples the teacher by dopri5 (the benchmark's rtol) and each named
run at ``K`` steps on the same points, and reports each KL, its ratio to the teacher's KL **on
the same draw**, and their mean and standard deviation over the draws.

Usage::

    python -m anystep.benchmarks.checkerboard_spread RUN_DIR [RUN_DIR ...] [--draws 5] [--steps 1 4]

It writes ``benchmarks/results/checkerboard_spread.{md,json}``. One thread; a draw costs one
dopri5 pass of the teacher (76-180 s on the 2-core CPU with trainings beside it) plus one pass
per run and K (a second or two each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_variant_runs import BENCH_DIR, usage_error

__all__ = ["main", "spread"]

PROG = "python -m anystep.benchmarks.checkerboard_spread"


def spread(runs: list[Path], draws: int, steps: list[int], log=print, *, teacher_dir: Path = BENCH_DIR / "si",
           n_samples: int | None = None) -> dict[str, Any]:
    """KL of the teacher (dopri5) and of each run at each K on ``draws + 1`` base-point draws.

    Args:
        runs: model directories (flow maps) to sample.
        draws: how many redraws besides the benchmark's own (seed 10,000).
        steps: the step counts K.
        log: progress printer.
        teacher_dir: the velocity model sampled by dopri5 (default: the benchmark's teacher).
        n_samples: base points per draw (default: the benchmark's 100,000).

    Returns:
        ``{"teacher": [kl per draw], "runs": {path: {K: [kl per draw]}}, "ratios": {path: {K: [ratio
        per draw]}}, "seeds": [...], ...}``.
    """
    import torch

    from anystep.benchmarks.checkerboard_eval import board_kl, sample_map, sample_ode
    from anystep.benchmarks.checkerboard_methods import Settings
    from anystep.core.modeldir import load_model_dir

    torch.set_num_threads(1)
    settings = Settings()
    n = settings.n_samples if n_samples is None else int(n_samples)
    teacher = load_model_dir(teacher_dir).model.eval()
    models = {str(r.as_posix()): load_model_dir(r).model.eval() for r in runs}
    seeds = [10_000 + settings.seed + 1_000 * r for r in range(draws + 1)]
    out: dict[str, Any] = {"seeds": seeds, "steps": steps, "n_samples": n, "teacher": [], "teacher_nfe": [],
                           "runs": {k: {str(s): [] for s in steps} for k in models},
                           "ratios": {k: {str(s): [] for s in steps} for k in models}}
    for r, seed in enumerate(seeds):
        x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        with torch.no_grad():
            x_si, nfe = sample_ode(teacher, x0, "dopri5", None, settings.rtol)
        kl_t = board_kl(x_si.double().numpy(), settings)
        out["teacher"].append(kl_t)
        out["teacher_nfe"].append(nfe)
        log(f"[draw {r} seed {seed}] teacher dopri5 KL {kl_t:.4f} ({time.perf_counter() - t0:.0f} s)")
        for name, model in models.items():
            for k in steps:
                with torch.no_grad():
                    x1 = sample_map(model, x0, k)
                kl = board_kl(x1.double().numpy(), settings)
                out["runs"][name][str(k)].append(kl)
                out["ratios"][name][str(k)].append(kl / kl_t)
                log(f"[draw {r}] {name} K={k}: KL {kl:.4f} ({kl / kl_t:.2f}x)")
    return out


def _ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.4g} ± {statistics.stdev(v):.2g}" if len(v) > 1 else f"{v[0]:.4g}"


def _markdown(res: dict[str, Any]) -> str:
    n = len(res["seeds"])
    lines = ["# Checkerboard: the KL estimate's spread over base-point draws", "",
             f"- Machine: {res['machine']}; {res['date']}; one thread.",
             f"- Command: `{res['command']}`",
             (f"- {n} draws of {res['n_samples']:,} base points (seeds {', '.join(map(str, res['seeds']))}; the first "
              "is the benchmark's own). KL(rho_1 || rho_hat_1) on the benchmark's 100 x 100 cells; ratio = the run's KL "
              "over the teacher's (dopri5) KL on the same draw. mean ± standard deviation over the draws."), "",
             "| model | K | KL per draw | KL mean ± sd | ratio per draw | ratio mean ± sd |", "|---|---|---|---|---|---|",
             (f"| teacher (dopri5) | NFE {res['teacher_nfe'][0]} | {', '.join(f'{v:.4f}' for v in res['teacher'])} "
              f"| {_ms(res['teacher'])} | 1 | 1 |")]
    for name, per_k in res["runs"].items():
        for k, kls in per_k.items():
            rat = res["ratios"][name][k]
            lines.append(f"| `{name}` | {k} | {', '.join(f'{v:.4f}' for v in kls)} | {_ms(kls)} | "
                         f"{', '.join(f'{v:.3f}' for v in rat)} | {_ms(rat)} |")
    lines += ["", f"Wall time {res['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line (module docstring)."""
    from anystep.benchmarks.common import (
        command_line,
        load_average,
        machine_info,
        results_dir,
        write_results,
    )

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="flow-map model directories to score")
    p.add_argument("--draws", type=int, default=5, help="redraws of the base points besides the benchmark's (default 5)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4], help="step counts K (default 1 4)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    out = a.out or results_dir("checkerboard_spread")
    if a.draws < 1:
        return usage_error(PROG, f"--draws {a.draws} must be >= 1 (the spread needs two draws)")
    if any(k < 1 for k in a.steps):
        return usage_error(PROG, f"--steps {a.steps}: every K must be >= 1")
    missing = [r.as_posix() for r in [BENCH_DIR / "si", *a.runs] if not (r / "model.safetensors").is_file()]
    if missing:
        return usage_error(PROG, f"no model in {', '.join(missing)} (the teacher is runs/checkerboard/si: run "
                                 "python -m anystep.benchmarks.checkerboard first)")
    t0 = time.perf_counter()
    res = spread(a.runs, a.draws, a.steps, log=lambda m: print(m, flush=True))
    res.update({"machine": machine_info().describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": command_line(module="anystep.benchmarks.checkerboard_spread", argv=argv),
                "seconds": time.perf_counter() - t0, "load_avg": load_average()})
    write_results(out, "checkerboard_spread", res, _markdown(res))
    print(f"[done] wrote {(out / 'checkerboard_spread.md').as_posix()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
