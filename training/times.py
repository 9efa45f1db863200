"""Time-pair samplers ``(s, t)`` and the weights ``w_{s,t}`` they realise.

Every objective of the paper is an integral ``∫∫ w_{s,t} E[...] ds dt`` over ``[0, 1]^2``
(eqs. 3.7, 3.9, 3.15, 3.16, B.1, B.6) or over the triangle ``0 <= s <= t <= 1``
(successors §2). We never multiply by ``w_{s,t}``; instead ``(s, t)`` is drawn from the
normalised density ``w_{s,t} / Z`` (importance sampling), so the Monte Carlo estimate of
the loss is ``E_{(s,t) ~ w/Z}[...]`` = the paper's loss divided by the constant ``Z``.
The minimiser is unchanged.

Supported weights (``w`` is 1 on its support, 0 elsewhere):

* symmetric square ``w_{s,t} = 1`` (``kind="uniform"``, ``window=1``, ``forward_only=False``):
  learns ``X_{s,t}`` and its inverse ``X_{t,s}`` (Sec. 3.2, needed by FMM, eq. 3.15).
* forward only ``w_{s,t} = 1(s <= t)`` (``forward_only=True``; Sec. 3.2 and eq. 3.16's remark).
* window ``w_{s,t} = w_{t,s} = 1(|t - s| <= window)`` (Sec. 3.4: FMM with ``window = 1/K``
  trains a K-step map). Sampled exactly, with no rejection loop: the gap ``u = |t - s|``
  has density proportional to ``1 - u`` on ``[0, window]`` (the length of the admissible
  ``s`` interval), which is inverted in closed form, then ``s ~ U[0, 1 - u]``.
* a diagonal fraction: the first ``round(diag_frac * B)`` rows have ``s = t``
  (self-distillation draws about 3/4 of each batch on the diagonal, successors §2).
* a start fraction (``start_frac``): the next ``round(start_frac * B)`` rows start at an end
  of the interval, ``s = 0`` (and ``s = 1`` for every other row when not ``forward_only``)
  with ``t`` drawn as a single time: more of the batch on the maps ``X_{0,t}`` that make up
  the one-step map ``X_{0,1}`` (a mixture with the weight above; the minimiser is unchanged).
  With ``window = 1/K < 1`` the start rows begin at a node of the K-step grid instead,
  ``s = k/K`` (``k`` uniform; ``s = (k+1)/K`` going backward) with ``t`` uniform within the window
  on the far side: the maps ``X_{k/K, t}`` a K-step sampler composes.
* an edge fraction (``edge_frac``): the next ``round(edge_frac * B)`` rows have the largest gap,
  ``|t - s| = window`` (``s`` uniform on ``[0, 1 - window]``, either direction when not
  ``forward_only``): more of the batch on the longest jumps, the ones a ``1/window``-step sampler
  makes, which the band's interior draws least (a mixture again; the minimiser is unchanged).
* logit-normal (``kind="logit_normal"``): each time is ``sigmoid(N(logit_mean, logit_std^2))``,
  the pair ordered when ``forward_only`` (Align Your Flow practice, successors §3).

All randomness comes from the ``torch.Generator`` passed to :meth:`TimeSampler.sample`
(a CPU generator), so runs are reproducible; the returned tensors live on the CPU and
objectives move them to the data's device and dtype.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from anystep.errors import AnystepError

__all__ = ["TimeError", "TimePair", "TimeSampler", "band_weight"]

TIME_KINDS = ("uniform", "logit_normal")


class TimeError(AnystepError):
    """An invalid time-sampling setting; the message says how to fix it."""


@dataclass
class TimePair:
    """A batch of time pairs.

    Attributes:
        s: ``[B]`` start times in ``[0, 1]``.
        t: ``[B]`` end times in ``[0, 1]``.
        diag: ``[B]`` bool, True on rows drawn on the diagonal ``s = t`` by ``diag_frac``
            (the leading ``n_diag`` rows).
    """

    s: Tensor
    t: Tensor
    diag: Tensor

    @property
    def n_diag(self) -> int:
        """Number of rows drawn on the diagonal."""
        return int(self.diag.sum())

    def to(self, like: Tensor) -> TimePair:
        """Return the pair on ``like``'s device and dtype (``diag`` stays bool)."""
        return TimePair(
            s=self.s.to(device=like.device, dtype=like.dtype),
            t=self.t.to(device=like.device, dtype=like.dtype),
            diag=self.diag.to(device=like.device),
        )


def band_weight(s: Tensor, t: Tensor, window: float = 1.0, forward_only: bool = False) -> Tensor:
    """The weight ``w_{s,t}`` a :class:`TimeSampler` with these settings draws from.

    ``w_{s,t} = 1(|t - s| <= window) * (1(s <= t) if forward_only else 1)``
    (Sec. 3.4: ``w_{s,t} = w_{t,s} = 1(|t - s| <= 1/K)``; Sec. 3.2: forward-only weight).

    Args:
        s: ``[B]`` start times.
        t: ``[B]`` end times.
        window: maximal gap ``|t - s|`` (1 = no restriction).
        forward_only: restrict to ``s <= t``.

    Returns:
        ``[B]`` tensor of 0/1 weights in ``s``'s dtype.
    """
    w = (t - s).abs() <= window + 1e-7
    if forward_only:
        w = w & (s <= t)
    return w.to(s.dtype)


@dataclass
class TimeSampler:
    """Draws ``(s, t)`` pairs from the normalised weight ``w_{s,t}`` (see module docstring).

    Attributes:
        kind: ``"uniform"`` (uniform on the support of ``w``) or ``"logit_normal"``.
        window: maximal gap ``|t - s|`` in ``(0, 1]``; ``1/K`` for a K-step FMM map.
            Only ``window = 1`` is supported with ``kind="logit_normal"``.
        diag_frac: fraction in ``[0, 1]`` of each batch drawn with ``s = t`` (``t`` uniform or
            logit-normal as ``kind`` says); these are the leading rows.
        logit_mean: mean of the normal whose sigmoid is a time (``kind="logit_normal"``).
        logit_std: its standard deviation (> 0).
        forward_only: only pairs with ``s <= t`` (weight ``1(s <= t)``).
        start_frac: fraction in ``[0, 1)`` of each batch drawn with ``s`` at an end of
            ``[0, 1]`` (``s = 0``; alternately ``s = 1`` when not ``forward_only``) and ``t`` a
            single time; these rows follow the diagonal rows. 0 (default) draws none. With
            ``window = 1/K < 1`` (``K`` an integer) ``s`` is a node ``k/K`` of the K-step grid
            and ``t`` uniform on ``[s, s + 1/K]`` (``[s - 1/K, s]`` on backward rows).
        edge_frac: fraction in ``[0, 1)`` of each batch drawn with ``|t - s| = window`` (the
            jumps of a ``1/window``-step sampler); these rows follow the start rows. 0 (default)
            draws none, and no random numbers for them.
    """

    kind: str = "uniform"
    window: float = 1.0
    diag_frac: float = 0.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    forward_only: bool = True
    start_frac: float = 0.0
    edge_frac: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TIME_KINDS:
            raise TimeError(f"time kind {self.kind!r} is unknown; use one of {list(TIME_KINDS)}")
        self.window = float(self.window)
        if not 0.0 < self.window <= 1.0 or math.isnan(self.window):
            raise TimeError(
                f"window={self.window} must be in (0, 1] (the largest |t - s|; use 1/K for a K-step map)"
            )
        self.diag_frac = float(self.diag_frac)
        if not 0.0 <= self.diag_frac <= 1.0:
            raise TimeError(
                f"diag_frac={self.diag_frac} must be in [0, 1] (fraction of rows with s = t)"
            )
        self.start_frac = float(self.start_frac)
        if not 0.0 <= self.start_frac < 1.0 or self.diag_frac + self.start_frac > 1.0:
            raise TimeError(
                f"start_frac={self.start_frac} must be in [0, 1) with diag_frac + start_frac <= 1 "
                f"(diag_frac={self.diag_frac}): the fraction of rows with s at an end of [0, 1]"
            )
        self.edge_frac = float(self.edge_frac)
        if not 0.0 <= self.edge_frac < 1.0 or self.diag_frac + self.start_frac + self.edge_frac > 1.0:
            raise TimeError(
                f"edge_frac={self.edge_frac} must be in [0, 1) with diag_frac + start_frac + edge_frac <= 1 "
                f"(diag_frac={self.diag_frac}, start_frac={self.start_frac}): the fraction of rows with "
                "|t - s| = window"
            )
        if self.start_frac > 0 and self.window < 1.0 and abs(1.0 / self.window - round(1.0 / self.window)) > 1e-6:
            raise TimeError(
                f"start_frac={self.start_frac} with window={self.window}: start rows begin at the nodes of a "
                "K-step grid, so the window must be 1/K for an integer K (or set start_frac=0)"
            )
        if not self.logit_std > 0 or not math.isfinite(self.logit_std):
            raise TimeError(f"logit_std={self.logit_std} must be a positive finite number")
        if not math.isfinite(self.logit_mean):
            raise TimeError(f"logit_mean={self.logit_mean} must be finite")
        if self.kind == "logit_normal" and self.window < 1.0:
            raise TimeError(
                "a window < 1 is only supported with kind='uniform'; set window=1 for logit-normal times"
            )
        self.forward_only = bool(self.forward_only)

    # -- single times -------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` single times (uniform or logit-normal as ``kind`` says).

        Args:
            n: number of times.
            generator: CPU generator.

        Returns:
            ``[n]`` float32 CPU tensor in ``[0, 1]``.
        """
        if self.kind == "logit_normal":
            g = torch.randn(n, generator=generator)
            return torch.sigmoid(self.logit_mean + self.logit_std * g)
        return torch.rand(n, generator=generator)

    # -- pairs ----------------------------------------------------------------------------
    def _uniform_band(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Exact uniform draw on ``{|t - s| <= window}`` (∩ ``{s <= t}`` when forward only).

        The gap ``u = |t - s|`` has density ``(1 - u) / c`` on ``[0, window]`` with
        ``c = window - window^2 / 2``; its CDF ``(u - u^2/2) / c`` inverts to
        ``u = 1 - sqrt(1 - 2 c p)``. Given ``u``, the start is uniform on ``[0, 1 - u]``.
        """
        p = torch.rand(n, generator=generator, dtype=torch.float64)
        pos = torch.rand(n, generator=generator, dtype=torch.float64)
        sign_draw = torch.rand(n, generator=generator, dtype=torch.float64)
        c = self.window - 0.5 * self.window**2
        u = 1.0 - torch.sqrt(torch.clamp(1.0 - 2.0 * c * p, min=0.0))
        u = torch.clamp(u, 0.0, self.window)
        lo = pos * (1.0 - u)  # the smaller of the two times
        return self._oriented(lo, lo + u, sign_draw < 0.5)

    def _oriented(self, lo: Tensor, hi: Tensor, backward: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(s, t) = (lo, hi)``, swapped where ``backward`` unless ``forward_only``; float32 in ``[0, 1]``."""
        if self.forward_only or backward is None:
            s, t = lo, hi
        else:
            s, t = torch.where(backward, hi, lo), torch.where(backward, lo, hi)
        return s.float().clamp(0.0, 1.0), t.float().clamp(0.0, 1.0)

    def _off_diagonal(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.kind == "uniform":
            return self._uniform_band(n, generator)
        a = self.sample_t(n, generator)
        b = self.sample_t(n, generator)
        if self.forward_only:
            return torch.minimum(a, b), torch.maximum(a, b)
        return a, b

    def _edge(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` pairs with ``|t - s| = window``: the smaller time uniform on ``[0, 1 - window]``."""
        lo = torch.rand(n, generator=generator, dtype=torch.float64) * (1.0 - self.window)
        backward = None if self.forward_only else torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
        return self._oriented(lo, lo + self.window, backward)

    def _start(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` start rows (see ``start_frac``); backward rows are every other row unless ``forward_only``.

        ``window = 1``: ``s = 0`` (``s = 1`` backward) and ``t`` a single time. ``window = 1/K``:
        ``s = k/K`` (``(k+1)/K`` backward), ``k`` uniform on ``{0..K-1}``, ``t`` uniform inside the window.
        """
        backward = None
        if not self.forward_only:
            backward = torch.zeros(n, dtype=torch.bool)
            backward[1::2] = True
        if self.window < 1.0:
            K = round(1.0 / self.window)
            node = torch.randint(0, K, (n,), generator=generator).to(torch.float64) / K
            u = torch.rand(n, generator=generator, dtype=torch.float64) * self.window
            if backward is not None:  # lo = (k+1)/K - u, hi = (k+1)/K, oriented hi -> lo
                node = torch.where(backward, node + self.window - u, node)
            return self._oriented(node, node + u, backward)
        t = self.sample_t(n, generator)
        s = torch.zeros(n) if backward is None else backward.float()  # the backward map X_{1,t} too
        return s, t

    def n_diag(self, batch_size: int) -> int:
        """Rows of a batch of ``batch_size`` drawn on the diagonal.

        ``round(diag_frac * B)``, but at least one row on and one off the diagonal when
        ``0 < diag_frac < 1`` and ``B >= 2``, so both loss terms of self-distillation
        (successors §2) see data in every batch.
        """
        n = round(self.diag_frac * batch_size)
        if 0.0 < self.diag_frac < 1.0 and batch_size >= 2:
            n = min(max(n, 1), batch_size - 1)
        return n

    def sample(self, batch_size: int, generator: torch.Generator) -> TimePair:
        """Draw a batch of time pairs.

        Args:
            batch_size: ``B`` >= 1.
            generator: CPU generator (the only source of randomness).

        Returns:
            :class:`TimePair` with ``s, t`` of shape ``[B]`` (float32, CPU); the first
            :meth:`n_diag` rows have ``s = t``.

        Raises:
            TimeError: if ``batch_size < 1``.
        """
        if int(batch_size) < 1:
            raise TimeError(f"batch_size={batch_size} must be >= 1")
        B = int(batch_size)
        n_diag = self.n_diag(B)
        n_start = min(round(self.start_frac * B), B - n_diag)
        n_edge = min(round(self.edge_frac * B), B - n_diag - n_start)
        t_diag = self.sample_t(n_diag, generator)
        s_off, t_off = self._off_diagonal(B - n_diag - n_start - n_edge, generator)
        if n_edge > 0:
            s_edge, t_edge = self._edge(n_edge, generator)
            s_off, t_off = torch.cat([s_edge, s_off]), torch.cat([t_edge, t_off])
        s_start, t_start = self._start(n_start, generator) if n_start > 0 else (torch.zeros(0), torch.zeros(0))
        s = torch.cat([t_diag, s_start, s_off])
        t = torch.cat([t_diag, t_start, t_off])
        diag = torch.zeros(B, dtype=torch.bool)
        diag[:n_diag] = True
        return TimePair(s=s, t=t, diag=diag)

    def weight(self, s: Tensor, t: Tensor) -> Tensor:
        """``w_{s,t}`` on the off-diagonal part (see :func:`band_weight`): ``[B] -> [B]``."""
        return band_weight(s, t, self.window, self.forward_only)
