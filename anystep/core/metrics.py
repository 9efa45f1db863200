"""Sample-quality metrics of the paper's experiments (Sec. 4, Table 3, Appendix D).

* ``kl_divergence_2d``: ``KL(rho_1 || rho_hat_1)`` of a 2D model distribution
  ``rho_hat_1 = X_hat_{0,1} # rho_0`` against the target (checkerboard, Table 3),
  with a fixed-grid histogram estimator.
* ``w2_squared``: squared 2-Wasserstein distance ``W_2^2`` between two point
  clouds, exact optimal transport (POT's ``ot.emd2``).
* ``coupling_l2``: ``E |X_ref(x0) - X_hat(x0)|^2``, the coupling error of
  Table 3 / Appendix D.1 (teacher vs. student on the same ``x0``).
* ``frechet_distance`` / ``gaussian_frechet``: Frechet distance between Gaussians
  fitted to two feature sets (FID when the features are Inception features).
* ``blur_curve`` / ``BlurCurve.equivalent``: the *blur equivalent* of a 2D KL, i.e. the
  ``sigma`` for which exact target samples plus ``N(0, sigma^2 I)`` noise score the same KL
  on the same estimator and sample size (a readable sharpness scale: "a 0.08 blur").

Every function accepts numpy arrays or torch tensors and returns a plain
``float``; shapes are validated with ``ValueError`` messages saying what to pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

__all__ = [
    "BLUR_SIGMAS",
    "BlurCurve",
    "blur_curve",
    "coupling_l2",
    "frechet_distance",
    "gaussian_frechet",
    "kl_divergence_2d",
    "w2_squared",
]


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array / torch tensor / nested list to a float64 numpy array."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if x is None:
        raise ValueError(f"{name}: got None; pass a numpy array or torch tensor")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: expected a numeric numpy array or torch tensor, got {type(x).__name__}"
        ) from exc
    return arr


def _as_points(x: Any, name: str, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Validate ``x`` as a 2D ``[n, d]`` array (n >= min_rows, d == dim if given)."""
    arr = _as_float64(x, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2D array of shape [n, d] (one row per sample), got shape {list(arr.shape)}; "
            "flatten samples first, e.g. x.reshape(len(x), -1)"
        )
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} row(s), got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: feature dimension d must be >= 1, got shape {list(arr.shape)}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name}: expected {dim} features per row (shape [n, {dim}]), got shape {list(arr.shape)}"
        )
    return arr


# --------------------------------------------------------------------------------------
# KL divergence (2D, histogram)
# --------------------------------------------------------------------------------------


def _histogram_mass(points: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float]:
    """Fraction of ``points`` ``[n, 2]`` in each grid cell ``[bins, bins]`` and outside the grid.

    Non-finite rows count as outside. Cells are half-open ``[e_i, e_{i+1})`` except
    the last, which also holds the upper edge (numpy's convention).
    """
    n = points.shape[0]
    finite = np.all(np.isfinite(points), axis=1)
    counts, _, _ = np.histogram2d(points[finite, 0], points[finite, 1], bins=[edges, edges])
    mass = counts / n
    return mass, max(0.0, 1.0 - float(mass.sum()))


def kl_divergence_2d(
    target: np.ndarray | Any | None,
    samples: np.ndarray | Any,
    *,
    bins: int = 100,
    range_: tuple[float, float] = (-4.5, 4.5),
    eps: float = 1e-10,
    target_density: Callable[[np.ndarray], np.ndarray] | None = None,
    density_subdivisions: int = 8,
) -> float:
    """Histogram estimate of ``KL(rho_1 || rho_hat_1)`` in 2D (paper Table 3, Appendix D.1).

    Estimator. The square ``[lo, hi]^2`` (``range_``) is cut into ``bins x bins``
    equal cells ``c``, plus one *overflow* cell ``o`` = everything outside the
    square (and non-finite points).

    * Target masses ``p_c``: either the fraction of ``target`` samples in cell
      ``c`` (all fractions are of the *total* sample count, so
      ``p_o = 1 - sum_c p_c``), or, when ``target_density`` is given, the
      integral of the exact density over the cell by the midpoint rule on a
      ``density_subdivisions x density_subdivisions`` sub-grid of each cell;
      then ``p_o = max(0, 1 - sum_c p_c)`` (if the quadrature total exceeds 1 by
      less than 1%, the cell masses are divided by it and ``p_o = 0``).
    * Model masses ``q_c``, ``q_o``: fractions of ``samples`` in each cell /
      outside, again divided by the total number of samples.
    * ``KL = sum_{c or o: p > 0} p log(p / (q + eps))``.

    Smoothing: only ``eps`` is added to ``q`` (no smoothing of ``p``); a cell with
    target mass but no model samples contributes ``p log(p / eps)``, a large
    penalty. Overflow: model samples outside the grid are not dropped; they
    reduce every in-grid ``q_c`` (the denominators use the total count), so for
    a target with no mass outside (the checkerboard) a fraction ``f`` of model
    samples outside raises the estimate by at least ``-log(1 - f)``; where the
    target itself has mass outside, ``p_o log(p_o / (q_o + eps))`` compares the
    two overflow masses. With finite samples the estimator is biased upwards by
    roughly (number of occupied cells) / (2 x sample count) per empirical side.

    Args:
        target: target samples ``x1 ~ rho_1``, shape ``[m, 2]``; None when
            ``target_density`` is given.
        samples: model samples ``x_hat_1``, shape ``[n, 2]``.
        bins: cells per axis.
        range_: ``(lo, hi)`` of the grid on both axes.
        eps: added to the model mass in every term.
        target_density: exact normalised density, called on points ``[k, 2]`` and
            returning ``[k]`` (e.g. ``anystep.core.data.checkerboard_density``).
        density_subdivisions: sub-cells per axis and cell for integrating
            ``target_density``.

    Returns:
        The KL estimate (nats) as a float.
    """
    if (target is None) == (target_density is None):
        raise ValueError(
            "kl_divergence_2d: pass exactly one of target (samples [m, 2]) or target_density "
            "(callable on [k, 2] points), e.g. target_density=checkerboard_density"
        )
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"kl_divergence_2d: bins must be a positive int, got {bins!r}")
    try:
        lo, hi = (float(v) for v in range_)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"kl_divergence_2d: range_ must be (lo, hi), got {range_!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"kl_divergence_2d: range_ must be finite with lo < hi, got {range_!r}")
    if not (eps >= 0.0):
        raise ValueError(f"kl_divergence_2d: eps must be >= 0, got {eps!r}")
    q_arr = _as_points(samples, "kl_divergence_2d(samples)", dim=2)
    edges = np.linspace(lo, hi, int(bins) + 1)
    q_cells, q_out = _histogram_mass(q_arr, edges)

    if target_density is not None:
        if (
            isinstance(density_subdivisions, bool)
            or not isinstance(density_subdivisions, (int, np.integer))
            or density_subdivisions < 1
        ):
            raise ValueError(
                f"kl_divergence_2d: density_subdivisions must be a positive int, got {density_subdivisions!r}"
            )
        s = int(density_subdivisions)
        h = (hi - lo) / bins
        sub = lo + (np.arange(bins * s) + 0.5) * (h / s)
        gx, gy = np.meshgrid(sub, sub, indexing="ij")
        pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
        dens = np.asarray(target_density(pts), dtype=np.float64)
        if dens.shape != (pts.shape[0],):
            raise ValueError(
                f"kl_divergence_2d: target_density must map points [k, 2] to densities [k]; "
                f"got shape {list(dens.shape)} for k={pts.shape[0]}"
            )
        if not np.all(np.isfinite(dens)) or np.any(dens < 0):
            raise ValueError(
                "kl_divergence_2d: target_density returned negative or non-finite values"
            )
        p_cells = dens.reshape(bins, s, bins, s).sum(axis=(1, 3)) * (h / s) ** 2
        total = float(p_cells.sum())
        if total <= 0.0:
            raise ValueError(
                "kl_divergence_2d: target_density has no mass on the grid; widen range_"
            )
        if total > 1.01:
            raise ValueError(
                f"kl_divergence_2d: target_density integrates to {total:.4f} > 1 on the grid; "
                "pass a normalised density"
            )
        if total > 1.0:
            p_cells, p_out = p_cells / total, 0.0
        else:
            p_out = 1.0 - total
    else:
        p_arr = _as_points(target, "kl_divergence_2d(target)", dim=2)
        p_cells, p_out = _histogram_mass(p_arr, edges)

    p = np.append(p_cells.ravel(), p_out)
    q = np.append(q_cells.ravel(), q_out)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / (q[mask] + eps))))


# --------------------------------------------------------------------------------------
# Wasserstein-2 and coupling error
# --------------------------------------------------------------------------------------


def w2_squared(x: Any, y: Any, *, max_samples: int = 4000, seed: int = 0) -> float:
    """Squared 2-Wasserstein distance ``W_2^2`` between two empirical measures (Table 3).

    Exact discrete optimal transport (POT ``ot.emd2``, network simplex) with cost
    ``|x_i - y_j|^2`` and uniform weights ``1/n``, ``1/m``. If a set has more than
    ``max_samples`` rows, ``max_samples`` rows are drawn from it without
    replacement with ``np.random.default_rng(seed)`` (first for ``x``, then ``y``),
    since the exact solver needs an ``n x m`` cost matrix. Note that the
    empirical ``W_2^2`` of two samples of the *same* law is positive (it decays
    like ``n^{-2/d}``, with a log factor in 2D).

    Args:
        x: points ``[n, d]``.
        y: points ``[m, d]``.
        max_samples: subsampling cap per set.
        seed: subsampling seed.

    Returns:
        ``W_2^2`` as a float (same units as ``|x|^2``).
    """
    try:
        import ot
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("w2_squared needs POT: pip install 'anystep[train]' (or pot)") from exc
    xa = _as_points(x, "w2_squared(x)")
    ya = _as_points(y, "w2_squared(y)", dim=xa.shape[1])
    if (
        isinstance(max_samples, bool)
        or not isinstance(max_samples, (int, np.integer))
        or max_samples < 1
    ):
        raise ValueError(f"w2_squared: max_samples must be a positive int, got {max_samples!r}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("w2_squared: inputs contain NaN or inf; drop or fix those rows first")
    rng = np.random.default_rng(seed)
    if xa.shape[0] > max_samples:
        xa = xa[rng.choice(xa.shape[0], size=int(max_samples), replace=False)]
    if ya.shape[0] > max_samples:
        ya = ya[rng.choice(ya.shape[0], size=int(max_samples), replace=False)]
    a = np.full(xa.shape[0], 1.0 / xa.shape[0])
    b = np.full(ya.shape[0], 1.0 / ya.shape[0])
    cost = ot.dist(xa, ya, metric="sqeuclidean")
    return float(ot.emd2(a, b, cost, numItermax=100_000_000))


def coupling_l2(x_ref: Any, x_hat: Any) -> float:
    """Coupling error ``E_{x0} |X_ref(x0) - X_hat(x0)|^2`` (Table 3, Appendix D.1).

    Row ``i`` of both arrays must come from the same ``x0``. The squared error is
    summed over all feature dimensions and averaged over rows.

    Args:
        x_ref: reference (teacher) outputs ``[n, d]`` (or ``[n, *shape]``).
        x_hat: model (student) outputs, same shape.

    Returns:
        The mean squared distance as a float.
    """
    ra = _as_float64(x_ref, "coupling_l2(x_ref)")
    ha = _as_float64(x_hat, "coupling_l2(x_hat)")
    if ra.ndim < 2 or ra.shape[0] < 1:
        raise ValueError(
            f"coupling_l2: x_ref must have shape [n, d] (or [n, *shape]) with n >= 1, got {list(ra.shape)}"
        )
    if ha.shape != ra.shape:
        raise ValueError(
            f"coupling_l2: x_hat must have the same shape as x_ref (row i of both from the same x0); "
            f"got {list(ha.shape)} vs {list(ra.shape)}"
        )
    diff = (ra - ha).reshape(ra.shape[0], -1)
    return float(np.mean(np.sum(diff * diff, axis=1)))


# --------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------


def gaussian_frechet(mu1: Any, cov1: Any, mu2: Any, cov2: Any, *, eps: float = 1e-6) -> float:
    """Frechet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (squared W2 of Gaussians).

    ``d^2 = |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})``. The matrix
    square root uses ``scipy.linalg.sqrtm``; as in pytorch-fid, if it is not
    finite (near-singular covariances) it is recomputed for
    ``(cov1 + eps I)(cov2 + eps I)``, and a complex result whose diagonal's
    imaginary parts are below ``1e-3`` is replaced by its real part (larger
    imaginary parts raise ``ValueError``).

    Args:
        mu1: mean ``[d]``.
        cov1: covariance ``[d, d]``.
        mu2: mean ``[d]``.
        cov2: covariance ``[d, d]``.
        eps: diagonal offset used only when the plain square root fails.

    Returns:
        The distance ``d^2`` as a float.
    """
    m1 = np.atleast_1d(_as_float64(mu1, "gaussian_frechet(mu1)"))
    m2 = np.atleast_1d(_as_float64(mu2, "gaussian_frechet(mu2)"))
    c1 = np.atleast_2d(_as_float64(cov1, "gaussian_frechet(cov1)"))
    c2 = np.atleast_2d(_as_float64(cov2, "gaussian_frechet(cov2)"))
    if m1.ndim != 1:
        raise ValueError(f"gaussian_frechet: mu1 must be a vector [d], got shape {list(m1.shape)}")
    d = m1.shape[0]
    if m2.shape != (d,):
        raise ValueError(
            f"gaussian_frechet: mu2 must have shape [{d}] like mu1, got {list(m2.shape)}"
        )
    for name, c in (("cov1", c1), ("cov2", c2)):
        if c.shape != (d, d):
            raise ValueError(
                f"gaussian_frechet: {name} must have shape [{d}, {d}], got {list(c.shape)}"
            )
        if not np.all(np.isfinite(c)):
            raise ValueError(f"gaussian_frechet: {name} contains NaN or inf")
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        raise ValueError("gaussian_frechet: means contain NaN or inf")

    covmean = linalg.sqrtm(c1 @ c2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((c1 + offset) @ (c2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(
                f"gaussian_frechet: sqrt(cov1 cov2) has imaginary diagonal parts up to {max_imag:.3g}; "
                "check that cov1 and cov2 are symmetric positive semi-definite"
            )
        covmean = covmean.real
    diff = m1 - m2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))


def frechet_distance(feat_a: Any, feat_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID formula).

    Means are row means, covariances ``np.cov(rowvar=False)`` (unbiased, ``n - 1``);
    then ``gaussian_frechet``.

    Args:
        feat_a: features ``[n, d]``, ``n >= 2``.
        feat_b: features ``[m, d]``, ``m >= 2``.

    Returns:
        The distance as a float.
    """
    a = _as_points(feat_a, "frechet_distance(feat_a)", min_rows=2)
    b = _as_points(feat_b, "frechet_distance(feat_b)", dim=a.shape[1], min_rows=2)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    return gaussian_frechet(a.mean(axis=0), cov_a, b.mean(axis=0), cov_b)


# --------------------------------------------------------------------------------------
# blur equivalent of a KL
# --------------------------------------------------------------------------------------

BLUR_SIGMAS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)


@dataclass(frozen=True)
class BlurCurve:
    """KL of blurred exact samples as a function of the blur ``sigma``.

    Attributes:
        sigmas: ``(0, sigma_1, ..., sigma_m)``, increasing; ``0`` is the unblurred
            samples (the estimator's floor at this sample size).
        kls: the KL of ``x1 + sigma * eps`` for each ``sigma`` (same estimator, same ``n``).
        n: number of samples each KL was computed on.
    """

    sigmas: tuple[float, ...]
    kls: tuple[float, ...]
    n: int

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.kls) or len(self.sigmas) < 2:
            raise ValueError("BlurCurve: need matching sigmas and kls, at least two points")
        if any(b <= a for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ValueError(f"BlurCurve: sigmas must increase, got {self.sigmas}")

    def equivalent(self, kl: float) -> float:
        """The blur ``sigma`` whose KL equals ``kl`` (piecewise-linear interpolation).

        The curve is made monotone first (running maximum of the KLs), so estimator
        noise cannot make the inverse ambiguous. Below the floor (``kl <= kls[0]``) the
        answer is ``0.0``; above the largest blur it is ``inf`` (say "> sigma_max").

        Args:
            kl: a KL on the same estimator and sample size.

        Returns:
            ``sigma`` (float), ``0.0`` or ``inf``; NaN for a non-finite ``kl``.
        """
        if not np.isfinite(kl):
            return float("inf") if kl == float("inf") else float("nan")
        k = np.maximum.accumulate(np.asarray(self.kls, dtype=np.float64))
        sig = np.asarray(self.sigmas, dtype=np.float64)
        if kl <= k[0]:
            return 0.0
        if kl > k[-1]:
            return float("inf")
        i = int(np.searchsorted(k, kl, side="left"))  # k[i-1] < kl <= k[i]
        lo, hi = k[i - 1], k[i]
        frac = 1.0 if hi <= lo else (kl - lo) / (hi - lo)
        return float(sig[i - 1] + frac * (sig[i] - sig[i - 1]))

    def describe(self, kl: float) -> str:
        """``"~0.08"``, ``"<= floor"`` or ``"> 0.3"`` for a table cell."""
        sigma = self.equivalent(kl)
        if not np.isfinite(sigma):
            return f"> {self.sigmas[-1]:g}" if sigma == float("inf") else "n/a"
        if sigma == 0.0:
            return "<= floor"
        return f"~{sigma:.3f}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form ``{"sigmas": [...], "kls": [...], "n": n}``."""
        return {"sigmas": list(self.sigmas), "kls": list(self.kls), "n": self.n}


def blur_curve(
    x1: Any,
    score: Callable[[np.ndarray], float],
    *,
    sigmas: Sequence[float] = BLUR_SIGMAS,
    seed: int = 0,
) -> BlurCurve:
    """Score exact samples blurred by ``N(0, sigma^2 I)`` for each ``sigma``.

    ``KL(rho_1 || rho_1 * N(0, sigma^2))`` grows with ``sigma`` from the estimator's floor
    (``sigma = 0``); reading a model's KL off this curve (:meth:`BlurCurve.equivalent`)
    says how smeared its samples look. Pass the same ``score`` (estimator, bins, range)
    and as many samples as the models are scored on.

    Args:
        x1: exact target samples ``[n, d]``.
        score: ``score(points [n, d]) -> KL`` (e.g. ``kl_divergence_2d`` with the exact density).
        sigmas: positive, increasing blur levels (default :data:`BLUR_SIGMAS`).
        seed: seed of the noise (one draw ``eps`` reused for every ``sigma``: common random numbers).

    Returns:
        :class:`BlurCurve` with ``sigmas = (0, *sigmas)``.

    Raises:
        ValueError: empty or non-positive / non-increasing ``sigmas``, bad ``x1``.
    """
    x = _as_points(x1, "blur_curve(x1)")
    sig = tuple(float(s) for s in sigmas)
    if not sig or any(s <= 0 for s in sig):
        raise ValueError(f"blur_curve: sigmas must be positive, got {sig}")
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    kls = [float(score(x))] + [float(score(x + s * eps)) for s in sig]
    return BlurCurve(sigmas=(0.0, *sig), kls=tuple(kls), n=int(x.shape[0]))
