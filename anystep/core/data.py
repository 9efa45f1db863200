"""Data sets for the data distribution rho_1 (and rho_0 when the base is a data set).

Time convention: ``t = 0`` is the base distribution rho_0, ``t = 1`` the data
distribution rho_1 (paper, Sec. 2: the interpolant ``I_t`` joins ``x0 ~ rho_0``
to ``x1 ~ rho_1``). Every data set here produces samples ``x1`` for the
interpolant of paper Eq. (2.1); ``base_sample`` produces ``x0``.

Labels. Data sets with class labels (``digits``, ``cifar10``, ``folder:`` with one
sub-folder per class, ``npz:`` with a ``y`` array, ``blobs``) report ``num_classes > 0``
and ``sample_labelled(n, g)`` returns a :class:`LabelledSample` ``(x, y)``; its ``x`` is
exactly what ``sample(n, g)`` draws from the same generator state.

Every sample is drawn *only* from the ``torch.Generator`` that is passed in, so
the same generator seed always gives the same batch. Per-sample base noise (row ``i`` a
function of ``seeds[i]`` only) is :func:`anystep.core.noise.base_noise`.

Units. "Model units" are what the networks see (images in ``[-1, 1]``,
channel-first ``[N, C, H, W]``). Each data set's ``to_units`` maps model units
back to the data set's own units and layout (digits: ``[n, 8, 8]`` grey levels
``0..16``; 8-bit images: ``[n, H, W]`` or ``[n, H, W, C]`` levels ``0..255``;
2D sets: identity) and ``from_units`` is its inverse.

Registry names (``list_datasets()``):

* 2D toys, kind ``"2d"``: ``checkerboard``, ``8gaussians``, ``moons``,
  ``spirals``, ``rings`` (definitions in ``_sample_*`` below).
* ``gaussian``: ``N(mean, cov)`` in any dimension ``d`` (kind ``"2d"`` for
  ``d = 2``, else ``"vector"``).
* ``blobs``: a labelled 2D set, ``K`` classes ``N(mu_k, sigma^2 I)`` (tests of conditioning).
* ``digits``: scikit-learn's bundled 8x8 digits (kind ``"image"``).
* ``digits-noisy``: digits plus Gaussian pixel noise, the degraded base of the
  restoration (image-to-image) map; ``sample_pair`` draws (noisy, clean) pairs.
* ``folder:/path`` (``ImageFolderDataset``), ``npz:/path`` (``NpzDataset``),
  ``cifar10:/root`` (``Cifar10Dataset``, binary format): real data read from
  disk, never downloaded.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.errors import AnystepError

__all__ = [
    "CIFAR10_CLASSES",
    "BlobsDataset",
    "Cifar10Dataset",
    "DataError",
    "Dataset",
    "DigitsDataset",
    "GaussianDataset",
    "ImageFolderDataset",
    "LabelledSample",
    "NoisyDigitsDataset",
    "NpzDataset",
    "PairedSample",
    "Toy2DDataset",
    "base_sample",
    "checkerboard_density",
    "get_dataset",
    "list_datasets",
    "seeded_base_samples",
]


class DataError(AnystepError):
    """A data set name, argument or file is invalid; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _check_n(n: Any, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"{where}: n must be a non-negative int (number of samples), got {n!r}")
    return int(n)


def _check_generator(generator: Any, where: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise DataError(
            f"{where}: pass a torch.Generator, e.g. torch.Generator().manual_seed(0); "
            f"got {type(generator).__name__}"
        )
    return generator


def _check_shape(shape: Any, where: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise DataError(
            f"{where}: shape must be a sequence of ints such as (2,) or (1, 8, 8), got {shape!r}"
        ) from exc
    if not out or any(s <= 0 for s in out):
        raise DataError(
            f"{where}: shape must be non-empty with positive sizes, e.g. (2,), got {shape!r}"
        )
    return out


def _to_numpy(x: Tensor | np.ndarray, where: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise DataError(
            f"{where}: expected a torch.Tensor or numpy array, got {type(x).__name__}"
        ) from exc


def _kind_for_shape(shape: tuple[int, ...]) -> str:
    if shape == (2,):
        return "2d"
    if len(shape) == 3:
        return "image"
    return "vector"


# --------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------


@dataclass
class LabelledSample:
    """Samples with their class labels.

    Attributes:
        x: ``[n, *shape]`` float32 samples in model units.
        y: ``[n]`` int64 labels in ``0..num_classes-1``.
    """

    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class Dataset:
    """A distribution that can be sampled with an explicit ``torch.Generator``.

    Attributes:
        name: registry name or spec string (e.g. ``"checkerboard"``, ``"folder:/data"``).
        shape: shape of ONE sample in model units, e.g. ``(2,)`` or ``(1, 8, 8)``.
    """

    name: str
    shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        """``"2d"`` (shape ``(2,)``), ``"image"`` (shape ``(C, H, W)``) or ``"vector"``."""
        return _kind_for_shape(tuple(self.shape))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` samples ``x1 ~ rho_1``.

        Args:
            n: number of samples.
            generator: the only source of randomness; its device is the output device.

        Returns:
            Tensor of shape ``[n, *shape]``, float32, model units.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    @property
    def num_classes(self) -> int:
        """Number of classes of the labels (0: the data set has no labels)."""
        return 0

    def sample_labelled(self, n: int, generator: torch.Generator) -> LabelledSample:
        """Draw ``n`` samples with their labels (``x`` equals ``sample(n, generator)``'s).

        Raises:
            DataError: the data set has no labels.
        """
        raise DataError(
            f"data set {self.name!r} has no class labels; a class-conditional model needs a labelled "
            "set (digits, cifar10, folder: with one sub-folder per class, npz: with a 'y' array, blobs)"
        )

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Map model-unit samples ``[n, *shape]`` to the data set's own units (identity here)."""
        arr = _to_numpy(x, f"{self.name}.to_units").astype(np.float32, copy=False)
        self._check_batch(arr, f"{self.name}.to_units")
        return arr

    def from_units(self, x: np.ndarray) -> Tensor:
        """Inverse of ``to_units``: returns ``[n, *shape]`` float32 model units (identity here)."""
        arr = _to_numpy(x, f"{self.name}.from_units").astype(np.float32)
        self._check_batch(arr, f"{self.name}.from_units")
        return torch.from_numpy(arr)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable ``{"name": ..., "kwargs": {...}}``; ``get_dataset(**)`` rebuilds it."""
        return {"name": self.name, "kwargs": {}}

    def _check_batch(self, arr: np.ndarray, where: str) -> None:
        if tuple(arr.shape[1:]) != tuple(self.shape):
            raise DataError(
                f"{where}: expected an array of shape [n, {', '.join(map(str, self.shape))}], "
                f"got {list(arr.shape)}"
            )


# --------------------------------------------------------------------------------------
# 2D toy distributions (exact samplers)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Gaussian in any dimension
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# data sets backed by an array of samples
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class _ArrayDataset(Dataset):
    """A finite set of samples; ``sample`` draws rows uniformly with replacement.

    Subclasses call ``_set_data(raw, labels)`` in ``__init__`` (``raw``: ``[N, *shape]``
    in storage units, e.g. uint8) and override ``_raw_to_model``.
    """

    def _set_data(self, raw: Tensor, labels: Tensor) -> None:
        if raw.shape[0] == 0:
            raise DataError(f"{self.name}: the data set is empty; it needs at least one sample")
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_labels", labels.to(torch.int64))

    def _raw_to_model(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32)

    def __len__(self) -> int:
        return int(self._raw.shape[0])

    @property
    def tensor(self) -> Tensor:
        """All rows in model units, shape ``[N, *shape]``, float32."""
        return self._raw_to_model(self._raw)

    @property
    def labels(self) -> Tensor:
        """Class label of every row, shape ``[N]``, int64 (``-1`` where unlabelled)."""
        return self._labels

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` rows uniformly with replacement; returns ``[n, *shape]`` float32."""
        n = _check_n(n, self.name)
        g = _check_generator(generator, self.name)
        idx = torch.randint(0, len(self), (n,), generator=g, device=g.device)
        return self._raw_to_model(self._raw[idx.cpu()]).to(g.device)

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` when every row is labelled, else 0."""
        if self._labels.numel() == 0 or bool((self._labels < 0).any()):
            return 0
        return int(self._labels.max()) + 1

    def sample_labelled(self, n: int, generator: torch.Generator) -> LabelledSample:
        """Draw ``n`` rows and their labels (same rows as :meth:`sample` with that generator)."""
        if self.num_classes == 0:
            unlabelled = int((self._labels < 0).sum())
            raise DataError(
                f"data set {self.name!r} has {unlabelled} unlabelled row(s); a class-conditional model needs "
                "every row labelled (for folder: put every image in one sub-folder per class)"
            )
        n = _check_n(n, self.name)
        g = _check_generator(generator, self.name)
        idx = torch.randint(0, len(self), (n,), generator=g, device=g.device).cpu()
        return LabelledSample(self._raw_to_model(self._raw[idx]).to(g.device), self._labels[idx].to(g.device))


class _Uint8ImageUnits:
    """Mixin: storage is 8-bit ``[N, C, H, W]``; model units ``x / 127.5 - 1``.

    ``to_units`` gives ``[n, H, W]`` (C = 1) or ``[n, H, W, C]`` float levels in ``0..255``.
    """

    def _raw_to_model(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32) / 127.5 - 1.0

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        arr = _to_numpy(x, f"{self.name}.to_units").astype(np.float32)
        self._check_batch(arr, f"{self.name}.to_units")
        levels = np.clip((arr + 1.0) * 127.5, 0.0, 255.0)
        levels = np.transpose(levels, (0, 2, 3, 1))
        return levels[..., 0] if levels.shape[-1] == 1 else levels

    def from_units(self, x: np.ndarray) -> Tensor:
        arr = _to_numpy(x, f"{self.name}.from_units").astype(np.float32)
        c, h, w = self.shape
        if c == 1 and arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (h, w, c):
            want = f"[n, {h}, {w}]" if c == 1 else f"[n, {h}, {w}, {c}]"
            raise DataError(
                f"{self.name}.from_units: expected levels 0..255 of shape {want}, got {list(arr.shape)}"
            )
        return torch.from_numpy(np.ascontiguousarray(np.transpose(arr, (0, 3, 1, 2)) / 127.5 - 1.0))


@functools.lru_cache(maxsize=1)
def _load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DataError(
            "the 'digits' data set needs scikit-learn: pip install 'anystep[train]' (or scikit-learn)"
        ) from exc
    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


DIGITS_SPLIT_SEED = 0
"""Seed of the fixed permutation that splits ``digits`` into train / test."""
DIGITS_TRAIN_FRACTION = 0.8
"""Fraction of the 1,797 digits in the train split (first ``floor(0.8 N) = 1437`` of the permutation)."""


@dataclass(frozen=True, init=False)
class DigitsDataset(_ArrayDataset):
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0..16), no download.

    Model units: ``x = g / 8 - 1`` in ``[-1, 1]``, shape ``[N, 1, 8, 8]``.
    Split: rows are permuted with ``np.random.default_rng(DIGITS_SPLIT_SEED).permutation(1797)``;
    the first ``floor(0.8 * 1797) = 1437`` indices are ``"train"``, the remaining 360
    ``"test"``; ``"all"`` keeps the original order.

    Attributes:
        split: ``"train"``, ``"test"`` or ``"all"``.
    """

    split: str

    def __init__(self, split: str = "train") -> None:
        if split not in ("train", "test", "all"):
            raise DataError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
        images, targets = _load_digits_arrays()
        if split != "all":
            perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(images.shape[0])
            n_train = math.floor(DIGITS_TRAIN_FRACTION * images.shape[0])
            rows = perm[:n_train] if split == "train" else perm[n_train:]
            images, targets = images[rows], targets[rows]
        object.__setattr__(self, "name", "digits")
        object.__setattr__(self, "shape", (1, 8, 8))
        object.__setattr__(self, "split", split)
        self._set_data(
            torch.from_numpy(np.array(images[:, None])), torch.from_numpy(np.array(targets))
        )

    def _raw_to_model(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32) / 8.0 - 1.0

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Model units ``[n, 1, 8, 8]`` -> grey levels ``[n, 8, 8]`` float, clipped to ``0..16``."""
        arr = _to_numpy(x, "digits.to_units").astype(np.float32)
        self._check_batch(arr, "digits.to_units")
        return np.clip((arr[:, 0] + 1.0) * 8.0, 0.0, 16.0)

    def from_units(self, x: np.ndarray) -> Tensor:
        """Grey levels ``[n, 8, 8]`` (``0..16``) -> model units ``[n, 1, 8, 8]`` float32."""
        arr = _to_numpy(x, "digits.from_units").astype(np.float32)
        if arr.ndim != 3 or arr.shape[1:] != (8, 8):
            raise DataError(
                f"digits.from_units: expected grey levels of shape [n, 8, 8], got {list(arr.shape)}"
            )
        return torch.from_numpy(arr[:, None] / 8.0 - 1.0)

    def describe(self) -> dict[str, Any]:
        return {"name": "digits", "kwargs": {"split": self.split}}


@dataclass
class PairedSample:
    """Coupled samples ``(x0, x1)`` drawn together (a data-dependent coupling).

    Attributes:
        x0: ``[n, *shape]`` base samples (e.g. degraded images).
        x1: ``[n, *shape]`` data samples, row ``i`` paired with ``x0[i]`` (e.g. the clean image).
        y: ``[n]`` labels of ``x1`` (``-1`` where unknown).
    """

    x0: Tensor
    x1: Tensor
    y: Tensor


@dataclass(frozen=True, init=False)
class NoisyDigitsDataset(DigitsDataset):
    """Degraded digits ``x0 = x1 + noise * z`` (``z ~ N(0, I)``, model units), base of a restoration map.

    ``sample`` draws the degraded marginal rho_0; ``sample_pair`` draws ``(x0, x1)`` with
    ``x0`` the degraded copy of the clean digit ``x1``: the paired coupling
    (``coupling="paired"``) of an image-to-image translation map whose base is data
    (paper Fig. 1). ``to_units`` / ``from_units`` are those of ``digits`` (grey levels
    ``0..16``, not clipped before the model sees them).

    Attributes:
        noise: standard deviation of the pixel noise in model units (``[-1, 1]`` images).
    """

    noise: float

    def __init__(self, split: str = "train", noise: float = 0.6) -> None:
        super().__init__(split)
        if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and 0.0 < float(noise) <= 4.0):
            raise DataError(f"digits-noisy: noise must be a number in (0, 4], got {noise!r}")
        object.__setattr__(self, "name", "digits-noisy")
        object.__setattr__(self, "noise", float(noise))

    def degrade(self, x1: Tensor, generator: torch.Generator) -> Tensor:
        """The degraded copy ``x1 + noise * z`` of clean digits ``x1 [n, 1, 8, 8]``."""
        z = torch.randn(x1.shape, generator=generator, device=generator.device)
        return x1 + self.noise * z.to(x1)

    def sample_pair(self, n: int, generator: torch.Generator) -> PairedSample:
        """``n`` (degraded, clean) pairs and the clean digits' labels."""
        clean = self.sample_labelled(n, generator)
        return PairedSample(self.degrade(clean.x, generator), clean.x, clean.y)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` degraded digits ``[n, 1, 8, 8]`` (the base marginal rho_0)."""
        return self.sample_pair(n, generator).x0

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Model units ``[n, 1, 8, 8]`` -> grey levels ``[n, 8, 8]`` (noise may leave 0..16)."""
        arr = _to_numpy(x, "digits-noisy.to_units").astype(np.float32)
        self._check_batch(arr, "digits-noisy.to_units")
        return (arr[:, 0] + 1.0) * 8.0

    def describe(self) -> dict[str, Any]:
        return {"name": "digits-noisy", "kwargs": {"split": self.split, "noise": self.noise}}


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True, init=False)
class ImageFolderDataset(_Uint8ImageUnits, _ArrayDataset):
    """PNG/JPEG files under a folder (searched recursively), read with Pillow.

    Every image is converted to ``mode`` and resized to ``size`` (bicubic) and
    scaled to ``[-1, 1]``: samples have shape ``[N, C, H, W]`` (C = 1 for ``"L"``,
    3 for ``"RGB"``). Files in a sub-folder ``root/<class>/...`` get the label of
    ``<class>`` (index in sorted order of the sub-folder names); files directly
    in ``root`` get label ``-1``.

    Attributes:
        root: the folder.
        size: ``(H, W)``.
        mode: ``"L"`` or ``"RGB"`` (``"auto"`` at construction picks ``"L"`` when
            every image is greyscale).
        classes: sub-folder names, index = label.
    """

    root: str
    size: tuple[int, int]
    mode: str

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | Sequence[int],
        mode: str = "auto",
        max_images: int | None = None,
    ) -> None:
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover
            raise DataError("ImageFolderDataset needs Pillow: pip install pillow") from exc
        root_p = Path(root).expanduser()
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            hw = (int(size), int(size))
        else:
            try:
                hw = tuple(int(s) for s in size)  # type: ignore[union-attr]
            except TypeError as exc:
                raise DataError(f"folder: size must be an int or (H, W), got {size!r}") from exc
        if len(hw) != 2 or min(hw) < 1:
            raise DataError(
                f"folder: size must be an int or (H, W) with positive entries, got {size!r}"
            )
        if mode not in ("auto", "L", "RGB"):
            raise DataError(f"folder: mode must be 'auto', 'L' or 'RGB', got {mode!r}")
        if not root_p.is_dir():
            raise DataError(
                f"folder: {str(root_p)!r} is not a directory; pass a folder that holds .png/.jpg images "
                "(optionally in one sub-folder per class)"
            )
        files = sorted(
            p for p in root_p.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if max_images is not None:
            files = files[: int(max_images)]
        if not files:
            raise DataError(
                f"folder: no .png/.jpg/.jpeg images found under {str(root_p)!r}; put image files there "
                "(optionally in one sub-folder per class)"
            )
        rel = [p.relative_to(root_p).parts for p in files]
        classes = sorted({parts[0] for parts in rel if len(parts) > 1})
        labels = [classes.index(parts[0]) if len(parts) > 1 else -1 for parts in rel]
        images = []
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    images.append(im.copy())
            except Exception as exc:
                raise DataError(
                    f"folder: cannot read image {str(p)!r} ({exc}); remove or fix the file"
                ) from exc
        if mode == "auto":
            mode = "L" if all(im.mode in _GREY_MODES for im in images) else "RGB"
        h, w = hw
        arrays = []
        for im in images:
            im = im.convert(mode)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BICUBIC)
            a = np.asarray(im, dtype=np.uint8)
            arrays.append(a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1)))
        raw = np.stack(arrays)
        object.__setattr__(self, "name", f"folder:{root_p}")
        object.__setattr__(self, "shape", (raw.shape[1], h, w))
        object.__setattr__(self, "root", str(root_p))
        object.__setattr__(self, "size", hw)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "classes", tuple(classes))
        self._set_data(torch.from_numpy(raw), torch.tensor(labels, dtype=torch.int64))

    def describe(self) -> dict[str, Any]:
        return {
            "name": "folder",
            "kwargs": {"root": self.root, "size": list(self.size), "mode": self.mode},
        }


@dataclass(frozen=True, init=False)
class NpzDataset(_ArrayDataset):
    """Samples stored in a ``.npz`` (or ``.npy``) file, loaded with ``allow_pickle=False``.

    The array under ``key`` has shape ``[N, *shape]``. Float/int arrays are taken
    as model units unchanged (``to_units`` is the identity). ``uint8`` arrays are
    8-bit pixels in the stored layout: model units ``x / 127.5 - 1`` and
    ``to_units`` returns levels ``0..255`` in the same layout. An optional
    ``[N]`` integer array under ``"y"`` gives labels (else ``-1``).

    Attributes:
        path: the file.
        key: array name inside the ``.npz``.
    """

    path: str
    key: str

    def __init__(self, path: str | os.PathLike, key: str = "x") -> None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(
                f"npz: file {str(p)!r} not found; save your samples with np.savez(path, {key}=array_of_shape_[N,...])"
            )
        labels = None
        try:
            loaded = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise DataError(
                f"npz: cannot read {str(p)!r} as .npz/.npy without pickle ({exc})"
            ) from exc
        if isinstance(loaded, np.ndarray):
            arr = loaded
        else:
            with loaded:
                if key not in loaded.files:
                    raise DataError(
                        f"npz: {str(p)!r} has no array {key!r}; it holds {sorted(loaded.files)}; pass key=..."
                    )
                try:
                    arr = loaded[key]
                    if "y" in loaded.files and key != "y":
                        labels = loaded["y"]
                except ValueError as exc:  # object arrays need pickle, which is never allowed
                    raise DataError(
                        f"npz: {str(p)!r} holds object (pickled) arrays, which are not loaded; "
                        "save plain numeric arrays with np.savez"
                    ) from exc
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise DataError(
                f"npz: array {key!r} must have shape [N, ...] with N >= 1, got {list(arr.shape)}"
            )
        if arr.dtype.kind not in "fiub":
            raise DataError(f"npz: array {key!r} must be numeric, got dtype {arr.dtype}")
        if labels is None or labels.shape != (arr.shape[0],) or labels.dtype.kind not in "iu":
            labels = np.full(arr.shape[0], -1, dtype=np.int64)
        object.__setattr__(self, "name", f"npz:{p}")
        object.__setattr__(self, "shape", tuple(int(s) for s in arr.shape[1:]))
        object.__setattr__(self, "path", str(p))
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_uint8", arr.dtype == np.uint8)
        raw = torch.from_numpy(
            np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype(np.float32))
        )
        self._set_data(raw, torch.from_numpy(labels.astype(np.int64)))

    def _raw_to_model(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32) / 127.5 - 1.0 if self._uint8 else raw.to(torch.float32)

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Identity for float data; levels ``0..255`` (clipped, float) for uint8 data. Same layout."""
        arr = super().to_units(x)
        return np.clip((arr + 1.0) * 127.5, 0.0, 255.0) if self._uint8 else arr

    def from_units(self, x: np.ndarray) -> Tensor:
        """Inverse of ``to_units``: ``[n, *shape]`` float32 model units."""
        out = super().from_units(x)
        return out / 127.5 - 1.0 if self._uint8 else out

    def describe(self) -> dict[str, Any]:
        return {"name": "npz", "kwargs": {"path": self.path, "key": self.key}}


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch.bin",)


@dataclass(frozen=True, init=False)
class Cifar10Dataset(_Uint8ImageUnits, _ArrayDataset):
    """CIFAR-10 from the **binary** distribution (``cifar-10-binary.tar.gz``), never pickle.

    Files: ``<root>/cifar-10-batches-bin/data_batch_{1..5}.bin`` (train) and
    ``test_batch.bin`` (test); ``root`` may also be the ``cifar-10-batches-bin``
    folder itself. Each file is a sequence of 3073-byte records: 1 label byte
    (0..9) then 3072 pixel bytes, 1024 red, 1024 green, 1024 blue, each plane
    row-major 32x32, i.e. exactly ``[C=3, H=32, W=32]`` order. Samples have shape
    ``[N, 3, 32, 32]`` in ``[-1, 1]``.

    Attributes:
        root: the folder given.
        train: ``True`` for the 50,000 training images, ``False`` for the 10,000 test images.
    """

    root: str
    train: bool

    def __init__(self, root: str | os.PathLike, train: bool = True) -> None:
        root_p = Path(root).expanduser()
        names = _CIFAR_TRAIN_FILES if train else _CIFAR_TEST_FILES
        candidates = [root_p / "cifar-10-batches-bin", root_p]
        folder = next((c for c in candidates if all((c / f).is_file() for f in names)), None)
        if folder is None:
            expected = ", ".join(str(candidates[0] / f) for f in names)
            raise DataError(
                f"cifar10: CIFAR-10 binary files not found; expected {expected}. Download "
                "'CIFAR-10 binary version (suitable for C programs)' (cifar-10-binary.tar.gz) from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it with "
                f"'tar xzf cifar-10-binary.tar.gz -C {root_p}' so that {candidates[0]}/ holds those files. "
                "The pickled 'python version' is not read."
            )
        raws, labels = [], []
        for f in names:
            buf = np.fromfile(folder / f, dtype=np.uint8)
            if buf.size == 0 or buf.size % _CIFAR_RECORD:
                raise DataError(
                    f"cifar10: {str(folder / f)!r} has {buf.size} bytes, not a positive multiple of "
                    f"{_CIFAR_RECORD} (1 label byte + 3072 pixel bytes per image); re-extract the archive"
                )
            rec = buf.reshape(-1, _CIFAR_RECORD)
            if rec[:, 0].max() > 9:
                raise DataError(
                    f"cifar10: {str(folder / f)!r} has label bytes > 9; is it really a CIFAR-10 batch?"
                )
            labels.append(rec[:, 0].astype(np.int64))
            raws.append(rec[:, 1:].reshape(-1, 3, 32, 32))
        object.__setattr__(self, "name", f"cifar10:{root_p}")
        object.__setattr__(self, "shape", (3, 32, 32))
        object.__setattr__(self, "root", str(root_p))
        object.__setattr__(self, "train", bool(train))
        object.__setattr__(self, "classes", CIFAR10_CLASSES)
        self._set_data(
            torch.from_numpy(np.ascontiguousarray(np.concatenate(raws))),
            torch.from_numpy(np.concatenate(labels)),
        )

    def describe(self) -> dict[str, Any]:
        return {"name": "cifar10", "kwargs": {"root": self.root, "train": self.train}}


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------


def _toy_factory(name: str) -> Callable[[], Dataset]:
    def make() -> Dataset:
        return Toy2DDataset(name)

    return make


_REGISTRY: dict[str, Callable[..., Dataset]] = {
    **{name: _toy_factory(name) for name in _TOY_SAMPLERS},
    "gaussian": GaussianDataset,
    "blobs": BlobsDataset,
    "digits": DigitsDataset,
    "digits-noisy": NoisyDigitsDataset,
    "folder": ImageFolderDataset,
    "npz": NpzDataset,
    "cifar10": Cifar10Dataset,
}
# spec "<prefix>:<arg>" passes <arg> as this keyword
_SPEC_ARG = {"folder": "root", "npz": "path", "cifar10": "root", "digits": "split", "digits-noisy": "split"}


def list_datasets() -> list[str]:
    """Registry names accepted by ``get_dataset`` (sorted)."""
    return sorted(_REGISTRY)


def get_dataset(name: str, **kwargs: Any) -> Dataset:
    """Build a data set from a name or spec string.

    Args:
        name: a registry name (``list_datasets()``) or a spec ``"folder:/path"``,
            ``"npz:/path"``, ``"cifar10:/root"``, ``"digits:test"``.
        **kwargs: constructor arguments, e.g. ``get_dataset("gaussian", mean=[1, 0],
            cov=[[1, 0], [0, 2]])`` or ``get_dataset("folder:/imgs", size=32)``.

    Returns:
        The data set.

    Raises:
        DataError: unknown name, bad arguments or missing files.
    """
    if not isinstance(name, str) or not name:
        raise DataError(
            f"data set name must be a non-empty string; choose one of {list_datasets()}"
        )
    key, sep, arg = name.partition(":")
    key = key.strip().lower()
    if key not in _REGISTRY:
        raise DataError(
            f"unknown data set {name!r}; valid names: {list_datasets()} "
            "(spec strings: 'folder:/path', 'npz:/path', 'cifar10:/root', 'digits:train|test|all')"
        )
    factory = _REGISTRY[key]
    if sep:
        if key not in _SPEC_ARG:
            raise DataError(f"data set {key!r} takes no ':' argument; pass just {key!r}")
        if _SPEC_ARG[key] in kwargs:
            raise DataError(
                f"{name!r}: give {_SPEC_ARG[key]} either in the spec string or as a keyword, not both"
            )
        kwargs = {_SPEC_ARG[key]: arg, **kwargs}
    if key in ("folder", "npz") and _SPEC_ARG[key] in kwargs:  # cifar10 explains its own download
        where = Path(str(kwargs[_SPEC_ARG[key]])).expanduser()
        if not where.exists():
            raise DataError(f"{key}: path {str(where)!r} does not exist; pass an existing path, e.g. '{key}:/data/x'")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise DataError(
            f"data set {key!r} got unknown argument(s) {unknown}; accepted: {sorted(params)}"
        )
    missing = sorted(
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    )
    if missing:
        hint = f" (e.g. '{key}:/path')" if key in _SPEC_ARG else ""
        raise DataError(f"data set {key!r} needs argument(s) {missing}{hint}")
    return factory(**kwargs)


def base_sample(
    name_or_dataset: str | Dataset, shape: Sequence[int], n: int, generator: torch.Generator
) -> Tensor:
    """Draw ``n`` base samples ``x0 ~ rho_0`` (paper Eq. (2.1), ``t = 0``).

    Args:
        name_or_dataset: ``"gaussian"`` (standard normal of ``shape``) or any data
            set (name, spec string or ``Dataset``) whose sample shape equals ``shape``.
        shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        n: number of samples.
        generator: the only source of randomness.

    Returns:
        Tensor of shape ``[n, *shape]``, float32.

    Raises:
        DataError: unknown base, or a data set whose sample shape differs from ``shape``.
    """
    shape_t = _check_shape(shape, "base_sample")
    n = _check_n(n, "base_sample")
    g = _check_generator(generator, "base_sample")
    if isinstance(name_or_dataset, str) and name_or_dataset.strip().lower() == "gaussian":
        return torch.randn((n, *shape_t), generator=g, device=g.device)
    ds = get_dataset(name_or_dataset) if isinstance(name_or_dataset, str) else name_or_dataset
    if not isinstance(ds, Dataset):
        raise DataError(
            f"base_sample: pass 'gaussian', a data set name or a Dataset, got {type(ds).__name__}"
        )
    if tuple(ds.shape) != shape_t:
        raise DataError(
            f"base data set {ds.name!r} has sample shape {tuple(ds.shape)} but the model's data shape is "
            f"{shape_t}; use 'gaussian' or a base with samples of shape {shape_t}"
        )
    return ds.sample(n, g)


def seeded_base_samples(name_or_dataset: str | Dataset, seed: int, n: int, shape: Sequence[int]) -> Tensor:
    """Base samples ``x0 ~ rho_0`` of a request whose row ``i`` depends on seed ``seed + i`` only.

    A sample then does not depend on the batch it is drawn in (``anystep sample`` and the
    server draw the same sources). ``"gaussian"``: the counter-based noise of
    :func:`anystep.core.noise.base_noise`; a data set (e.g. ``digits-noisy``, the base of a
    translation map): ``sample(1, Generator().manual_seed(seed + i))`` for each row.

    Returns:
        ``[n, *shape]`` float32.
    """
    shape_t = _check_shape(shape, "seeded_base_samples")
    n = _check_n(n, "seeded_base_samples")
    if isinstance(name_or_dataset, str) and name_or_dataset.strip().lower() == "gaussian":
        from .noise import base_noise, sample_seeds

        return base_noise(sample_seeds(int(seed), n), shape_t)
    ds = get_dataset(name_or_dataset) if isinstance(name_or_dataset, str) else name_or_dataset
    rows = [base_sample(ds, shape_t, 1, torch.Generator().manual_seed(int(seed) + i))[0] for i in range(n)]
    return torch.stack(rows).to(torch.float32)


