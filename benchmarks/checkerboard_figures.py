"""Checkerboard benchmark: figures (paper Fig. 3 top and bottom, Fig. 5, every method at every K)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from anystep.benchmarks.checkerboard_eval import StepMetrics
from anystep.benchmarks.checkerboard_methods import EVAL_STEPS, METHODS, MethodSpec
from anystep.benchmarks.common import pyplot

__all__ = ["make_figures"]

OUTSIDE_COLOUR = "#ffd400"  # yellow: samples that land off the board (Fig. 3, bottom)
LIM = 4.5  # half-width of the plotted square (the board is [-4, 4]^2)


def _hist_panel(ax, x: np.ndarray, title: str) -> None:
    """2D histogram of samples on ``[-LIM, LIM]^2`` (the look of Fig. 3, top)."""
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=180, range=[[-LIM, LIM], [-LIM, LIM]])
    ax.imshow(np.sqrt(h.T), origin="lower", extent=(-LIM, LIM, -LIM, LIM), cmap="viridis",
              interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _base_colours(x0: np.ndarray) -> np.ndarray:
    """Colour of each base point ``[n, 2] -> [n, 3]`` RGB: its angle in base space.

    The hue runs from green through blue and magenta to red (0.25 -> 0.97), skipping
    the yellow that marks off-board points; points near the origin are paler.
    """
    from matplotlib.colors import hsv_to_rgb

    angle = (np.arctan2(x0[:, 1], x0[:, 0]) + np.pi) / (2 * np.pi)
    radius = np.linalg.norm(x0, axis=1)
    hsv = np.stack([0.25 + 0.72 * angle, 0.35 + 0.6 * np.tanh(radius), np.full(len(x0), 0.85)], axis=1)
    return hsv_to_rgb(hsv)


def _assignment_panel(ax, x0: np.ndarray, x: np.ndarray, title: str) -> None:
    """Fig. 3 bottom: where each base point lands, coloured by its base angle; off-board points yellow."""
    from anystep.core.data import checkerboard_density

    cols = _base_colours(x0)
    finite = np.all(np.isfinite(x), axis=1)
    dens = np.zeros(len(x))
    dens[finite] = checkerboard_density(x[finite])
    off = dens <= 0
    ax.scatter(x[~off, 0], x[~off, 1], c=cols[~off], s=0.3, linewidths=0, rasterized=True)
    ax.scatter(x[off & finite, 0], x[off & finite, 1], c=OUTSIDE_COLOUR, s=1.2, linewidths=0, rasterized=True)
    ax.set_xlim(-LIM, LIM)
    ax.set_ylim(-LIM, LIM)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _coupling_panel(ax, x0: np.ndarray, err: np.ndarray, title: str):
    """Fig. 5: coupling error ``|X^SI(x0) - X_hat(x0)|^2`` as colour over the base points."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    e = np.where(np.isfinite(err), err, 1e3)
    order = np.argsort(e)  # large errors on top
    sc = ax.scatter(x0[order, 0], x0[order, 1], c=np.clip(e[order], 1e-3, 1e2), s=0.5, linewidths=0,
                    cmap=plt.get_cmap("magma"), norm=LogNorm(vmin=1e-3, vmax=1e2), rasterized=True)
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return sc


def _grid(n: int, ncols: int) -> tuple[int, int]:
    return max(1, math.ceil(n / ncols)), min(n, ncols)


def make_figures(out_dir: Path, specs: list[MethodSpec], samples: dict[str, dict[int, np.ndarray]],
                 x0: np.ndarray, x_si: np.ndarray, euler: dict[int, np.ndarray], data: np.ndarray,
                 metrics: dict[str, dict[int, StepMetrics]], teacher_metrics: StepMetrics,
                 n_points: int = 20_000) -> list[str]:
    """Write the figures; return their file names.

    * ``checkerboard_fig3.png``: the paper's Fig. 3 (top: sample histograms of SI
      (dopri5), FMM N=1, FMM N=4 (4 steps), PFMM, LMD, EMD; bottom: their base-point
      assignments), with KL in the titles.
    * ``checkerboard_samples.png``: every method at 1, 2, 4, 8 steps (SI: Euler).
    * ``checkerboard_assignment.png``: every method's one-step assignment.
    * ``checkerboard_coupling.png``: Fig. 5 for every method (one step).
    """
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    m = min(n_points, len(x0))
    sub = slice(0, m)
    flow = [s for s in specs if s.kind == "flowmap"]

    def title(label: str, met: StepMetrics | None, steps: int | None = None) -> str:
        st = "" if steps is None else f", {steps} step{'s' if steps != 1 else ''}"
        return f"{label}{st}\nKL {met.kl:.3f}" if met is not None else f"{label}{st}"

    # Fig. 3 (paper layout)
    fig3 = [("SI (dopri5)", x_si, teacher_metrics, None)]
    for key, k in (("fmm1", 1), ("fmm4", 4), ("pfmm", 1), ("lmd", 1), ("emd", 1)):
        if key in samples:
            fig3.append((METHODS[key].label, samples[key][k], metrics[key][k], k))
    fig, axes = plt.subplots(2, len(fig3), figsize=(2.2 * len(fig3), 4.6), squeeze=False)
    for j, (label, x, met, k) in enumerate(fig3):
        _hist_panel(axes[0, j], x, title(label, met, k))
        _assignment_panel(axes[1, j], x0[sub], x[sub], "assignment")
    fig.suptitle("Checkerboard (paper Fig. 3): samples (top) and base-point assignment (bottom; yellow = off board)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_fig3.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_fig3.png")

    # every method at every step count
    rows = [("SI (Euler)", {k: euler[k] for k in EVAL_STEPS if k in euler}, None)] + [
        (s.label, samples[s.key], metrics[s.key]) for s in flow
    ]
    fig, axes = plt.subplots(len(rows) + 1, len(EVAL_STEPS), figsize=(1.9 * len(EVAL_STEPS), 1.95 * (len(rows) + 1)),
                             squeeze=False)
    _hist_panel(axes[0, 0], data, "target data")
    _hist_panel(axes[0, 1], x_si, title("SI dopri5", teacher_metrics))
    for j in range(2, len(EVAL_STEPS)):
        axes[0, j].axis("off")
    for i, (label, xs, mets) in enumerate(rows, start=1):
        for j, k in enumerate(EVAL_STEPS):
            if k in xs:
                met = mets[k] if mets is not None else None
                _hist_panel(axes[i, j], xs[k], title(label, met, k) if met else f"{label}, {k} steps")
            else:
                axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_samples.png", dpi=90)
    plt.close(fig)
    written.append("checkerboard_samples.png")

    # assignment, every method, one step
    panels = [("SI (dopri5)", x_si, teacher_metrics)] + [(s.label, samples[s.key][1], metrics[s.key][1]) for s in flow]
    nr, nc = _grid(len(panels), 5)
    fig, axes = plt.subplots(nr, nc, figsize=(2.3 * nc, 2.45 * nr), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, x, met) in zip(axes.flat, panels):
        _assignment_panel(ax, x0[sub], x[sub], f"{label}, 1 step\noff board {100 * met.outside:.1f}%")
    fig.suptitle("Where each base point lands (colour = angle of x0; yellow = off the board)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "checkerboard_assignment.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_assignment.png")

    # Fig. 5: coupling error over the base points
    nr, nc = _grid(len(flow), 4)
    fig, axes = plt.subplots(nr, nc, figsize=(2.6 * nc, 2.6 * nr), squeeze=False)
    for ax in axes.flat[len(flow):]:
        ax.axis("off")
    sc = None
    for ax, s in zip(axes.flat, flow):
        err = np.sum((samples[s.key][1][sub] - x_si[sub]) ** 2, axis=1)
        frac = float(np.mean(~(err <= 1.0)))
        sc = _coupling_panel(ax, x0[sub], err, f"{s.label}\nL2 {metrics[s.key][1].coupling_l2:.3f}, "
                                               f"|err|^2>1: {100 * frac:.1f}%")
    if sc is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.8, label="|X^SI_{0,1}(x0) - X_{0,1}(x0)|^2")
    fig.suptitle("Coupling error vs. the dopri5 teacher over base points x0 (paper Fig. 5), one step", fontsize=9)
    fig.savefig(out_dir / "checkerboard_coupling.png", dpi=110)
    plt.close(fig)
    written.append("checkerboard_coupling.png")
    return written

