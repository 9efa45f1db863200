"""Training (or reusing) one model of the digits benchmark: :func:`train_method`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anystep.benchmarks.digits_methods import BenchError, MethodSpec

__all__ = ["train_method"]


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
