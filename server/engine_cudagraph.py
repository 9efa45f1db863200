"""A torch engine that replays CUDA graphs: one captured graph per batch-size bucket.

At batch 1 a small U-Net step on a GPU is bound by kernel launches (hundreds of tiny
kernels, each a few microseconds of CPU time). A CUDA graph records the whole step
``X_st = X_{s,t}(x)`` (Definition 3.2) once and replays it with one launch.

How a call runs (:meth:`CudaGraphEngine.step`): the ``B`` rows are cut into chunks of
at most the largest bucket (:func:`plan_chunks`); each chunk of ``n`` rows is written
into the static input buffers of the smallest bucket ``b >= n`` (rows ``n..b`` padded
with ``x = 0``, ``s = t = 0``), the bucket's graph is replayed and rows ``0..n`` of its
static output are copied out. Times are per-sample tensors ``s, t: [b]`` inside the
graph, so one graph serves every ``(s, t)`` and the scheduler's fused batches with mixed
step counts.

Padding is exact because every anystep backbone evaluates rows independently (no
BatchNorm; GroupNorm and attention act within one sample): the padded rows change
nothing in the real rows beyond float rounding of a different batch size, which
:meth:`CudaGraphEngine.verify` measures against eager torch.

Without CUDA (tests, ``capture=False``) the same buckets, static buffers, padding and
chunking run with an eager call in place of the replay, so the bookkeeping is tested
on any machine; ``capture=True`` needs a CUDA device.

Velocity models (``velocity(x, t) -> b_t(x)``, eq. 3.1) get the same treatment, so an
ODE baseline such as dopri5 runs on identical machinery.

Registered as ``--engine cudagraph`` in :mod:`anystep.server.engines`;
:func:`cudagraph_available` tells an automatic engine choice whether it can be built here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engines import Engine, EngineError

__all__ = [
    "DEFAULT_MAX_BATCH",
    "Chunk",
    "CudaGraphEngine",
    "bucket_sizes",
    "cudagraph_available",
    "pick_bucket",
    "plan_chunks",
]

DEFAULT_MAX_BATCH = 256
WARMUP_CALLS = 3
"""Eager calls on a side stream before each capture (cuDNN autotuning, allocator warm-up)."""


def cudagraph_available() -> bool:
    """True when torch sees a CUDA device, so :class:`CudaGraphEngine` can capture graphs."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return bool(torch.cuda.is_available())


def bucket_sizes(max_batch: int = DEFAULT_MAX_BATCH) -> tuple[int, ...]:
    """Batch-size buckets: the powers of two below ``max_batch``, then ``max_batch``.

    Args:
        max_batch: largest bucket (the server's ``--max-batch``), >= 1.

    Returns:
        Increasing bucket sizes, e.g. ``(1, 2, 4, ..., 128, 256)`` or ``(1, 2, 4, 6)``.

    Raises:
        EngineError: ``max_batch < 1``.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise EngineError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(int(max_batch))
    return tuple(out)


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    bs = tuple(int(b) for b in buckets)
    if not bs or any(b < 1 for b in bs) or list(bs) != sorted(set(bs)):
        raise EngineError(f"buckets must be distinct increasing integers >= 1, got {list(buckets)}")
    return bs


def pick_bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` rows.

    Raises:
        EngineError: ``n < 1`` or ``n`` above the largest bucket (use :func:`plan_chunks`).
    """
    bs = _check_buckets(buckets)
    if n < 1 or n > bs[-1]:
        raise EngineError(f"{n} rows do not fit a bucket of {list(bs)}; split the batch first")
    return next(b for b in bs if b >= n)


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of a call, run in the graph of bucket ``bucket`` (>= stop - start)."""

    start: int
    stop: int
    bucket: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(n: int, buckets: Sequence[int]) -> list[Chunk]:
    """Cut ``n`` rows into chunks of the largest bucket plus one padded remainder.

    Args:
        n: rows in the call (>= 0).
        buckets: increasing bucket sizes.

    Returns:
        Chunks covering ``0..n`` in order (empty for ``n = 0``).
    """
    bs = _check_buckets(buckets)
    if n < 0:
        raise EngineError(f"a batch cannot have {n} rows")
    out, start = [], 0
    while start < n:
        rows = min(bs[-1], n - start)
        out.append(Chunk(start, start + rows, pick_bucket(rows, bs)))
        start += rows
    return out


class _BucketGraph:
    """Static buffers of one bucket and, when captured, the CUDA graph reading them."""

    def __init__(self, fn: Any, torch: Any, device: Any, bucket: int, shape: tuple[int, ...],
                 with_s: bool, capture: bool, pool: Any = None, channels_last: bool = False) -> None:
        self.bucket = bucket
        self._fn = fn
        self._torch = torch
        self.x = torch.zeros((bucket, *shape), device=device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.s = torch.zeros((bucket,), device=device) if with_s else None
        self.t = torch.zeros((bucket,), device=device)
        self.graph = None
        self.out = None
        if capture:
            self._capture(pool)

    def _args(self) -> tuple[Any, ...]:
        return (self.x, self.s, self.t) if self.s is not None else (self.x, self.t)

    def _capture(self, pool: Any) -> None:
        torch = self._torch
        side = torch.cuda.Stream(device=self.x.device)
        side.wait_stream(torch.cuda.current_stream(self.x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(WARMUP_CALLS):
                self._fn(*self._args())
        torch.cuda.current_stream(self.x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
            self.out = self._fn(*self._args())
        self.graph = graph

    def run(self, x: Any, s: Any, t: Any) -> Any:
        """Write ``n`` rows (device tensors) into the buffers, pad, run; return the ``[n]`` rows."""
        n = x.shape[0]
        self.x[:n].copy_(x)
        self.t[:n].copy_(t)
        if self.s is not None:
            self.s[:n].copy_(s)
        if n < self.bucket:  # padding: identity jumps of the zero state
            self.x[n:].zero_()
            self.t[n:].zero_()
            if self.s is not None:
                self.s[n:].zero_()
        if self.graph is not None:
            self.graph.replay()
            return self.out[:n]
        with self._torch.no_grad():
            return self._fn(*self._args())[:n]


class CudaGraphEngine(Engine):
    """Torch engine replaying one captured CUDA graph per batch-size bucket.

    Args:
        model: a :class:`~anystep.core.flowmap.FlowMap` or
            :class:`~anystep.core.flowmap.VelocityModel`.
        data_shape: shape of one sample, e.g. ``(1, 8, 8)``.
        device: ``"cuda"`` / ``"cuda:N"``; ``"cpu"`` only with ``capture=False``.
        max_batch: largest bucket; bigger calls are split (:func:`plan_chunks`).
        buckets: explicit increasing bucket sizes (default :func:`bucket_sizes`).
        capture: record CUDA graphs (default: when ``device`` is CUDA); False runs the
            same bucket/padding path eagerly (for tests and comparisons).
        channels_last: store image inputs and weights channels-last (NHWC kernels).

    Graphs are captured when the engine is built (a few eager calls per bucket first),
    so the first request pays nothing. Calls are serialised by a lock: the static
    buffers are shared by every caller.

    Raises:
        EngineError: CUDA asked for but absent, or bad buckets.
    """

    name = "cudagraph"

    def __init__(
        self,
        model: Any,
        data_shape: Sequence[int],
        device: str = "cuda",
        max_batch: int = DEFAULT_MAX_BATCH,
        buckets: Sequence[int] | None = None,
        capture: bool | None = None,
        channels_last: bool = False,
    ) -> None:
        import torch

        kind = getattr(model, "kind", None)
        super().__init__(kind if kind in ("flowmap", "velocity") else "flowmap", data_shape)
        self._torch = torch
        self.device = torch.device(device)
        is_cuda = self.device.type == "cuda"
        if is_cuda and not torch.cuda.is_available():
            raise EngineError(
                f"--engine cudagraph on {device!r} needs a CUDA GPU and torch sees none; "
                "use --engine torch --device cpu"
            )
        self.capture = is_cuda if capture is None else bool(capture)
        if self.capture and not is_cuda:
            raise EngineError(f"CUDA graphs need a CUDA device, got device={device!r}; pass capture=False")
        self.buckets = _check_buckets(buckets) if buckets is not None else bucket_sizes(max_batch)
        self.channels_last = bool(channels_last) and len(self.data_shape) == 3
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        fn = self.model if self.kind == "flowmap" else self.model.velocity
        self._lock = threading.Lock()
        # One memory pool for all buckets (largest captured first, so it is sized once).
        # Sharing is safe here: calls hold the lock and copy a graph's output to the host
        # before the next replay, and static inputs live outside the pool.
        pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._graphs: dict[int, _BucketGraph] = {}
        for b in sorted(self.buckets, reverse=True):
            self._graphs[b] = _BucketGraph(
                fn, torch, self.device, b, self.data_shape, self.kind == "flowmap", self.capture, pool,
                channels_last=self.channels_last,
            )
        if self.capture:
            torch.cuda.synchronize(self.device)

    # -- calls --------------------------------------------------------------------------
    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        s, t = times if len(times) == 2 else (None, times[0])
        torch = self._torch
        out = np.empty_like(x)
        with self._lock:
            xd = torch.from_numpy(x).to(self.device)
            td = torch.from_numpy(t).to(self.device)
            sd = torch.from_numpy(s).to(self.device) if s is not None else None
            for c in plan_chunks(x.shape[0], self.buckets):
                y = self._graphs[c.bucket].run(
                    xd[c.start : c.stop], None if sd is None else sd[c.start : c.stop], td[c.start : c.stop]
                )
                out[c.start : c.stop] = y.detach().to("cpu", torch.float32).numpy()
        return out

    def verify(self, batches: Sequence[int] = (1, 3), seed: int = 0) -> float:
        """Largest ``|graph - eager|`` over random inputs at the given batch sizes.

        Eager is the same model called directly on the same device (not padded), so the
        number covers both the padding and the capture.
        """
        torch = self._torch
        rng = np.random.default_rng(seed)
        worst = 0.0
        for b in batches:
            x = rng.standard_normal((b, *self.data_shape)).astype(np.float32)
            s = rng.uniform(0, 1, b).astype(np.float32)
            t = rng.uniform(0, 1, b).astype(np.float32)
            y = self.evaluate(x, s if self.kind == "flowmap" else None, t)
            with torch.no_grad():
                xd, sd, td = (torch.from_numpy(a).to(self.device) for a in (x, s, t))
                ref = self.model(xd, sd, td) if self.kind == "flowmap" else self.model(xd, td)
            worst = max(worst, float(np.max(np.abs(y - ref.float().cpu().numpy()))))
        return worst

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "captured": self.capture,
            "buckets": list(self.buckets),
            "channels_last": self.channels_last,
        }
