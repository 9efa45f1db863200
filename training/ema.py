"""Exponential moving average (EMA) of model weights; samples are drawn from the EMA.

``theta_ema <- d * theta_ema + (1 - d) * theta`` after every optimisation step, with the
warm-up ``d = min(decay, (1 + n) / (10 + n))`` (``n`` = number of updates so far) so the
average is not dominated by the random initialisation early in training. Buffers are
copied, not averaged. ``decay = 0`` makes the EMA equal to the weights.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """EMA of a module's parameters.

    Args:
        model: the module being trained (its current weights start the average).
        decay: target decay ``d`` in ``[0, 1)``.
        warmup: use the warm-up ``min(decay, (1 + n) / (10 + n))``.

    Attributes:
        module: a frozen copy of ``model`` holding the averaged weights (eval mode).
        num_updates: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        """Decay that the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            if d == 0.0:
                e.copy_(p.detach())
            else:
                e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (a model ``state_dict``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        """Restore averaged weights and the update count."""
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)

    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        model.load_state_dict(self.module.state_dict())
