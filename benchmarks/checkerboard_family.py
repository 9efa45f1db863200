"""Why is MeanFlow's one-step map weak? Its residual on the checkerboard, by jump length.

For a trained MeanFlow map (``training/meanflow.py``) this splits the mean squared
residual ``|v_{s,t}(I_s) - v_tgt|^2 / d`` of the loss by the gap ``t - s`` into

* ``noise``: ``|v_tgt(dI_s) - v_tgt(b_s)|^2 / d``, the part that comes from the one-sample
  velocity ``dI_s`` (it averages out: ``E[dI_s | I_s] = b_s``), with the benchmark's
  teacher velocity ``b_s`` standing in for the exact one;
* ``bias``: ``|v - v_tgt(b_s)|^2 / d``, the MeanFlow identity's residual with the teacher's
  velocity, i.e. how far the current map is from satisfying (MF) -- what the gradient
  actually has to remove;
* ``error``: ``|v - v*|^2 / d`` against the teacher flow's own slope ``v*`` (RK4, 64 steps
  per jump), next to ``|v - b_s|^2`` (how far the map moved from the warm start
  ``v_{s,t} = b_s``) and ``|v* - b_s|^2`` (how far it has to move);

and reports how often the time sampler of a MeanFlow configuration draws each gap (the
share of each batch), with ``v_tgt(u) = u + (t - s)[∂_s v + ∇v·u]`` (one JVP per ``u``).

Usage::

    python -m anystep.benchmarks.checkerboard_family runs/family/sweep/mf_u0 --teacher runs/checkerboard/si

Time convention: ``t = 0`` base (Gaussian), ``t = 1`` data (checkerboard).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anystep.benchmarks.common import markdown_table
from anystep.errors import AnystepError

__all__ = ["GAPS", "gap_shares", "main", "residual_by_gap"]

GAPS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def gap_shares(hparams: dict[str, Any], n: int = 200_000, seed: int = 0) -> list[float]:
    """Share of a batch (diagonal rows included) whose gap ``t - s`` falls in each bucket of GAPS.

    The diagonal rows (gap 0) are counted in the first bucket.
    """
    from anystep.core.interpolants import build_interpolant
    from anystep.training.base import build_objective

    obj = build_objective("meanflow", build_interpolant("linear"), **hparams)
    pair = obj.sample_pairs(n, torch.Generator().manual_seed(seed))
    gap = (pair.t - pair.s).double()
    out = []
    for lo, hi in itertools.pairwise(GAPS):
        inside = (gap >= lo) & ((gap < hi) if hi < 1.0 else (gap <= hi))
        out.append(float(inside.double().mean()))
    return out


@torch.no_grad()
def teacher_slope(teacher, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, steps: int = 64) -> torch.Tensor:
    """The teacher flow's slope ``(X^b_{s,t}(x) - x) / (t - s)``, RK4 with ``steps`` steps per row ``[B]``.

    Integrates ``dx/dτ = (t - s) b_{s + τ(t - s)}(x)`` over ``τ ∈ [0, 1]`` (each row its own ``s, t``).
    """
    from anystep.training.jvp import bcast
    from anystep.training.teacher import teacher_velocity

    gap = t - s
    h = 1.0 / steps
    y = x.clone()

    def f(y: torch.Tensor, tau: float) -> torch.Tensor:
        return bcast(gap, y) * teacher_velocity(teacher, y, s + tau * gap)

    for i in range(steps):
        tau = i * h
        k1 = f(y, tau)
        k2 = f(y + 0.5 * h * k1, tau + 0.5 * h)
        k3 = f(y + 0.5 * h * k2, tau + 0.5 * h)
        k4 = f(y + h * k3, tau + h)
        y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return (y - x) / bcast(gap.clamp(min=1e-6), x)


def residual_by_gap(model, teacher, n: int = 4096, seed: int = 0) -> list[dict[str, float]]:
    """Residual / noise / bias (module docstring) of ``model`` per gap bucket, ``n`` rows each."""
    from anystep.core.data import get_dataset
    from anystep.training.jvp import bcast, jvp_times, sq
    from anystep.training.teacher import teacher_velocity

    g = torch.Generator().manual_seed(seed)
    data = get_dataset("checkerboard")
    rows = []
    for lo, hi in itertools.pairwise(GAPS):
        x0 = torch.randn(n, 2, generator=g)
        x1 = data.sample(n, g).float()
        gap = lo + (hi - lo) * torch.rand(n, generator=g)
        s = (1.0 - gap) * torch.rand(n, generator=g)
        t = s + gap
        I_s = (1.0 - s[:, None]) * x0 + s[:, None] * x1
        dI = x1 - x0
        with torch.no_grad():
            b = teacher_velocity(teacher, I_s, s)
        targets = {}
        for name, u in (("sample", dI), ("teacher", b)):
            out = jvp_times(model.slope, I_s, s, t, dx=u, ds=1.0)
            v = out.value.detach()
            targets[name] = (u + bcast(t - s, v) * out.tangent.detach()).detach()
        v_true = teacher_slope(teacher, I_s, s, t)
        rows.append({
            "gap": f"[{lo:g}, {hi:g}" + ("]" if hi == 1.0 else ")"),
            "residual": float(sq(v - targets["sample"]).mean()),
            "noise": float(sq(targets["sample"] - targets["teacher"]).mean()),
            "bias": float(sq(v - targets["teacher"]).mean()),
            "tangent_norm": float(sq(targets["teacher"] - b).mean()),
            "moved": float(sq(v - b).mean()),
            "error": float(sq(v - v_true).mean()),
            "true_jvp": float(sq(v_true - b).mean()),
        })
    return rows


def _warm_start(like, teacher):
    """A copy of the model directory ``like`` whose weights give ``v_{s,t} = b_s`` (the benchmark's start)."""
    import copy

    from anystep.core.warmstart import flowmap_from_velocity

    md = copy.deepcopy(like)
    flowmap_from_velocity(md.model, teacher)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit code 2 on bad input."""
    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.checkerboard_family",
                                description="MeanFlow's residual on the checkerboard by jump length (bias vs "
                                            "one-sample noise) and the time sampler's share of each jump length.")
    p.add_argument("model", nargs="+", type=Path, help="trained MeanFlow model directories")
    p.add_argument("--teacher", type=Path, required=True, help="the benchmark's teacher velocity (runs/.../si)")
    p.add_argument("--warm-start", action="store_true",
                   help="also score the warm start v_st = b_s (the first model's architecture, the teacher's weights)")
    p.add_argument("--n", type=int, default=4096, help="rows per gap bucket (default 4096)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    from anystep.core.modeldir import load_model_dir

    torch.set_num_threads(1)
    try:
        teacher = load_model_dir(args.teacher).model.eval()
        models = {str(m): load_model_dir(m) for m in args.model}
        if args.warm_start:
            models = {"warm start v_st = b_s": _warm_start(next(iter(models.values())), teacher), **models}
    except (AnystepError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    for name, md in models.items():
        hp = dict((md.config.provenance or {}).get("objective_hparams", {}))
        shares = gap_shares(hp)
        rows = residual_by_gap(md.model.eval(), teacher, n=args.n)
        result[name] = {"objective_hparams": hp, "rows": rows, "share": shares}
        print(f"\n{name} ({hp})")
        print(markdown_table(["gap", "share of batch", "residual", "noise", "bias", "|JVP term|^2", "|v - b_s|^2",
                              "error |v - v*|^2", "|v* - b_s|^2"],
                             [[r["gap"], f"{sh:.4f}", r["residual"], r["noise"], r["bias"], r["tangent_norm"],
                               r["moved"], r["error"], r["true_jvp"]]
                              for r, sh in zip(rows, shares, strict=True)]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
