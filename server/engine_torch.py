"""The ``torch`` engine: eager PyTorch (optionally ``torch.compile``-d) on CPU or CUDA."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .engine_base import Engine, EngineError


class TorchEngine(Engine):
    """Eager PyTorch (optionally ``torch.compile``-d) on CPU or CUDA.

    Args:
        model: a :class:`~anystep.core.flowmap.FlowMap` or
            :class:`~anystep.core.flowmap.VelocityModel` (eval mode).
        data_shape: shape of one sample.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        compile: wrap the model with ``torch.compile(dynamic=True)``.
        threads: intra-op CPU threads of each call, set in every thread that calls the
            engine (OpenMP settings are per thread); None keeps torch's setting. The
            server defaults to 1: it parallelises across requests and models instead,
            and intra-op threads on an oversubscribed CPU can be 100x slower.
    """

    name = "torch"

    def __init__(
        self,
        model: Any,
        data_shape: Sequence[int],
        device: str = "cpu",
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch

        kind = getattr(model, "kind", None)
        super().__init__(kind if kind in ("flowmap", "velocity") else "flowmap", data_shape)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"device={device!r} but torch sees no CUDA GPU; use --device cpu")
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._fn = torch.compile(self.model, dynamic=True) if compile else self.model
        self.compiled = bool(compile)
        if threads is not None and int(threads) < 1:
            raise EngineError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads) if threads is not None else None
        self._threads_set: set[int] = set()

    def _to(self, a: np.ndarray):
        ident = threading.get_ident()
        if self.threads is not None and ident not in self._threads_set:
            self._torch.set_num_threads(self.threads)  # the calling thread's OpenMP team size
            self._threads_set.add(ident)
        return self._torch.from_numpy(a).to(self.device)

    def _cond(self, cond: dict[str, np.ndarray]) -> dict[str, Any]:
        """Conditioning rows (``y`` int64 labels, ``w`` scales) as tensors on the device."""
        return {k: self._to(np.ascontiguousarray(v, dtype=np.int64 if k == "y" else np.float32)) for k, v in cond.items()}

    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        if self.kind != "flowmap":
            return super().step(x, s, t)
        x, s, t = self._check(x, s, t)
        with self._torch.inference_mode():
            y = self._fn(self._to(x), self._to(s), self._to(t), **self._cond(cond))
        return y.detach().to("cpu", self._torch.float32).numpy()

    def velocity(self, x: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        x, t = self._check(x, t)
        with self._torch.inference_mode():
            if self.kind == "velocity":
                y = self._fn(self._to(x), self._to(t), **self._cond(cond))
            else:  # diagonal v_tt of a flow map (tangent condition)
                y = self.model.velocity(self._to(x), self._to(t), **self._cond(cond))
        return y.detach().to("cpu", self._torch.float32).numpy()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "compiled": self.compiled,
            "threads": self.threads,
        }
