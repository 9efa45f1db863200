"""The ``tensorrt`` engine: runs the export package's TensorRT plan (one builder, one parity check).

The plan is built by :func:`anystep.export.tensorrt_build.export_tensorrt` -- with its
precision rules (time layers kept in fp32 for fp16 builds) and its parity check
against ONNX Runtime -- once per model directory content, GPU, TensorRT version,
batch range and precision, into the engine cache; this engine only deserializes and
runs it (:class:`~anystep.export.tensorrt_build.TensorRTRunner`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anystep.core.modeldir import model_dir_sha256
from anystep.export.cache import default_cache_dir

from .engine_base import Engine, EngineError


class TensorRTEngine(Engine):
    """A TensorRT plan with a dynamic batch profile, fed numpy batches.

    Needs an NVIDIA GPU and ``tensorrt`` (extra ``gpu``).

    Args:
        plan_dir: a TensorRT export folder (``anystep export --format tensorrt``).
        data_shape: shape of one sample.
        max_batch: the profile's largest batch (larger calls run in chunks).
        device: CUDA device index.
    """

    name = "tensorrt"

    def __init__(self, plan_dir: str | os.PathLike, data_shape: Sequence[int], max_batch: int = 256, device: int = 0) -> None:
        runner_cls, manifest = _runner_and_manifest(plan_dir)
        self._runner = runner_cls(manifest.artifact_path, device=device)
        names = list(self._runner.input_names)
        kind = manifest.kind if manifest.kind in ("flowmap", "velocity") else ("flowmap" if len(names) == 3 else "velocity")
        super().__init__(kind, data_shape)
        by = {n.lower(): n for n in names}
        order = ("x", "s", "t") if kind == "flowmap" else ("x", "t")
        self.input_names = [by[k] for k in order] if all(k in by for k in order) else names
        self.output_name = self._runner.output_names[0]
        self._time_rank = {n: len(self._runner.profile[n][0]) for n in self.input_names[1:]}
        self.max_batch = min(int(max_batch), int(self._runner.profile[self.input_names[0]][2][0]))
        self.plan_path = Path(manifest.artifact_path)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike,
        data_shape: Sequence[int],
        *,
        max_batch: int = 256,
        fp16: bool = False,
        cache_dir: str | os.PathLike | None = None,
        device: int = 0,
    ) -> TensorRTEngine:
        """Build (once, cached) and load the plan of a model directory."""
        try:
            from anystep.export.common import BatchRange
            from anystep.export.tensorrt_build import (
                TensorRTOptions,
                export_tensorrt,
                gpu_unavailable_reason,
            )
        except ImportError as e:
            raise EngineError(f"the tensorrt engine needs the export and gpu extras: pip install 'anystep[export,gpu]' ({e})") from None
        why = gpu_unavailable_reason()
        if why:
            raise EngineError(f"the tensorrt engine needs an NVIDIA GPU and TensorRT: {why}")
        import tensorrt as trt
        import torch

        gpu = torch.cuda.get_device_name(device).replace(" ", "_")
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        tag = f"{model_dir_sha256(model_dir)[:24]}-{gpu}-trt{trt.__version__}-b{max_batch}{'-fp16' if fp16 else ''}"
        out = root / "tensorrt" / hashlib.sha256(tag.encode()).hexdigest()[:24]
        if not (out / "anystep-export.json").is_file():
            opts = TensorRTOptions(fp16=fp16, batch=BatchRange(1, min(64, max_batch), max_batch), device=device)
            export_tensorrt(model_dir, out, trt_opts=opts, overwrite=True)
        return cls(out, data_shape, max_batch=max_batch, device=device)

    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        return self._in_chunks(self._run_one, self.max_batch, x, *times)

    def _run_one(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        feeds = {self.input_names[0]: x}
        for name, tt in zip(self.input_names[1:], times):
            feeds[name] = tt.reshape(-1, 1) if self._time_rank[name] == 2 else tt
        out = self._runner.run(feeds)[self.output_name]
        return np.asarray(out, dtype=np.float32).reshape(x.shape)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "plan": self.plan_path.name, "max_batch": self.max_batch}


def _runner_and_manifest(plan_dir: str | os.PathLike):
    try:
        from anystep.export.manifest import load_manifest
        from anystep.export.tensorrt_build import TensorRTRunner, require_tensorrt
    except ImportError as e:
        raise EngineError(f"the tensorrt engine needs the export and gpu extras: pip install 'anystep[export,gpu]' ({e})") from None
    try:
        require_tensorrt()
    except Exception as e:  # noqa: BLE001 - DeviceUnavailableError: no GPU / no tensorrt
        raise EngineError(f"the tensorrt engine needs TensorRT and an NVIDIA GPU: {e}") from None
    try:
        m = load_manifest(Path(plan_dir))
    except (OSError, ValueError) as e:
        raise EngineError(f"no TensorRT export at {plan_dir} ({e}); build one with anystep export --format tensorrt") from None
    if getattr(m, "format", None) != "tensorrt":
        raise EngineError(f"{plan_dir} holds a {getattr(m, 'format', '?')} export, not a TensorRT plan")
    return TensorRTRunner, m
