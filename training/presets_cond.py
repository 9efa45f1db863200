"""Class-conditional presets: digits with classifier-free guidance distilled into the map.

``digits-cond-velocity``: the 8x8-digits U-Net velocity ``b_t(x; y)`` with 10 classes and a
null class ``∅`` (label dropout 0.1, classifier-free guidance), warm-started from the bundled
unconditional teacher ``models/digits-teacher`` (the class embedding starts at zero, so
training begins from the unconditional velocity and only has to learn the class dependence).

``digits-cond-lmd``: Lagrangian map distillation (eq. 3.7) of the guided teacher
``b^w_t(x; y) = b_t(x; ∅) + w (b_t(x; y) - b_t(x; ∅))`` with ``w ~ U[1, 3]`` drawn per example
into a flow map ``X_{s,t}(x; y, w)`` that takes ``w`` as an input; warm-started from the
bundled unconditional map ``models/digits``. Pass the teacher with
``--teacher runs/digits-cond-velocity``.

Both presets keep the architecture of ``digits-velocity`` / ``digits-lmd`` (presets.py); the
schedules are short (CPU budget) because both runs start from trained unconditional weights.
The warm-start directories are relative to the repository root (override with ``--init-from``).

Image-to-image (paper Fig. 1, a flow map whose base is data): ``digits-restore-velocity`` and
``digits-restore-lmd`` map noisy digits ``x0 = x1 + 0.6 z`` (base ``digits-noisy``, paired
coupling: ``x0`` is the degraded copy of ``x1``) to clean ones. The map is trained in both
time directions (``forward_only = false``), so ``X_{1,0}`` maps a clean digit back to a
degraded one (``/encode``). The bundled ``models/digits-restore`` continues ``digits-restore-lmd``
from its previous weights (``--init-from``) against ``models/digits-restore-teacher`` (the
velocity trained 3,000 steps more): 600 steps, 2,000 more, then 2 x 2,000 at ``--lr 1e-4 --set
objective_hparams.diag_frac=0.25`` and 600 at ``--batch-size 256 --lr 2e-4`` with the same
``diag_frac`` (its ``config.json`` provenance records the last; the README gives the one-step
accuracy after each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from anystep.training.config import TrainConfig

__all__ = ["COND_GUIDANCE_RANGE", "DIGITS_CLASSES", "RESTORE_BASE", "cond_presets"]

DIGITS_CLASSES = 10
COND_GUIDANCE_RANGE = (1.0, 3.0)
RESTORE_BASE = "digits-noisy"  # x0 = x1 + 0.6 z: the degraded copy of the clean digit x1


def digits_cond_velocity() -> TrainConfig:
    """Class-conditional digits velocity with label dropout 0.1 (CFG teacher)."""
    from anystep.training.presets import digits_velocity

    base = digits_velocity()
    model = dataclasses.replace(base.model, num_classes=DIGITS_CLASSES)
    return base.replace(
        model=model,
        objective_hparams={"label_dropout": 0.1},
        init_from="models/digits-teacher",
        batch_size=64,
        max_steps=2000,
        lr=5e-4,
        lr_schedule="cosine",
        lr_min=1e-5,
        lr_warmup_steps=50,
        grad_clip=1.0,
        ema_decay=0.998,
        log_every=50,
        ckpt_every=100,
        preset="digits-cond-velocity",
    )


def digits_cond_lmd() -> TrainConfig:
    """LMD of the guided teacher into a map with inputs ``(x, s, t, y, w)``, ``w ~ U[1, 3]``."""
    from anystep.training.presets import digits_lmd

    base = digits_lmd()
    model = dataclasses.replace(base.model, num_classes=DIGITS_CLASSES, guidance_input=True)
    lo, hi = COND_GUIDANCE_RANGE
    return base.replace(
        model=model,
        objective_hparams={"guidance_min": lo, "guidance_max": hi},
        init_from="models/digits",
        batch_size=64,
        max_steps=1000,
        lr=3e-4,
        lr_schedule="cosine",
        lr_min=1e-5,
        lr_warmup_steps=50,
        grad_clip=1.0,
        ema_decay=0.998,
        log_every=50,
        ckpt_every=100,
        preset="digits-cond-lmd",
    )


def _restore(kind: str, objective: str, hparams: dict) -> TrainConfig:
    from anystep.training.presets import digits_config

    # residual ansatz: the map starts at the identity X_st(x) = x (zero output layer), a good
    # first guess when the base is a degraded copy of the data
    base = digits_config(kind, objective, hparams, ansatz="residual")
    model = dataclasses.replace(base.model, base=RESTORE_BASE)
    return base.replace(
        model=model,
        base=RESTORE_BASE,
        coupling="paired",
        batch_size=64,
        lr=1e-3 if kind == "velocity" else 3e-4,
        lr_schedule="cosine",
        lr_min=1e-5,
        lr_warmup_steps=100,
        grad_clip=1.0,
        ema_decay=0.998,
        log_every=50,
        ckpt_every=100,
    )


def digits_restore_velocity() -> TrainConfig:
    """Velocity of the paired (noisy, clean) digits interpolant, the teacher of digits-restore-lmd."""
    return _restore("velocity", "velocity", {}).replace(max_steps=800, preset="digits-restore-velocity")


def digits_restore_lmd() -> TrainConfig:
    """LMD restoration map in both time directions (``X_{0,1}`` restores, ``X_{1,0}`` degrades)."""
    return _restore("flowmap", "lmd", {"forward_only": False}).replace(max_steps=1000, preset="digits-restore-lmd")


def cond_presets() -> list[tuple[str, str, Callable[[], TrainConfig]]]:
    """``(name, description, build)`` of every class-conditional preset (registered by presets.py)."""
    return [
        (
            "digits-cond-velocity",
            "8x8 digits, class-conditional velocity b_t(x; y) with label dropout (CFG teacher of digits-cond-lmd)",
            digits_cond_velocity,
        ),
        (
            "digits-cond-lmd",
            "8x8 digits, LMD of the guided teacher into X_st(x; y, w), w in [1, 3]; --teacher from digits-cond-velocity",
            digits_cond_lmd,
        ),
        (
            "digits-restore-velocity",
            "image-to-image: velocity from noisy digits (base digits-noisy, paired coupling) to clean ones",
            digits_restore_velocity,
        ),
        (
            "digits-restore-lmd",
            "image-to-image: LMD restoration map noisy -> clean, both directions; --teacher from digits-restore-velocity",
            digits_restore_lmd,
        ),
    ]
