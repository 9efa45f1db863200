"""Presets of the few-step family of issue 14: MeanFlow, shortcut, CD/CT, PD, trajectory regression.

Each uses the same backbone, data, optimiser and budget as the other checkerboard /
digits presets (:mod:`anystep.training.presets`), so rows are comparable; only the
objective changes. MeanFlow, shortcut, CT and the operator regression use the residual
form ``x + (t - s) v_{s,t}(x)`` of their papers; PD keeps the convex ansatz of its
teacher (FMM N=4) so the student can start from the teacher's weights.

Teacher chains (``--teacher DIR``):

* ``checkerboard-cd``, ``checkerboard-operator`` <- ``checkerboard-velocity``;
* ``checkerboard-pd`` <- ``checkerboard-fmm4`` (one round, 4 -> 2 steps; pass the same
  directory to ``--init-from``). The next round: ``--set objective_hparams.steps=1`` with the
  2-step student as ``--teacher`` and ``--init-from``.

``checkerboard-meanflow-ot`` and ``checkerboard-shortcut-ot`` are named variants, not the
published recipes (see :data:`MEANFLOW_OT_HPARAMS`, :data:`SHORTCUT_OT_HPARAMS`); the
``checkerboard-meanflow`` / ``checkerboard-shortcut`` presets keep the papers' defaults.

What each trained model supports is written in its module docstring (shortcut: dyadic
uniform grids; CD/CT: one step ``X_{s,1}`` only, multi-step by re-noising; PD: exactly its
final step count; operator: jumps from ``s = 0``; MeanFlow: any forward grid).
"""

from __future__ import annotations

from collections.abc import Callable

from anystep.training.config import TrainConfig

__all__ = ["MEANFLOW_OT_HPARAMS", "SHORTCUT_OT_HPARAMS", "family_presets"]

# checkerboard-meanflow-ot: the best MeanFlow one-step map measured on the checkerboard
# (results/family.md); differs from the paper in the coupling (minibatch OT, the paper's is
# independent), the times (uniform, not logit-normal) and the weight (p = 0, not 1)
MEANFLOW_OT_HPARAMS = {"time_kind": "uniform", "adaptive_p": 0.0}
# checkerboard-shortcut-ot: likewise for shortcut models (coupling minibatch OT instead of
# independent; 75% of the rows on self-consistency instead of 25%)
SHORTCUT_OT_HPARAMS = {"fm_frac": 0.25}


def _specs() -> list[tuple[str, str, Callable[[], TrainConfig]]]:
    from anystep.training.presets import checkerboard_config, digits_config

    def cb(objective: str, hparams: dict | None = None, ansatz: str = "residual", coupling: str | None = None):
        if coupling is None:
            return lambda: checkerboard_config("flowmap", objective, hparams, ansatz=ansatz)
        return lambda: checkerboard_config("flowmap", objective, hparams, ansatz=ansatz).replace(coupling=coupling)

    def dg(objective: str, hparams: dict | None = None, ansatz: str = "residual"):
        return lambda: digits_config("flowmap", objective, hparams, ansatz=ansatz)

    return [
        ("checkerboard-meanflow",
         "MeanFlow identity (Eulerian eq. with stop-grad target, adaptive weight), no teacher",
         cb("meanflow")),
        ("checkerboard-meanflow-ot",
         "MeanFlow, not the paper's recipe: minibatch-OT coupling, uniform times, p = 0 (results/family.md)",
         cb("meanflow", MEANFLOW_OT_HPARAMS, coupling="minibatch_ot")),
        ("checkerboard-shortcut",
         "shortcut model: flow matching + dyadic self-consistency (2d = 1 .. 1/64), no teacher",
         cb("shortcut")),
        ("checkerboard-shortcut-ot",
         "shortcut model, not the paper's recipe: minibatch-OT coupling, fm_frac 0.25 (results/family.md)",
         cb("shortcut", SHORTCUT_OT_HPARAMS, coupling="minibatch_ot")),
        ("checkerboard-cd",
         "consistency distillation (eq. C.9), X_{s,1} only; --teacher from checkerboard-velocity",
         cb("cd")),
        ("checkerboard-ct",
         "consistency training (eq. C.14), X_{s,1} only, no teacher",
         cb("ct")),
        ("checkerboard-pd",
         "progressive distillation round (eq. C.18), 4 -> 2 steps; --teacher/--init-from checkerboard-fmm4",
         cb("pd", {"steps": 2}, ansatz="convex")),
        ("checkerboard-operator",
         "trajectory regression (eq. C.17) on dopri5 teacher trajectories; --teacher checkerboard-velocity",
         cb("operator", {"bank_size": 20_000, "rtol": 1e-4})),
        ("digits-meanflow",
         "8x8 digits, MeanFlow identity (Eulerian eq. with stop-grad target), no teacher",
         dg("meanflow")),
        ("digits-shortcut",
         "8x8 digits, shortcut model (flow matching + dyadic self-consistency), no teacher",
         dg("shortcut")),
    ]  # fmt: skip


def family_presets() -> list[tuple[str, str, Callable[[], TrainConfig]]]:
    """``(name, description, build)`` for every preset of this module.

    ``build()`` returns a fresh :class:`TrainConfig` with ``preset`` set to ``name``.
    """
    out = []
    for name, description, fn in _specs():

        def build(fn: Callable[[], TrainConfig] = fn, name: str = name) -> TrainConfig:
            return fn().replace(preset=name)

        build.__doc__ = description
        out.append((name, description, build))
    return out
