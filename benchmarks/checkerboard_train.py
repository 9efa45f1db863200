"""Checkerboard benchmark: training configs and run directories (reuse / resume / two at a time)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import BenchmarkError, MethodSpec, Settings
from anystep.benchmarks.common import fmt, load_average

__all__ = ["TrainRecord", "build_train_config", "train_one"]


def build_train_config(spec: MethodSpec, settings: Settings, work_dir: Path, *, width: int | None = None,
                       depth: int | None = None):
    """The :class:`~anystep.training.config.TrainConfig` of one method.

    Starts from the method's preset (paper architecture and objective settings) and
    overrides the budget shared by all methods: network size, steps, batch size, Adam
    with linear warm-up and cosine decay from ``lr`` to ``lr_min``, EMA, gradient clip,
    seed; no periodic evaluation (this benchmark evaluates at the end), a checkpoint
    every 1000 steps (so interrupted runs resume).

    Args:
        spec: the method.
        settings: the shared budget.
        work_dir: folder of the run directories (teachers are ``work_dir/<key>``).
        width, depth: override the network size (teacher-size comparison).

    Returns:
        The TrainConfig.
    """
    from anystep.training.config import apply_overrides
    from anystep.training.presets import get_preset

    cfg = get_preset(spec.preset)
    sets = [
        f"model.backbone.width={width or settings.width}",
        f"model.backbone.depth={depth or settings.depth}",
        f"max_steps={settings.steps}",
        f"batch_size={settings.batch_size}",
        f"lr={settings.lr}",
        "lr_schedule=cosine",
        f"lr_min={settings.lr_min}",
        "lr_decay_start=0",
        f"lr_warmup_steps={min(settings.lr_warmup_steps, settings.steps - 1)}",
        f"ema_decay={settings.ema_decay}",
        f"grad_clip={json.dumps(settings.grad_clip)}",
        f"seed={settings.seed}",
        "eval_every=-1",
        f"ckpt_every={min(1000, settings.steps)}",
        f"log_every={max(1, min(100, settings.steps // 10))}",
        "device=cpu",
    ]
    if spec.objective is not None:
        sets.append(f"objective={spec.objective}")
    for k, v in spec.hparams.items():
        sets.append(f"objective_hparams.{k}={json.dumps(v)}")
    cfg = apply_overrides(cfg, sets)
    changes: dict[str, Any] = {}
    if spec.teacher is not None:
        changes["teacher"] = str(work_dir / spec.teacher)
    if spec.init_from is not None:
        changes["init_from"] = str(work_dir / spec.init_from)
    if spec.objective is not None:
        changes["preset"] = f"{spec.preset} (objective={spec.objective})"
    return cfg.replace(**changes) if changes else cfg


@dataclass
class TrainRecord:
    """How one model was trained.

    Attributes:
        key: method key (or ``si_WxD`` for the size comparison).
        run_dir: its run/model directory.
        objective: objective name.
        preset: preset name recorded in the model's provenance.
        steps: optimisation steps.
        seconds: training wall time (from the run's log when reused).
        ms_per_step: ``1000 * seconds / steps``.
        final_loss: last logged loss.
        reused: True when a finished run with the identical config was found.
        resumed_from: checkpoint step it resumed from, or None.
        load_avg: 1-minute load average when training ended (other processes share the CPU).
        params: number of parameters.
    """

    key: str
    run_dir: str
    objective: str
    preset: str | None
    steps: int
    seconds: float
    ms_per_step: float
    final_loss: float | None
    reused: bool
    resumed_from: int | None
    load_avg: float | None
    params: int




def train_one(key: str, cfg, run_dir: Path, *, fresh: bool, progress: bool, log) -> TrainRecord:
    """Train (or reuse / resume) one run directory.

    Args:
        key: method key.
        cfg: its TrainConfig.
        run_dir: run directory.
        fresh: delete an existing run directory first.
        progress: tqdm progress bar.
        log: ``log(str)`` for one-line status messages.

    Returns:
        :class:`TrainRecord`.

    Raises:
        BenchmarkError: the directory holds a run of another config (and not ``fresh``).
    """
    from anystep.core.modeldir import load_model_dir
    from anystep.training.checkpoint import find_checkpoint
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import TRAIN_CONFIG_NAME, Trainer, read_log

    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    saved_cfg = run_dir / TRAIN_CONFIG_NAME
    reused = False
    resume = False
    if saved_cfg.is_file():
        same = TrainConfig.load(saved_cfg).to_dict() == cfg.to_dict()
        if not same:
            raise BenchmarkError(
                f"{run_dir} holds a run with a different config; pass --retrain {key} (or --fresh) to "
                "retrain it, or choose another --work-dir"
            )
        if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
            reused = True
        elif find_checkpoint(run_dir) is not None:
            resume = True
        else:
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise BenchmarkError(f"{run_dir} exists and is not a benchmark run; remove it or pass --fresh")

    resumed_from = None
    if reused:
        log(f"[{key}] reusing the finished run in {run_dir}")
    else:
        log(f"[{key}] training {cfg.objective} for {cfg.max_steps} steps -> {run_dir}"
            + (" (resuming)" if resume else ""))
        res = Trainer(cfg, run_dir, resume=resume, eval_fn=None, progress=progress).fit()
        resumed_from = res.resumed_from
    rows = [r for r in read_log(run_dir) if "loss" in r]
    seconds = float(rows[-1]["time"]) if rows else float("nan")
    final_loss = float(rows[-1]["loss"]) if rows else None
    model = load_model_dir(run_dir).model
    rec = TrainRecord(
        key=key,
        run_dir=str(run_dir),
        objective=cfg.objective,
        preset=cfg.preset,
        steps=int(cfg.max_steps),
        seconds=seconds,
        ms_per_step=1000.0 * seconds / max(1, cfg.max_steps),
        final_loss=final_loss,
        reused=reused,
        resumed_from=resumed_from,
        load_avg=(load_average() or [None])[0],
        params=int(sum(p.numel() for p in model.parameters())),
    )
    log(f"[{key}] done: {rec.seconds:.0f} s ({rec.ms_per_step:.1f} ms/step), final loss {fmt(final_loss)}")
    return rec

