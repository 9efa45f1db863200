"""Outputs of the digits benchmark: sample grids (:func:`write_grid`) and the Markdown report.

:func:`render_markdown` turns the results dict written to ``digits.json`` into
``digits.md``; ``_goal`` computes the issue's goal ratios (1-step and 4-step digits-FD
over the teacher's dopri5 digits-FD) and ``_machine`` the machine record.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anystep.benchmarks.common import _cpu_model, load_average
from anystep.benchmarks.digits_eval import EvalRow
from anystep.benchmarks.digits_methods import BenchError

__all__ = ["render_markdown", "write_grid"]


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
    cpu = _cpu_model()
    threads = torch.get_num_threads()
    load = load_average()
    return {
        "load_average_at_end": load,
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
