"""The paper's 2D checkerboard experiment (Sec. 4.1, App. D.1, Table 3, Figs. 3 and 5), every objective.

One command trains, evaluates, plots and bundles::

    python -m anystep.benchmarks.checkerboard            # full run (see --help for the budget)
    python -m anystep.benchmarks.checkerboard --quick    # a few minutes, small net

This module orchestrates; the pieces, each readable on its own:

* :mod:`~anystep.benchmarks.checkerboard_methods`: the rows (:data:`METHODS`, one
  :class:`MethodSpec` each; ``register_method`` adds one) and the shared budget (:class:`Settings`);
* :mod:`~anystep.benchmarks.checkerboard_train`: training configs, reuse / resume of run
  directories, two runs at a time in worker processes (one thread each);
* :mod:`~anystep.benchmarks.checkerboard_eval`: Table 3's metrics on shared base points,
  blur equivalents, both sides of Props. 3.7 / 3.8, the round trip of the bundled map;
* :mod:`~anystep.benchmarks.checkerboard_figures`: Fig. 3 (top, bottom), Fig. 5, all maps at all K;
* :mod:`~anystep.benchmarks.checkerboard_report`: the Markdown report;
* :mod:`~anystep.benchmarks.checkerboard_bundle`: ``models/checkerboard[-teacher]``, relative paths.
* :mod:`~anystep.benchmarks.checkerboard_cli`: the options, ``--help`` and exit codes of this command.

Stages: (1) the sharp teacher velocity ``b_t`` (eq. 3.14) in two stages (``si_pre``,
``si``); (2) every flow map, each started from the teacher (``v_st = b_s``) with the same
backbone, steps, batch, schedule and seed, two at a time; (3) evaluation of each map at
K = 1, 2, 4, 8 on ``n`` shared base points: KL with the exact density and its blur
equivalent, ``W_2^2`` (exact OT) to target and teacher samples, the coupling error to the
dopri5 teacher, the bound terms; (4) figures and ``checkerboard.json`` / ``.md``; (5) the
best one-step map trained on both time directions and the teacher are copied to
``models/`` (full runs only; a map already in ``models/checkerboard`` that records a lower
one-step KL against the same teacher, e.g. the lever map of
:mod:`~anystep.benchmarks.checkerboard_bundle_train`, is kept).

Training runs live in ``--work-dir`` (default ``runs/checkerboard``, git-ignored): a finished
run with the identical config is reused, an interrupted one resumed from its checkpoint, so
the command can be re-run after an interruption. Time convention: ``t = 0`` base
(Gaussian), ``t = 1`` data (checkerboard).
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anystep.benchmarks.checkerboard_bundle import bundle_models, bundled_map, rel_path
from anystep.benchmarks.checkerboard_cache import EvalCache, metrics_from_json, metrics_to_json
from anystep.benchmarks.checkerboard_cli import MODULE, build_parser, run_cli, settings_from_args
from anystep.benchmarks.checkerboard_eval import (
    EvalContext,
    StepMetrics,
    _outside,
    board_kl,
    bound_context,
    map_bounds,
    round_trip,
    sample_map,
    sample_ode,
    score_samples,
)
from anystep.benchmarks.checkerboard_figures import make_figures
from anystep.benchmarks.checkerboard_methods import (
    DEFAULT_METHODS,
    EULER_STEPS,
    EVAL_STEPS,
    METHODS,
    BenchmarkError,
    MethodSpec,
    Settings,
    resolve_methods,
    train_order,
)
from anystep.benchmarks.checkerboard_report import render_markdown
from anystep.benchmarks.checkerboard_train import (
    TrainRecord,
    build_train_config,
    train_method,
    train_one,
    train_parallel,
)
from anystep.benchmarks.common import (
    NOTES_BEGIN,
    NOTES_END,
    Stopwatch,
    command_line,
    existing_notes,
    load_average,
    machine_info,
    write_results,
)
from anystep.core.metrics import blur_curve
from anystep.errors import AnystepError, one_line

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "NOTES_BEGIN",
    "NOTES_END",
    "BenchmarkError",
    "EvalContext",
    "MethodSpec",
    "Settings",
    "StepMetrics",
    "build_parser",
    "build_train_config",
    "existing_notes",
    "main",
    "resolve_methods",
    "run",
    "score_samples",
    "settings_from_args",
    "train_one",
]


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def run(settings: Settings, *, out_dir: Path, work_dir: Path, bundle_dir: Path | None,
        fresh: bool | Sequence[str] = False,
        progress: bool = False, figures: bool = True, command: str | None = None, log=print,
        train_only: bool = False) -> dict[str, Any]:
    """Train every method, evaluate, plot, write the results, bundle the best map.

    Args:
        settings: budget and evaluation settings.
        out_dir: results folder (``checkerboard.json``, ``.md``, figures).
        work_dir: run directories (one per method).
        bundle_dir: where to write ``checkerboard`` and ``checkerboard-teacher``, or None.
        fresh: retrain runs that already exist: True for all, or the keys to retrain
            (e.g. ``["ayf_lmd", "si_512x6"]``).
        progress: tqdm bars while training.
        figures: write the figures.
        command: command line recorded in the results.
        log: status printer.
        train_only: stop after training (finished runs reused, interrupted ones resumed);
            nothing is evaluated or written outside ``work_dir``.

    Returns:
        The results dictionary written to ``checkerboard.json`` (with ``train_only``: only
        ``{"training": ..., "failed": ...}``).
    """
    from anystep.core.data import get_dataset
    from anystep.core.modeldir import load_model_dir

    torch.set_num_threads(settings.threads)
    log(f"[setup] torch threads: {settings.threads}; 1-minute load average {(load_average() or [None])[0]}")
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    specs = resolve_methods(list(settings.methods) if settings.methods else None)
    settings = replace(settings, methods=tuple(s.key for s in specs))
    work_dir.mkdir(parents=True, exist_ok=True)
    sw = Stopwatch()

    # ---- training ------------------------------------------------------------------
    def _fresh(key: str) -> bool:
        return fresh is True or (not isinstance(fresh, bool) and key in set(fresh))

    training: dict[str, TrainRecord] = {}
    failed: dict[str, str] = {}
    if settings.jobs >= 2:
        fresh_keys: set[str] | bool = True if fresh is True else set(fresh or ())
        with sw("train (parallel)"):
            training, failed = train_parallel(train_order([sp.key for sp in specs]), settings, work_dir, jobs=settings.jobs,
                                              fresh=fresh_keys, log=log)
    by_key = {sp.key: sp for sp in specs}
    for spec in [by_key[k] for k in train_order(list(by_key))] if settings.jobs < 2 else ():
        deps = [d for d in (spec.teacher, spec.init_from) if d is not None and d in failed]
        if deps:
            failed[spec.key] = f"skipped: its teacher/warm start {deps[0]!r} failed"
            log(f"[{spec.key}] {failed[spec.key]}")
            continue
        try:
            with sw(f"train {spec.key}"):
                training[spec.key] = train_method(spec.key, settings, work_dir, fresh=_fresh(spec.key),
                                                  progress=progress, log=log)
        except BenchmarkError:
            raise
        except (AnystepError, ValueError, RuntimeError) as e:  # e.g. TrainingError: the loss became NaN
            if spec.kind == "velocity":
                raise BenchmarkError(f"the teacher failed to train: {e}") from e
            failed[spec.key] = f"{type(e).__name__}: {one_line(e)}"
            log(f"[{spec.key}] FAILED: {failed[spec.key]}")
    specs = [s for s in specs if s.key not in failed]
    size_records: list[tuple[int, int, TrainRecord]] = []
    for w, d in settings.teacher_sizes:
        if (w, d) == (settings.width, settings.depth):
            continue
        key = f"si_{w}x{d}"
        cfg = build_train_config(METHODS["si"], settings, work_dir, width=w, depth=d)
        with sw(f"train {key}"):
            size_records.append((w, d, train_one(key, cfg, work_dir / key, fresh=_fresh(key), progress=progress,
                                                 log=log)))
    train_s = sw.total
    if train_only:
        log(f"[done] training only: {len(training)} runs finished, {len(failed)} failed ({train_s / 60:.1f} min)")
        return {"training": {k: asdict(v) for k, v in training.items()}, "failed": failed}

    # ---- evaluation ----------------------------------------------------------------
    t_eval = time.perf_counter()
    ev = Stopwatch()
    g = torch.Generator().manual_seed(10_000 + settings.seed)
    x0 = torch.randn(settings.n_samples, 2, generator=g)
    ds = get_dataset("checkerboard")
    target_w2 = ds.sample(settings.w2_samples, torch.Generator().manual_seed(20_000 + settings.seed)).double().numpy()
    ctx = EvalContext(x0=x0, x_si=None, target_w2=target_w2, settings=settings)

    teacher = load_model_dir(work_dir / "si").model
    cache = EvalCache(work_dir / "eval_cache", work_dir / "si", settings)
    log(f"[eval] teacher dopri5 on {settings.n_samples:,} points (rtol {settings.rtol:g})")
    with ev("teacher dopri5"):
        hit = cache.load(key_si := cache.key("teacher"))
        if hit is not None:
            x_si, nfe_si = torch.from_numpy(hit[0]["x"]), int(hit[1]["nfe"])
        else:
            x_si, nfe_si = sample_ode(teacher, x0, "dopri5", None, settings.rtol)
            cache.save(key_si, {"x": x_si.numpy()}, {"nfe": nfe_si})
    ctx.x_si = x_si
    with ev("metrics"):
        m_si = score_samples(x_si, ctx, nfe=nfe_si)
    ctx.kl_teacher = m_si.kl
    m_si.kl_ratio = 1.0
    log(f"[eval] teacher dopri5: KL {m_si.kl:.4f}, NFE {nfe_si}")
    euler: dict[int, np.ndarray] = {}
    euler_m: dict[str, StepMetrics] = {}
    for k in EULER_STEPS:
        with ev("teacher euler"):
            xe, _ = sample_ode(teacher, x0, "euler", k, settings.rtol, chunk=50_000)
        with ev("metrics"):
            euler_m[str(k)] = score_samples(xe, ctx, nfe=k)
        euler[k] = xe.numpy()

    # floors: exact samples scored like a model
    with ev("metrics"):
        data = ds.sample(settings.n_samples, torch.Generator().manual_seed(30_000 + settings.seed)).double().numpy()
        floors = {
            "kl": board_kl(data, settings),
            "w2": float(__import__("anystep.core.metrics", fromlist=["w2_squared"]).w2_squared(
                data[: settings.w2_samples], target_w2, max_samples=settings.w2_samples, seed=settings.seed)),
            "outside": _outside(data),
        }
        blur = blur_curve(data, lambda x: board_kl(x, settings), seed=40_000 + settings.seed)
    ctx.blur = blur
    m_si.blur = blur.equivalent(m_si.kl)
    for em in euler_m.values():
        em.blur = blur.equivalent(em.kl)
    log("[eval] blur curve: " + ", ".join(f"sigma {sg:g}: KL {k:.4f}" for sg, k in zip(blur.sigmas, blur.kls))
        + f"; teacher: {blur.describe(m_si.kl)}")

    samples: dict[str, dict[int, np.ndarray]] = {}
    metrics: dict[str, dict[int, StepMetrics]] = {}
    bounds: dict[str, dict[str, Any]] = {}
    with ev("bounds (Props. 3.7/3.8)"):
        bctx = bound_context(teacher, x0, data, settings)
    for spec in specs:
        if spec.kind != "flowmap":
            continue
        model = load_model_dir(work_dir / spec.key).model
        hit = cache.load(key_row := cache.key("row", work_dir / spec.key))
        if hit is not None:
            samples[spec.key] = {k: hit[0][f"k{k}"] for k in EVAL_STEPS}
            metrics[spec.key] = metrics_from_json(hit[1]["metrics"])
            if hit[1].get("bounds") is not None:
                bounds[spec.key] = hit[1]["bounds"]
            log(f"[eval] {spec.label}: cached (same weights, teacher and settings), KL "
                + ", ".join(f"K={k} {metrics[spec.key][k].kl:.4f}" for k in EVAL_STEPS))
            continue
        samples[spec.key], metrics[spec.key] = {}, {}
        for k in EVAL_STEPS:
            with ev("flow-map sampling"):
                xk = sample_map(model, x0, k)
            with ev("metrics"):
                metrics[spec.key][k] = score_samples(xk, ctx, nfe=k)
            samples[spec.key][k] = xk.numpy()
        log(f"[eval] {spec.label}: KL " + ", ".join(f"K={k} {metrics[spec.key][k].kl:.4f}" for k in EVAL_STEPS))
        if spec.kind == "flowmap" and not spec.control:
            with ev("bounds (Props. 3.7/3.8)"):
                bounds[spec.key] = map_bounds(model, teacher, bctx, metrics[spec.key][1])
            log(f"[eval] {spec.label}: bounds {bounds[spec.key]}")
        cache.save(key_row, {f"k{k}": samples[spec.key][k] for k in EVAL_STEPS},
                   {"key": spec.key, "metrics": metrics_to_json(metrics[spec.key]), "bounds": bounds.get(spec.key)})

    size_rows = []
    if size_records:
        # every teacher on the same first size_samples base points (dopri5 on all n is costly for 512 x 6)
        n_sz = min(settings.size_samples, settings.n_samples)
        sctx = EvalContext(x0=x0[:n_sz], x_si=None, target_w2=target_w2, settings=settings)
        with ev("teacher sizes"):
            sz_floor = board_kl(data[:n_sz], settings)
        for w, d, rec in [(settings.width, settings.depth, training["si"])] + size_records:
            with ev("teacher sizes"):
                xs = x_si[:n_sz] if rec.key == "si" else sample_ode(
                    load_model_dir(rec.run_dir).model, x0[:n_sz], "dopri5", None, settings.rtol)[0]
                ms = score_samples(xs, sctx)
            size_rows.append({"width": w, "depth": d, "params": rec.params, "n": n_sz, "kl": ms.kl,
                              "kl_floor": sz_floor, "w2_target": ms.w2_target, "outside": ms.outside,
                              "seconds": rec.seconds, "ms_per_step": rec.ms_per_step})
            log(f"[eval] teacher {w}x{d}: KL {ms.kl:.4f} on {n_sz:,} points")

    # ---- goal, figures, bundle -------------------------------------------------------
    cands = [s for s in specs if s.kind == "flowmap" and s.one_step and not s.control]
    allmaps = [s for s in specs if s.kind == "flowmap" and not s.control]
    best1 = min(cands, key=lambda s: metrics[s.key][1].kl) if cands else None
    # the bundled map must invert (/encode): the best one-step map trained on both time directions
    both = [s for s in cands if load_model_dir(work_dir / s.key).config.time_region == "both"]
    best_both = min(both, key=lambda s: metrics[s.key][1].kl) if both else None
    roundtrip: dict[str, float] = {}
    if best_both is not None:
        with ev("round trip"):
            roundtrip = round_trip(load_model_dir(work_dir / best_both.key).model, x0, data)
        log(f"[eval] {best_both.label} round trip: {roundtrip}")
    best4 = min(allmaps, key=lambda s: metrics[s.key][4].kl) if allmaps else None
    goal = {
        "one_step_target_ratio": 1.5,
        "four_step_target_ratio": 1.2,
        "best_one_step": best1.label if best1 else None,
        "best_one_step_key": best1.key if best1 else None,
        "bundled_key": best_both.key if best_both else None,
        "round_trip": roundtrip,
        "best_one_step_ratio": metrics[best1.key][1].kl_ratio if best1 else None,
        "best_four_step": best4.label if best4 else None,
        "best_four_step_ratio": metrics[best4.key][4].kl_ratio if best4 else None,
    }
    goal["one_step_met"] = bool(goal["best_one_step_ratio"] is not None and goal["best_one_step_ratio"] <= 1.5)
    goal["four_step_met"] = bool(goal["best_four_step_ratio"] is not None and goal["best_four_step_ratio"] <= 1.2)

    fig_names: list[str] = []
    if figures:
        with ev("figures"):
            fig_names = make_figures(out_dir, specs, samples, x0.numpy(), x_si.numpy(), euler, data, metrics, m_si)
    eval_s = time.perf_counter() - t_eval

    command = command or command_line(module=MODULE)
    bundled = None
    if bundle_dir is not None and best_both is not None:
        scores = {f"K={k}": {"kl": metrics[best_both.key][k].kl, "kl_ratio": metrics[best_both.key][k].kl_ratio,
                             "blur": metrics[best_both.key][k].blur} for k in EVAL_STEPS}
        scores["round_trip"] = roundtrip
        bundled = bundle_models(bundle_dir, best_both, work_dir, command, scores,
                                {"dopri5": {"kl": m_si.kl, "nfe": nfe_si, "blur": m_si.blur}}, log=log)
        # what the bundle now holds: this run's map, or a better one that was kept (checkerboard_bundle_train's)
        bundled |= bundled_map(bundle_dir / "checkerboard", work_dir / best_both.key)
        log(f"[bundle] {bundled['method_label'] or bundled['method']} -> {bundled['checkerboard']}"
            + (" (kept)" if bundled["kept"] else "") + f", teacher -> {bundled['checkerboard-teacher']}")

    res: dict[str, Any] = {
        "benchmark": "checkerboard",
        "paper": "Boffi, Albergo, Vanden-Eijnden, Flow map matching (arXiv 2406.07507), Sec. 4.1, Table 3",
        "command": command,
        "machine": asdict(machine_info()),
        "machine_description": machine_info().describe(),
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "training": {k: asdict(v) | {"run_dir": rel_path(v.run_dir)} for k, v in training.items()}
        | {f"si_{w}x{d}": asdict(r) for w, d, r in size_records},
        "teacher": {"dopri5": asdict(m_si) | {"nfe": nfe_si}, "euler": {k: asdict(v) for k, v in euler_m.items()}},
        "floors": floors,
        "methods": {
            s.key: {
                "label": s.label,
                "objective": s.objective or training[s.key].objective,
                "preset": s.preset,
                "teacher": s.teacher,
                "init_from": s.init_from,
                "control": s.control,
                "paper_table3": s.paper or None,
                "table3_steps": s.table3_steps,
                "steps": {str(k): asdict(metrics[s.key][k]) for k in EVAL_STEPS},
            }
            for s in specs
            if s.kind == "flowmap"
        },
        "teacher_sizes": size_rows,
        "blur_curve": blur.to_dict(),
        "bounds": bounds,
        "bounds_setup": {"n": bctx.n, "n_times": bctx.n_times, "lipschitz_integral": bctx.lipschitz_integral,
                         "lmd_factor": bctx.lmd_factor},
        "failed": failed,
        "goal": goal,
        "figures": fig_names,
        "bundled": bundled,
        "timing": {
            "train_s": train_s,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - t_start,
            "train_sections": sw.seconds,
            "eval_sections": ev.seconds,
            "eval_cached": len(cache.hits),
        },
    }
    md_path = out_dir / "checkerboard.md"
    notes = existing_notes(md_path)
    md = render_markdown(res, specs, notes)
    paths = write_results(out_dir, "checkerboard", res, md)
    log(f"[done] {paths.json} and {paths.markdown} ({res['timing']['total_s'] / 60:.1f} min)")
    return res


# --------------------------------------------------------------------------------------
# command line (options, --help: checkerboard_cli)
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (options: :func:`~anystep.benchmarks.checkerboard_cli.build_parser`); returns the
    exit status (2 for invalid options)."""
    return run_cli(argv, run)


if __name__ == "__main__":
    sys.exit(main())
