"""Class-conditional training: labels with dropout to the null class and guidance scales.

The labels ``y`` come with the batch; ``label_dropout`` replaces a fraction by the null
class ``∅``; distillation of a conditional map draws a guidance scale ``w`` per example
from ``[guidance_min, guidance_max]`` (:data:`COND_DEFAULTS`), and its teacher is the
classifier-free-guided velocity ``b^w_t(x; y) = b_t(x; ∅) + w (b_t(x; y) - b_t(x; ∅))``
(:func:`anystep.training.teacher.teacher_target`), so one evaluation of the trained map
gives the guided sample at any ``w`` in that range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from anystep.training.base import Batch
from anystep.training.flow_objective import ObjectiveError

__all__ = ["COND_DEFAULTS", "Condition", "conditioning_of", "draw_condition"]

# Conditioning hyper-parameters of the distillation objectives (ignored by unconditional models).
COND_DEFAULTS: dict[str, Any] = {
    "guidance_min": 1.0,  # w ~ U[guidance_min, guidance_max] per example (maps with a w input)
    "guidance_max": 4.0,
    "label_dropout": 0.0,  # fraction of examples trained on the null class
}



def conditioning_of(model: nn.Module | None) -> tuple[int, bool]:
    """``(num_classes, guidance_input)`` of a model's backbone (``(0, False)`` if unconditional)."""
    backbone = getattr(model, "backbone", None)
    return int(getattr(backbone, "num_classes", 0) or 0), bool(getattr(backbone, "guidance_input", False))


@dataclass
class Condition:
    """The conditioning of one training batch.

    Attributes:
        y: ``[B]`` labels given to the model (the null class ``num_classes`` where dropped),
            or None for an unconditional model.
        w: ``[B]`` guidance scales given to the model (None if it takes none).
        w_teacher: ``[B]`` guidance scales of the guided teacher (None: unguided).
        null_class: index of ``∅``.
    """

    y: Tensor | None = None
    w: Tensor | None = None
    w_teacher: Tensor | None = None
    null_class: int = 0

    def kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for ``model(x, s, t, **kwargs)``."""
        out = {}
        if self.y is not None:
            out["y"] = self.y
        if self.w is not None:
            out["w"] = self.w
        return out


def draw_condition(
    model: nn.Module, batch: Batch, generator: torch.Generator, hparams: dict[str, Any], guided: bool
) -> Condition:
    """Labels (with dropout to ``∅``) and guidance scales for one batch.

    Args:
        model: the model being trained.
        batch: the batch (``batch.y`` holds the labels of a conditional model).
        generator: randomness of the dropout and of ``w``.
        hparams: the objective's hyper-parameters (``label_dropout``; for ``guided``
            also ``guidance_min``, ``guidance_max``).
        guided: draw teacher guidance scales (distillation of a conditional map).

    Returns:
        The :class:`Condition`; empty for an unconditional model.

    Raises:
        ObjectiveError: a conditional model without labels, a conditional map without a
            ``w`` input asked to learn a range of scales, or a bad range.
    """
    k, takes_w = conditioning_of(model)
    if k == 0:
        return Condition()
    if batch.y is None:
        raise ObjectiveError(
            f"the model is class-conditional (num_classes={k}) but the batch has no labels; "
            "train on a labelled data set (the trainer passes batch.y)"
        )
    n = batch.y.shape[0]
    y = batch.y
    p = float(hparams.get("label_dropout", 0.0))
    if not 0.0 <= p <= 1.0:
        raise ObjectiveError(f"label_dropout={p} must be in [0, 1]")
    if p > 0:
        drop = torch.rand(n, generator=generator).to(y.device) < p
        y = torch.where(drop, torch.full_like(y, k), y)
    cond = Condition(y=y, null_class=k)
    if guided:
        lo, hi = float(hparams["guidance_min"]), float(hparams["guidance_max"])
        if not lo <= hi:
            raise ObjectiveError(f"guidance_min={lo} must be <= guidance_max={hi}")
        if not takes_w and lo != hi:
            raise ObjectiveError(
                f"the map has no guidance input w but guidance range [{lo}, {hi}] was asked for; set "
                "model.guidance_input=true, or guidance_min = guidance_max for one fixed scale"
            )
        w = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float32)
        w = w.to(device=batch.x0.device, dtype=batch.x0.dtype)
        cond.w_teacher = w
        cond.w = w if takes_w else None
    return cond

