"""Inference engines behind one interface, and the registry that builds them.

Engines (thin adapters; :mod:`anystep.export` builds and validates their artifacts):

* ``torch`` (:mod:`.engine_torch`): eager PyTorch, optionally ``torch.compile``;
* ``onnx`` (:mod:`.engine_onnx`): ONNX Runtime, CUDA provider with onnxruntime-gpu, else CPU;
* ``tensorrt`` (:mod:`.engine_tensorrt`): the export package's TensorRT plan (NVIDIA GPU, extra ``gpu``);
* ``triton`` (:mod:`.engine_triton`): a Triton Inference Server reached with ``tritonclient``;
* ``cudagraph`` (:mod:`.engine_cudagraph`): torch replaying one CUDA graph per batch bucket (NVIDIA GPU).

``auto`` (the default of ``anystep serve``) picks the fastest one available
(:func:`resolve_engine`): TensorRT on an NVIDIA GPU when installed, else CUDA graphs when
the torch device is a GPU (``--device cuda``), else ONNX Runtime, else torch. New engines register a builder in :data:`ENGINE_BUILDERS` (and their name
in :data:`ENGINES`). Heavy optional dependencies are imported lazily by the engine
that needs them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine_base import Engine, EngineError, WarmupTiming
from .engine_onnx import (
    MANIFEST_NAME,
    ONNX_NAME,
    OnnxArtifact,
    OnnxEngine,
    default_cache_dir,
    export_onnx_cached,
    find_onnx_artifact,
)
from .engine_tensorrt import TensorRTEngine
from .engine_torch import TorchEngine
from .engine_triton import TritonEngine

__all__ = [
    "ENGINES",
    "ENGINE_BUILDERS",
    "ENGINE_CHOICES",
    "MANIFEST_NAME",
    "ONNX_NAME",
    "Engine",
    "EngineError",
    "EngineOptions",
    "OnnxArtifact",
    "OnnxEngine",
    "TensorRTEngine",
    "TorchEngine",
    "TritonEngine",
    "WarmupTiming",
    "available_engines",
    "build_engine",
    "default_cache_dir",
    "export_onnx_cached",
    "find_onnx_artifact",
    "resolve_engine",
]

log = logging.getLogger("anystep.server")

ENGINES: tuple[str, ...] = ("torch", "onnx", "tensorrt", "triton", "cudagraph")
"""Engine names :func:`build_engine` builds."""
ENGINE_CHOICES: tuple[str, ...] = ("auto", *ENGINES)
"""What ``anystep serve --engine`` accepts."""


@dataclass
class EngineOptions:
    """How to build engines (shared by every served model).

    Attributes:
        device: torch device for the torch engine.
        compile: ``torch.compile`` the torch engine.
        onnx_providers: ONNX Runtime providers (default: CUDA if available, then CPU).
        cache_dir: where on-the-fly exports are cached.
        triton_url: Triton HTTP endpoint for the triton engine.
        triton_models: served name -> Triton model name (default: the served name).
        max_batch: largest fused batch (TensorRT profile size).
        fp16: TensorRT FP16.
        threads: intra-op CPU threads per engine call (torch, onnx); None keeps the
            libraries' defaults.
    """

    device: str = "cpu"
    compile: bool = False
    onnx_providers: list[str] | None = None
    cache_dir: Path | None = None
    triton_url: str | None = None
    triton_models: dict[str, str] = field(default_factory=dict)
    max_batch: int = 256
    fp16: bool = False
    threads: int | None = 1


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def available_engines(options: EngineOptions | None = None) -> list[str]:
    """Engines this process could build (their dependencies import), in :data:`ENGINES` order."""
    out = ["torch"]
    if _has("onnxruntime") and _has("onnx"):
        out.append("onnx")
    if _has("tensorrt") and _cuda_available():
        out.append("tensorrt")
    if _has("tritonclient") and options is not None and options.triton_url:
        out.append("triton")
    from .engine_cudagraph import cudagraph_available

    if cudagraph_available():
        out.append("cudagraph")
    return out


def resolve_engine(engine: str, options: EngineOptions | None = None) -> str:
    """The engine to build for ``engine`` (``auto``: TensorRT on a GPU, else cudagraph on a CUDA device, else ONNX Runtime, else torch)."""
    if engine not in ENGINE_CHOICES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {list(ENGINE_CHOICES)}")
    if engine != "auto":
        return engine
    here = available_engines(options)
    if options is not None and str(options.device).startswith("cuda") and not options.compile and "cudagraph" in here:
        return "tensorrt" if "tensorrt" in here else "cudagraph"  # a GPU without TensorRT: CUDA graphs
    if options is not None and (options.compile or str(options.device).startswith("cuda")) and "tensorrt" not in here:
        return "torch"  # torch-only options asked for
    for name in ("tensorrt", "onnx"):
        if name in here:
            return name
    return "torch"


def _build_torch(name: str, model_dir: Path, config: Any, options: EngineOptions, model: Any) -> Engine:
    if model is None:
        from anystep.core.modeldir import load_model_dir

        model = load_model_dir(model_dir).model
    return TorchEngine(model, tuple(config.data_shape), device=options.device, compile=options.compile, threads=options.threads)


def _build_onnx(name: str, model_dir: Path, config: Any, options: EngineOptions, model: Any) -> Engine:
    artifact = find_onnx_artifact(model_dir) or export_onnx_cached(model_dir, options.cache_dir)
    return OnnxEngine(
        artifact,
        tuple(config.data_shape),
        kind=config.kind,
        providers=options.onnx_providers,
        intra_op_threads=options.threads or 0,
    )


def _build_tensorrt(name: str, model_dir: Path, config: Any, options: EngineOptions, model: Any) -> Engine:
    return TensorRTEngine.from_model_dir(
        model_dir, tuple(config.data_shape), max_batch=options.max_batch, fp16=options.fp16, cache_dir=options.cache_dir
    )


def _build_triton(name: str, model_dir: Path, config: Any, options: EngineOptions, model: Any) -> Engine:
    if not options.triton_url:
        raise EngineError("--engine triton needs --triton-url (Triton's HTTP endpoint, e.g. 127.0.0.1:8000)")
    return TritonEngine(
        options.triton_url,
        options.triton_models.get(name, name),
        tuple(config.data_shape),
        kind=config.kind,
        max_batch=options.max_batch,
    )


def _build_cudagraph(name: str, model_dir: Path, config: Any, options: EngineOptions, model: Any) -> Engine:
    from .engine_cudagraph import CudaGraphEngine

    if not str(options.device).startswith("cuda"):
        raise EngineError("--engine cudagraph needs a CUDA GPU: add --device cuda (or use --engine torch on the CPU)")
    if model is None:
        from anystep.core.modeldir import load_model_dir

        model = load_model_dir(model_dir).model
    return CudaGraphEngine(model, tuple(config.data_shape), device=options.device, max_batch=options.max_batch)


ENGINE_BUILDERS: dict[str, Callable[[str, Path, Any, EngineOptions, Any], Engine]] = {
    "torch": _build_torch,
    "onnx": _build_onnx,
    "tensorrt": _build_tensorrt,
    "triton": _build_triton,
    "cudagraph": _build_cudagraph,
}
"""``name -> builder(served name, model dir, config, options, loaded torch model or None)``."""


def build_engine(
    engine: str,
    name: str,
    model_dir: Path,
    config: Any,
    options: EngineOptions | None = None,
    model: Any = None,
) -> Engine:
    """Build the named engine (or ``auto``) for one model directory.

    Args:
        engine: one of :data:`ENGINE_CHOICES`.
        name: the served model name (default Triton model name).
        model_dir: the model directory (config + weights, and maybe an ONNX export).
        config: its :class:`~anystep.core.config.ModelConfig`.
        options: shared engine options.
        model: an already loaded torch model (torch engine), to avoid loading twice.

    Returns:
        The engine (not yet warmed up).
    """
    options = options or EngineOptions()
    chosen = resolve_engine(engine, options)
    builder = ENGINE_BUILDERS.get(chosen)
    if builder is None:
        raise EngineError(f"unknown engine {chosen!r}; choose one of {list(ENGINE_CHOICES)}")
    return builder(name, Path(model_dir), config, options, model)
