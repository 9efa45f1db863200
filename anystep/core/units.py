"""Data units: how model-unit samples map to the data set's own scale and layout.

A small record, needing no data set (no scikit-learn, no files) at serving time:
``units = clip((x + offset) * scale, lo, hi)`` with an optional dropped channel axis.
Networks see model units (images in ``[-1, 1]``, channel first ``[C, H, W]``); users
see data units (digits: grey levels ``0..16`` of shape ``[8, 8]``; 8-bit images:
``0..255``, ``[H, W]`` or ``[H, W, C]``; 2D sets: the identity).

The trainer stores the training data set's record (``Dataset.units``) in the model
directory's ``config.json`` (``ModelConfig.units``, :meth:`Units.to_dict` /
:meth:`Units.from_dict`); :func:`model_units` reads it back, and for model directories
written before that field existed derives it with :func:`units_for` from the data set
name and shape. The data sets' ``to_units`` / ``from_units`` (:mod:`anystep.core.data`)
apply this same record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anystep.errors import AnystepError


class UnitsError(AnystepError):
    """Samples do not have the shape the units expect, or a units record is malformed."""


# The kinds of data units anystep knows (Units.name) and the layouts (Units.layout).
UNITS_NAMES = ("identity", "digits-grey-levels", "uint8-levels")
LAYOUTS = ("same", "drop-channel", "channel-last")
_FIELDS = ("name", "data_shape", "scale", "offset", "lo", "hi", "layout")


@dataclass(frozen=True)
class Units:
    """Affine map between model units and data units.

    Attributes:
        name: what the data units are (``"identity"``, ``"digits-grey-levels"``, ``"uint8-levels"``).
        data_shape: shape of one sample in model units, e.g. ``(1, 8, 8)``.
        scale, offset: ``units = (x + offset) * scale``.
        lo, hi: clip range of data units (None: unbounded).
        layout: ``"same"``, ``"drop-channel"`` (``[1, H, W] -> [H, W]``) or
            ``"channel-last"`` (``[C, H, W] -> [H, W, C]``).
    """

    name: str
    data_shape: tuple[int, ...]
    scale: float = 1.0
    offset: float = 0.0
    lo: float | None = None
    hi: float | None = None
    layout: str = "same"

    @property
    def units_shape(self) -> tuple[int, ...]:
        """Shape of one sample in data units."""
        s = self.data_shape
        if self.layout == "drop-channel":
            return s[1:]
        if self.layout == "channel-last":
            return (*s[1:], s[0])
        return s

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0 and self.layout == "same" and self.lo is None

    def to_units(self, x: np.ndarray) -> np.ndarray:
        """``[n, *data_shape]`` model units -> ``[n, *units_shape]`` float32 data units."""
        x = np.asarray(x, dtype=np.float32)
        if tuple(x.shape[1:]) != self.data_shape:
            raise UnitsError(f"expected samples of shape [n, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}")
        if self.identity:
            return x
        y = (x + np.float32(self.offset)) * np.float32(self.scale)
        if self.lo is not None or self.hi is not None:
            y = np.clip(y, self.lo, self.hi)
        if self.layout == "drop-channel":
            y = y[:, 0]
        elif self.layout == "channel-last":
            y = np.moveaxis(y, 1, -1)
        return np.ascontiguousarray(y, dtype=np.float32)

    def from_units(self, u: np.ndarray) -> np.ndarray:
        """``[n, *units_shape]`` data units -> ``[n, *data_shape]`` float32 model units."""
        u = np.asarray(u, dtype=np.float32)
        if tuple(u.shape[1:]) != self.units_shape:
            raise UnitsError(
                f"expected samples of shape [n, {', '.join(map(str, self.units_shape))}] in data units, got {list(u.shape)}"
            )
        if self.layout == "drop-channel":
            u = u[:, None]
        elif self.layout == "channel-last":
            u = np.moveaxis(u, -1, 1)
        if self.identity:
            return np.ascontiguousarray(u)
        return np.ascontiguousarray(u / np.float32(self.scale) - np.float32(self.offset), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data_shape": list(self.data_shape),
            "scale": self.scale,
            "offset": self.offset,
            "lo": self.lo,
            "hi": self.hi,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Units:
        """Parse and validate a stored record (``config.json``'s ``units``).

        Raises:
            UnitsError: one line naming the bad key or value and what to use instead.
        """
        if not isinstance(d, dict):
            raise UnitsError(f"a units record is a JSON object with keys {list(_FIELDS)}, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise UnitsError(f"unknown key(s) {unknown} in the units record; allowed: {list(_FIELDS)}")
        missing = [k for k in ("name", "data_shape") if k not in d]
        if missing:
            raise UnitsError(f"the units record lacks {missing}; it needs name and data_shape")
        name = d["name"]
        if not isinstance(name, str):
            raise UnitsError(f"units name must be one of {list(UNITS_NAMES)}, got {name!r}")
        shape = d["data_shape"]
        if (
            not isinstance(shape, (list, tuple))
            or not 1 <= len(shape) <= 4
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)
        ):
            raise UnitsError(f"units data_shape must be a list of 1 to 4 positive integers, got {shape!r}")
        layout = d.get("layout", "same")
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise UnitsError(f"unknown units layout {layout!r}; use one of {list(LAYOUTS)}")
        nums: dict[str, float | None] = {}
        for key, default in (("scale", 1.0), ("offset", 0.0), ("lo", None), ("hi", None)):
            v = d.get(key, default)
            if v is None and key in ("lo", "hi"):
                nums[key] = None
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                what = "a finite number or null" if key in ("lo", "hi") else "a finite number"
                raise UnitsError(f"units {key} must be {what}, got {v!r}")
            nums[key] = float(v)
        return cls(name=name, data_shape=tuple(int(v) for v in shape), layout=layout, **nums)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        """Refuse records whose map cannot apply to their shape (checked once, when built)."""
        s = self.data_shape
        if self.name not in UNITS_NAMES:
            raise UnitsError(f"unknown units name {self.name!r}; use one of {list(UNITS_NAMES)}")
        if self.scale == 0:
            raise UnitsError("units scale must be non-zero (data units = (x + offset) * scale)")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise UnitsError(f"units lo={self.lo} is above hi={self.hi}; use lo <= hi")
        if self.layout == "drop-channel" and (len(s) < 2 or s[0] != 1):
            raise UnitsError(f"units layout 'drop-channel' needs a data_shape [1, ...], got {list(s)}; use 'same'")
        if self.layout == "channel-last" and len(s) != 3:
            raise UnitsError(f"units layout 'channel-last' needs a data_shape [C, H, W], got {list(s)}; use 'same'")


def model_units(config: Any) -> Units:
    """The units of a model: the record stored in its ``config.json``, else derived from its data set.

    Args:
        config: a :class:`~anystep.core.config.ModelConfig` (``units``, ``dataset``, ``data_shape``).

    Returns:
        ``config.units`` when the model directory stores it (written by the trainer from the
        training data set's ``Dataset.units``); otherwise ``units_for(config.dataset,
        config.data_shape)``, the rule every model directory written before the field used.
    """
    stored = getattr(config, "units", None)
    if stored is not None:
        return stored if isinstance(stored, Units) else Units.from_dict(stored)
    return units_for(config.dataset, config.data_shape)


def units_for(dataset: str, data_shape: Sequence[int]) -> Units:
    """The units of a data set by name and model-unit shape (no data set is built).

    ``digits``: ``(x + 1) * 8`` clipped to ``0..16``, ``[1, 8, 8] -> [8, 8]``; 8-bit image
    sets (``folder:``, ``cifar10``): ``(x + 1) * 127.5`` clipped to ``0..255``, channel
    last (dropped for one channel); everything else: the identity.
    """
    shape = tuple(int(d) for d in data_shape)
    name = str(dataset).split(":", 1)[0].lower()
    if name == "digits" and shape == (1, 8, 8):
        return Units("digits-grey-levels", shape, scale=8.0, offset=1.0, lo=0.0, hi=16.0, layout="drop-channel")
    if name == "digits-noisy" and shape == (1, 8, 8):  # degraded digits: noise may leave 0..16
        return Units("digits-grey-levels", shape, scale=8.0, offset=1.0, layout="drop-channel")
    if name in ("folder", "cifar10") and len(shape) == 3 and shape[0] in (1, 3):
        layout = "drop-channel" if shape[0] == 1 else "channel-last"
        return Units("uint8-levels", shape, scale=127.5, offset=1.0, lo=0.0, hi=255.0, layout=layout)
    return Units("identity", shape)
