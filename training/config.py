"""The training configuration: :class:`TrainConfig`, its overrides, schedules and validation.

One import for everything about a run's configuration; each concept has its module:

* :mod:`anystep.training.train_config`: :class:`TrainConfig` (fields, cheap checks when it
  is built, JSON round trip) and ``ConfigError``.
* :mod:`anystep.training.overrides`: :func:`apply_overrides` (``--set key=value``).
* :mod:`anystep.training.lr_schedule`: :func:`learning_rate` (``constant``, ``step`` (the
  paper's, Table 4), ``linear``, ``cosine``, with linear warm-up).
* :mod:`anystep.training.validate`: :func:`validate_config` (objective known, teacher present
  and of the right kind, data shapes agree: the checks that read files, run before any
  training starts), :class:`ValidatedConfig`, :func:`trained_time_region`.

Time convention: ``t = 0`` base rho_0, ``t = 1`` data rho_1.
"""

from __future__ import annotations

from anystep.training.lr_schedule import learning_rate
from anystep.training.overrides import apply_overrides
from anystep.training.train_config import (  # noqa: F401 - re-exported
    COUPLING_NAMES,
    DDP_BATCH_MODES,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    TrainConfig,
)
from anystep.training.validate import (
    ValidatedConfig,
    trained_time_region,
    validate_config,
)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "ValidatedConfig",
    "apply_overrides",
    "learning_rate",
    "trained_time_region",
    "validate_config",
]
