"""Real image data read from disk, never downloaded: image folders, ``.npz`` arrays, CIFAR-10 binary."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.core.units import Units

from .base import DataError, _ArrayDataset, _Uint8ImageUnits

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

    @property
    def units(self) -> Units:
        """Identity for float data; levels ``0..255`` (clipped, float) for uint8 data, same layout.

        Not :func:`anystep.core.units.units_for`'s answer for ``npz:`` (the identity): that sees
        the name only, not the stored dtype.
        """
        if self._uint8:
            return Units("uint8-levels", tuple(self.shape), scale=127.5, offset=1.0, lo=0.0, hi=255.0)
        return super().units

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
