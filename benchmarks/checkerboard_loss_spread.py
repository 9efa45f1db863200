"""Batch-to-batch spread of a run's training loss at its final weights.

Is a late rise in a ``train_log.jsonl`` divergence or the noise of a single-sample loss?
This re-runs the run's own config for ``--batches`` steps with the learning rate at 1e-12
(the weights do not move), starting from the run's final weights, and prints the spread of
the logged loss and gradient norm::

    python -m anystep.benchmarks.checkerboard_loss_spread runs/checkerboard/ee --batches 60

A logged value inside this spread is not evidence of divergence; a growing loss over many
steps at the run's learning rate is (see the ``ee_long`` row of the benchmark).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["loss_spread", "main"]


def loss_spread(run_dir: Path, batches: int = 60) -> dict[str, float]:
    """Loss / gradient-norm statistics of ``batches`` steps at the final weights of ``run_dir``.

    Args:
        run_dir: a finished run (``train_config.json`` and the model directory files).
        batches: number of batches (training steps at lr 1e-12), >= 2.

    Returns:
        ``{"n", "loss_mean", "loss_sd", "loss_min", "loss_p90", "loss_max", "grad_median",
        "grad_p90", "grad_max"}``.
    """
    from anystep.training.config import TrainConfig, apply_overrides
    from anystep.training.trainer import TRAIN_CONFIG_NAME, Trainer, read_log

    if batches < 2:
        raise ValueError(f"--batches must be >= 2, got {batches}")
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir}: no finished model (model.safetensors); train the run first")
    cfg = TrainConfig.load(run_dir / TRAIN_CONFIG_NAME)
    cfg = apply_overrides(cfg, [f"max_steps={batches}", "lr=1e-12", "lr_min=0", "lr_warmup_steps=0", "log_every=1",
                                f"ckpt_every={batches + 1}", "ema_decay=0.0", "eval_every=-1"])
    cfg = cfg.replace(init_from=str(run_dir))
    tmp = Path(tempfile.mkdtemp(prefix="loss_spread_"))
    try:
        Trainer(cfg, tmp / "run", resume=False, eval_fn=None, progress=False).fit()
        rows = [r for r in read_log(tmp / "run") if "loss" in r]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loss = sorted(float(r["loss"]) for r in rows)
    grad = sorted(float(r["grad_norm"]) for r in rows if "grad_norm" in r)

    def q(v: list[float], p: float) -> float:
        return v[int(p * (len(v) - 1))] if v else float("nan")

    return {"n": len(loss), "loss_mean": statistics.mean(loss), "loss_sd": statistics.stdev(loss),
            "loss_min": loss[0], "loss_p90": q(loss, 0.9), "loss_max": loss[-1],
            "grad_median": statistics.median(grad) if grad else float("nan"), "grad_p90": q(grad, 0.9),
            "grad_max": grad[-1] if grad else float("nan")}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; prints one JSON line per run directory (exit 2 on bad input)."""
    import torch

    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.checkerboard_loss_spread",
                                description="Spread of a run's training loss over batches at its final weights.")
    p.add_argument("run_dirs", nargs="+", help="finished run directories (e.g. runs/checkerboard/ee)")
    p.add_argument("--batches", type=int, default=60, help="batches to score (default 60)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for d in args.run_dirs:
        try:
            res = loss_spread(Path(d), args.batches)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({"run": d, **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
