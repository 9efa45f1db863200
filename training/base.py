"""The objective interface every training loss implements, and its registry.

An objective draws its own times ``(s, t)`` from the generator it is given and returns a
scalar loss; the trainer owns data, optimiser, EMA and checkpoints. Time convention:
``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anystep.core.config import ConfigError
from anystep.core.interpolants import Interpolant


@dataclass
class Batch:
    """One coupled training batch.

    Attributes:
        x0: ``[B, *shape]`` base samples (Gaussian or any data set).
        x1: ``[B, *shape]`` data samples coupled with ``x0``.
        z: ``[B, *shape]`` standard normal latent for interpolants with ``gamma > 0``
            (always provided by the trainer; ignored when ``gamma = 0``).
        y: ``[B]`` int64 class labels of ``x1`` (class-conditional models), else None.
    """

    x0: Tensor
    x1: Tensor
    z: Tensor
    y: Tensor | None = None


@dataclass
class LossOutput:
    """A loss and what to log about it.

    Attributes:
        loss: scalar tensor to back-propagate.
        metrics: floats for the progress bar / JSONL log (e.g. component losses).
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class of training objectives.

    Class attributes:
        name: registry name (``"velocity"``, ``"lmd"``, ``"emd"``, ``"fmm"``, ``"pfmm"``,
            ``"ee"``, ``"ee_naive"``, ``"lsd"``, ``"esd"``, ``"psd"``, ``"ayf_emd"``, ``"ayf_lmd"``, ...).
        model_kind: kind of the model being trained: ``"velocity"`` or ``"flowmap"``.
        teacher_kind: ``None`` (no teacher), ``"velocity"`` (distillation from ``b_t``) or
            ``"flowmap"`` (PFMM distils a frozen K-step map).

    Subclasses implement :meth:`loss`. Constructor keyword arguments are the
    objective's hyper-parameters (all with defaults, JSON-serialisable).
    """

    name: ClassVar[str] = "base"
    model_kind: ClassVar[str] = "flowmap"
    teacher_kind: ClassVar[str | None] = None

    def __init__(self, interpolant: Interpolant, **hparams: Any) -> None:
        self.interpolant = interpolant
        self.hparams = hparams

    def loss(
        self,
        model: nn.Module,
        batch: Batch,
        generator: torch.Generator,
        teacher: nn.Module | None = None,
        step: int = 0,
    ) -> LossOutput:
        """Compute the loss on one batch.

        Args:
            model: the model being trained (FlowMap or VelocityModel).
            batch: coupled samples.
            generator: source of randomness for times ``(s, t)`` (CPU generator).
            teacher: frozen teacher when ``teacher_kind`` is not None.
            step: optimisation step (for warm-ups/schedules).
        """
        raise NotImplementedError


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding an objective to :data:`OBJECTIVES` under ``cls.name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    """The registered objective class called ``name`` (all objectives are registered first).

    Raises:
        ConfigError: unknown name (a ValueError; the message lists the registered names).
    """
    import anystep.training.objectives  # noqa: F401  (registers all objectives)

    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def build_objective(name: str, interpolant: Interpolant, **hparams: Any) -> Objective:
    """Instantiate a registered objective; an unknown name is a ConfigError listing valid ones."""
    return objective_class(name)(interpolant, **hparams)
