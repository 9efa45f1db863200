"""The run directory of a training: its files, its log, the resume check, the model it leaves.

``Trainer(config, out_dir).fit()`` (:mod:`anystep.training.trainer`) fills ``out_dir`` with

* ``train_config.json`` (:data:`TRAIN_CONFIG_NAME`): the (resolved) training config;
* ``train_log.jsonl`` (:data:`LOG_NAME`): one JSON object per log step (``step``, ``loss``,
  the objective's metrics, ``lr``, ``time``, ``steps_per_s``) and per evaluation
  (``"eval": {...}``);
* ``checkpoint/``: the latest checkpoint (:mod:`anystep.training.checkpoint`);
* once ``max_steps`` is reached, a model directory: ``config.json`` + ``model.safetensors``
  with the EMA weights (:func:`write_model_dir`), loadable with
  :func:`anystep.core.modeldir.load_model_dir`.

This module owns that layout: :func:`check_run_dir` refuses to train over another run (or
to resume a different one), :func:`truncate_log` drops log rows after the step a run
resumes from, and :func:`write_model_dir` writes the final model with its provenance.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anystep.core.config import ConfigError, ModelConfig
from anystep.training.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    atomic_write_text,
    find_checkpoint,
)
from anystep.training.config import TrainConfig, trained_time_region

if TYPE_CHECKING:
    from anystep.training.rounds import Round

__all__ = [
    "LOG_NAME",
    "RESUME_MUTABLE",
    "TRAIN_CONFIG_NAME",
    "append_jsonl",
    "check_run_dir",
    "read_log",
    "truncate_log",
    "write_model_dir",
]

LOG_NAME = "train_log.jsonl"
TRAIN_CONFIG_NAME = "train_config.json"
# Fields that may change when a run is resumed (they do not change the optimisation).
RESUME_MUTABLE = ("max_steps", "log_every", "ckpt_every", "eval_every", "eval_samples", "device")


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Parsed lines of ``out_dir/train_log.jsonl`` (an unreadable trailing line is skipped)."""
    p = Path(out_dir) / LOG_NAME
    rows = []
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_log(out_dir: Path, step: int) -> None:
    """Keep only the log rows up to ``step`` (atomically), so a resumed run logs each step once."""
    p = out_dir / LOG_NAME
    if not p.exists():
        return
    kept = [json.dumps(row) for row in read_log(out_dir) if int(row.get("step", 0)) <= step]
    atomic_write_text(p, "".join(line + "\n" for line in kept))


def check_run_dir(out: Path, config: TrainConfig, resume: bool) -> bool:
    """Check that ``out`` may receive this run, before anything is written.

    Args:
        out: the run directory.
        config: the run's (resolved) training config.
        resume: whether the run continues the one in ``out``.

    Returns:
        True when ``resume`` finds a run killed after ``train_config.json`` but before its
        first checkpoint: there is nothing to continue, so the same run starts again at
        step 0 (its partial log is removed). False otherwise.

    Raises:
        CheckpointError: ``resume`` without a run to resume, or with a config that differs
            from the saved one in more than :data:`RESUME_MUTABLE`.
        ConfigError: a fresh run into a directory that already holds one.
    """
    if resume:
        from_start = False
        if find_checkpoint(out) is None:
            if not (out / TRAIN_CONFIG_NAME).is_file() or (out / "config.json").exists():
                raise CheckpointError(f"{out} has no checkpoint to resume from; run without --resume to start it")
            # killed after train_config.json, before the first checkpoint: nothing to
            # continue, so --resume starts the same run again at step 0
            from_start = True
            (out / LOG_NAME).unlink(missing_ok=True)
        saved_path = out / TRAIN_CONFIG_NAME
        if not saved_path.is_file():
            raise CheckpointError(f"{out} has a checkpoint but no {TRAIN_CONFIG_NAME}; cannot check the config")
        saved = TrainConfig.load(saved_path).to_dict()
        now = config.to_dict()
        diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_MUTABLE and saved.get(k) != now.get(k))
        if diff:
            raise CheckpointError(
                f"the config differs from the run in {out} in {diff}; resume with the same settings "
                f"(only {list(RESUME_MUTABLE)} may change)"
            )
        return from_start
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    taken = [n for n in (CHECKPOINT_DIR, LOG_NAME, TRAIN_CONFIG_NAME, "config.json") if (out / n).exists()]
    if taken:
        raise ConfigError(
            f"{out} already holds a training run ({', '.join(taken)}); pass --resume to continue it, "
            "--restart to discard it and start again, or choose another --out"
        )
    return False


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        anystep_version = version("anystep")
    except PackageNotFoundError:  # pragma: no cover - not installed as a distribution
        anystep_version = "unknown"
    return {"anystep_version": anystep_version, "torch_version": torch.__version__}


def write_model_dir(
    out_dir: Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    step: int,
    last_loss: float | None,
    last_eval: dict,
    world_size: int,
    rounds: Sequence[Round],
    build_objective: Callable[[Round], Any],
    units: dict[str, Any],
) -> None:
    """Write ``config.json`` + ``model.safetensors`` (the EMA weights) into ``out_dir``.

    The model config records the provenance (preset, objective, steps, seed, data, teacher
    and warm start with their SHA-256, their paths relative to the working directory
    (:func:`anystep.core.paths.recorded_path`), the last evaluation, the training config, versions,
    the progressive rounds), the ``time_region`` every round's objective trained (whether
    ``X_{1,0}`` may be used), the final objective's ``supported_steps`` and the data set's
    ``units``. Each file is replaced atomically, ``config.json`` last.

    Args:
        out_dir: the run directory.
        model: the module to save (the EMA model).
        config: the run's training config.
        step: optimisation steps done.
        last_loss: loss of the last step, or None.
        last_eval: metrics of the last evaluation (may be empty).
        world_size: number of training processes.
        rounds: the run's rounds (:func:`anystep.training.rounds.plan_rounds`).
        build_objective: builds the objective of a round.
        units: the training set's ``Dataset.units.to_dict()`` (so serving needs no data set).
    """
    from anystep.core.modeldir import (
        CONFIG_NAME,
        WEIGHTS_NAME,
        model_dir_sha256,
        save_model_dir,
    )
    from anystep.core.paths import recorded_path

    cfg = config
    train_dict = cfg.to_dict()
    train_dict["model"].pop("provenance", None)
    provenance: dict[str, Any] = dict(cfg.model.provenance)
    provenance.update(
        {
            "preset": cfg.preset,
            "objective": cfg.objective,
            "objective_hparams": dict(cfg.objective_hparams),
            "steps": step,
            "final_loss": last_loss,
            "seed": cfg.seed,
            "dataset": cfg.dataset,
            "base": cfg.base,
            "world_size": world_size,
            "teacher": None if cfg.teacher is None else recorded_path(cfg.teacher),
            "teacher_sha256": None if cfg.teacher is None else model_dir_sha256(cfg.teacher),
            "init_from": None if cfg.init_from is None else recorded_path(cfg.init_from),
            "init_from_sha256": None if cfg.init_from is None else model_dir_sha256(cfg.init_from),
            "eval": last_eval,
            "train_config": train_dict,
            "weights": "ema",
            **_versions(),
        }
    )
    if len(rounds) > 1:
        provenance["progressive_rounds"] = [
            {"round": r.index, "steps": [r.start, r.end], "objective_hparams": r.hparams} for r in rounds
        ]
    # the (s, t) region every round sampled decides whether X_{1,0} may be used
    regions = {trained_time_region(build_objective(r)) for r in rounds}
    time_region = "both" if regions == {"both"} else "forward"
    # the step counts the final objective trained (shortcut: dyadic; cd/ct/operator: 1; pd: N)
    final = build_objective(rounds[-1])
    steps_fn = getattr(final, "supported_steps", None) if cfg.model.kind == "flowmap" else None
    supported = None if steps_fn is None else steps_fn()
    model_cfg = ModelConfig.from_dict({
        **cfg.model.to_dict(), "provenance": provenance, "time_region": time_region,
        "supported_steps": None if supported is None else list(supported),
        # the data set's own units (e.g. npz uint8: levels 0..255), so serving needs no data set
        "units": units,
    })
    tmp = out_dir / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_dir(tmp, model, model_cfg)
    try:
        # each file is replaced atomically; config.json last, so it never precedes its weights
        os.replace(tmp / WEIGHTS_NAME, out_dir / WEIGHTS_NAME)
        os.replace(tmp / CONFIG_NAME, out_dir / CONFIG_NAME)
        mask = os.umask(0)
        os.umask(mask)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.chmod(out_dir / name, 0o666 & ~mask)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
