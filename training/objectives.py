"""Import every objective module so that each objective registers itself.

``anystep.training.base.build_objective`` imports this module; after that
``anystep.training.base.OBJECTIVES`` maps every name to its class:

=============  =========================================  ==========  ========
name           what (equation)                            model       teacher
=============  =========================================  ==========  ========
velocity       SI / flow matching regression (3.14)       velocity    -
lmd            Lagrangian map distillation (3.7, Alg. 1)  flowmap     velocity
emd            Eulerian map distillation (3.9, Alg. 2)    flowmap     velocity
fmm            flow map matching (3.15, Alg. 3)           flowmap     -
pfmm           progressive flow map matching (3.16)       flowmap     flowmap
ee             Eulerian estimation + stopgrad (succ. §1)  flowmap     -
ee_naive       naive Eulerian estimation, biased (B.6)    flowmap     -
denoiser       denoiser negative control (B.1)            flowmap     -
sd/lsd/esd/psd self-distillation (successors §2)          flowmap     -
ayf_emd        Align Your Flow, Eulerian (successors §3)  flowmap     velocity
ayf_lmd        Align Your Flow, Lagrangian (succ. §3)     flowmap     velocity
meanflow       MeanFlow identity (meanflow.py, eq. MF)    flowmap     -
shortcut       shortcut models, dyadic self-consistency   flowmap     -
cd             consistency distillation (C.9)             flowmap     velocity
ct             consistency training (C.14)                flowmap     -
pd             progressive distillation round (C.18)      flowmap     flowmap
operator       trajectory regression on dopri5 (C.17)     flowmap     velocity
=============  =========================================  ==========  ========
"""

from __future__ import annotations

from anystep.training import (  # noqa: F401  (each module registers its objectives)
    ayf,
    consistency,
    distill,
    eulerian,
    fmm,
    meanflow,
    operator,
    pd,
    self_distill,
    shortcut,
    velocity,
)
from anystep.training.base import OBJECTIVES, build_objective

__all__ = ["OBJECTIVES", "build_objective", "supported_steps"]


def supported_steps(objective: str, hparams: dict | None = None) -> tuple[int, ...] | None:
    """Uniform-grid step counts a model trained by ``objective`` supports (issue 14).

    The trainer records the final objective's answer in the model directory
    (``config.json`` ``supported_steps``), which the sampling contract enforces; this
    function recomputes it from a provenance's ``objective`` / ``objective_hparams``. None
    means any step count on any forward grid (two-time maps trained on the whole triangle);
    a tuple lists the only K for which the K-step composition ``X_{t_k,t_{k+1}}`` on the
    uniform grid stays on pairs the objective trained: shortcut ``(1, 2, ..., 2^(L-1))``,
    cd/ct/operator ``(1,)``, pd ``(N,)``. Objectives without a ``supported_steps`` method
    declare no restriction and answer None (FMM with a window 1/K still needs K >= its K).
    """
    from anystep.core.interpolants import build_interpolant

    obj = build_objective(objective, build_interpolant("linear"), **dict(hparams or {}))
    method = getattr(obj, "supported_steps", None)
    return None if method is None else method()
