"""The base of the flow-map objectives: :class:`FlowObjective` and :class:`ObjectiveError`.

:class:`FlowObjective` resolves and validates an objective's hyper-parameters (every
accepted name with its default in ``defaults``, values coerced to the default's type)
and builds its time sampler (:class:`~anystep.training.times.TimeSampler`) from the
shared time hyper-parameters :data:`TIME_DEFAULTS`.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anystep.errors import AnystepError
from anystep.training.base import Batch, Objective
from anystep.training.times import TIME_KINDS, TimePair, TimeSampler

__all__ = ["TIME_DEFAULTS", "FlowObjective", "ObjectiveError"]

# Time-sampling hyper-parameters shared by the flow-map objectives (see training/times.py).
TIME_DEFAULTS: dict[str, Any] = {
    "time_kind": "uniform",  # "uniform" or "logit_normal"
    "window": 1,  # K: weight 1(|t - s| <= 1/K); K = 1 is the whole square / triangle
    "forward_only": True,  # weight 1(s <= t)
    "diag_frac": 0.0,  # fraction of each batch with s = t
    "start_frac": 0.0,  # fraction of each batch with s = 0 (or 1 going backward; s = k/K with window K > 1)
    "edge_frac": 0.0,  # fraction of each batch with |t - s| = 1/K (the K-step sampler's jumps)
    "logit_mean": 0.0,
    "logit_std": 1.0,
}


class ObjectiveError(AnystepError):
    """Invalid objective hyper-parameters or inputs; the message says how to fix it."""


def _coerce(name: str, value: Any, default: Any, objective: str) -> Any:
    """Check/convert one hyper-parameter to the type of its default."""
    bad = ObjectiveError(
        f"{objective}: hyper-parameter {name}={value!r} must be a {type(default).__name__} "
        f"(default {default!r})"
    )
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    return value


class FlowObjective(Objective):
    """Base of the objectives in this package: validated hyper-parameters + a time sampler.

    Subclasses declare ``defaults`` (every accepted hyper-parameter with its default);
    unknown names or wrong types raise :class:`ObjectiveError`. ``self.hparams`` holds the
    fully resolved dictionary (JSON-serialisable; the trainer records it). The time
    hyper-parameters (``time_kind``, ``window`` = K for the weight ``1(|t-s| <= 1/K)``,
    ``forward_only``, ``diag_frac``, ``logit_mean``, ``logit_std``) build ``self.times``.
    """

    defaults: ClassVar[dict[str, Any]] = dict(TIME_DEFAULTS)
    # Keys of ``defaults`` the objective accepts (so that every flow-map config carries the shared time
    # keys) but does not read, each with the reason and what to use instead; a non-default value of one
    # is refused, since it would change nothing.
    unread: ClassVar[dict[str, str]] = {}

    def __init__(self, interpolant: Any, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ObjectiveError(
                f"{self.name}: unknown hyper-parameter(s) {unknown}; allowed: {sorted(self.defaults)}"
            )
        resolved = dict(self.defaults)
        for key, value in hparams.items():
            resolved[key] = _coerce(key, value, self.defaults[key], self.name)
        for key, why in self.unread.items():
            if resolved[key] != self.defaults[key]:
                raise ObjectiveError(
                    f"{self.name}: {key}={resolved[key]!r} would have no effect: {why}; "
                    f"remove it (default {self.defaults[key]!r})"
                )
        super().__init__(interpolant, **resolved)
        self.times = self._build_times()
        self._check()

    def _build_times(self) -> TimeSampler:
        h = self.hparams
        if h.get("time_kind", "uniform") not in TIME_KINDS:
            raise ObjectiveError(f"{self.name}: time_kind must be one of {list(TIME_KINDS)}")
        window = int(h.get("window", 1))
        if window < 1:
            raise ObjectiveError(
                f"{self.name}: window={window} must be an integer K >= 1 (weight 1(|t-s| <= 1/K))"
            )
        try:
            return TimeSampler(
                kind=h.get("time_kind", "uniform"),
                window=1.0 / window,
                diag_frac=h.get("diag_frac", 0.0),
                logit_mean=h.get("logit_mean", 0.0),
                logit_std=h.get("logit_std", 1.0),
                forward_only=h.get("forward_only", True),
                start_frac=h.get("start_frac", 0.0),
                edge_frac=h.get("edge_frac", 0.0),
            )
        except AnystepError as err:
            raise ObjectiveError(f"{self.name}: {err}") from err

    def _check(self) -> None:
        """Extra validation in subclasses (raise ObjectiveError)."""

    # -- helpers used by loss() -------------------------------------------------------
    def _check_inputs(self, model: nn.Module, teacher: nn.Module | None) -> None:
        kind = getattr(model, "kind", None)
        if kind != self.model_kind:
            raise ObjectiveError(
                f"objective {self.name!r} trains a {self.model_kind} model but got kind={kind!r}; "
                f"build the model with ModelConfig(kind={self.model_kind!r})"
            )
        if self.teacher_kind is not None and teacher is None:
            raise ObjectiveError(
                f"objective {self.name!r} needs a frozen {self.teacher_kind} teacher; pass teacher=..."
            )
        if self.teacher_kind == "flowmap" and getattr(teacher, "kind", None) != "flowmap":
            raise ObjectiveError(
                f"objective {self.name!r} distils a flow map teacher (kind 'flowmap'), "
                f"got kind={getattr(teacher, 'kind', None)!r}"
            )

    def _times(self, batch: Batch, generator: torch.Generator) -> TimePair:
        return self.times.sample(batch.x0.shape[0], generator).to(batch.x0)

    def _interp(self, batch: Batch, t: Tensor):
        return self.interpolant.interpolate(batch.x0, batch.x1, t, batch.z)

