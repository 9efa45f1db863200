"""The data-set registry (:func:`get_dataset`) and the base samples ``x0 ~ rho_0``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import DataError, Dataset, _check_generator, _check_n, _check_shape
from .digits import DigitsDataset, NoisyDigitsDataset
from .images import Cifar10Dataset, ImageFolderDataset, NpzDataset
from .toy import _TOY_SAMPLERS, BlobsDataset, GaussianDataset, Toy2DDataset


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
        from ..noise import base_noise, sample_seeds

        return base_noise(sample_seeds(int(seed), n), shape_t)
    ds = get_dataset(name_or_dataset) if isinstance(name_or_dataset, str) else name_or_dataset
    rows = [base_sample(ds, shape_t, 1, torch.Generator().manual_seed(int(seed) + i))[0] for i in range(n)]
    return torch.stack(rows).to(torch.float32)
