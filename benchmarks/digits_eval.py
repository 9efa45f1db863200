"""Scoring the digits benchmark's samplers: :func:`evaluate_teacher`, :func:`evaluate_flowmap`.

Every sampler is scored by the same offline metric
(:class:`~anystep.benchmarks.digits_classifier.DigitsMetric`): digits-FD, Teacher-FD and
class coverage of ``n`` samples drawn from the same base noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from anystep.benchmarks.digits_classifier import DigitsMetric, DigitsScores
from anystep.benchmarks.digits_methods import TEACHER_EULER_STEPS

__all__ = ["EvalRow", "evaluate_flowmap", "evaluate_teacher"]


@dataclass
class EvalRow:
    """Scores of one sampler (method x step count).

    Attributes:
        method: method name.
        sampler: ``"flow map"``, ``"euler"`` or ``"dopri5"``.
        steps: steps K (None for dopri5).
        nfe: network evaluations per sample (dopri5: mean over the batch).
        digits_fd: Frechet distance to the real train split.
        teacher_fd: Frechet distance to the teacher's dopri5 samples.
        entropy: class-coverage entropy (nats, max log 10 = 2.303).
        min_class_fraction: smallest predicted class frequency.
        mean_confidence: mean top softmax probability.
        sample_seconds: wall time to draw the ``n`` samples.
    """

    method: str
    sampler: str
    steps: int | None
    nfe: float
    digits_fd: float
    teacher_fd: float | None
    entropy: float
    min_class_fraction: float
    mean_confidence: float
    sample_seconds: float


def _row(method: str, sampler: str, steps: int | None, nfe: float, s: DigitsScores, sec: float) -> EvalRow:
    return EvalRow(
        method=method,
        sampler=sampler,
        steps=steps,
        nfe=float(nfe),
        digits_fd=s.digits_fd,
        teacher_fd=s.teacher_fd,
        entropy=s.coverage.entropy,
        min_class_fraction=s.coverage.min_fraction,
        mean_confidence=s.coverage.mean_confidence,
        sample_seconds=sec,
    )


def evaluate_teacher(
    model: torch.nn.Module,
    x0: Tensor,
    metric: DigitsMetric,
    *,
    euler_steps: tuple[int, ...] = TEACHER_EULER_STEPS,
    rtol: float = 1e-5,
) -> tuple[list[EvalRow], dict[str, Tensor]]:
    """Score a velocity model with dopri5 and Euler at each of ``euler_steps``.

    Args:
        model: velocity model ``b_t``.
        x0: ``[n, 1, 8, 8]`` base noise.
        metric: the digits metric.
        euler_steps: Euler step counts.
        rtol: dopri5 tolerance (``atol = rtol``).

    Returns:
        (rows, samples) where ``samples["dopri5"]`` is the Teacher-FD reference
        ``[n, 1, 8, 8]`` and ``samples["euler<K>"]`` the Euler samples.
    """
    from anystep.core.samplers import sample_ode

    t0 = time.perf_counter()
    ref = sample_ode(model, x0, solver="dopri5", rtol=rtol)
    sec = time.perf_counter() - t0
    samples = {"dopri5": ref.x}
    rows = [_row("teacher", "dopri5", None, ref.nfe, metric.score(ref.x, teacher=ref.x), sec)]
    for k in euler_steps:
        t0 = time.perf_counter()
        res = sample_ode(model, x0, solver="euler", steps=k)
        sec = time.perf_counter() - t0
        samples[f"euler{k}"] = res.x
        rows.append(_row("teacher", "euler", k, res.nfe, metric.score(res.x, teacher=ref.x), sec))
    return rows, samples


def evaluate_flowmap(
    method: str,
    model: torch.nn.Module,
    x0: Tensor,
    metric: DigitsMetric,
    steps: tuple[int, ...],
    teacher_samples: Tensor | None,
) -> tuple[list[EvalRow], dict[str, Tensor]]:
    """Score a flow map with ``K`` uniform steps for each ``K`` in ``steps``.

    Returns:
        (rows, samples) with ``samples["<K>"]`` of shape ``[n, 1, 8, 8]``.
    """
    from anystep.core.samplers import sample_flowmap

    rows, samples = [], {}
    for k in steps:
        t0 = time.perf_counter()
        res = sample_flowmap(model, x0, steps=k)
        sec = time.perf_counter() - t0
        samples[str(k)] = res.x
        rows.append(_row(method, "flow map", k, res.nfe, metric.score(res.x, teacher=teacher_samples), sec))
    return rows, samples
