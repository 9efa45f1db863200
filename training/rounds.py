"""The rounds of a training run: one, or the rounds of progressive PFMM.

Progressive PFMM (Sec. 3.4 after Lemma 3.12): with objective ``pfmm`` and the trainer-level
hyper-parameter ``M`` smaller than ``steps`` (= K), training runs the rounds of
:func:`anystep.training.fmm.progressive_schedule`; round ``r`` uses ``steps=M,
window=N_r`` and the rounds share ``max_steps`` equally; after each round the student's
EMA weights become the frozen teacher of the next round (the trainer does that swap; this
module only plans).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anystep.core.config import ConfigError
from anystep.training.config import TrainConfig

__all__ = ["TRAINER_HPARAMS", "Round", "objective_hparams", "plan_rounds", "round_at", "trainer_hparams"]

# Trainer-level objective hyper-parameters (removed before the objective is built).
TRAINER_HPARAMS = {"pfmm": ("M",)}


@dataclass
class Round:
    """One round of a run.

    Attributes:
        index: the round number ``r`` (0 for a run with one round).
        start: first step of the round (inclusive).
        end: last step of the round (exclusive).
        hparams: the objective's hyper-parameters in this round.
    """

    index: int
    start: int
    end: int
    hparams: dict[str, Any]


def trainer_hparams(config: TrainConfig) -> dict[str, Any]:
    """The trainer-level hyper-parameters among ``config.objective_hparams`` (e.g. PFMM's ``M``)."""
    keys = TRAINER_HPARAMS.get(config.objective, ())
    return {k: config.objective_hparams[k] for k in keys if k in config.objective_hparams}


def objective_hparams(config: TrainConfig) -> dict[str, Any]:
    """``config.objective_hparams`` without the trainer-level ones (what the objective takes)."""
    keys = TRAINER_HPARAMS.get(config.objective, ())
    return {k: v for k, v in config.objective_hparams.items() if k not in keys}


def plan_rounds(config: TrainConfig, objective_cls: type) -> list[Round]:
    """The rounds of a run: progressive PFMM's when ``M < steps``, else one round.

    Args:
        config: the training config (``objective_hparams`` may hold ``M``).
        objective_cls: the objective class (its ``defaults`` give ``steps`` when unset).

    Returns:
        Rounds covering ``[0, max_steps)`` in order.

    Raises:
        ConfigError: ``M`` is not an integer >= 2, or ``max_steps`` is less than the
            number of rounds.
    """
    cfg = config
    base_hp = objective_hparams(cfg)
    M = trainer_hparams(cfg).get("M")
    if cfg.objective == "pfmm" and M is not None:
        from anystep.training.fmm import progressive_schedule

        K = int(base_hp.get("steps", objective_cls.defaults.get("steps", 4)))  # type: ignore[attr-defined]
        if isinstance(M, bool) or not isinstance(M, int) or M < 2:
            raise ConfigError(f"pfmm: M={M!r} must be an integer >= 2 (teacher steps per progressive round)")
        if M < K:
            schedule = progressive_schedule(K, M)
            R = len(schedule)
            if cfg.max_steps < R:
                raise ConfigError(f"max_steps={cfg.max_steps} is less than the {R} progressive PFMM rounds")
            bounds = [round(cfg.max_steps * r / R) for r in range(R + 1)]
            return [
                Round(r, bounds[r], bounds[r + 1], {**base_hp, "steps": M, "window": n})
                for r, n in enumerate(schedule)
            ]
    return [Round(0, 0, cfg.max_steps, base_hp)]


def round_at(rounds: list[Round], step: int) -> Round:
    """The round that step ``step`` (0-based, the next to run) belongs to."""
    for r in rounds:
        if step < r.end:
            return r
    return rounds[-1]
