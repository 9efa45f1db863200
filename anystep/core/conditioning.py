"""Request-level conditioning: which class and guidance scale each sample gets, validated once.

Used by the CLI (``anystep sample --class --guidance``), the Python API and the server, so a
class label or a guidance scale means the same thing everywhere:

* ``classes``: None (default) draws "any class" per sample from that sample's seed
  (:func:`classes_from_seeds`: a pure function of the seed, so the same seed gives the same
  class in any batch), an int for every sample, or one int per sample. Labels are
  ``0..num_classes-1``; the null class is not requested this way.
* ``guidance``: the scale ``w`` of classifier-free guidance
  ``b^w = b(x, ∅) + w (b(x, y) - b(x, ∅))``; a number or one per sample. Default
  :data:`DEFAULT_GUIDANCE` (``w = 1``: the conditional model without extra guidance). A flow
  map with a guidance input takes ``w`` as an input (one evaluation per step) and accepts
  only the range it was distilled on; a conditional velocity model is guided by running
  it twice per evaluation (:class:`~anystep.core.flowmap.GuidedVelocity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anystep.errors import AnystepError

from .config import ModelConfig
from .flowmap import Conditioned, GuidedVelocity

__all__ = [
    "DEFAULT_GUIDANCE",
    "Conditioning",
    "ConditioningError",
    "bind_conditioning",
    "classes_from_seeds",
    "guidance_range",
    "resolve_conditioning",
]

DEFAULT_GUIDANCE = 1.0
_CLASS_KEY = 0x5DEECE66D  # separates the class stream from the base-noise stream of a seed


class ConditioningError(AnystepError):
    """A class label or guidance scale that the model cannot take; the message says what is allowed."""


@dataclass
class Conditioning:
    """Per-sample conditioning of one request.

    Attributes:
        y: ``[n]`` int64 labels (None for unconditional models).
        w: ``[n]`` float32 guidance scales (None when not guided).
        guided_teacher: a velocity model guided by two evaluations per step.
    """

    y: Tensor | None = None
    w: Tensor | None = None
    guided_teacher: bool = False

    @property
    def nfe_per_call(self) -> int:
        """Network evaluations per model call (2 for a guided velocity model)."""
        return 2 if self.guided_teacher else 1


def classes_from_seeds(seeds: Sequence[int], num_classes: int) -> Tensor:
    """"Any class" for each sample: a uniform class that is a pure function of the sample's seed.

    Args:
        seeds: one integer seed per sample.
        num_classes: number of classes (>= 1).

    Returns:
        ``[len(seeds)]`` int64 labels in ``0..num_classes-1``.
    """
    from .noise import _mix

    s = np.asarray(list(seeds), dtype=np.int64)
    with np.errstate(over="ignore"):
        z = _mix(s ^ np.int64(_CLASS_KEY))
    u = ((z >> 11) & ((1 << 53) - 1)).astype(np.float64) / float(1 << 53)
    return torch.from_numpy(np.minimum((u * num_classes).astype(np.int64), num_classes - 1))


def guidance_range(config: ModelConfig) -> tuple[float, float] | None:
    """The guidance range a flow map with a ``w`` input was distilled on (from its provenance).

    Returns:
        ``(guidance_min, guidance_max)``, or None when the config does not record it.
    """
    hp = (config.provenance or {}).get("objective_hparams") or {}
    if "guidance_min" in hp and "guidance_max" in hp:
        return float(hp["guidance_min"]), float(hp["guidance_max"])
    return None


def _per_sample(value: Any, n: int, what: str, kind: type) -> list:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray, Tensor)) else [value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ConditioningError(f"{what}: give one value or one per sample ({n}), got {len(values)}")
    out = []
    for v in values:
        v = v.item() if isinstance(v, (Tensor, np.generic)) else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v)):
            raise ConditioningError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        if kind is float and not np.isfinite(v):
            raise ConditioningError(f"{what} must be a finite number, got {v!r}")
        out.append(kind(v))
    return out


def resolve_conditioning(
    config: ModelConfig,
    seeds: Sequence[int],
    classes: int | Sequence[int] | None = None,
    guidance: float | Sequence[float] | None = None,
) -> Conditioning:
    """Validate and expand a request's ``classes`` / ``guidance`` to per-sample tensors.

    Args:
        config: the model's config (``num_classes``, ``guidance_input``, provenance).
        seeds: the per-sample seeds (sample i uses ``seeds[i]``).
        classes: None ("any class", drawn from each seed), an int, or one int per sample.
        guidance: None (:data:`DEFAULT_GUIDANCE` for conditional models), a number, or one per sample.

    Returns:
        The :class:`Conditioning` (empty for an unconditional model given neither).

    Raises:
        ConditioningError: class or guidance on an unconditional model, a class out of
            range (the message gives the range), a guidance scale outside the range a map
            was trained on, or a per-sample list of the wrong length.
    """
    n = len(seeds)
    k = config.num_classes
    if k == 0:
        if classes is not None:
            raise ConditioningError("this model is unconditional: it takes no class (remove class)")
        if guidance is not None:
            raise ConditioningError("guidance applies to class-conditional models; this model is unconditional")
        return Conditioning()
    if classes is None:
        y = classes_from_seeds(seeds, k)
    else:
        labels = _per_sample(classes, n, "class", int)
        bad = [c for c in labels if not 0 <= c < k]
        if bad:
            raise ConditioningError(f"class {bad[0]} is out of range: this model has classes 0..{k - 1}")
        y = torch.tensor(labels, dtype=torch.int64)
    scales = _per_sample(DEFAULT_GUIDANCE if guidance is None else guidance, n, "guidance", float)
    w = torch.tensor(scales, dtype=torch.float32)
    if config.kind == "velocity":
        return Conditioning(y=y, w=w, guided_teacher=bool((w != 1.0).any()))
    if not config.guidance_input:
        if guidance is not None and any(s != DEFAULT_GUIDANCE for s in scales):
            raise ConditioningError("this flow map has no guidance input (it was distilled at one scale); drop guidance")
        return Conditioning(y=y)
    rng = guidance_range(config)
    if rng is not None:
        lo, hi = rng
        out = [s for s in scales if not lo <= s <= hi]
        if out:
            raise ConditioningError(
                f"guidance {out[0]:g} is outside the range this map was distilled on: use {lo:g}..{hi:g}"
            )
    return Conditioning(y=y, w=w)


def bind_conditioning(model: nn.Module, config: ModelConfig, cond: Conditioning) -> nn.Module:
    """The model with the request's conditioning bound (same call signature as unconditional)."""
    if cond.y is None:
        return model
    if config.kind == "velocity":
        if cond.guided_teacher:
            return GuidedVelocity(model, cond.y, cond.w, config.num_classes)
        return Conditioned(model, cond.y)
    return Conditioned(model, cond.y, cond.w if config.guidance_input else None)
