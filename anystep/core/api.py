"""High-level sampling of a model directory (used by the CLI and benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .data import seeded_base_samples
from .modeldir import LoadedModel, load_model_dir
from .samplers import sample_flowmap, sample_ode, sample_seeds
from .units import Units, model_units


@dataclass
class Generated:
    """Samples from a model directory.

    Attributes:
        x: ``[n, *shape]`` samples in model units.
        nfe: network evaluations used.
        method: human-readable description (e.g. ``"flow map, 4 steps"``).
        seconds: wall time of the sampling loop.
        dataset: the model's data set name.
        units: the model's data units (:func:`anystep.core.units.model_units`: the record its
            ``config.json`` stores, else derived from ``dataset``); ``units.to_units(x)``.
    """

    x: Tensor
    nfe: int
    method: str
    seconds: float
    dataset: str
    units: Units


def generate(
    model: str | Path | LoadedModel,
    *,
    n: int = 1,
    seed: int = 0,
    steps: int | None = None,
    grid: Sequence[float] | None = None,
    reverse: bool = False,
    x0: Tensor | None = None,
    solver: str | None = None,
    nfe: int | None = None,
    rtol: float | None = None,
    classes: int | Sequence[int] | None = None,
    guidance: float | Sequence[float] | None = None,
) -> Generated:
    """Sample (or encode with ``reverse``) a flow map or a velocity model.

    Base noise for sample i is drawn from seed ``seed + i`` so results do not depend on ``n``.
    Class-conditional models take ``classes`` (default: any class, drawn from each sample's
    seed) and ``guidance`` (see :mod:`anystep.core.conditioning`); a guided velocity model
    costs two network evaluations per solver evaluation (counted in ``nfe``).
    """
    from anystep.errors import AnystepError

    from .conditioning import bind_conditioning, resolve_conditioning
    from .params import resolve_sampling

    lm = model if isinstance(model, LoadedModel) else load_model_dir(model)
    cfg = lm.config
    if x0 is None:
        if reverse:
            raise AnystepError("--reverse encodes data into base samples: pass the data with --x0 FILE.npy")
        x0 = seeded_base_samples(cfg.base or "gaussian", seed, n, cfg.data_shape)  # a translation map: its data base
    elif tuple(x0.shape[1:]) != tuple(cfg.data_shape):
        raise AnystepError(f"--x0 has sample shape {tuple(x0.shape[1:])}, the model expects {cfg.data_shape}")
    if reverse:
        from .config import check_invertible

        check_invertible(cfg, str(lm.path))
    cond = resolve_conditioning(cfg, sample_seeds(seed, x0.shape[0]), classes, guidance)
    model = bind_conditioning(lm.model, cfg, cond)
    if cfg.kind == "flowmap" and nfe is not None:
        raise AnystepError(f"{lm.path} is a flow map: --nfe applies to fixed-step ODE solvers; use --steps/--grid")
    if cfg.kind == "velocity" and grid is not None:
        raise AnystepError(f"{lm.path} is a velocity model: --grid applies to flow maps; use --solver/--steps")
    if nfe is not None and (steps is not None or grid is not None):
        raise AnystepError("give --nfe or --steps/--grid, not both")
    if cfg.kind == "velocity" and solver not in (None, "dopri5") and steps is None and grid is None:
        steps = None if nfe is not None else 100  # the documented fixed-step default
    # The one sampling contract (anystep.core.params): conflicts are errors, never dropped.
    spec = resolve_sampling(
        cfg.kind, steps=steps, grid=grid, solver=solver, rtol=rtol, default_solver="dopri5",
        supported_steps=cfg.supported_steps,  # shortcut / consistency / PD maps: their trained K only
    )
    if nfe is not None and spec.adaptive:
        raise AnystepError("dopri5 bounds its own work: drop --nfe, or keep it with --solver euler/heun/rk4")
    t0 = time.perf_counter()
    if cfg.kind == "flowmap":
        res = sample_flowmap(model, x0, grid=spec.grid.tolist(), steps=None, reverse=reverse)
        method = f"flow map, {res.nfe} step{'s' if res.nfe != 1 else ''}"
    else:
        solver = spec.method
        if spec.adaptive:
            res = sample_ode(model, x0, solver=solver, rtol=spec.rtol, reverse=reverse)
        elif nfe is not None:
            res = sample_ode(model, x0, solver=solver, nfe=nfe, reverse=reverse)
        else:
            res = sample_ode(model, x0, solver=solver, steps=spec.steps, reverse=reverse)
        method = f"ODE {solver}" + (" (classifier-free guided)" if cond.guided_teacher else "")
    return Generated(
        x=res.x, nfe=res.nfe * cond.nfe_per_call, method=method, seconds=time.perf_counter() - t0,
        dataset=cfg.dataset, units=model_units(cfg),
    )
