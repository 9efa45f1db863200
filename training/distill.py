"""Map distillation from a known velocity ``b_t``: LMD (Alg. 1, eq. 3.7) and EMD (Alg. 2, eq. 3.9).

This module also holds the pieces every flow-map objective shares (they live here
because the Lagrangian and Eulerian derivatives are exactly what eqs. 3.7 and 3.9 need):

* :class:`FlowObjective`: hyper-parameter defaults/validation and the time sampler.
* :func:`jvp_times`: forward-mode derivatives of ``X_{s,t}(x)`` (or of the slope
  ``v_{s,t}(x)``) along a tangent ``(dx, ds, dt)`` with ``torch.func.jvp``: one call gives
  the value and the directional derivative, e.g. ``∂_t X_{s,t}(x)`` (tangent ``(0, 0, 1)``)
  or ``∂_s X_{s,t}(x) + ∇X_{s,t}(x)·b_s(x)`` (tangent ``(b_s(x), 1, 0)``, footnote 2).
  Autocast is disabled inside and half-precision inputs are upcast, so tangents are
  computed in float32 even in mixed-precision training; gradients flow to the
  parameters the closure captures.
* :class:`Condition` / :func:`draw_condition` / :func:`teacher_target`: class-conditional
  training. The labels ``y`` come with the batch; ``label_dropout`` replaces a fraction by
  the null class ``∅``; distillation of a conditional map draws a guidance scale ``w`` per
  example from ``[guidance_min, guidance_max]`` and its teacher is the classifier-free-
  guided velocity ``b^w_t(x; y) = b_t(x; ∅) + w (b_t(x; y) - b_t(x; ∅))``, so one
  evaluation of the trained map gives the guided sample at any ``w`` in that range.
* :func:`sq`: the per-sample squared error ``|a|^2 / d`` (mean over coordinates; the paper's
  ``|·|^2`` divided by the constant dimension ``d``, which keeps loss values comparable
  across data sets without changing any minimiser).

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import jvp

from anystep.core.flowmap import guided_velocity
from anystep.errors import AnystepError
from anystep.training.base import Batch, LossOutput, Objective, register
from anystep.training.times import TIME_KINDS, TimePair, TimeSampler

__all__ = [
    "COND_DEFAULTS",
    "EMD",
    "LMD",
    "Condition",
    "FlowObjective",
    "ObjectiveError",
    "Tangent",
    "draw_condition",
    "jvp_times",
    "sq",
    "teacher_target",
    "teacher_velocity",
]

# Time-sampling hyper-parameters shared by the flow-map objectives (see training/times.py).
TIME_DEFAULTS: dict[str, Any] = {
    "time_kind": "uniform",  # "uniform" or "logit_normal"
    "window": 1,  # K: weight 1(|t - s| <= 1/K); K = 1 is the whole square / triangle
    "forward_only": True,  # weight 1(s <= t)
    "diag_frac": 0.0,  # fraction of each batch with s = t
    "start_frac": 0.0,  # fraction of each batch with s = 0 (s = 0 or 1 when both directions)
    "logit_mean": 0.0,
    "logit_std": 1.0,
}


# Conditioning hyper-parameters of the distillation objectives (ignored by unconditional models).
COND_DEFAULTS: dict[str, Any] = {
    "guidance_min": 1.0,  # w ~ U[guidance_min, guidance_max] per example (maps with a w input)
    "guidance_max": 4.0,
    "label_dropout": 0.0,  # fraction of examples trained on the null class
}


class ObjectiveError(AnystepError):
    """Invalid objective hyper-parameters or inputs; the message says how to fix it."""


# ------------------------------------------------------------------------------------------
# class conditioning
# ------------------------------------------------------------------------------------------
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


def teacher_target(teacher: nn.Module | None, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
    """The teacher velocity at ``(x, t)``: ``b_t(x)``, or the guided ``b^w_t(x; y)`` for a conditional map.

    Args:
        teacher: frozen velocity model (or flow map: its diagonal).
        x: ``[B, *shape]``; t: ``[B]``.
        cond: the batch's :class:`Condition` (``w_teacher`` None: unguided).

    Returns:
        ``[B, *shape]``.

    Raises:
        ObjectiveError: no teacher, or a conditional student with an unconditional teacher.
    """
    if cond.y is None:
        return teacher_velocity(teacher, x, t)
    k_teacher, _ = conditioning_of(teacher)
    if k_teacher != cond.null_class:
        raise ObjectiveError(
            f"the student has {cond.null_class} classes but the teacher has {k_teacher or 'none'}; distil a "
            "class-conditional map from a velocity teacher trained on the same labels (label dropout > 0)"
        )
    if cond.w_teacher is None:
        return teacher.velocity(x, t, cond.y)
    return guided_velocity(teacher, x, t, cond.y, cond.w_teacher, cond.null_class)


# ------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------
def sq(a: Tensor) -> Tensor:
    """Per-sample squared norm divided by the dimension.

    Args:
        a: ``[B, *shape]``.

    Returns:
        ``[B]`` tensor ``|a_i|^2 / d`` with ``d = prod(shape)``.
    """
    return a.pow(2).flatten(1).mean(dim=1)


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """``[B] -> [B, 1, ..., 1]`` to broadcast per-sample times against ``x [B, *shape]``."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass
class Tangent:
    """A function value and its directional derivative (one forward-mode JVP).

    Attributes:
        value: ``[B, *shape]`` e.g. ``X_st = X_{s,t}(x)``.
        tangent: ``[B, *shape]`` derivative of ``value`` along the tangent ``(dx, ds, dt)``.
    """

    value: Tensor
    tangent: Tensor


@contextlib.contextmanager
def _full_precision(x: Tensor):
    """Disable autocast so JVPs run in the parameters' precision (float32)."""
    if x.device.type in ("cuda", "cpu"):
        with torch.autocast(device_type=x.device.type, enabled=False):
            yield
    else:  # pragma: no cover - other backends
        yield


def jvp_times(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    s: Tensor,
    t: Tensor,
    dx: Tensor | None = None,
    ds: float = 0.0,
    dt: float = 0.0,
) -> Tangent:
    """Value and directional derivative of ``fn(x, s, t)`` along ``(dx, ds, dt)``.

    ``tangent = ∇_x fn · dx + ds ∂_s fn + dt ∂_t fn`` computed with ``torch.func.jvp``
    (forward mode, no finite differences). Examples: ``dt = 1`` gives ``∂_t X_{s,t}(x)``
    (eq. 3.5/3.7); ``dx = b_s(x), ds = 1`` gives ``∂_s X_{s,t}(x) + ∇X_{s,t}(x)·b_s(x)``
    (eq. 3.8/3.9). Only arguments with a non-zero tangent are differentiated. Tensors that
    ``fn`` captures (the model parameters) keep their autograd graph, so a loss built from
    the result back-propagates to them; call under ``torch.no_grad()`` for a stop-gradient
    copy.

    Args:
        fn: ``fn(x, s, t)`` e.g. a flow map ``model`` or ``model.slope``.
        x: ``[B, *shape]`` points.
        s: ``[B]`` start times.
        t: ``[B]`` end times.
        dx: ``[B, *shape]`` spatial tangent, or None for 0.
        ds: tangent of ``s`` (same for every row).
        dt: tangent of ``t`` (same for every row).

    Returns:
        :class:`Tangent` with ``value = fn(x, s, t)`` and the directional derivative.

    Raises:
        ObjectiveError: if every tangent is zero or ``dx`` has the wrong shape.
    """
    if dx is not None and dx.shape != x.shape:
        raise ObjectiveError(
            f"dx has shape {tuple(dx.shape)} but x has {tuple(x.shape)}; they must match"
        )
    if x.dtype in (torch.float16, torch.bfloat16):  # e.g. produced under autocast: JVP in float32
        x = x.float()
        s, t = s.float(), t.float()
        dx = None if dx is None else dx.float()
    names: list[str] = []
    primals: list[Tensor] = []
    tangents: list[Tensor] = []
    if dx is not None:
        names.append("x")
        primals.append(x)
        tangents.append(dx.to(x.dtype))
    if ds != 0.0:
        names.append("s")
        primals.append(s)
        tangents.append(torch.full_like(s, float(ds)))
    if dt != 0.0:
        names.append("t")
        primals.append(t)
        tangents.append(torch.full_like(t, float(dt)))
    if not primals:
        raise ObjectiveError("jvp_times needs a non-zero tangent: pass dx, ds or dt")

    def closure(*args: Tensor) -> Tensor:
        kw = {"x": x, "s": s, "t": t}
        kw.update(dict(zip(names, args)))
        return fn(kw["x"], kw["s"], kw["t"])

    with _full_precision(x):
        value, tangent = jvp(closure, tuple(primals), tuple(tangents))
    return Tangent(value=value, tangent=tangent)


def teacher_velocity(teacher: nn.Module | None, x: Tensor, t: Tensor) -> Tensor:
    """Evaluate a teacher velocity ``b_t(x)``.

    A velocity model is called as ``teacher(x, t)``; a flow map contributes its diagonal
    ``v_{t,t}(x)`` (the tangent condition makes it a velocity, successors §2).

    Args:
        teacher: velocity model (or flow map with ``.velocity``).
        x: ``[B, *shape]``.
        t: ``[B]``.

    Returns:
        ``[B, *shape]``.

    Raises:
        ObjectiveError: if no teacher was given.
    """
    if teacher is None:
        raise ObjectiveError(
            "this objective distils a teacher velocity b_t: pass teacher=<velocity model> "
            "(train one with the 'velocity' objective first)"
        )
    if getattr(teacher, "kind", None) == "flowmap":
        return teacher.velocity(x, t)
    return teacher(x, t)


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

    def __init__(self, interpolant: Any, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ObjectiveError(
                f"{self.name}: unknown hyper-parameter(s) {unknown}; allowed: {sorted(self.defaults)}"
            )
        resolved = dict(self.defaults)
        for key, value in hparams.items():
            resolved[key] = _coerce(key, value, self.defaults[key], self.name)
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


# ------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------
@register
class LMD(FlowObjective):
    """Lagrangian map distillation (Alg. 1, eq. 3.7).

    ``L_LMD = E_{(s,t) ~ w} E | ∂_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s)) |^2 / d``

    with ``I_s ~ rho_s`` from the interpolant, ``∂_t X`` from one JVP with tangent
    ``(dx, ds, dt) = (0, 0, 1)`` that also returns ``X_{s,t}(I_s)``, and the frozen teacher
    ``b`` evaluated without gradient (``teacher_input_grad=False``: the teacher output is a
    stop-gradient target; True back-propagates through ``b_t``'s input ``X_{s,t}(I_s)``
    as in the exact gradient of eq. 3.7). Default weight: forward only, ``s <= t``.

    Class-conditional map: ``X_{s,t}(x; y, w)`` with ``y`` from the batch and ``w`` drawn per
    example from ``[guidance_min, guidance_max]``; ``b_t`` is the guided teacher
    ``b^w_t(x; y)`` (:func:`teacher_target`), so the map learns the guided flow at every ``w``.
    """

    name = "lmd"
    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {**TIME_DEFAULTS, "teacher_input_grad": False, **COND_DEFAULTS}

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        cond = draw_condition(model, batch, generator, self.hparams, guided=True)
        fn = model if cond.y is None else functools.partial(model, **cond.kwargs())
        out = jvp_times(fn, I_s, pair.s, pair.t, dt=1.0)
        X_st, dt_X = out.value, out.tangent
        if self.hparams["teacher_input_grad"]:
            b_t = teacher_target(teacher, X_st, pair.t, cond)
        else:
            with torch.no_grad():
                b_t = teacher_target(teacher, X_st.detach(), pair.t, cond)
        loss = sq(dt_X - b_t).mean()
        return LossOutput(
            loss=loss, metrics={"loss": float(loss.detach()), "lmd": float(loss.detach())}
        )


@register
class EMD(FlowObjective):
    """Eulerian map distillation (Alg. 2, eq. 3.9).

    ``L_EMD = E_{(s,t) ~ w} E | ∂_s X_{s,t}(I_s) + ∇X_{s,t}(I_s)·b_s(I_s) |^2 / d``

    One JVP with tangent ``(dx, ds, dt) = (b_s(I_s), 1, 0)`` gives both terms at once
    (footnote 2). The teacher ``b_s(I_s)`` is computed without gradient (Alg. 2 writes
    ``b_{t_i}``; eq. 3.9, which we follow, has ``b_s``). Default weight: forward only.
    A class-conditional map is distilled from the guided teacher ``b^w_s(x; y)`` as in :class:`LMD`.
    """

    name = "emd"
    model_kind = "flowmap"
    teacher_kind = "velocity"
    defaults: ClassVar[dict[str, Any]] = {**TIME_DEFAULTS, **COND_DEFAULTS}

    def loss(self, model, batch, generator, teacher=None, step=0) -> LossOutput:
        """See class docstring; ``batch`` tensors are ``[B, *shape]``."""
        self._check_inputs(model, teacher)
        pair = self._times(batch, generator)
        I_s = self._interp(batch, pair.s).I_t
        cond = draw_condition(model, batch, generator, self.hparams, guided=True)
        with torch.no_grad():
            b_s = teacher_target(teacher, I_s, pair.s, cond)
        fn = model if cond.y is None else functools.partial(model, **cond.kwargs())
        out = jvp_times(fn, I_s, pair.s, pair.t, dx=b_s, ds=1.0)
        loss = sq(out.tangent).mean()
        return LossOutput(
            loss=loss, metrics={"loss": float(loss.detach()), "emd": float(loss.detach())}
        )
