"""The command line of the checkerboard benchmark (``python -m anystep.benchmarks.checkerboard``).

:func:`build_parser` (options and ``--help``), :func:`settings_from_args` (``--quick`` and the
explicit options into :class:`~anystep.benchmarks.checkerboard_methods.Settings`) and
:func:`run_cli`, which :func:`anystep.benchmarks.checkerboard.main` calls with the benchmark's
``run``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import (
    DEFAULT_METHODS,
    QUICK,
    BenchmarkError,
    Settings,
    resolve_methods,
)
from anystep.benchmarks.common import OUT_HELP, command_line, load_average, results_dir
from anystep.errors import AnystepError, one_line

__all__ = ["HELP_EPILOG", "MODULE", "build_parser", "run_cli", "settings_from_args"]

MODULE = "anystep.benchmarks.checkerboard"

HELP_EPILOG = """\
what it does:
  trains the SI teacher velocity and every flow-map objective (LMD, EMD, FMM N=1/N=4,
  PFMM from FMM N=4, EE, LSD/ESD/PSD, AYF-EMD/AYF-LMD; --methods all+controls adds the
  negative controls ee_naive and denoiser) with one shared budget, scores each map at
  1, 2, 4, 8 steps (KL with the exact density, W2^2 to target and teacher, coupling L2
  vs. the dopri5 teacher) and the teacher with dopri5 and Euler 1-16, and writes
  OUT/checkerboard.json, OUT/checkerboard.md and OUT/checkerboard_*.png; a full run
  copies the best one-step map trained on both time directions and the teacher to
  models/checkerboard and models/checkerboard-teacher (a map already there that records
  a lower one-step KL against the same teacher is kept: the lever map of
  python -m anystep.benchmarks.checkerboard_bundle_train).

budget:
  default (full): MLP 256 x 4 for every model. Teacher: 13,000 steps of a 30,000-step
  cosine schedule (batch 2048, lr 2e-3, logit-normal times), then a 3,000-step anneal
  (about 40 min on one idle core). Maps: 1,000 Adam steps at batch 512 from the teacher
  (PSD 3,000), two runs at a time with one thread each; on 2 idle cores about 5 min per
  pair, on a shared machine 3-4x that. Evaluation: 100,000 points, dopri5 teacher, about
  10-15 min. --quick: MLP 64 x 3, 300 steps, 20,000 points, a few minutes. Finished runs
  in --work-dir are reused and interrupted ones resumed, so re-running continues where it
  stopped (a run still being trained by a worker of an earlier call is waited for).

examples:
  python -m anystep.benchmarks.checkerboard
  python -m anystep.benchmarks.checkerboard --quick      # results in runs/checkerboard-quick/results
  python -m anystep.benchmarks.checkerboard --methods lmd,pfmm --steps 8000 --jobs 2
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
    p.add_argument("--jobs", type=int, default=2,
                   help="training runs at a time, each its own process with one torch thread (default 2; 1 trains "
                        "in this process)")
    p.add_argument("--teacher-sizes", type=_size_list, default=(),
                   help="also train teachers of these sizes (e.g. 128x4,512x6) with the same budget and "
                        "report their dopri5 KL (network-size check)")
    p.add_argument("--out", default=None, help=OUT_HELP)
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
    p.add_argument("--train-only", action="store_true",
                   help="only train (reuse finished runs, resume interrupted ones), evaluate nothing: e.g. "
                        "--jobs 1 --train-only in the background, then the evaluation once they are done")
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
    if args.jobs < 1:
        raise BenchmarkError(f"--jobs must be >= 1, got {args.jobs}")
    return Settings(quick=bool(args.quick), seed=args.seed, threads=threads, teacher_sizes=args.teacher_sizes,
                    jobs=args.jobs,
                    methods=methods, **base)


def run_cli(argv: Sequence[str] | None, run: Callable[..., Any]) -> int:
    """Parse ``argv`` (``None``: ``sys.argv[1:]``) and call ``run`` (``checkerboard.run``) with the settings.

    Returns:
        The exit status: 0, or 2 for invalid options and benchmark errors (one line on stderr).
    """
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
        out_dir = Path(args.out) if args.out else results_dir("checkerboard", args.quick)
        run(settings, out_dir=out_dir, work_dir=work_dir, bundle_dir=bundle_dir, fresh=fresh,
            progress=args.progress, figures=not args.no_figures, train_only=args.train_only,
            command=command_line(sys.argv[1:] if argv is None else argv, module=MODULE),
            log=lambda msg: print(msg, flush=True))
    except (BenchmarkError, AnystepError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
