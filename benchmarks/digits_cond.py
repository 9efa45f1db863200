"""Class-conditional digits benchmark: guidance distilled into a one-step map, and image-to-image restoration.

Conditional generation. For each guidance scale ``w`` and each requested class ``c`` (the same
``per_class`` base-noise seeds for every sampler), score

* the classifier-free-guided teacher ``b^w_t(x; c) = b_t(x; ∅) + w (b_t(x; c) - b_t(x; ∅))``
  (:class:`anystep.core.flowmap.GuidedVelocity`) integrated with dopri5; its NFE counts
  both network evaluations of every guided step (twice the solver's evaluations);
* the distilled flow map ``X_{0,1}(x; c, w)`` with ``K = 1, 2, 4, 8`` uniform steps (NFE = K;
  the guidance is an input, no second evaluation);

with the project's digits classifier (:mod:`anystep.benchmarks.digits_classifier`): accuracy
(fraction classified as the class asked for) overall and per class, digits-FD against the
real train split, Teacher-FD against the guided teacher's dopri5 samples at the same ``w``,
and class coverage. Goal (issue 15): at one step, accuracy >= 97% at a ``w`` where digits-FD
<= 1.5x the guided teacher's dopri5 digits-FD, with >= 50x fewer network evaluations.

Restoration (:mod:`anystep.benchmarks.digits_restore`, which also runs alone). The
image-to-image map (base: noisy digits ``x0 = x1 + 0.6 z``) restores the 360 held-out test
digits under 5 noise draws at ``K = 1, 2, 4`` steps: PSNR against the clean digit and
classifier accuracy of clean / degraded / restored digits (goal: restored within 5 points
of clean), the empirical-prior posterior references, and the inverse ``X_{1,0}`` (clean ->
degraded, ``/encode``).

Usage::

    python -m anystep.benchmarks.digits_cond --threads 1            # bundled models
    python -m anystep.benchmarks.digits_cond --quick --out /tmp/q   # small smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.benchmarks.common import (
    command_line,
    machine_info,
    markdown_table,
    portable_path,
    write_results,
)
from anystep.benchmarks.digits import write_grid
from anystep.benchmarks.digits_classifier import REPO_ROOT, DigitsMetric

__all__ = ["CondRow", "evaluate_conditional", "main", "render_markdown"]

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODELS_DIR = REPO_ROOT / "models"
GOAL_ACCURACY = 0.97
GOAL_FD_RATIO = 1.5
GOAL_NFE_RATIO = 50.0


@dataclass
class CondRow:
    """Scores of one sampler at one guidance scale.

    Attributes:
        sampler: ``"teacher dopri5"`` or ``"flow map"``.
        guidance: ``w``.
        steps: K (None for dopri5).
        nfe: network evaluations per sample (guided teacher: 2 per solver evaluation).
        accuracy: fraction of samples classified as the requested class.
        per_class: accuracy for each requested class 0..9.
        digits_fd: Frechet distance to the real train split (classifier features).
        teacher_fd: Frechet distance to the guided teacher's dopri5 samples at the same ``w``.
        entropy: entropy of the predicted class frequencies (ln 10 = 2.303 when balanced).
        min_class: smallest predicted class frequency.
        seconds: wall time to draw the samples.
    """

    sampler: str
    guidance: float
    steps: int | None
    nfe: float
    accuracy: float
    per_class: list[float]
    digits_fd: float
    teacher_fd: float
    entropy: float
    min_class: float
    seconds: float


@dataclass
class BenchConfig:
    """Options of one run (see ``--help``)."""

    cond_map: str = str(MODELS_DIR / "digits-cond")
    teacher: str = str(MODELS_DIR / "digits-cond-teacher")
    restore_map: str | None = str(MODELS_DIR / "digits-restore")
    guidance: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    steps: tuple[int, ...] = (1, 2, 4, 8)
    restore_steps: tuple[int, ...] = (1, 2, 4)
    restore_draws: int = 5
    per_class: int = 100
    seed: int = 0
    rtol: float = 1e-4
    out: str = str(RESULTS_DIR)
    cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _scores(metric: DigitsMetric, x: Tensor, y: Tensor, teacher_x: Tensor | None) -> dict[str, Any]:
    s = metric.score(x, teacher=teacher_x)
    pred = metric.logits(x).argmax(1)
    correct = (pred == y).double()
    per = [float(correct[y == c].mean()) for c in range(10)]
    return {
        "accuracy": float(correct.mean()),
        "per_class": per,
        "digits_fd": s.digits_fd,
        "teacher_fd": max(s.teacher_fd, 0.0) if s.teacher_fd is not None else 0.0,  # FD(x, x) ~ -1e-12
        "entropy": s.coverage.entropy,
        "min_class": s.coverage.min_fraction,
    }


def _cache_path(cfg: BenchConfig, teacher_sha: str | None, w: float) -> Path | None:
    """Where the guided teacher's dopri5 samples of one setting are cached (``--cache DIR``)."""
    if cfg.cache is None or teacher_sha is None:
        return None
    key = f"{teacher_sha[:16]}_w{w:g}_n{cfg.per_class}_seed{cfg.seed}_rtol{cfg.rtol:g}"
    return Path(cfg.cache) / f"digits_cond_teacher_{key}.npz"


def evaluate_conditional(
    cond_map: torch.nn.Module,
    teacher: torch.nn.Module,
    null_class: int,
    metric: DigitsMetric,
    cfg: BenchConfig,
    teacher_sha: str | None = None,
) -> tuple[list[CondRow], dict[str, Tensor]]:
    """Score the guided teacher (dopri5) and the map (K steps) at every guidance scale.

    With ``cfg.cache`` the teacher's dopri5 samples are read from / written to that folder
    (keyed by the teacher's sha256, w, samples per class, seed and rtol; the recorded time
    is that of the run that drew them).

    Returns:
        (rows, samples) where ``samples["w=<w> K=<K>"]`` are ``[n, 1, 8, 8]`` (class-sorted).
    """
    from anystep.core.flowmap import Conditioned, GuidedVelocity
    from anystep.core.samplers import sample_flowmap, sample_ode

    y = torch.arange(10).repeat_interleave(cfg.per_class)
    n = y.numel()
    x0 = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(cfg.seed))
    rows: list[CondRow] = []
    samples: dict[str, Tensor] = {}
    for w in cfg.guidance:
        wt = torch.full((n,), float(w))
        guided = GuidedVelocity(teacher, y, wt, null_class)
        cached = _cache_path(cfg, teacher_sha, w)
        if cached is not None and cached.is_file():
            with np.load(cached, allow_pickle=False) as z:
                ref_x, nfe, sec = torch.from_numpy(z["x"]), int(z["nfe"]), float(z["seconds"])
        else:
            t0 = time.perf_counter()
            ref = sample_ode(guided, x0, solver="dopri5", rtol=cfg.rtol, max_nfe=None)
            ref_x, nfe, sec = ref.x, ref.nfe, time.perf_counter() - t0
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, x=ref_x.numpy(), nfe=nfe, seconds=sec)
        ref = SimpleNamespace(x=ref_x, nfe=nfe)
        samples[f"w={w} dopri5"] = ref.x
        rows.append(CondRow("teacher dopri5", float(w), None, float(ref.nfe * guided.nfe_per_call),
                            seconds=sec, **_scores(metric, ref.x, y, ref.x)))
        print(f"  w={w}: teacher dopri5 acc {rows[-1].accuracy:.3f} FD {rows[-1].digits_fd:.2f} "
              f"NFE {rows[-1].nfe:.0f} ({sec:.0f} s)", file=sys.stderr, flush=True)
        bound = Conditioned(cond_map, y, wt)
        for k in cfg.steps:
            t0 = time.perf_counter()
            res = sample_flowmap(bound, x0, steps=k)
            sec = time.perf_counter() - t0
            samples[f"w={w} K={k}"] = res.x
            rows.append(CondRow("flow map", float(w), k, float(res.nfe), seconds=sec,
                                **_scores(metric, res.x, y, ref.x)))
            print(f"  w={w}: map K={k} acc {rows[-1].accuracy:.3f} FD {rows[-1].digits_fd:.2f}",
                  file=sys.stderr, flush=True)
    return rows, samples


def _goal(rows: list[CondRow]) -> list[dict[str, Any]]:
    out = []
    for w in sorted({r.guidance for r in rows}):
        teacher = next(r for r in rows if r.guidance == w and r.steps is None)
        one = next((r for r in rows if r.guidance == w and r.steps == 1), None)
        if one is None:
            continue
        ratio = one.digits_fd / teacher.digits_fd if teacher.digits_fd > 0 else float("inf")
        nfe_ratio = teacher.nfe / one.nfe
        out.append({
            "guidance": w, "accuracy_1step": one.accuracy, "teacher_accuracy": teacher.accuracy,
            "fd_1step": one.digits_fd, "teacher_fd": teacher.digits_fd, "fd_ratio": ratio,
            "teacher_nfe": teacher.nfe, "nfe_ratio": nfe_ratio,
            "met": one.accuracy >= GOAL_ACCURACY and ratio <= GOAL_FD_RATIO and nfe_ratio >= GOAL_NFE_RATIO,
        })
    return out


def render_markdown(data: dict[str, Any]) -> str:
    """The Markdown report of a run's results dict."""
    lines = ["# Class-conditional digits benchmark (guidance distilled into the map)", ""]
    lines += [f"- machine: {data['machine']}", f"- command: `{data['command']}`", f"- date: {data['date']}"]
    lines += [f"- models: map `{data['models']['cond_map']}`, teacher `{data['models']['teacher']}`"
              + (f", restoration `{data['models']['restore_map']}`" if data["models"].get("restore_map") else "")]
    lines += [f"- samples per row: {data['n']} ({data['per_class']} per requested class, same base noise for every sampler)", ""]
    lines += [("Accuracy: fraction classified as the class asked for. digits-FD: vs the real train split; "
              "Teacher-FD: vs the guided teacher's dopri5 samples at the same w. NFE of the guided teacher "
              "counts both evaluations b(x, y), b(x, ∅) of every solver step."), ""]
    head = ["sampler", "w", "steps", "NFE", "accuracy", "digits-FD", "Teacher-FD", "entropy", "min class", "time (s)"]
    body = [[r["sampler"], r["guidance"], r["steps"] if r["steps"] is not None else "–", round(r["nfe"], 1),
             r["accuracy"], r["digits_fd"], r["teacher_fd"], r["entropy"], r["min_class"], round(r["seconds"], 2)]
            for r in data["rows"]]
    lines += [markdown_table(head, body), ""]
    lines += ["Per-class accuracy (one-step map, and the guided teacher with dopri5):", ""]
    pc_head = ["sampler", "w"] + [str(c) for c in range(10)]
    pc = [[r["sampler"], r["guidance"]] + r["per_class"] for r in data["rows"] if r["steps"] in (None, 1)]
    lines += [markdown_table(pc_head, pc), ""]
    lines += [(f"## Goal: one-step accuracy >= {GOAL_ACCURACY:.0%} at a w with digits-FD <= {GOAL_FD_RATIO}x "
              f"the guided teacher's dopri5, >= {GOAL_NFE_RATIO:.0f}x fewer evaluations"), ""]
    g_head = ["w", "1-step acc", "teacher acc", "1-step FD", "teacher FD", "FD ratio", "teacher NFE", "NFE ratio", "met"]
    g_body = [[g["guidance"], g["accuracy_1step"], g["teacher_accuracy"], g["fd_1step"], g["teacher_fd"],
               g["fd_ratio"], round(g["teacher_nfe"], 1), round(g["nfe_ratio"], 1), "yes" if g["met"] else "no"]
              for g in data["goal"]]
    lines += [markdown_table(g_head, g_body), ""]
    met = [g for g in data["goal"] if g["met"]]
    if met:
        g = met[0]
        ws = ", ".join(f"{m['guidance']:g}" for m in met)
        lines += [(f"Goal met at w = {ws}. At the smallest, w = {g['guidance']:g}: "
                   f"one-step accuracy {g['accuracy_1step']:.1%} (guided teacher {g['teacher_accuracy']:.1%}), digits-FD "
                   f"{g['fd_1step']:.3g} vs the guided teacher's dopri5 {g['teacher_fd']:.3g} = {g['fd_ratio']:.2f}x "
                   f"(<= {GOAL_FD_RATIO}), NFE 1 vs {g['teacher_nfe']:.0f} ({g['nfe_ratio']:.0f}x fewer)."), ""]
    else:
        lines += ["Goal not met at any w of this run.", ""]
    if data.get("restoration"):
        from anystep.benchmarks.digits_restore import render_restoration

        lines += render_restoration(data["restoration"])
    lines += ["Grids: " + ", ".join(data["grids"]), ""]
    return "\n".join(lines)


BUNDLES = (
    ("digits-cond-lmd", "digits-cond"),
    ("digits-cond-velocity", "digits-cond-teacher"),
    ("digits-restore-lmd", "digits-restore"),
)
"""(run folder, bundled model name) pairs copied by ``--bundle RUNS``."""


def bundle_models(
    runs: Path, models_dir: Path = MODELS_DIR, bundles: tuple[tuple[str, str], ...] = BUNDLES
) -> dict[str, str]:
    """Copy finished runs ``runs/<run>`` into ``models/<name>`` (``bundles``, default :data:`BUNDLES`), atomically.

    Only ``config.json`` and ``model.safetensors`` are copied; run-local paths in the
    provenance become checkout-relative (the sha256 records stay). Runs that have not
    finished (no ``config.json``) are skipped.

    Returns:
        ``{name: path}`` of the bundled models.
    """
    import json
    import os
    import shutil

    out: dict[str, str] = {}
    for run, name in bundles:
        src = runs / run
        if not (src / "config.json").is_file():
            continue
        tmp = models_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(src / "model.safetensors", tmp / "model.safetensors")
        cfg = json.loads((src / "config.json").read_text())
        prov = cfg.get("provenance", {})
        for holder in (prov, prov.get("train_config", {})):
            for key in ("teacher", "init_from"):
                if holder.get(key):
                    holder[key] = portable_path(holder[key], REPO_ROOT)
        prov["bundled_from"] = f"run '{run}' (anystep train {prov.get('preset', run)})"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        dst = models_dir / name
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        out[name] = portable_path(dst, REPO_ROOT) or name
    return out


def _parse(argv: list[str] | None) -> tuple[BenchConfig, Path | None]:
    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.digits_cond", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BenchConfig()
    p.add_argument("--cond-map", default=d.cond_map, help="class-conditional flow map directory (default: %(default)s)")
    p.add_argument("--teacher", default=d.teacher, help="class-conditional velocity (CFG teacher) directory")
    p.add_argument("--restore-map", default=d.restore_map, help="restoration map directory ('' to skip)")
    p.add_argument("--guidance", default=",".join(map(str, d.guidance)), help="guidance scales w, comma-separated")
    p.add_argument("--steps", default=",".join(map(str, d.steps)), help="flow-map step counts")
    p.add_argument("--per-class", type=int, default=d.per_class, help="samples per requested class")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rtol", type=float, default=d.rtol, help="dopri5 tolerance (atol = rtol)")
    p.add_argument("--out", default=d.out, help="results folder")
    p.add_argument("--cache", default=None, help="folder caching the guided teacher's dopri5 samples between runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="10 per class, w in {1, 2}, steps 1,2: a smoke run")
    p.add_argument("--bundle", metavar="RUNS", default=None,
                   help="first copy the finished runs RUNS/digits-cond-lmd, digits-cond-velocity, digits-restore-lmd "
                        "into models/digits-cond, digits-cond-teacher, digits-restore")
    a = p.parse_args(argv)
    try:
        guidance = tuple(float(v) for v in a.guidance.split(","))
        steps = tuple(int(v) for v in a.steps.split(","))
    except ValueError:
        p.error("--guidance takes numbers and --steps integers, comma-separated (e.g. --guidance 1,2 --steps 1,4)")
    if a.per_class < 2 or any(k < 1 for k in steps):
        p.error("--per-class must be >= 2 and every step count >= 1")
    torch.set_num_threads(max(1, a.threads))
    cfg = BenchConfig(cond_map=a.cond_map, teacher=a.teacher, restore_map=a.restore_map or None, guidance=guidance,
                      steps=steps, per_class=a.per_class, seed=a.seed, rtol=a.rtol, out=a.out, cache=a.cache)
    if a.quick:
        cfg.per_class, cfg.guidance, cfg.steps, cfg.restore_steps, cfg.restore_draws = 10, (1.0, 2.0), (1, 2), (1,), 1
        cfg.rtol = 1e-3
    return cfg, (Path(a.bundle) if a.bundle else None)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``digits_cond.json`` / ``.md`` and the grids to ``--out``."""
    from anystep.core.modeldir import ModelDirError, load_model_dir

    cfg, bundle_from = _parse(argv)
    if bundle_from is not None:
        print(f"bundled {bundle_models(bundle_from)}", file=sys.stderr)
    try:
        cmap = load_model_dir(cfg.cond_map)
        teacher = load_model_dir(cfg.teacher)
        restore = load_model_dir(cfg.restore_map) if cfg.restore_map else None
    except ModelDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cmap.config.num_classes != 10 or teacher.config.num_classes != 10 or not cmap.config.guidance_input:
        print("error: --cond-map must be a 10-class flow map with a guidance input and --teacher a 10-class "
              "velocity model (train digits-cond-velocity / digits-cond-lmd)", file=sys.stderr)
        return 2
    metric = DigitsMetric.create()
    out = Path(cfg.out)
    from anystep.core.modeldir import model_dir_sha256

    rows, samples = evaluate_conditional(
        cmap.model, teacher.model, teacher.config.num_classes, metric, cfg, model_dir_sha256(cfg.teacher)
    )
    grids = []
    for w in cfg.guidance:  # one column per class: the first sample of each class, 8 seeds per row
        pick = torch.arange(10)[:, None] * cfg.per_class + torch.arange(min(8, cfg.per_class))[None, :]
        order = pick.T.reshape(-1)
        grid_rows = [(f"w={w} dopri5", samples[f"w={w} dopri5"][order])]
        grid_rows += [(f"w={w} K={k}", samples[f"w={w} K={k}"][order]) for k in cfg.steps]
        name = f"digits_cond_w{w:g}.png"
        write_grid(out / name, grid_rows, per_row=min(40, len(order)))
        grids.append(name)
    data: dict[str, Any] = {
        "machine": machine_info().describe(),
        "command": command_line(argv, "anystep.benchmarks.digits_cond"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "models": {"cond_map": portable_path(cfg.cond_map, REPO_ROOT), "teacher": portable_path(cfg.teacher, REPO_ROOT),
                   "restore_map": portable_path(cfg.restore_map, REPO_ROOT) if cfg.restore_map else None},
        "per_class": cfg.per_class,
        "n": 10 * cfg.per_class,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "cond_map", "teacher", "restore_map", "cache")},
        "rows": [asdict(r) for r in rows],
        "goal": _goal(rows),
        "grids": grids,
    }
    if restore is not None:
        from anystep.benchmarks.digits_restore import DEFAULT_NOISE

        noise = DEFAULT_NOISE  # the base digits-noisy of the map is built with its default noise
        from anystep.benchmarks.digits_restore import run as run_restoration

        section, r_samples = run_restoration({"digits-restore": cfg.restore_map}, metric, noise, cfg.seed,
                                             cfg.restore_draws, cfg.restore_steps)
        data["restoration"] = section
        # its own file: benchmarks/digits_restore.py owns digits_restore.png in the same results folder
        write_grid(out / "digits_cond_restore.png", [(k, v[:16]) for k, v in r_samples.items()], per_row=16)
        grids.append("digits_cond_restore.png")
    paths = write_results(out, "digits_cond", data, render_markdown(data))
    print(f"wrote {paths.markdown} and {paths.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
