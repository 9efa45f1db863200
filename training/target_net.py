"""A stop-gradient target network: an EMA of the online weights, updated once per step, checkpointed.

Bootstrapped objectives regress the online map onto a target built from a copy of itself:
consistency models (``cd`` / ``ct``, Song et al. 2023: decay 0.95 for CD, 0 for iCT) and
shortcut models (Frans et al. 2024: the self-consistency target from the EMA weights, decay
0.999, ``bootstrap_ema``). :class:`TargetNetwork` is that copy, in one place: with decay 0 it
is the online model itself (the target is then only under ``torch.no_grad``); otherwise an
:class:`~anystep.training.ema.EMA` (no warm-up) that starts as the weights at its first use
and is updated once per optimisation step, before the step's loss. Its state goes into the
trainer's checkpoint through the objective (weights ``target.<name>`` in
``objective.safetensors``, the rest in ``state.json``), so a resumed run continues with the
same target.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anystep.errors import one_line
from anystep.training.ema import EMA
from anystep.training.flow_objective import ObjectiveError

__all__ = ["TargetNetwork"]


class TargetNetwork:
    """The EMA target ``X⁻`` of an objective (module docstring).

    Args:
        owner: the objective's name (for error messages).
        decay: EMA decay in ``[0, 1)``; 0 means the online weights.
    """

    def __init__(self, owner: str, decay: float) -> None:
        self.owner = owner
        self.decay = float(decay)
        self._ema: EMA | None = None
        self._step: int | None = None
        self._pending: dict[str, Any] | None = None  # a checkpointed target, restored on first use

    def get(self, model: nn.Module, step: int) -> nn.Module:
        """``X⁻`` for optimisation step ``step``: updated from ``model`` once per step; ``model`` if decay is 0."""
        if self.decay == 0.0:
            return model
        if self._ema is None:
            self._ema = EMA(model, self.decay, warmup=False)
            if self._pending is None:
                self._step = step  # the target starts as the current weights
                return self._ema.module
            self._restore(self._pending)
            self._pending = None
        if step != self._step:
            self._ema.update(model)
            self._step = step
        return self._ema.module

    def state_dict(self) -> dict[str, Any]:
        """``{"ema_step", "ema_updates", "tensors"}`` (weights as ``target.<name>``); ``{}`` if none yet."""
        if self._ema is None:
            return dict(self._pending) if self._pending else {}
        return {
            "ema_step": self._step,
            "ema_updates": self._ema.num_updates,
            "tensors": {f"target.{k}": v for k, v in self._ema.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``{}``: no target yet, it starts from the weights at first use).

        Raises:
            ObjectiveError: the checkpointed target is incomplete or does not fit the model.
        """
        if not state or self.decay == 0.0:
            return  # nothing saved, or the target is the online network: nothing to restore
        if not isinstance(state.get("tensors"), dict) or not isinstance(state.get("ema_step"), int):
            raise ObjectiveError(
                f"{self.owner}: the checkpoint's target network is incomplete (objective.safetensors or "
                "ema_step missing); restart with --restart"
            )
        self._pending = dict(state)
        if self._ema is not None:
            self._restore(self._pending)
            self._pending = None

    def _restore(self, state: dict[str, Any]) -> None:
        weights = {k.removeprefix("target."): v for k, v in state["tensors"].items()}
        try:
            self._ema.load_state_dict(weights, int(state.get("ema_updates", 0)))
        except (RuntimeError, KeyError) as e:
            raise ObjectiveError(
                f"{self.owner}: the checkpoint's target network does not fit this model "
                f"({one_line(e, 160)}); restart with --restart"
            ) from None
        self._step = int(state["ema_step"])
