"""scikit-learn's bundled 8x8 digits and their degraded copies (the base of the restoration map)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DataError, PairedSample, _ArrayDataset


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

    def describe(self) -> dict[str, Any]:
        return {"name": "digits", "kwargs": {"split": self.split}}


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

    def describe(self) -> dict[str, Any]:
        return {"name": "digits-noisy", "kwargs": {"split": self.split, "noise": self.noise}}
