"""The arrays a job derives from its time grid alone, made once per grid and shared by its jobs.

Equal grids (by their bytes) share one read-only :class:`GridArrays`; the cache is bounded
(:data:`GRID_CACHE_MAX` grids, emptied when full) and skips grids longer than
:data:`GRID_CACHE_SIZE` times. Used by :class:`~.jobs.Job` at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_CACHE_MAX = 256
"""Most grids whose derived arrays (:class:`GridArrays`) are kept; the cache is emptied when full."""
GRID_CACHE_SIZE = 1025
"""Longest grid (times) that is cached: longer ones are derived per job."""


@dataclass(frozen=True)
class GridArrays:
    """What a job derives from its grid alone, made once per grid and shared read-only by every job of it.

    Attributes:
        step_s: ``[K]`` float32 ``grid[:-1]``: the start time ``s`` of each step, as the engine takes it.
        step_t: ``[K]`` float32 ``grid[1:]``: the end time ``t`` of each step.
        times: ``[2, K, 1]`` float32 ``(step_s, step_t)`` as columns, what :meth:`Job.time_rows` repeats.
    """

    step_s: np.ndarray
    step_t: np.ndarray
    times: np.ndarray


_GRIDS: dict[bytes, GridArrays] = {}


def grid_arrays(grid: np.ndarray) -> GridArrays:
    """The :class:`GridArrays` of a ``[K + 1]`` float64 grid (cached by its bytes: equal grids share them).

    The arrays are read-only: engines never write their inputs, and a job only reads them. Grids
    longer than :data:`GRID_CACHE_SIZE` times are derived each call (not kept).
    """
    key = grid.tobytes() if grid.size <= GRID_CACHE_SIZE else None
    arrays = _GRIDS.get(key) if key is not None else None
    if arrays is None:
        grid32 = grid.astype(np.float32)
        times = np.stack([grid32[:-1], grid32[1:]])[:, :, None]
        times.setflags(write=False)  # its step views below inherit it
        arrays = GridArrays(step_s=times[0, :, 0], step_t=times[1, :, 0], times=times)
        if key is not None:
            if len(_GRIDS) >= GRID_CACHE_MAX:
                _GRIDS.clear()
            _GRIDS[key] = arrays
    return arrays
