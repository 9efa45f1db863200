"""Forward-mode time derivatives of a flow map and the per-sample squared error.

* :func:`jvp_times`: forward-mode derivatives of ``X_{s,t}(x)`` (or of the slope
  ``v_{s,t}(x)``) along a tangent ``(dx, ds, dt)`` with ``torch.func.jvp``: one call gives
  the value and the directional derivative, e.g. ``∂_t X_{s,t}(x)`` (tangent ``(0, 0, 1)``,
  eq. 3.7) or ``∂_s X_{s,t}(x) + ∇X_{s,t}(x)·b_s(x)`` (tangent ``(b_s(x), 1, 0)``, eq. 3.9,
  footnote 2). Autocast is disabled inside and half-precision inputs are upcast, so
  tangents are computed in float32 even in mixed-precision training; gradients flow to
  the parameters the closure captures.
* :func:`sq`: the per-sample squared error ``|a|^2 / d`` (mean over coordinates; the paper's
  ``|·|^2`` divided by the constant dimension ``d``, which keeps loss values comparable
  across data sets without changing any minimiser).
* :func:`bcast`: per-sample times ``[B]`` shaped ``[B, 1, ..., 1]`` to broadcast against ``x``.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

from anystep.training.flow_objective import ObjectiveError

__all__ = ["Tangent", "bcast", "jvp_times", "sq"]


def sq(a: Tensor) -> Tensor:
    """Per-sample squared norm divided by the dimension.

    Args:
        a: ``[B, *shape]``.

    Returns:
        ``[B]`` tensor ``|a_i|^2 / d`` with ``d = prod(shape)``.
    """
    return a.pow(2).flatten(1).mean(dim=1)


def bcast(t: Tensor, x: Tensor) -> Tensor:
    """``[B] -> [B, 1, ..., 1]`` to broadcast per-sample times against ``x [B, *shape]``.

    Args:
        t: ``[B]`` per-sample values (e.g. the gap ``t - s``).
        x: ``[B, *shape]`` the tensor they multiply.

    Returns:
        ``t`` viewed as ``[B, 1, ..., 1]`` with ``x.ndim`` dimensions.
    """
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

