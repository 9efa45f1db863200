"""Sampler latency against ODE solvers, across inference engines, with the quality bought.

The mission's claim: a flow map ``X_{s,t}`` sampled with K = 1..4 steps of the
semigroup composition (eq. 3.6) reaches its teacher's quality at a small fraction
of an ODE solver's cost on the probability-flow ODE ``dx/dt = b_t(x)`` (eq. 3.1).
This benchmark puts numbers on it, for each bundled model pair
``models/<name>`` (flow map) + ``models/<name>-teacher`` (velocity)::

    python -m anystep.benchmarks.latency            # full run (minutes; ONNX exports are cached)
    python -m anystep.benchmarks.latency --quick    # about a minute, a smoke run, not a result

Tables (all methods of one table are timed in ONE interleaved run, see
:func:`interleaved_timing`, so their ratios are comparable on a noisy machine):

1. **Samplers** (PyTorch eager, :func:`anystep.core.samplers.sample_flowmap` /
   :func:`~anystep.core.samplers.sample_ode`): the flow map at K = 1, 2, 4, 8 steps;
   the teacher with Euler, Heun and RK4 at matched NFE (plus larger NFE for the
   Pareto curves) and dopri5 at rtol 1e-3 / 1e-5 (NFE measured). For each: NFE,
   latency per batch (median and p95 after warm-up) at batch sizes 1, 16, 256,
   throughput (samples/s at the median) and the quality of the samples
   (checkerboard: ``KL(rho_1 || rho_hat_1)`` with the exact density and ``W_2^2``;
   digits: digits-FD and Teacher-FD), on the same base points for every method.
2. **Engines**: the same flow-map rows (and the teacher with RK4 / dopri5) through
   the serving engines (:mod:`anystep.server.engines`): torch eager, ONNX Runtime
   with the single-step graph (``step(x, s, t)`` called K times) and with the fused
   K-step graph (:mod:`anystep.export.fused`, one call), and TensorRT where an
   NVIDIA GPU and the ``tensorrt`` package exist (skipped with the reason otherwise).
3. **Pareto plot** ``latency.png``: quality against median latency (log scale), one
   curve per method, one panel per model and batch size.

Results: ``benchmarks/results/latency.{json,md,png}`` naming the machine, the
versions and the exact command. Hand-written notes between the
``investigation-notes`` markers of ``latency.md`` survive a re-run.

Time convention: ``t = 0`` base (Gaussian), ``t = 1`` data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.benchmarks.common import (
    OUT_HELP,
    existing_notes,
    float_list,
    int_list,
    load_average,
    machine_info,
    name_list,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.latency_engines import (  # noqa: F401 - re-exported
    EngineCase,
    FusedOnnx,
    build_engine_cases,
    ensure_export,
    tensorrt_unavailable_reason,
)
from anystep.benchmarks.latency_methods import (  # noqa: F401 - re-exported
    QUICK,
    STAGES,
    BenchSettings,
    EngineRow,
    LatencyBenchError,
    MethodSpec,
    SamplerRow,
    make_sampler,
    sample_for_quality,
    solver_methods,
)
from anystep.benchmarks.latency_models import ModelPair, QualityScorer, load_pair
from anystep.benchmarks.latency_report import make_plot, render_markdown
from anystep.benchmarks.timing import (
    LatencyStats,
    TimingResult,
    interleaved_timing,
    pareto_front,
    percentile,
    profile_call,
    summarize,
)
from anystep.errors import AnystepError  # noqa: F401 - re-exported
from anystep.server.registry import models_dir as bundled_models_dir

__all__ = [
    "QUICK",
    "BenchSettings",
    "EngineRow",
    "LatencyBenchError",
    "LatencyStats",
    "MethodSpec",
    "SamplerRow",
    "build_parser",
    "interleaved_timing",
    "main",
    "pareto_front",
    "percentile",
    "render_markdown",
    "run",
    "solver_methods",
    "summarize",
]

MODULE = "anystep.benchmarks.latency"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_SPEEDUP = 20.0
GOAL_KL_RATIO = 1.5
GOAL_ONNX_SPEEDUP = 1.5


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def _time_table(fns_by_batch: dict[int, dict[str, Callable[[], Any]]], settings: BenchSettings,
                log: Callable[[str], None], what: str) -> dict[int, TimingResult]:
    out: dict[int, TimingResult] = {}
    for b, fns in fns_by_batch.items():
        if not fns:
            continue
        res = interleaved_timing(fns, rounds=settings.rounds, warmup=settings.warmup, block_s=settings.block_s,
                                 budget_s=settings.budget_s, max_call_s=settings.max_call_s,
                                 seed=settings.seed + b, min_rounds=min(3, settings.rounds))
        log(f"[time] {what} batch {b}: {len(fns) - len(res.single_shot)} methods x {res.rounds} rounds in "
            f"{res.wall_s:.1f} s" + (f"; timed once (> {settings.max_call_s:g} s per call): "
                                     f"{', '.join(res.single_shot)}" if res.single_shot else ""))
        out[b] = res
    return out


def _mark_pareto(rows: Sequence[SamplerRow], primary: str | None, batch_sizes: Sequence[int]) -> None:
    if primary is None:
        return
    for b in batch_sizes:
        idx = [i for i, r in enumerate(rows) if b in r.latency and primary in r.quality]
        front = pareto_front([(rows[i].latency[b].median_ms, rows[i].quality[primary]) for i in idx])
        on = {idx[j] for j in front}
        for i in idx:
            rows[i].pareto[b] = i in on


def speedups(rows: Sequence[SamplerRow], primary: str | None, batch_sizes: Sequence[int],
             ref_key: str) -> list[dict[str, Any]]:
    """Speed-up of every flow-map row over the reference row (dopri5 at the tightest rtol).

    Returns:
        One dict per (flow-map row, batch): ``key``, ``batch``, ``speedup`` (reference
        median / row median), ``quality_ratio`` (row / reference primary metric),
        ``excess_ratio`` (the same for the KL minus the estimator floor, 2D only) and
        ``matched`` (quality no worse than the reference's: judged on the excess ratio
        when there is one).
    """
    by_key = {r.key: r for r in rows}
    ref = by_key.get(ref_key)
    out: list[dict[str, Any]] = []
    if ref is None:
        return out
    for r in rows:
        if r.family != "flow map":
            continue
        for b in batch_sizes:
            if b not in r.latency or b not in ref.latency:
                continue
            q = r.quality.get(primary) if primary else None
            qref = ref.quality.get(primary) if primary else None
            ratio = q / qref if (q is not None and qref) else None
            ex, exref = r.quality.get("kl_excess"), ref.quality.get("kl_excess")
            excess = ex / exref if (ex is not None and exref is not None and exref > 0) else None
            judged = excess if excess is not None else ratio
            out.append({"key": r.key, "steps": r.steps, "batch": b,
                        "speedup": ref.latency[b].median_ms / r.latency[b].median_ms,
                        "speedup_p95": ref.latency[b].p95_ms / r.latency[b].p95_ms,
                        "quality_ratio": ratio, "excess_ratio": excess,
                        "matched": (judged is not None and judged <= 1.0)})
    return out


def run_pair(pair: ModelPair, settings: BenchSettings, work_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """All tables of one model pair."""
    torch.manual_seed(settings.seed)
    shape = pair.data_shape
    is_image = len(shape) == 3
    n_q = settings.n_quality_images if is_image else settings.n_quality
    g = torch.Generator().manual_seed(settings.seed)
    x0_quality = torch.randn((n_q, *shape), generator=g)
    x0_batch = {b: torch.randn((b, *shape), generator=torch.Generator().manual_seed(settings.seed + 7 * b))
                for b in settings.batch_sizes}
    log(f"[{pair.name}] quality metric set-up ({'images' if is_image else '2D'}, n={n_q})")
    scorer = QualityScorer(pair.dataset, shape, settings)

    specs = [s for s in solver_methods(settings.steps, settings.solver_nfe, settings.rtols)
             if make_sampler(s, pair, x0_batch[settings.batch_sizes[0]]) is not None]
    # ---- quality (all methods on the same x0) -----------------------------------
    rows: dict[str, SamplerRow] = {}
    samples: dict[str, Tensor] = {}
    teacher_key = f"dopri5-{min(settings.rtols):g}"
    order = sorted(specs, key=lambda s: s.key != teacher_key)  # the teacher reference first (Teacher-FD)
    torch.set_num_threads(settings.quality_threads)  # untimed: use the cores
    for s in order:
        t0 = time.perf_counter()
        with torch.no_grad():
            x, nfe = sample_for_quality(s, pair, x0_quality)
        samples[s.key] = x
        ref = samples.get(teacher_key) if is_image else None
        q = scorer.score(x, teacher=ref)
        rows[s.key] = SamplerRow(key=s.key, label=s.label, family=s.family, steps=s.steps, rtol=s.rtol,
                                 nfe_quality=nfe, quality=q)
        log(f"[{pair.name}] quality {s.label}: nfe {nfe}, "
            + ", ".join(f"{k} {v:.4g}" for k, v in q.items()) + f" ({time.perf_counter() - t0:.1f} s)")
    # ---- latency, interleaved per batch size ------------------------------------
    torch.set_num_threads(settings.threads)
    fns_by_batch = {b: {s.key: make_sampler(s, pair, x0_batch[b]) for s in specs} for b in settings.batch_sizes}
    with torch.no_grad():
        timings = _time_table(fns_by_batch, settings, log, f"{pair.name} samplers")
    for b, res in timings.items():
        for k, secs in res.seconds.items():
            st = summarize(secs)
            rows[k].latency[b] = st
            rows[k].nfe[b] = int(res.outputs[k])
            rows[k].throughput[b] = b / (st.median_ms / 1000.0)
    row_list = [rows[s.key] for s in specs]
    _mark_pareto(row_list, scorer.primary, settings.batch_sizes)

    # ---- engines ------------------------------------------------------------------
    cases, skipped = build_engine_cases(pair, settings, work_dir, log)
    eng_rows: list[EngineRow] = []
    ref_np: dict[str, np.ndarray] = {}
    for c in cases:
        if c.engine == "torch":
            ref_np[c.spec.key] = samples[c.spec.key].numpy() if c.spec.key in samples else None
    for c in cases:
        log(f"[{pair.name}] quality through {c.engine}: {c.spec.label}")
        y = np.concatenate([c.run(np.ascontiguousarray(chunk.numpy())) for chunk in x0_quality.split(25_000)])
        ref = ref_np.get(c.spec.key)
        diff = float(np.max(np.abs(y - ref))) if ref is not None and ref.shape == y.shape else None
        q = scorer.score(torch.from_numpy(y), teacher=samples.get(teacher_key) if is_image else None)
        eng_rows.append(EngineRow(key=c.spec.key, label=c.spec.label, family=c.spec.family, steps=c.spec.steps,
                                  rtol=c.spec.rtol, quality=q, engine=c.engine, max_abs_diff=diff,
                                  nfe_quality=c.spec.nfe))
    fns_eng: dict[int, dict[str, Callable[[], Any]]] = {}
    for b in settings.batch_sizes:
        xb = np.ascontiguousarray(x0_batch[b].numpy())
        fns_eng[b] = {f"{c.engine}|{c.spec.key}": (lambda c=c, xb=xb: c.run(xb)) for c in cases}
    eng_timings = _time_table(fns_eng, settings, log, f"{pair.name} engines")
    by_id = {f"{r.engine}|{r.key}": r for r in eng_rows}
    for b, res in eng_timings.items():
        for k, secs in res.seconds.items():
            st = summarize(secs)
            r = by_id[k]
            r.latency[b] = st
            r.throughput[b] = b / (st.median_ms / 1000.0)
            r.nfe[b] = r.nfe_quality if r.nfe_quality is not None else rows[r.key].nfe.get(b, 0)
            if r.family == "dopri5" and r.key in rows:
                r.nfe[b] = rows[r.key].nfe.get(b, 0)

    result: dict[str, Any] = {
        "models": pair.describe(),
        "quality_metric": scorer.primary,
        "n_quality": n_q,
        "floor": scorer.floor,
        "rows": row_list,
        "speedup_vs": teacher_key,
        "speedups": speedups(row_list, scorer.primary, settings.batch_sizes, teacher_key),
        "engine_rows": eng_rows,
        "engine_skipped": skipped,
        "timing_rounds": {b: {"rounds": r.rounds, "wall_s": r.wall_s} for b, r in timings.items()},
    }
    return result


def evaluate_goals(results: dict[str, Any], settings: BenchSettings) -> list[dict[str, Any]]:
    """The issue's goals this benchmark measures, with what was measured against each."""
    goals: list[dict[str, Any]] = []
    cb = results.get("checkerboard")
    if cb is not None and cb.get("quality_metric") == "kl":
        rows = {r.key: r for r in cb["rows"]}
        fm, ref = rows.get("flowmap-1"), rows.get(cb["speedup_vs"])
        per_batch = []
        excess = None
        if fm is not None and ref is not None:
            kl_ratio = fm.quality["kl"] / ref.quality["kl"] if ref.quality.get("kl") else None
            floor = (cb.get("floor") or {}).get("kl")
            excess = None
            if floor is not None and ref.quality["kl"] - floor > 0:
                excess = (fm.quality["kl"] - floor) / (ref.quality["kl"] - floor)
            judged = excess if excess is not None else kl_ratio
            for b in settings.batch_sizes:
                if b in fm.latency and b in ref.latency:
                    sp = ref.latency[b].median_ms / fm.latency[b].median_ms
                    per_batch.append({"batch": b, "speedup": sp, "kl_ratio": kl_ratio, "excess_kl_ratio": excess,
                                      "met": bool(sp >= GOAL_SPEEDUP and judged is not None
                                                  and judged <= GOAL_KL_RATIO)})
        goals.append({
            "goal": f"flow map steps=1 >= {GOAL_SPEEDUP:g}x faster than dopri5 (rtol {min(settings.rtols):g}) "
                    f"at <= {GOAL_KL_RATIO:g}x its KL (checkerboard)",
            "judged_on": "KL minus the estimator floor (finite-sample bias removed)" if excess is not None
            else "raw KL",
            "per_batch": per_batch,
            "met": bool(per_batch) and all(p["met"] for p in per_batch),
        })
    for name, res in results.items():
        er = {(r.engine, r.key): r for r in res["engine_rows"]}
        ks = sorted(r.steps for r in res["engine_rows"] if r.engine == "torch" and r.family == "flow map"
                    and ("onnx", r.key) in er and 1 in r.latency and 1 in er[("onnx", r.key)].latency)
        if not ks:
            continue
        key = f"flowmap-{ks[0]}"  # the fewest steps: closest to "one step"
        t, o = er[("torch", key)], er[("onnx", key)]
        sp = t.latency[1].median_ms / o.latency[1].median_ms
        f = er.get(("onnx-fused", key))
        goals.append({
            "goal": f"ONNX Runtime >= {GOAL_ONNX_SPEEDUP:g}x torch eager per step at batch 1 on CPU ({name})",
            "steps": ks[0],
            "torch_ms": t.latency[1].median_ms / ks[0], "onnx_ms": o.latency[1].median_ms / ks[0],
            "onnx_fused_ms": f.latency[1].median_ms / ks[0] if f is not None and 1 in f.latency else None,
            "speedup": sp, "met": bool(sp >= GOAL_ONNX_SPEEDUP),
        })
    return goals


def profile_missed(results: dict[str, Any], goals: list[dict[str, Any]], pairs: dict[str, ModelPair],
                   settings: BenchSettings, work_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Profile the calls behind missed goals (one flow-map step at batch 1, dopri5 at batch 1)."""
    out: dict[str, Any] = {}
    for g in goals:
        if g["met"]:
            continue
        if g["goal"].startswith("ONNX"):
            name = g["goal"].rsplit("(", 1)[1].rstrip(")")
            pair = pairs[name]
            from anystep.server.engines import OnnxEngine, TorchEngine, find_onnx_artifact

            x = np.random.default_rng(0).standard_normal((1, *pair.data_shape)).astype(np.float32)
            s, t = np.zeros(1, np.float32), np.ones(1, np.float32)
            te = TorchEngine(pair.flowmap.model, pair.data_shape, threads=settings.threads)
            d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
            oe = OnnxEngine(find_onnx_artifact(d), pair.data_shape, kind="flowmap",
                            providers=["CPUExecutionProvider"], intra_op_threads=settings.threads)
            log(f"[profile] {name}: one step at batch 1, torch vs onnx")
            out[f"{name}: torch engine step, batch 1"] = profile_call(lambda e=te, x=x, s=s, t=t: e.step(x, s, t))
            out[f"{name}: onnx engine step, batch 1"] = profile_call(lambda e=oe, x=x, s=s, t=t: e.step(x, s, t))
        elif g["goal"].startswith("flow map") and "checkerboard" in pairs:
            pair = pairs["checkerboard"]
            x = torch.randn(1, *pair.data_shape, generator=torch.Generator().manual_seed(0))
            spec_fm = MethodSpec(key="flowmap-1", family="flow map", steps=1, nfe=1)
            spec_ref = MethodSpec(key="dopri5", family="dopri5", rtol=min(settings.rtols))
            log("[profile] checkerboard: flow map 1 step and dopri5 at batch 1")
            with torch.no_grad():
                out["checkerboard: flow map K=1, batch 1"] = profile_call(make_sampler(spec_fm, pair, x))
                out["checkerboard: dopri5, batch 1"] = profile_call(make_sampler(spec_ref, pair, x), calls=5)
    return out


def run(settings: BenchSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Run the benchmark and write ``latency.{json,md,png}`` to ``out_dir``.

    Returns:
        The result dict written to ``latency.json`` (with dataclass rows).
    """
    torch.set_num_threads(settings.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    machine = machine_info()
    pairs: dict[str, ModelPair] = {}
    for name in settings.models:
        pairs[name] = load_pair(name, Path(settings.models_dir))
    results: dict[str, Any] = {}
    for name, pair in pairs.items():
        log(f"[{name}] flow map: {pair.flowmap_dir}, teacher: {pair.teacher_dir}")
        results[name] = run_pair(pair, settings, work_dir, log)
    goals = evaluate_goals(results, settings)
    profiles = profile_missed(results, goals, pairs, settings, work_dir, log) if settings.profile else {}
    data = {
        "benchmark": "latency",
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t_start,
        "machine": machine,
        "machine_description": machine.describe(),
        "load_average": load_average(),
        "versions": versions(("torch", "numpy", "onnxruntime", "onnx", "tensorrt")),
        "settings": settings,
        "results": results,
        "goals": goals,
        "profiles": profiles,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        md_path = out_dir / "latency.md"
        notes = existing_notes(md_path)
        png = None
        try:
            png = make_plot(results, settings, out_dir / "latency.png")
        except ImportError as exc:  # pragma: no cover - matplotlib missing
            log(f"[plot] skipped: {exc}")
        data["plot"] = str(png) if png else None
        paths = write_results(out_dir, "latency", data, render_markdown(data, notes))
        log(f"[done] {paths.json}, {paths.markdown}" + (f", {png}" if png else ""))
    return data


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.latency``."""
    d = BenchSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Time flow-map sampling against the teacher's ODE solvers (and across engines) with the "
                    "quality each buys; writes latency.{json,md,png}.",
    )
    p.add_argument("--quick", action="store_true", help="about a minute: fewer batch sizes, methods, rounds and "
                   "quality samples (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--models", type=name_list, default=None, help="pair names (default checkerboard,digits): "
                   "<models-dir>/<name> is the flow map, <models-dir>/<name>-teacher the velocity teacher")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--batch-sizes", type=int_list, default=None, help="default 1,16,256")
    p.add_argument("--steps", type=int_list, default=None, help="flow-map steps K (default 1,2,4,8)")
    p.add_argument("--solver-nfe", type=int_list, default=None, help="Euler/Heun/RK4 NFE budgets (default 1,...,32)")
    p.add_argument("--rtols", type=float_list, default=None, help="dopri5 tolerances (default 1e-3,1e-5)")
    p.add_argument("--engines", type=name_list, default=None, help="default torch,onnx,onnx-fused,tensorrt")
    p.add_argument("--engine-steps", type=int_list, default=None, help="flow-map K of the engine table (default 1,2,4,8)")
    p.add_argument("--no-engine-teacher", action="store_true", help="engine table: flow map rows only")
    p.add_argument("--n-quality", type=int, default=None, help=f"2D quality points (default {d.n_quality:,})")
    p.add_argument("--n-quality-images", type=int, default=None,
                   help=f"image quality samples (default {d.n_quality_images:,})")
    p.add_argument("--rounds", type=int, default=None, help=f"interleaved timing rounds (default {d.rounds})")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds per timing run, one table and batch size (default {d.budget_s:g})")
    p.add_argument("--max-call-s", type=float, default=None,
                   help=f"a call slower than this is timed once (default {d.max_call_s:g})")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--exporter", default=None, choices=("auto", "dynamo", "torchscript"), help="ONNX exporter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-profile", action="store_true", help="do not profile missed goals")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--work-dir", type=Path, default=None, help="export cache (default runs/latency)")
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Resolve ``--quick`` and explicit options into :class:`BenchSettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("models", "batch_sizes", "steps", "solver_nfe", "rtols", "engines", "engine_steps", "n_quality",
                 "n_quality_images", "rounds", "budget_s", "max_call_s", "threads", "exporter"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    kw["models_dir"] = args.models_dir if args.models_dir is not None else bundled_models_dir()
    if args.no_engine_teacher:
        kw["engine_teacher"] = False
    if args.no_profile:
        kw["profile"] = False
    return BenchSettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.latency``); returns the exit status."""
    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   work_dir=REPO_ROOT / "runs" / "latency", settings_errors=(LatencyBenchError,))

if __name__ == "__main__":
    sys.exit(main())
