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
import math
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anystep.benchmarks.digits_classifier import REPO_ROOT, DigitsMetric, DigitsScores
from anystep.errors import AnystepError

__all__ = [
    "METHODS",
    "BenchConfig",
    "EvalRow",
    "MethodSpec",
    "evaluate_flowmap",
    "evaluate_teacher",
    "main",
    "render_markdown",
    "run_benchmark",
    "train_method",
    "write_grid",
]

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_STEPS = (1, 2, 4, 8)
TEACHER_EULER_STEPS = (1, 2, 4, 8, 16, 32, 64)


class BenchError(AnystepError):
    """Invalid benchmark option; the message says how to fix it."""


@dataclass(frozen=True)
class MethodSpec:
    """How one model of the benchmark is trained.

    Attributes:
        name: method name (``teacher``, ``lmd``, ``fmm4``, ``pfmm``, ``lsd``).
        preset: ``anystep train`` preset it starts from.
        teacher: method whose model is the frozen teacher (None: no teacher).
        steps: optimisation steps (full run).
        quick_steps: optimisation steps with ``--quick``.
        overrides: ``--set`` style overrides applied to the preset (both modes).
        description: one line for the report.
        init_from: method whose final weights initialise this one (a second training
            stage), or None (PFMM always warm-starts from its teacher).
    """

    name: str
    preset: str
    teacher: str | None
    steps: int
    quick_steps: int
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    init_from: str | None = None


# Shared overrides: a shorter, faster schedule than the presets' paper-style one
# (lr 1e-4 decayed by 0.992 per 1000 steps over 2e4 steps), to fit a 2-core CPU.
_FAST = {
    "batch_size": 128,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 100,
    "lr_min": 1e-5,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "log_every": 50,
    "ckpt_every": 500,
    "eval_every": -1,
}

METHODS: dict[str, MethodSpec] = {
    "teacher": MethodSpec(
        "teacher", "digits-velocity", None, 1500, 20, dict(_FAST), "SI velocity b_t (eq. 3.14)"
    ),
    "lmd": MethodSpec(
        "lmd", "digits-lmd", "teacher", 3000, 10, {**_FAST, "batch_size": 64},
        "Lagrangian map distillation (eq. 3.7)",
    ),
    "lmd_long": MethodSpec(
        "lmd_long", "digits-lmd", "teacher", 4000, 10, {"lr": 3e-4},
        "LMD continued from lmd with the preset's own schedule (batch 256, lr 3e-4 stepped, no clip)",
        init_from="lmd",
    ),
    "fmm4": MethodSpec(
        "fmm4", "digits-fmm4", None, 600, 10, {**_FAST, "batch_size": 64},
        "flow map matching, |t-s|<=1/4 (eq. 3.15)",
    ),
    "pfmm": MethodSpec(
        "pfmm", "digits-pfmm", "fmm4", 400, 10,
        {**_FAST, "batch_size": 64, "lr": 3e-4, "lr_warmup_steps": 0},
        "progressive FMM of fmm4 into one step (eq. 3.16)",
    ),
    "lsd": MethodSpec(
        "lsd", "digits-lsd", None, 1000, 10, {**_FAST, "batch_size": 64},
        "Lagrangian self-distillation (successors §2)",
    ),
    # issue 14: the few-step family at LMD's budget (not in the default set: --methods shortcut,meanflow)
    "shortcut": MethodSpec(
        "shortcut", "digits-shortcut", None, 3000, 10, {**_FAST, "batch_size": 64},
        "shortcut model: flow matching + dyadic self-consistency (K = 1, 2, ..., 64 only)",
    ),
    "meanflow": MethodSpec(
        "meanflow", "digits-meanflow", None, 3000, 10, {**_FAST, "batch_size": 64},
        "MeanFlow identity (Eulerian eq., stop-grad target, adaptive weight p = 1)",
    ),
    "meanflow_u0": MethodSpec(
        "meanflow_u0", "digits-meanflow", None, 3000, 10,
        {**_FAST, "batch_size": 64, "objective_hparams.time_kind": "uniform", "objective_hparams.adaptive_p": 0.0},
        "MeanFlow with uniform times and unit weight (p = 0): the checkerboard benchmark row's settings",
    ),
    "meanflow_uniform": MethodSpec(
        "meanflow_uniform", "digits-meanflow", None, 3000, 10,
        {**_FAST, "batch_size": 64, "objective_hparams.time_kind": "uniform"},
        "MeanFlow with uniform times (more long jumps than logit-normal), published weight p = 1",
    ),
}
"""The benchmark's models, in training order (teachers first)."""

FAMILY_METHODS = ("shortcut", "meanflow", "meanflow_u0", "meanflow_uniform")
"""Rows of issue 14, trained only when named in ``--methods``."""

DEFAULT_METHODS = tuple(m for m in METHODS if m not in FAMILY_METHODS)
"""The default ``--methods``."""


@dataclass
class BenchConfig:
    """Options of one benchmark run (see ``--help``)."""

    out: Path = RESULTS_DIR
    runs: Path = REPO_ROOT / "runs" / "digits"
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: tuple[int, ...] = DEFAULT_STEPS
    n: int = 2000
    seed: int = 0
    quick: bool = False
    rtol: float = 1e-5
    bundle: bool = False
    grid_samples: int = 16
    command: str = ""


@dataclass
class EvalRow:
    """Scores of one sampler (method x step count).

    Attributes:
        method: method name.
        sampler: ``"flow map"``, ``"euler"`` or ``"dopri5"``.
        steps: steps K (None for dopri5).
        nfe: network evaluations per sample (dopri5: mean over the batch).
        digits_fd: Frechet distance to the real train split.
        teacher_fd: Frechet distance to the teacher's dopri5 samples.
        entropy: class-coverage entropy (nats, max log 10 = 2.303).
        min_class_fraction: smallest predicted class frequency.
        mean_confidence: mean top softmax probability.
        sample_seconds: wall time to draw the ``n`` samples.
    """

    method: str
    sampler: str
    steps: int | None
    nfe: float
    digits_fd: float
    teacher_fd: float | None
    entropy: float
    min_class_fraction: float
    mean_confidence: float
    sample_seconds: float


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _method_config(spec: MethodSpec, runs: Path, quick: bool) -> Any:
    from anystep.training.config import apply_overrides
    from anystep.training.presets import get_preset

    cfg = get_preset(spec.preset)
    over = dict(spec.overrides)
    over["max_steps"] = spec.quick_steps if quick else spec.steps
    if quick:
        over.update(batch_size=16, lr_warmup_steps=0, ckpt_every=0, log_every=5)
    if spec.teacher is not None:
        over["teacher"] = str(runs / spec.teacher)
        if cfg.objective == "pfmm":  # PFMM warm-starts from its teacher (the trainer's default, made explicit)
            over["init_from"] = str(runs / spec.teacher)
    if spec.init_from is not None:
        over["init_from"] = str(runs / spec.init_from)
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in over.items()])


def train_method(spec: MethodSpec, runs: Path, quick: bool = False) -> dict[str, Any]:
    """Train ``spec`` into ``runs/<name>`` unless a finished run with the same config is there.

    An unfinished run with the same config is resumed (``max_steps`` may differ; the
    trainer allows it); a run with another config is an error (delete it or pick
    another ``--runs``).

    Returns:
        ``{"name", "reused", "steps", "final_loss", "train_seconds", "config"}``.
    """
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import TRAIN_CONFIG_NAME, Trainer

    cfg = _method_config(spec, runs, quick)
    out = runs / spec.name
    saved = out / TRAIN_CONFIG_NAME
    record: dict[str, Any] = {"name": spec.name, "config": cfg.to_dict()}
    if saved.is_file():
        old = TrainConfig.load(saved)
        old_d, new_d = old.to_dict(), cfg.to_dict()
        old_d.pop("max_steps"), new_d.pop("max_steps")
        if old_d != new_d:
            raise BenchError(
                f"{out} holds a run with other settings; delete it or pass another --runs folder"
            )
        finished = (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        if finished and old.max_steps != cfg.max_steps:
            raise BenchError(
                f"{out} holds a finished run of {old.max_steps} steps, not {cfg.max_steps}; delete it to retrain"
            )
        if finished:
            prov = json.loads((out / "config.json").read_text()).get("provenance", {})
            record.update(reused=True, steps=prov.get("steps"), final_loss=prov.get("final_loss"))
            record["train_seconds"] = _train_seconds(out)
            return record
        resume = True
    else:
        resume = False
    res = Trainer(cfg, out, resume=resume, eval_fn=None, progress=False).fit()
    record.update(reused=False, steps=res.steps, final_loss=res.final_loss)
    record["train_seconds"] = _train_seconds(out)
    return record


def _train_seconds(out: Path) -> float | None:
    from anystep.training.trainer import read_log

    try:
        rows = [r for r in read_log(out) if "time" in r]
    except (OSError, ValueError):  # pragma: no cover - unreadable log
        return None
    return float(rows[-1]["time"]) if rows else None


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def _row(method: str, sampler: str, steps: int | None, nfe: float, s: DigitsScores, sec: float) -> EvalRow:
    return EvalRow(
        method=method,
        sampler=sampler,
        steps=steps,
        nfe=float(nfe),
        digits_fd=s.digits_fd,
        teacher_fd=s.teacher_fd,
        entropy=s.coverage.entropy,
        min_class_fraction=s.coverage.min_fraction,
        mean_confidence=s.coverage.mean_confidence,
        sample_seconds=sec,
    )


def evaluate_teacher(
    model: torch.nn.Module,
    x0: Tensor,
    metric: DigitsMetric,
    *,
    euler_steps: tuple[int, ...] = TEACHER_EULER_STEPS,
    rtol: float = 1e-5,
) -> tuple[list[EvalRow], dict[str, Tensor]]:
    """Score a velocity model with dopri5 and Euler at each of ``euler_steps``.

    Args:
        model: velocity model ``b_t``.
        x0: ``[n, 1, 8, 8]`` base noise.
        metric: the digits metric.
        euler_steps: Euler step counts.
        rtol: dopri5 tolerance (``atol = rtol``).

    Returns:
        (rows, samples) where ``samples["dopri5"]`` is the Teacher-FD reference
        ``[n, 1, 8, 8]`` and ``samples["euler<K>"]`` the Euler samples.
    """
    from anystep.core.samplers import sample_ode

    t0 = time.perf_counter()
    ref = sample_ode(model, x0, solver="dopri5", rtol=rtol)
    sec = time.perf_counter() - t0
    samples = {"dopri5": ref.x}
    rows = [_row("teacher", "dopri5", None, ref.nfe, metric.score(ref.x, teacher=ref.x), sec)]
    for k in euler_steps:
        t0 = time.perf_counter()
        res = sample_ode(model, x0, solver="euler", steps=k)
        sec = time.perf_counter() - t0
        samples[f"euler{k}"] = res.x
        rows.append(_row("teacher", "euler", k, res.nfe, metric.score(res.x, teacher=ref.x), sec))
    return rows, samples


def evaluate_flowmap(
    method: str,
    model: torch.nn.Module,
    x0: Tensor,
    metric: DigitsMetric,
    steps: tuple[int, ...],
    teacher_samples: Tensor | None,
) -> tuple[list[EvalRow], dict[str, Tensor]]:
    """Score a flow map with ``K`` uniform steps for each ``K`` in ``steps``.

    Returns:
        (rows, samples) with ``samples["<K>"]`` of shape ``[n, 1, 8, 8]``.
    """
    from anystep.core.samplers import sample_flowmap

    rows, samples = [], {}
    for k in steps:
        t0 = time.perf_counter()
        res = sample_flowmap(model, x0, steps=k)
        sec = time.perf_counter() - t0
        samples[str(k)] = res.x
        rows.append(_row(method, "flow map", k, res.nfe, metric.score(res.x, teacher=teacher_samples), sec))
    return rows, samples


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def write_grid(path: Path, rows: list[tuple[str, Tensor]], per_row: int = 16, scale: int = 4) -> Path:
    """Write a labelled grid PNG: one row of ``per_row`` digits per ``(label, samples)``.

    Args:
        path: output file.
        rows: ``(label, [m, 1, 8, 8] samples in model units)``; the first ``per_row`` are drawn.
        per_row: digits per row.
        scale: pixel up-scaling.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise BenchError("write_grid needs at least one row of samples")
    tile, pad, label_w = 8 * scale, 2, 80
    width = label_w + per_row * (tile + pad) + pad
    height = len(rows) * (tile + pad) + pad
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, x) in enumerate(rows):
        y0 = pad + r * (tile + pad)
        draw.text((4, y0 + tile // 2 - 6), label, fill=0)
        imgs = ((x[:per_row, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        for i, im in enumerate(imgs):
            tile_img = Image.fromarray(255 - im, mode="L").resize((tile, tile), Image.NEAREST)
            canvas.paste(tile_img, (label_w + pad + i * (tile + pad), y0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if abs(v) < 0.5 * 10**-digits:
        v = 0.0  # FD of identical sets can come out as -1e-12
    return f"{v:.{digits}f}"


def render_markdown(result: dict[str, Any]) -> str:
    """Markdown report of a results dict (as written to ``digits.json``)."""
    lines = [
        "# Digits benchmark (8x8 scikit-learn digits)",
        "",
        f"- machine: {result['machine']['description']}",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        (
            f"- samples per row: {result['n']} (seeds {result['seed']}..{result['seed'] + result['n'] - 1}, "
            "same base noise for every method)"
        ),
        (
            f"- classifier: test accuracy {result['classifier']['test_accuracy']:.4f} on "
            f"{result['classifier']['n_test']} held-out digits (train split {result['classifier']['n_train']})"
        ),
        (
            f"- real-data floor: digits-FD(test split vs train split) = {result['floor']['test_vs_train_fd']:.3f} "
            f"(n = {result['floor']['n_test']}; smaller n inflates FD)"
        ),
        f"- Inception FID: {result['inception_fid']}",
        "",
        (
            "digits-FD: Frechet distance between classifier features of the real train split and of the samples. "
            "Teacher-FD: the same against the teacher's dopri5 samples (the paper's T-FID). "
            "Entropy: of the predicted class frequencies (max ln 10 = 2.303); min class: smallest class frequency."
        ),
        "",
        "| method | sampler | steps | NFE | digits-FD | Teacher-FD | entropy | min class | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['sampler']} | {r['steps'] if r['steps'] is not None else '–'} | "
            f"{r['nfe']:.0f} | {_fmt(r['digits_fd'])} | {_fmt(r['teacher_fd'])} | {r['entropy']:.3f} | "
            f"{r['min_class_fraction']:.3f} | {r['sample_seconds']:.2f} |"
        )
    goal = result.get("goal")
    if goal:
        lines += ["", "## Goal (issue: 1-step <= 1.5x, 4-step <= 1.2x the teacher's dopri5 digits-FD)", ""]
        lines.append(f"Teacher dopri5 digits-FD: {goal['teacher_dopri5_fd']:.3f}.")
        lines.append("")
        lines.append("| method | 1-step FD / teacher | 4-step FD / teacher | met |")
        lines.append("|---|---:|---:|---|")
        for m, g in goal["methods"].items():
            lines.append(
                f"| {m} | {_fmt(g.get('ratio_1'))} | {_fmt(g.get('ratio_4'))} | {'yes' if g.get('met') else 'no'} |"
            )
    lines += ["", "## Training", "", "| method | preset | steps | batch | lr | final loss | train time (s) | reused |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for t in result["training"]:
        c = t["config"]
        lines.append(
            f"| {t['name']} | {c.get('preset')} | {t.get('steps')} | {c['batch_size']} | {c['lr']:g} | "
            f"{_fmt(t.get('final_loss'), 4)} | {_fmt(t.get('train_seconds'), 0)} | {t.get('reused')} |"
        )
    lines += ["", f"Grids: {', '.join(result['grids'])} (rows: sampler and step count; 16 samples, same seeds).", ""]
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - non-Linux
        pass
    threads = torch.get_num_threads()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - non-Unix
        load = None
    return {
        "load_average_at_end": load,
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "description": (
            f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} with {threads} thread(s) (CPU)"
            + (f", load average {load[0]} (shared machine)" if load else "")
        ),
    }


def _goal(rows: list[EvalRow]) -> dict[str, Any]:
    ref = next((r.digits_fd for r in rows if r.method == "teacher" and r.sampler == "dopri5"), None)
    if ref is None:
        return {}
    out: dict[str, Any] = {"teacher_dopri5_fd": ref, "methods": {}}
    for m in dict.fromkeys(r.method for r in rows if r.sampler == "flow map"):
        by_k = {r.steps: r.digits_fd for r in rows if r.method == m and r.sampler == "flow map"}
        g: dict[str, Any] = {}
        if 1 in by_k:
            g["ratio_1"] = by_k[1] / ref
        if 4 in by_k:
            g["ratio_4"] = by_k[4] / ref
        g["met"] = bool(g.get("ratio_1", math.inf) <= 1.5 and g.get("ratio_4", math.inf) <= 1.2)
        out["methods"][m] = g
    return out


# --------------------------------------------------------------------------------------
# bundling
# --------------------------------------------------------------------------------------


def bundle_models(runs: Path, flowmap_method: str, models_dir: Path = MODELS_DIR) -> dict[str, str]:
    """Copy the teacher and one flow map into ``models/digits-teacher`` and ``models/digits``.

    Only ``config.json`` and ``model.safetensors`` are copied; run-local absolute paths in
    the provenance are replaced by the bundled names (the sha256 records stay).

    Returns:
        ``{"digits": ..., "digits-teacher": ...}`` paths.
    """
    out: dict[str, str] = {}
    for src_name, dst_name in ((flowmap_method, "digits"), ("teacher", "digits-teacher")):
        src = runs / src_name
        dst = models_dir / dst_name
        tmp = models_dir / f".{dst_name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shutil.copy2(src / "model.safetensors", tmp / "model.safetensors")
        cfg = json.loads((src / "config.json").read_text())
        prov = cfg.get("provenance", {})
        for key in ("teacher", "init_from"):
            if prov.get(key):
                prov[key] = f"benchmark run '{Path(prov[key]).name}'"
        prov["bundled_from"] = f"anystep.benchmarks.digits method '{src_name}'"
        tc = prov.get("train_config", {})
        for key in ("teacher", "init_from"):
            if tc.get(key):
                tc[key] = f"runs/digits/{Path(tc[key]).name}"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        try:
            out[dst_name] = str(dst.relative_to(REPO_ROOT))
        except ValueError:
            out[dst_name] = str(dst)
    return out


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated integers, e.g. 1,2,4,8; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"step counts must be integers >= 1, got {text!r}")
    return vals


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
    parser.add_argument("--steps", type=_int_list, default=DEFAULT_STEPS, help="flow-map step counts (default 1,2,4,8)")
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
