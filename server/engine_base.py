"""The engine interface: a batched network evaluation with per-sample times, numpy in and out.

* flow maps: ``step(x, s, t) -> X_st`` with ``x: [B, *shape]`` float32 and
  ``s, t: [B]`` float32, one evaluation of ``X_{s,t}`` (Definition 3.2) where each row
  may have its own ``(s, t)``;
* velocity models: ``velocity(x, t) -> b_t(x)`` (eq. 3.1), ``t: [B]``.

Because the times are per sample, the scheduler fuses the samples of concurrent
requests with different step counts into one call (step-level batching). Engines are
thin adapters: building and validating artifacts is :mod:`anystep.export`'s job. They
read their inputs and never write them (the scheduler may hand over a job's own state
array).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anystep.errors import AnystepError

log = logging.getLogger("anystep.server")

class EngineError(AnystepError):
    """An engine cannot be built or used as asked; the message says how to fix it."""


@dataclass
class WarmupTiming:
    """One warm-up measurement.

    Attributes:
        batch: number of rows ``B`` in the call.
        seconds: wall time of one call (fastest of the repeats).
    """

    batch: int
    seconds: float


class Engine:
    """Base class: a network evaluated on numpy batches with per-sample times.

    Attributes:
        name: engine name (``"torch"``, ``"onnx"``, ``"tensorrt"``, ``"triton"``).
        kind: ``"flowmap"`` (implements :meth:`step`) or ``"velocity"`` (implements :meth:`velocity`).
        data_shape: shape of one sample in model units, e.g. ``(2,)`` or ``(1, 8, 8)``.
    """

    name: str = "base"

    def __init__(self, kind: str, data_shape: Sequence[int]) -> None:
        if kind not in ("flowmap", "velocity"):
            raise EngineError(f"engine kind must be 'flowmap' or 'velocity', got {kind!r}")
        self.kind = kind
        self.data_shape = tuple(int(d) for d in data_shape)
        # class-conditional models (set by the registry from the model config): the per-row
        # inputs every call takes ("y", and "w" for maps with a guidance input) and the null class
        self.cond_inputs: tuple[str, ...] = ()
        self.num_classes = 0

    # -- the interface ---------------------------------------------------------------
    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        """One flow-map jump ``X_st = X_{s,t}(x)`` per row (Definition 3.2).

        Args:
            x: ``[B, *shape]`` float32 states at times ``s``.
            s: ``[B]`` float32 start times.
            t: ``[B]`` float32 end times.

        Returns:
            ``[B, *shape]`` float32 states at times ``t``.
        """
        if self.kind != "flowmap":
            raise EngineError(
                f"the {self.name} engine serves a {self.kind} model; step() needs a flow map"
            )
        return self._run(*self._check(x, s, t), **cond)

    def velocity(self, x: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        """Velocity ``b_t(x)`` per row (eq. 3.1).

        Args:
            x: ``[B, *shape]`` float32.
            t: ``[B]`` float32 times.

        Returns:
            ``[B, *shape]`` float32.
        """
        if self.kind != "velocity":
            raise EngineError(
                f"the {self.name} engine serves a {self.kind} model; velocity() needs a velocity model"
            )
        return self._run(*self._check(x, t), **cond)

    def evaluate(self, x: np.ndarray, s: np.ndarray | None, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        """Dispatch to :meth:`step` (flow maps, ``s`` given) or :meth:`velocity`.

        ``cond``: per-row conditioning of class-conditional models, ``y`` (int64 labels) and
        ``w`` (guidance scales). A flow map takes both as inputs; a velocity model given ``w``
        is classifier-free guided, ``b(x, ∅) + w (b(x, y) - b(x, ∅))``, from one call on
        ``[x; x]`` with labels ``[y; ∅]`` (``null_class`` is the engine's ``num_classes``).
        """
        if self.kind == "flowmap":
            if s is None:
                raise EngineError("a flow-map engine needs start times s")
            return self.step(x, s, t, **cond) if cond else self.step(x, s, t)
        if "w" in cond:
            y, w = np.asarray(cond["y"], dtype=np.int64), np.asarray(cond["w"], dtype=np.float32)
            null = np.full_like(y, int(getattr(self, "num_classes", 0)))
            both = self.velocity(np.concatenate([x, x]), np.concatenate([t, t]), y=np.concatenate([y, null]))
            b_y, b_null = both[: x.shape[0]], both[x.shape[0] :]
            return b_null + w.reshape(-1, *([1] * (x.ndim - 1))) * (b_y - b_null)
        return self.velocity(x, t, **cond) if cond else self.velocity(x, t)

    def warmup(self, batch_sizes: Sequence[int] = (1, 8), repeats: int = 5) -> list[WarmupTiming]:
        """Run the network a few times (compiles kernels, fills caches) and time it.

        Args:
            batch_sizes: the ``B`` values to time.
            repeats: calls per batch size; the fastest is reported (robust to CPU contention).

        Returns:
            One :class:`WarmupTiming` per batch size.
        """
        out: list[WarmupTiming] = []
        rng = np.random.default_rng(0)
        for b in batch_sizes:
            b = max(1, int(b))
            x = rng.standard_normal((b, *self.data_shape)).astype(np.float32)
            s = np.zeros(b, dtype=np.float32)
            t = np.full(b, 0.5, dtype=np.float32)
            cond = {k: np.zeros(b, np.int64) if k == "y" else np.ones(b, np.float32) for k in self.cond_inputs}
            times = []
            for _ in range(max(1, repeats) + 1):
                t0 = time.perf_counter()
                y = self.evaluate(x, s, t, **cond)
                times.append(time.perf_counter() - t0)
                if y.shape != x.shape:
                    raise EngineError(
                        f"the {self.name} engine returned shape {list(y.shape)} for input {list(x.shape)}; "
                        "is the artifact exported for this model?"
                    )
            out.append(WarmupTiming(batch=b, seconds=float(np.min(times[1:]))))
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for logs and ``/v1/models``."""
        return {"engine": self.name, "kind": self.kind, "data_shape": list(self.data_shape)}

    def close(self) -> None:
        """Release resources (sessions, connections)."""

    # -- what an artifact adapter implements --------------------------------------------
    def _run(self, x: np.ndarray, *times: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        """Run the artifact on checked inputs: ``times`` is ``(s, t)`` for a flow map, ``(t,)``
        for a velocity model; ``cond`` the per-row conditioning the artifact takes.

        Engines over one exported artifact (ONNX, TensorRT, Triton, CUDA graphs) implement
        only this; :meth:`step` and :meth:`velocity` check the kind and the shapes once, here.
        """
        raise EngineError(f"the {self.name} engine does not implement _run()")

    @staticmethod
    def _in_chunks(run, max_batch: int, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        """``run(x, *times)`` on consecutive slices of at most ``max_batch`` rows (an artifact
        built for a bounded batch), concatenated."""
        if x.shape[0] <= max_batch:
            return run(x, *times)
        return np.concatenate([
            run(x[i : i + max_batch], *(tt[i : i + max_batch] for tt in times))
            for i in range(0, x.shape[0], max_batch)
        ])

    # -- helpers ---------------------------------------------------------------------
    def _check(self, x: np.ndarray, *times: np.ndarray) -> tuple[np.ndarray, ...]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise EngineError(
                f"expected x of shape [B, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}"
            )
        ts = []
        for tt in times:
            tt = np.ascontiguousarray(tt, dtype=np.float32).reshape(-1)
            if tt.shape[0] != x.shape[0]:
                raise EngineError(f"times must have shape [B]={x.shape[0]}, got {list(tt.shape)}")
            ts.append(tt)
        return (x, *ts)
