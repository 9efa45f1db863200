"""Per-sample base noise from a counter-based generator: sample i depends only on its seed.

Row ``i`` of a request ``(seed, n)`` uses seed ``seed + i`` (:func:`sample_seeds`), and
its ``d`` normal numbers are a pure function of ``(seed_i, j)`` for ``j = 0..d-1``:
SplitMix64 (Steele, Lea & Flood 2014) keyed by the mixed seed gives 64 random bits per
counter, two 53-bit uniforms make two normals by Box-Muller. Drawing ``n`` rows is a
fixed number of array operations (no Python loop over seeds, no generator objects), the
same code runs on numpy arrays (the server's CPU hot path) and on torch tensors on
any device, and both give the same numbers up to float rounding of the transcendental
functions (the integer stream is bit-identical).

64-bit arithmetic wraps modulo 2**64 in signed ``int64`` (the two's-complement product
is the unsigned one); logical right shifts are emulated with a mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from anystep.errors import AnystepError

MAX_SEED = 2**63 - 1
"""Largest seed (``seed + n - 1`` must stay below it)."""

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _s64(v: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


GAMMA, M1, M2 = _s64(_GAMMA), _s64(_M1), _s64(_M2)


class SeedError(AnystepError):
    """A seed is not an integer in ``0..MAX_SEED``."""


def _lsr(z: Any, k: int) -> Any:
    """Logical right shift of int64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Any) -> Any:
    """SplitMix64 finaliser (a bijection of 64-bit words)."""
    z = (z ^ _lsr(z, 30)) * M1
    z = (z ^ _lsr(z, 27)) * M2
    return z ^ _lsr(z, 31)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-sample seeds for a request ``(seed, n)``: sample i uses ``seed + i``."""
    return [int(seed) + i for i in range(int(n))]


def _normals_from_bits(z: Any, xp: Any) -> Any:
    """``[..., 2m]`` int64 words -> ``[..., 2m]`` float64 standard normals (Box-Muller pairs)."""
    top = _lsr(z, 11)  # 53 random bits
    u = top.astype(np.float64) if xp is np else top.double()
    u = (u + 0.5) * (1.0 / (1 << 53))  # (0, 1), never 0
    u1, u2 = u[..., 0::2], u[..., 1::2]
    r = xp.sqrt(-2.0 * xp.log(u1))
    a = (2.0 * math.pi) * u2
    out = xp.stack([r * xp.cos(a), r * xp.sin(a)], -1)
    return out.reshape(*out.shape[:-2], -1)


_U_GAMMA, _U_M1, _U_M2 = np.uint64(_GAMMA), np.uint64(_M1), np.uint64(_M2)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@functools.lru_cache(maxsize=64)
def _counters_np(pairs: int) -> np.ndarray:
    return (np.arange(1, 2 * pairs + 1, dtype=np.uint64) * _U_GAMMA)[None, :]


def _mix_u64(z: np.ndarray) -> np.ndarray:
    """:func:`_mix` on numpy uint64 (logical shifts natively: fewer array operations, the same bits)."""
    z = (z ^ (z >> _S30)) * _U_M1
    z = (z ^ (z >> _S27)) * _U_M2
    return z ^ (z >> _S31)


SMALL_WORDS = 16
"""Draws of at most this many 64-bit words take their integer stream from Python ints (see below)."""

_MASK64 = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """:func:`_mix` on a Python int in ``0..2**64-1`` (exact, the same bits)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _top_bits_small(seeds: np.ndarray, pairs: int) -> np.ndarray:
    """``[n, 2 pairs]`` float64 53-bit integers of a small draw, from exact Python integer arithmetic.

    Bit-identical to the array path's ``(z >> 11).astype(float64)`` (every step is exact modulo
    2**64 and a 53-bit integer is exact in float64), at a fraction of its ~20 tiny numpy calls:
    the cost of a one-sample request's noise on the server's hot path.
    """
    words = []
    for s in seeds.tolist():
        key = _mix_int((s * _GAMMA + _GAMMA) & _MASK64)
        words.extend(_mix_int((key + j * _GAMMA) & _MASK64) >> 11 for j in range(1, 2 * pairs + 1))
    return np.array(words, dtype=np.float64).reshape(len(seeds), 2 * pairs)


def normal_rows_np(seeds: np.ndarray, dim: int) -> np.ndarray:
    """``[n, dim]`` float64 normals; row i is a function of ``seeds[i]`` only (numpy).

    The 64-bit words are those of :func:`normal_rows_torch` (uint64 here, int64 there); draws of
    at most :data:`SMALL_WORDS` words compute them with Python ints (same bits, fewer calls).
    """
    pairs = (dim + 1) // 2
    if seeds.size * 2 * pairs <= SMALL_WORDS:
        u = _top_bits_small(seeds, pairs)
    else:
        with np.errstate(over="ignore"):
            key = _mix_u64(seeds.astype(np.uint64)[:, None] * _U_GAMMA + _U_GAMMA)
            z = _mix_u64(key + _counters_np(pairs))
        u = (z >> _S11).astype(np.float64)  # 53 random bits
    u = (u + 0.5) * (1.0 / (1 << 53))  # (0, 1), never 0
    u1, u2 = u[:, 0::2], u[:, 1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    a = (2.0 * math.pi) * u2
    out = np.empty((u.shape[0], 2 * pairs), dtype=np.float64)
    np.multiply(r, np.cos(a), out=out[:, 0::2])
    np.multiply(r, np.sin(a), out=out[:, 1::2])
    return out[:, :dim]


def normal_rows_torch(seeds: Any, dim: int, device: Any = None) -> Any:
    """``[n, dim]`` float64 normals on ``device``; the integer stream equals :func:`normal_rows_np`'s."""
    import torch

    s = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    pairs = (dim + 1) // 2
    key = _mix(s[:, None] * GAMMA + GAMMA)
    ctr = torch.arange(1, 2 * pairs + 1, dtype=torch.int64, device=s.device)[None, :] * GAMMA
    z = _mix(key + ctr)
    return _normals_from_bits(z, torch)[:, :dim]


def check_seed_range(seed: Any, n: int = 1) -> int:
    """A request's first seed: an integer with ``0 <= seed`` and ``seed + n - 1 <= MAX_SEED``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SeedError(f"seed must be an integer, got {seed!r}")
    if seed < 0 or int(seed) + max(int(n), 1) - 1 > MAX_SEED:
        raise SeedError(f"seed={seed} is out of range; use 0..{MAX_SEED - max(int(n), 1) + 1} (sample i uses seed + i)")
    return int(seed)


def base_noise_np(seed: int, n: int, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Base samples of a request ``(seed, n)``: ``[n, *shape]``, row i from seed ``seed + i``.

    O(1) numpy calls in ``n``; the same seed gives the same row in any batch.
    """
    seeds = np.arange(int(n), dtype=np.int64) + np.int64(check_seed_range(seed, n))
    return base_noise_rows_np(seeds, shape, dtype)


def base_noise_rows_np(seeds: np.ndarray, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Base samples of arbitrary per-sample seeds: ``[len(seeds), *shape]``, row i from ``seeds[i]`` only.

    The rows of :func:`base_noise_np` (which calls it with ``seed + arange(n)``); the server
    draws the rows of every request starting in one tick with one call of it.

    Args:
        seeds: ``[m]`` int64 seeds in ``0..MAX_SEED`` (not checked here).
        shape: shape of one sample.
        dtype: numpy dtype of the result.
    """
    shape = tuple(int(d) for d in shape)
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    return normal_rows_np(seeds, math.prod(shape)).astype(dtype).reshape(seeds.size, *shape)


def base_noise(
    seeds: Sequence[int] | Any, shape: Sequence[int], dtype: Any = None, device: Any = None
) -> Any:
    """Standard normal base samples ``[len(seeds), *shape]`` (torch), row i a function of ``seeds[i]`` only.

    Args:
        seeds: one integer seed per sample (a list, range, numpy array or int64 tensor).
        shape: shape of one sample.
        dtype: torch dtype (default float32).
        device: where to draw them (values do not depend on it beyond float rounding).
    """
    import torch

    dtype = dtype or torch.float32
    shape = tuple(int(d) for d in shape)
    if not isinstance(seeds, torch.Tensor):
        seeds = np.asarray(list(seeds) if not isinstance(seeds, np.ndarray) else seeds)
        if seeds.size and (seeds.dtype.kind not in "iu" or seeds.min() < 0 or seeds.max() > MAX_SEED):
            raise SeedError(f"seeds must be integers in 0..{MAX_SEED}")
        seeds = torch.from_numpy(seeds.astype(np.int64).reshape(-1))
    n = int(seeds.shape[0])
    dim = int(np.prod(shape)) if shape else 1
    if n == 0:
        return torch.zeros((0, *shape), dtype=dtype, device=device)
    return normal_rows_torch(seeds, dim, device).to(dtype).reshape(n, *shape)
