"""Learning-rate schedules of a training run (:func:`learning_rate`, ``step`` counts completed updates).

* ``"constant"``: ``lr``.
* ``"step"`` (the paper's, Table 4: "LR decay (every 1k epochs) 0.992"; with an
  infinite stream of samples we read "epoch" as "optimisation step"):
  ``lr * lr_decay_rate ** floor(max(0, step - lr_decay_start) / lr_decay_every)``.
* ``"linear"``: ``lr`` until ``lr_decay_start``, then linear down to ``lr_min`` at
  ``max_steps``.
* ``"cosine"``: ``lr`` until ``lr_decay_start``, then half a cosine down to ``lr_min``
  at ``max_steps``.

All schedules are multiplied by a linear warm-up ``(step + 1) / lr_warmup_steps``
during the first ``lr_warmup_steps`` steps (0 disables it). The schedule is a pure
function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math

from anystep.training.train_config import TrainConfig

__all__ = ["learning_rate"]


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate used for the update that follows ``step`` completed updates.

    See the module docstring for the schedules.
    """
    lr = float(config.lr)
    sched = config.lr_schedule
    if sched == "step":
        k = max(0, step - config.lr_decay_start) // config.lr_decay_every
        lr = lr * config.lr_decay_rate**k
    elif sched in ("linear", "cosine"):
        span = max(1, config.max_steps - config.lr_decay_start)
        frac = min(1.0, max(0.0, (step - config.lr_decay_start) / span))
        shape = frac if sched == "linear" else 0.5 * (1.0 - math.cos(math.pi * frac))
        lr = lr + (config.lr_min - lr) * shape
    if config.lr_warmup_steps > 0 and step < config.lr_warmup_steps:
        lr = lr * (step + 1) / config.lr_warmup_steps
    return lr
