"""Data units: how model-unit samples map to the data set's own scale and layout.

A small record, needing no data set (no scikit-learn, no files) at serving time:
``units = clip((x + offset) * scale, lo, hi)`` with an optional dropped channel axis.
Networks see model units (images in ``[-1, 1]``, channel first ``[C, H, W]``); users
see data units (digits: grey levels ``0..16`` of shape ``[8, 8]``; 8-bit images:
``0..255``, ``[H, W]`` or ``[H, W, C]``; 2D sets: the identity).

:func:`units_for` derives the record from a model's data set name and shape; a model
directory may also store it (``Units.to_dict`` / ``Units.from_dict``).
The data sets' ``to_units`` / ``from_units`` (:mod:`anystep.core.data`) apply this same record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anystep.errors import AnystepError


class UnitsError(AnystepError):
    """Samples do not have the shape the units expect."""


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
    def from_dict(cls, d: dict[str, Any]) -> Units:
        try:
            u = cls(
                name=str(d["name"]),
                data_shape=tuple(int(v) for v in d["data_shape"]),
                scale=float(d.get("scale", 1.0)),
                offset=float(d.get("offset", 0.0)),
                lo=None if d.get("lo") is None else float(d["lo"]),
                hi=None if d.get("hi") is None else float(d["hi"]),
                layout=str(d.get("layout", "same")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UnitsError(f"malformed units record {d!r}: {e}") from None
        if u.layout not in ("same", "drop-channel", "channel-last") or u.scale == 0:
            raise UnitsError(f"malformed units record {d!r}: layout or scale")
        return u


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
