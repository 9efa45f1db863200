"""Evaluation during training: the hook type, the default 2D evaluation, running and logging it.

An evaluation hook is ``fn(ema_model, step) -> {metric: value}``; the trainer calls it on
the EMA model every ``eval_every`` steps and at the end, and logs ``{"step", "eval"}``
rows to ``train_log.jsonl``. Its randomness never touches the training streams.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from anystep.training.config import TrainConfig
from anystep.training.rundir import append_jsonl
from anystep.training.streams import derive_seed, seeded_generator

__all__ = ["EvalFn", "default_eval_fn", "run_eval"]

EvalFn = Callable[[nn.Module, int], dict[str, float]]
"""An evaluation hook: ``fn(ema_model, step) -> {metric: value}`` (model in eval mode)."""


def default_eval_fn(config: TrainConfig, device: torch.device | str = "cpu") -> EvalFn | None:
    """The evaluation used when none is given: 2D KL divergences (paper Table 3).

    For 2D data: flow maps report ``kl_1step``, ``kl_2step``, ``kl_4step`` (``X_{0,1}``
    iterated on the uniform grid); velocity models report ``kl_heun16`` (Heun, 16 steps,
    32 NFE, a cheap solver). The target is the exact checkerboard density or, for other
    2D sets, ``eval_samples`` data samples. Noise and targets come from a generator seeded
    by ``derive_seed(seed, "eval")``, so training randomness is untouched. Other data:
    None (no default evaluation).
    """
    if tuple(config.model.data_shape) != (2,):
        return None
    from anystep.core import data as data_mod

    try:
        from anystep.core.metrics import kl_divergence_2d
    except ImportError:  # pragma: no cover - metrics not available
        return None
    from anystep.core.samplers import sample_flowmap, sample_ode

    n = int(config.eval_samples)
    g = seeded_generator(derive_seed(config.seed, "eval"))
    x0 = data_mod.base_sample(config.base, (2,), n, g)
    density = None
    target = None
    if config.dataset == "checkerboard":
        density = data_mod.checkerboard_density
    else:
        target = data_mod.get_dataset(config.dataset, **config.dataset_kwargs).sample(n, g).numpy()
    dev = torch.device(device)

    def kl(samples: Tensor) -> float:
        pts = samples.detach().float().cpu().numpy()
        return float(kl_divergence_2d(target, pts, target_density=density))

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        x = x0.to(dev)
        with torch.no_grad():
            if getattr(model, "kind", None) == "flowmap":
                return {f"kl_{k}step": kl(sample_flowmap(model, x, steps=k).x) for k in (1, 2, 4)}
            return {"kl_heun16": kl(sample_ode(model, x, solver="heun", steps=16).x)}

    return evaluate


def run_eval(eval_fn: EvalFn, model: nn.Module, step: int, log_path: Path | None) -> dict[str, float]:
    """Run ``eval_fn(model, step)`` without gradients; append its row to ``log_path`` (if any).

    Returns:
        ``{metric: float}``.
    """
    with torch.no_grad():
        result = {k: float(v) for k, v in eval_fn(model, step).items()}
    if log_path is not None:
        append_jsonl(log_path, {"step": step, "eval": result})
    return result
