"""Variant runs of the checkerboard benchmark: one config builder, one train loop, one scoring setup.

Shared by the lever studies (``checkerboard_lever``, ``checkerboard_family_lever``) and the
bundled-map stages (``checkerboard_bundle_train``): a variant is a benchmark row
(``checkerboard_methods.METHODS[base]`` under the shared ``Settings()``) plus ``key=value``
TrainConfig overrides, optionally continuing another run's weights or distilling another run.
Scoring uses the benchmark's own evaluation context (its 100,000 shared base points, its W2
targets, its teacher's cached dopri5 samples), so every KL is comparable with ``checkerboard.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BENCH_DIR", "ScoringSetup", "scoring_setup", "train_runs", "variant_config"]

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
    from anystep.benchmarks.checkerboard_eval import EvalContext, _kl, score_samples
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
        ctx.blur = blur_curve(data, lambda x: _kl(x, settings), seed=40_000 + settings.seed)
    return ScoringSetup(ctx=ctx, cache=cache, teacher=teacher, settings=settings, data=data)
