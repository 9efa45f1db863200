"""Variant runs of the checkerboard benchmark: one config builder, one train loop, one scoring setup.

Shared by the lever studies (``checkerboard_lever``, ``checkerboard_family_lever``) and the
bundled-map stages (``checkerboard_bundle_train``): a variant is a benchmark row
(``checkerboard_methods.METHODS[base]`` under the shared ``Settings()``) plus ``key=value``
TrainConfig overrides, optionally continuing another run's weights or distilling another run.
Scoring uses the benchmark's own evaluation context (its 100,000 shared base points, its W2
targets, its teacher's cached dopri5 samples), so every KL is comparable with ``checkerboard.md``.
Each study's command line (``train NAME...``, ``report``, ``list`` and its own extras) is
:func:`variant_cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BENCH_DIR", "ScoringSetup", "Subcommand", "run_finished", "scoring_setup", "train_runs", "usage_error", "variant_cli",
           "variant_config"]

BENCH_DIR = Path("runs/checkerboard")  # the benchmark's work dir: teacher si, evaluation cache


def variant_config(base: str, sets: dict[str, Any], tag: str, *, init_from: Path | None = None,
                   teacher_from: Path | None = None):
    """The TrainConfig of benchmark row ``base`` with the overrides ``sets`` (dotted keys, JSON values).

    Args:
        base: benchmark method key (``checkerboard_methods.METHODS``).
        sets: ``{dotted TrainConfig key: value}``.
        tag: appended to the preset name (which study and variant made the run).
        init_from: a run directory whose weights the run continues.
        teacher_from: a run directory used as the teacher instead of the row's.
    """
    from anystep.benchmarks.checkerboard_methods import METHODS, Settings
    from anystep.benchmarks.checkerboard_train import build_train_config
    from anystep.training.config import apply_overrides

    cfg = build_train_config(METHODS[base], Settings(), BENCH_DIR)
    cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    if init_from is not None:
        cfg = cfg.replace(init_from=str(init_from))
    if teacher_from is not None:
        cfg = cfg.replace(teacher=str(teacher_from))
    return cfg.replace(preset=f"{cfg.preset} ({tag})")


def run_finished(run: Path, record: str) -> bool:
    """Whether the study's run directory ``run`` is finished: its model (``config.json``,
    ``model.safetensors``) and the training record ``record`` that :func:`train_runs` writes last."""
    return all((run / f).is_file() for f in ("config.json", "model.safetensors", record))


def train_runs(names: Iterable[str], config_of: Callable[[str], Any], run_dir: Path, record: str) -> None:
    """Train (or reuse / resume) the runs ``names`` one after the other on one torch thread.

    Each run goes to ``run_dir / name``; its training record is written to ``record`` there
    (the file the studies' ``_finished`` checks).
    """
    import torch

    from anystep.benchmarks.checkerboard_train import train_one

    torch.set_num_threads(1)
    for name in names:
        rec = train_one(name, config_of(name), run_dir / name, fresh=False, progress=False,
                        log=lambda m: print(m, flush=True))
        (run_dir / name / record).write_text(json.dumps(rec.__dict__, indent=1))
        print(f"[{name}] done: {rec.steps} steps, {rec.seconds:.0f} s, final loss {rec.final_loss}", flush=True)


@dataclass
class ScoringSetup:
    """The benchmark's evaluation context with its teacher scored.

    Attributes:
        ctx: ``checkerboard_eval.EvalContext`` (``x_si``, ``kl_teacher`` and, with blur, ``blur`` set).
        cache: the benchmark's ``EvalCache`` (keys of rows).
        teacher: the teacher's dopri5 ``StepMetrics``.
        settings: the shared ``Settings()``.
        data: ``[n, 2]`` exact board samples the blur curve was made from (None without blur).
    """

    ctx: Any
    cache: Any
    teacher: Any
    settings: Any
    data: Any = None


def scoring_setup(blur: bool = True) -> ScoringSetup:
    """The benchmark's shared base points, W2 targets and cached teacher samples (and the blur curve).

    Raises:
        SystemExit: the teacher's dopri5 samples are not cached (run the benchmark first).
    """
    import torch

    from anystep.benchmarks.checkerboard_cache import EvalCache
    from anystep.benchmarks.checkerboard_eval import EvalContext, board_kl, score_samples
    from anystep.benchmarks.checkerboard_methods import Settings
    from anystep.core.data import get_dataset
    from anystep.core.metrics import blur_curve

    settings = Settings()
    x0 = torch.randn(settings.n_samples, 2, generator=torch.Generator().manual_seed(10_000 + settings.seed))
    ds = get_dataset("checkerboard")
    target_w2 = ds.sample(settings.w2_samples, torch.Generator().manual_seed(20_000 + settings.seed)).double().numpy()
    ctx = EvalContext(x0=x0, x_si=None, target_w2=target_w2, settings=settings)
    cache = EvalCache(BENCH_DIR / "eval_cache", BENCH_DIR / "si", settings)
    hit = cache.load(cache.key("teacher"))
    if hit is None:
        raise SystemExit("error: the teacher's dopri5 samples are not in runs/checkerboard/eval_cache; "
                         "run python -m anystep.benchmarks.checkerboard first")
    ctx.x_si = torch.from_numpy(hit[0]["x"])
    teacher = score_samples(ctx.x_si, ctx)
    ctx.kl_teacher = teacher.kl
    data = None
    if blur:
        data = ds.sample(settings.n_samples, torch.Generator().manual_seed(30_000 + settings.seed)).double().numpy()
        ctx.blur = blur_curve(data, lambda x: board_kl(x, settings), seed=40_000 + settings.seed)
    return ScoringSetup(ctx=ctx, cache=cache, teacher=teacher, settings=settings, data=data)


@dataclass(frozen=True)
class Subcommand:
    """A study-specific subcommand of :func:`variant_cli` beside ``train`` / ``report`` / ``list``.

    Attributes:
        name: the subcommand.
        help: one line for ``--help``: what it does and what it writes.
        run: called with the parsed arguments (variant names already checked); returns the exit code.
        takes_names: the subcommand takes variant names (``NAME [NAME ...]``, checked like ``train``'s).
        configure: adds further arguments to its parser.
        needs_teacher: it needs the benchmark's teacher ``runs/checkerboard/si``.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    takes_names: bool = False
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    needs_teacher: bool = True


def usage_error(prog: str, message: str) -> int:
    """Print ``prog: error: message`` as one line on stderr; the exit code 2 to return."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def variant_cli(argv: Sequence[str] | None, *, module: str, description: str, variants: Mapping[str, Any],
                train: Callable[[list[str]], None], report: Callable[[], Any], finished: Callable[[str], bool],
                list_line: Callable[[Any, bool], str], run_dir: Path, report_help: str, kind: str = "variant",
                default_train: Sequence[str] | None = None, extra: Sequence[Subcommand] = ()) -> int:
    """The command line of a variant study: ``train NAME...``, the ``extra`` subcommands, ``report``, ``list``.

    ``train`` trains (reuses / resumes) runs into ``run_dir/<name>`` one after the other on one
    thread; ``report`` scores the finished ones; ``list`` prints one ``list_line(variant, done)``
    per variant. An unknown name is one line on stderr naming the known ones, exit code 2; so is a
    missing benchmark teacher (``runs/checkerboard/si``, which every subcommand but ``list`` needs).

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).
        module: the study's module (``python -m <module>`` is the program name).
        description: ``--help``'s description.
        variants: ``{name: variant}`` (the names ``train`` accepts, in ``list``'s order).
        train: trains the given names in order.
        report: scores the finished runs and writes the results.
        finished: whether the run ``name`` is finished (``list``'s ``done``).
        list_line: ``list``'s line of one variant (``done``: ``finished(name)``).
        run_dir: where the runs go (named in ``--help``).
        report_help: ``report``'s ``--help`` line (what it scores and where it writes).
        kind: what a variant is called in messages (``variant``, ``stage``).
        default_train: the names ``train`` trains when given none (``None``: at least one is required).
        extra: further subcommands, listed after ``train``.

    Returns:
        The exit code.
    """
    prog = f"python -m {module}"
    p = argparse.ArgumentParser(prog=prog, description=description)
    sub = p.add_subparsers(dest="cmd", required=True)
    where = f"{run_dir.as_posix()}/<name>"
    tp = sub.add_parser("train", help=f"train (reuse / resume) {kind}s into {where}, one thread")
    if default_train is None:
        tp.add_argument("names", nargs="+", metavar="NAME", help=f"{kind}s to train, in order (see `list`)")
    else:
        tp.add_argument("names", nargs="*", metavar="NAME",
                        help=f"{kind}s to train, in order (see `list`); default: {', '.join(default_train)}")
    for cmd in extra:
        ep = sub.add_parser(cmd.name, help=cmd.help)
        if cmd.takes_names:
            ep.add_argument("names", nargs="+", metavar="NAME", help=f"{kind}s (see `list`)")
        if cmd.configure is not None:
            cmd.configure(ep)
    sub.add_parser("report", help=report_help)
    sub.add_parser("list", help=f"list the {kind}s ('done': finished in {where})")
    args = p.parse_args(argv)
    if args.cmd == "list":
        try:
            for name, v in variants.items():
                print(list_line(v, finished(name)), flush=True)
        except BrokenPipeError:  # `list | head`: the reader is gone, nothing is wrong
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    names = list(getattr(args, "names", None) or [])
    unknown = [n for n in names if n not in variants]
    if unknown:
        return usage_error(f"{prog} {args.cmd}", f"unknown {kind}(s) {', '.join(unknown)}; "
                                                 f"known: {', '.join(variants)}")
    chosen = next((c for c in extra if c.name == args.cmd), None)
    if (chosen is None or chosen.needs_teacher) and not (BENCH_DIR / "si" / "model.safetensors").is_file():
        return usage_error(prog, f"the benchmark's teacher {BENCH_DIR.as_posix()}/si is missing; run from the "
                                 "repository root after python -m anystep.benchmarks.checkerboard")
    if args.cmd == "train":
        train(names or list(default_train or []))
        return 0
    if args.cmd == "report":
        report()
        return 0
    return int(chosen.run(args) or 0)
