"""2D toy distributions (exact samplers), the labelled ``blobs`` and ``N(mean, cov)`` in any dimension."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DataError, Dataset, LabelledSample, _check_generator, _check_n, _to_numpy


def _rand(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=g, device=g.device)


def _randn(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn((n, *shape), generator=g, device=g.device)


def _sample_checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Checkerboard of the stochastic-interpolant / FMM code (paper Fig. 3).

    Definition: the 4x4 board of squares of side 2 covering ``[-4, 4]^2``. The
    square ``[2i, 2i+2) x [2j, 2j+2)`` (``i, j`` in ``{-2, -1, 0, 1}``) is filled
    iff ``i + j`` is even, giving 8 filled squares (e.g. ``[0,2)^2`` and
    ``[-2,0)^2`` are filled, ``[0,2)x[-2,0)`` is empty). rho_1 is uniform on the
    filled squares: density ``1/32`` there (8 squares of area 4), 0 elsewhere.

    Sampler: ``x ~ U[-4, 4)``; column ``i = floor(x/2)``; row
    ``j = 2b + (i mod 2) - 2`` with ``b ~ Bernoulli(1/2)``; ``y = 2 (j + U[0,1))``.
    This is the same law as the reference code's
    ``x1 = U[-2,2); x2 = U[0,1) - 2B + (floor(x1) mod 2); return 2 (x1, x2)``.
    """
    x = _rand(n, g) * 8.0 - 4.0
    col = torch.floor(x / 2.0)
    b = torch.randint(0, 2, (n,), generator=g, device=g.device).to(x.dtype)
    row = 2.0 * b + torch.remainder(col, 2.0) - 2.0
    y = 2.0 * (row + _rand(n, g))
    # float32 rounding of row + u (u < 1) can land exactly on the square's upper edge,
    # i.e. in the empty square above; keep y strictly inside [2 row, 2 row + 2).
    top = 2.0 * row + 2.0
    y = torch.minimum(y, torch.nextafter(top, top - 1.0))
    return torch.stack([x, y], dim=1)


def checkerboard_density(xy: np.ndarray | Tensor) -> np.ndarray:
    """Exact density of the ``checkerboard`` data set (see ``_sample_checkerboard``).

    Args:
        xy: points, shape ``[..., 2]``.

    Returns:
        Density values, shape ``[...]``, float64: ``1/32`` on the 8 filled squares
        of ``[-4, 4]^2``, 0 elsewhere.
    """
    arr = np.asarray(_to_numpy(xy, "checkerboard_density"), dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise DataError(
            f"checkerboard_density: pass points of shape [..., 2], got {list(arr.shape)}"
        )
    x, y = arr[..., 0], arr[..., 1]
    with np.errstate(invalid="ignore"):
        inside = (x >= -4.0) & (x < 4.0) & (y >= -4.0) & (y < 4.0)
        i = np.floor(np.where(inside, x, 0.0) / 2.0)
        j = np.floor(np.where(inside, y, 0.0) / 2.0)
    filled = inside & (np.mod(i + j, 2.0) == 0.0)
    return np.where(filled, 1.0 / 32.0, 0.0)


def _sample_8gaussians(n: int, g: torch.Generator) -> Tensor:
    """Mixture of 8 equal-weight Gaussians (FFJORD's ``8gaussians``).

    Centres ``(4/sqrt 2) (cos(k pi/4), sin(k pi/4))``, ``k = 0..7``; isotropic
    standard deviation ``0.5/sqrt 2``.
    """
    k = torch.randint(0, 8, (n,), generator=g, device=g.device).to(torch.float32)
    angle = k * (math.pi / 4.0)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * (4.0 / math.sqrt(2.0))
    return centres + _randn(n, g, 2) * (0.5 / math.sqrt(2.0))


def _sample_moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved half circles (scikit-learn ``make_moons`` law, FFJORD scaling).

    Moon 0: ``(cos a, sin a)``; moon 1: ``(1 - cos a, 0.5 - sin a)``, ``a ~ U[0, pi)``,
    moon ``~ Bernoulli(1/2)``; plus ``N(0, 0.1^2 I)`` noise; then ``2 x + (-1, -0.2)``.
    In final units: moon 0 is the upper half circle of radius 2 about ``(-1, -0.2)``,
    moon 1 the lower half circle of radius 2 about ``(1, 0.8)``.
    """
    a = _rand(n, g) * math.pi
    moon = torch.randint(0, 2, (n,), generator=g, device=g.device).to(torch.float32)
    x = torch.cos(a) * (1.0 - 2.0 * moon) + moon
    y = torch.sin(a) * (1.0 - 2.0 * moon) + 0.5 * moon
    pts = torch.stack([x, y], dim=1) + _randn(n, g, 2) * 0.1
    return pts * 2.0 + torch.tensor([-1.0, -0.2], device=g.device)


def _sample_spirals(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved spirals (FFJORD's ``2spirals``).

    ``theta = 3 pi sqrt(u)``, ``u ~ U[0, 1)``; arm point
    ``(-theta cos theta, theta sin theta) + U[0, 0.5)^2``; the second arm is its
    mirror image ``-p`` (arm ``~ Bernoulli(1/2)``); divide by 3 and add
    ``N(0, 0.1^2 I)`` noise.
    """
    theta = torch.sqrt(_rand(n, g)) * (3.0 * math.pi)
    jitter = _rand(n, g, 2) * 0.5
    pts = torch.stack([-torch.cos(theta) * theta, torch.sin(theta) * theta], dim=1) + jitter
    sign = 1.0 - 2.0 * torch.randint(0, 2, (n, 1), generator=g, device=g.device).to(torch.float32)
    return pts * sign / 3.0 + _randn(n, g, 2) * 0.1


RING_RADII = (0.75, 1.5, 2.25, 3.0)
"""Radii of the four concentric ``rings`` (FFJORD's ``rings`` scaled by 3)."""


def _sample_rings(n: int, g: torch.Generator) -> Tensor:
    """Four concentric circles, radii ``RING_RADII``, equal weights, ``N(0, 0.08^2 I)`` noise."""
    k = torch.randint(0, len(RING_RADII), (n,), generator=g, device=g.device)
    radius = torch.tensor(RING_RADII, dtype=torch.float32, device=g.device)[k]
    angle = _rand(n, g) * (2.0 * math.pi)
    pts = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * radius[:, None]
    return pts + _randn(n, g, 2) * 0.08


_TOY_SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "checkerboard": _sample_checkerboard,
    "8gaussians": _sample_8gaussians,
    "moons": _sample_moons,
    "spirals": _sample_spirals,
    "rings": _sample_rings,
}


@dataclass(frozen=True, init=False)
class Toy2DDataset(Dataset):
    """One of the 2D toy distributions, sampled exactly (kind ``"2d"``, shape ``(2,)``)."""

    def __init__(self, name: str) -> None:
        if name not in _TOY_SAMPLERS:
            raise DataError(f"unknown 2D data set {name!r}; choose one of {sorted(_TOY_SAMPLERS)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "shape", (2,))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` points; returns ``[n, 2]`` float32 (see the ``_sample_<name>`` docstrings)."""
        n = _check_n(n, self.name)
        g = _check_generator(generator, self.name)
        return _TOY_SAMPLERS[self.name](n, g).to(torch.float32).contiguous()


@dataclass(frozen=True, init=False)
class BlobsDataset(Dataset):
    """Labelled 2D set: class ``k`` (uniform over ``K``) is ``N(mu_k, sigma^2 I)``.

    ``mu_k = radius (cos(2 pi k / K), sin(2 pi k / K))``. Each class is a Gaussian, so the
    class-conditional velocity and flow map of the linear interpolant from ``N(0, I)`` are
    known in closed form (the tests of conditional training use that).

    Attributes:
        classes: ``K``.
        radius: distance of the class means from the origin.
        sigma: per-class standard deviation.
    """

    classes: int
    radius: float
    sigma: float

    def __init__(self, classes: int = 4, radius: float = 2.0, sigma: float = 0.3) -> None:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise DataError(f"blobs: classes must be an integer >= 1, got {classes!r}")
        if not (float(radius) >= 0 and float(sigma) > 0):
            raise DataError(f"blobs: need radius >= 0 and sigma > 0, got radius={radius}, sigma={sigma}")
        object.__setattr__(self, "name", "blobs")
        object.__setattr__(self, "shape", (2,))
        object.__setattr__(self, "classes", int(classes))
        object.__setattr__(self, "radius", float(radius))
        object.__setattr__(self, "sigma", float(sigma))

    @property
    def num_classes(self) -> int:
        return self.classes

    def means(self) -> Tensor:
        """Class means ``[K, 2]`` float32."""
        ang = 2 * math.pi * torch.arange(self.classes, dtype=torch.float64) / self.classes
        return (self.radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)).to(torch.float32)

    def sample_labelled(self, n: int, generator: torch.Generator) -> LabelledSample:
        """Draw labels uniformly, then ``x ~ N(mu_y, sigma^2 I)``; ``[n, 2]`` and ``[n]``."""
        n = _check_n(n, self.name)
        g = _check_generator(generator, self.name)
        y = torch.randint(0, self.classes, (n,), generator=g, device=g.device)
        noise = torch.randn((n, 2), generator=g, device=g.device)
        return LabelledSample(self.means().to(g.device)[y] + self.sigma * noise, y)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """The mixture's samples ``[n, 2]`` (labels dropped)."""
        return self.sample_labelled(n, generator).x

    def describe(self) -> dict[str, Any]:
        return {"name": "blobs", "kwargs": {"classes": self.classes, "radius": self.radius, "sigma": self.sigma}}


@dataclass(frozen=True, init=False)
class GaussianDataset(Dataset):
    """``N(mean, cov)`` in dimension ``d``: shape ``(d,)``, kind ``"2d"`` if ``d == 2``.

    Attributes:
        mean: length-``d`` mean.
        cov: ``d x d`` covariance (symmetric positive definite).
    """

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        cov: float | Sequence[float] | Sequence[Sequence[float]] | None = None,
        dim: int | None = None,
    ) -> None:
        """Build the Gaussian.

        Args:
            mean: list of ``d`` floats (default zeros).
            cov: ``d x d`` nested list, a length-``d`` list (diagonal), a scalar
                (isotropic variance) or None (identity).
            dim: dimension ``d`` when neither mean nor a matrix/diagonal cov fixes it
                (default 2).
        """
        d = dim
        mean_arr = None if mean is None else np.asarray(mean, dtype=np.float64)
        if mean_arr is not None:
            if mean_arr.ndim != 1 or mean_arr.size == 0:
                raise DataError(f"gaussian: mean must be a non-empty list of floats, got {mean!r}")
            d = mean_arr.size if d is None else d
        cov_arr = None if cov is None else np.asarray(cov, dtype=np.float64)
        if cov_arr is not None and cov_arr.ndim in (1, 2) and d is None:
            d = cov_arr.shape[0]
        d = 2 if d is None else d
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise DataError(f"gaussian: dim must be a positive int, got {dim!r}")
        d = int(d)
        if mean_arr is None:
            mean_arr = np.zeros(d)
        if mean_arr.size != d:
            raise DataError(f"gaussian: mean has {mean_arr.size} entries but the dimension is {d}")
        if cov_arr is None:
            cov_arr = np.eye(d)
        elif cov_arr.ndim == 0:
            cov_arr = np.eye(d) * float(cov_arr)
        elif cov_arr.ndim == 1:
            if cov_arr.size != d:
                raise DataError(f"gaussian: diagonal cov has {cov_arr.size} entries, expected {d}")
            cov_arr = np.diag(cov_arr)
        if cov_arr.shape != (d, d):
            raise DataError(
                f"gaussian: cov must be a {d}x{d} nested list (d = {d} from mean/dim), "
                f"got shape {list(cov_arr.shape)}"
            )
        if not (np.all(np.isfinite(cov_arr)) and np.all(np.isfinite(mean_arr))):
            raise DataError("gaussian: mean and cov must be finite numbers")
        if not np.allclose(cov_arr, cov_arr.T, atol=1e-10):
            raise DataError("gaussian: cov must be symmetric (cov[i][j] == cov[j][i])")
        try:
            chol = np.linalg.cholesky(cov_arr)
        except np.linalg.LinAlgError as exc:
            raise DataError(
                "gaussian: cov must be positive definite (all eigenvalues > 0)"
            ) from exc
        object.__setattr__(self, "name", "gaussian")
        object.__setattr__(self, "shape", (d,))
        object.__setattr__(self, "mean", tuple(float(v) for v in mean_arr))
        object.__setattr__(self, "cov", tuple(tuple(float(v) for v in row) for row in cov_arr))
        object.__setattr__(self, "_mean_t", torch.tensor(mean_arr, dtype=torch.float64))
        object.__setattr__(self, "_chol_t", torch.tensor(chol, dtype=torch.float64))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``x = mean + L z``, ``z ~ N(0, I_d)``, ``L L^T = cov``; returns ``[n, d]`` float32."""
        n = _check_n(n, "gaussian")
        g = _check_generator(generator, "gaussian")
        z = torch.randn((n, self.shape[0]), generator=g, device=g.device, dtype=torch.float64)
        x = self._mean_t.to(z.device) + z @ self._chol_t.to(z.device).T
        return x.to(torch.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "gaussian",
            "kwargs": {"mean": list(self.mean), "cov": [list(r) for r in self.cov]},
        }
