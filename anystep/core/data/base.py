"""Base of the data sets: :class:`Dataset`, its sample records, argument checks, array-backed sets.

See :mod:`anystep.core.data` for the time convention, labels and units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.core.units import Units, UnitsError, units_for
from anystep.errors import AnystepError


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

    @property
    def units(self) -> Units:
        """Model units <-> this set's own units: :func:`anystep.core.units.units_for` of its name and shape.

        The record a served model uses without building the data set, so the two cannot disagree
        (digits: grey levels ``0..16``; ``folder:``/``cifar10``: levels ``0..255``; else the identity).
        """
        return units_for(self.name, tuple(self.shape))

    def to_units(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Map model-unit samples ``[n, *shape]`` to the data set's own units and layout (``self.units``)."""
        arr = _to_numpy(x, f"{self.name}.to_units").astype(np.float32, copy=False)
        self._check_batch(arr, f"{self.name}.to_units")
        return self.units.to_units(arr)

    def from_units(self, x: np.ndarray) -> Tensor:
        """Inverse of ``to_units``: returns ``[n, *shape]`` float32 model units (a new tensor)."""
        arr = _to_numpy(x, f"{self.name}.from_units")
        units = self.units
        try:
            out = units.from_units(arr)
        except UnitsError as exc:
            raise DataError(f"{self.name}.from_units ({units.name}): {exc}") from None
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: never aliases the input

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable ``{"name": ..., "kwargs": {...}}``; ``get_dataset(**)`` rebuilds it."""
        return {"name": self.name, "kwargs": {}}

    def _check_batch(self, arr: np.ndarray, where: str) -> None:
        if tuple(arr.shape[1:]) != tuple(self.shape):
            raise DataError(
                f"{where}: expected an array of shape [n, {', '.join(map(str, self.shape))}], "
                f"got {list(arr.shape)}"
            )


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

    Units (:attr:`Dataset.units`, ``"uint8-levels"``): ``[n, H, W]`` (C = 1) or ``[n, H, W, C]``
    float levels in ``0..255``; ``from_units`` also takes ``[n, H, W, 1]`` for one channel.
    """

    def _raw_to_model(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32) / 127.5 - 1.0

    def from_units(self, x: np.ndarray) -> Tensor:
        arr = _to_numpy(x, f"{self.name}.from_units")  # type: ignore[attr-defined]
        if self.shape[0] == 1 and arr.ndim == 4 and arr.shape[-1] == 1:  # type: ignore[attr-defined]
            arr = arr[..., 0]
        return super().from_units(arr)  # type: ignore[misc]
