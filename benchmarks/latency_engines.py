"""The engine table of the latency benchmark: the serving engines as ``x0 -> x1`` samplers.

Split from :mod:`anystep.benchmarks.latency`: the ONNX exports it times (cached by the
model directory's hash, :func:`ensure_export`), the fused K-step graph on ONNX Runtime
(:class:`FusedOnnx`), the flow-map loop (eq. 3.6) and ODE solves (eq. 3.1) through an
engine's ``step`` / ``velocity``, and :func:`build_engine_cases` (torch, ONNX Runtime,
fused ONNX, TensorRT where a GPU and the package exist; skipped with the reason otherwise).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.benchmarks.latency_methods import BenchSettings, MethodSpec
from anystep.benchmarks.latency_models import ModelPair
from anystep.errors import AnystepError

__all__ = ["EngineCase", "FusedOnnx", "build_engine_cases", "ensure_export", "tensorrt_unavailable_reason"]


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can (an NVIDIA GPU and the package)."""
    if not torch.cuda.is_available():
        return "no NVIDIA GPU on this machine (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'anystep[gpu]')"
    return None


def ensure_export(model_dir: Path, work_dir: Path, *, fused_steps: int | None = None, solver: str = "euler",
                  exporter: str = "auto", log: Callable[[str], None] = print) -> Path:
    """The ONNX export of ``model_dir`` (single step, or a fused K-step graph) from the export
    package's one cache (:func:`anystep.export.cache.cached_onnx_export`, the server's too), rooted
    at ``work_dir/exports``: keyed by the directory's content hash and the options, so a re-run
    does not re-export.

    Returns:
        The folder holding ``model.onnx`` and ``anystep-export.json``.
    """
    from anystep.export.cache import cached_onnx_export
    from anystep.export.onnx_export import OnnxOptions

    tag = "step" if fused_steps is None else f"fused{fused_steps}-{solver}"
    opts = OnnxOptions(fused_steps=fused_steps, solver=solver, exporter=exporter)
    return cached_onnx_export(model_dir, work_dir / "exports", opts,
                              log_fn=lambda m: log(f"[export] {model_dir.name} ({tag}): {m}"))


class FusedOnnx:
    """A fused K-step sampler graph ``x0 -> x1`` on ONNX Runtime (CPU).

    Args:
        folder: export folder (``model.onnx`` + manifest).
        threads: intra-op threads.
    """

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x0: np.ndarray) -> np.ndarray:
        (y,) = self.session.run([self.output_name], {self.input_name: x0})
        return y


def _engine_flowmap_loop(engine: Any, K: int) -> Callable[[np.ndarray], np.ndarray]:
    """K-step flow-map sampling (eq. 3.6) through ``engine.step`` with per-sample times."""
    grid = np.linspace(0.0, 1.0, K + 1).astype(np.float32)
    cache: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def run(x: np.ndarray) -> np.ndarray:
        B = x.shape[0]
        times = cache.get(B)
        if times is None:
            times = [(np.full(B, grid[k], np.float32), np.full(B, grid[k + 1], np.float32)) for k in range(K)]
            cache[B] = times
        for s, t in times:
            x = engine.step(x, s, t)
        return x

    return run


def _engine_ode(engine: Any, solver: str, nfe: int | None, rtol: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """An ODE solve (eq. 3.1) whose velocity evaluations go through ``engine.velocity``."""
    from anystep.core.samplers import sample_ode

    def b(x: Tensor, t: Tensor) -> Tensor:
        return torch.from_numpy(engine.velocity(x.numpy(), t.to(torch.float32).numpy()))

    def run(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x)
        if solver == "dopri5":
            return sample_ode(b, xt, solver="dopri5", rtol=rtol).x.numpy()
        return sample_ode(b, xt, solver=solver, nfe=nfe).x.numpy()

    return run


@dataclass
class EngineCase:
    """One (engine, method) cell: a numpy sampler ``x0 -> x1`` and its NFE."""

    engine: str
    spec: MethodSpec
    run: Callable[[np.ndarray], np.ndarray]


def build_engine_cases(pair: ModelPair, settings: BenchSettings, work_dir: Path,
                       log: Callable[[str], None]) -> tuple[list[EngineCase], list[dict[str, str]]]:
    """The cells of the engine table and the engines skipped (with the reason)."""
    from anystep.server.engines import OnnxEngine, TensorRTEngine, TorchEngine, find_onnx_artifact

    cases: list[EngineCase] = []
    skipped: list[dict[str, str]] = []
    fm_specs = [MethodSpec(key=f"flowmap-{k}", family="flow map", steps=k, nfe=k) for k in settings.engine_steps]
    te_specs: list[MethodSpec] = []
    if settings.engine_teacher and pair.teacher is not None:
        te_specs = [MethodSpec(key="rk4-8", family="rk4", steps=2, nfe=8),
                    MethodSpec(key=f"dopri5-{min(settings.rtols):g}", family="dopri5", rtol=min(settings.rtols))]
    shape = pair.data_shape
    fm_ok = pair.flowmap is not None
    for eng in settings.engines:
        try:
            if eng == "torch":
                if fm_ok:
                    e = TorchEngine(pair.flowmap.model, shape, threads=settings.threads)
                    cases += [EngineCase("torch", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
                if te_specs:
                    e = TorchEngine(pair.teacher.model, shape, threads=settings.threads)
                    cases += [EngineCase("torch", s, _engine_ode(e, s.family, s.nfe, s.rtol)) for s in te_specs]
            elif eng == "onnx":
                if fm_ok:
                    d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
                    e = OnnxEngine(find_onnx_artifact(d), shape, kind="flowmap", providers=["CPUExecutionProvider"],
                                   intra_op_threads=settings.threads)
                    cases += [EngineCase("onnx", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
                if te_specs:
                    d = ensure_export(pair.teacher_dir, work_dir, exporter=settings.exporter, log=log)
                    e = OnnxEngine(find_onnx_artifact(d), shape, kind="velocity", providers=["CPUExecutionProvider"],
                                   intra_op_threads=settings.threads)
                    cases += [EngineCase("onnx", s, _engine_ode(e, s.family, s.nfe, s.rtol)) for s in te_specs]
            elif eng == "onnx-fused":
                if fm_ok:
                    for s in fm_specs:
                        d = ensure_export(pair.flowmap_dir, work_dir, fused_steps=s.steps, exporter=settings.exporter,
                                          log=log)
                        cases.append(EngineCase("onnx-fused", s, FusedOnnx(d, settings.threads)))
                for s in te_specs:
                    if s.family == "dopri5":
                        skipped.append({"engine": "onnx-fused", "method": s.label,
                                        "reason": "adaptive dopri5 cannot be unrolled into a fixed graph"})
                        continue
                    d = ensure_export(pair.teacher_dir, work_dir, fused_steps=s.steps, solver=s.family,
                                      exporter=settings.exporter, log=log)
                    cases.append(EngineCase("onnx-fused", s, FusedOnnx(d, settings.threads)))
            elif eng == "tensorrt":
                reason = tensorrt_unavailable_reason()
                if reason is not None:
                    skipped.append({"engine": "tensorrt", "method": "all", "reason": reason})
                    continue
                if fm_ok:  # pragma: no cover - needs a GPU
                    d = ensure_export(pair.flowmap_dir, work_dir, exporter=settings.exporter, log=log)
                    e = TensorRTEngine(find_onnx_artifact(d), shape, max_batch=max(settings.batch_sizes))
                    cases += [EngineCase("tensorrt", s, _engine_flowmap_loop(e, s.steps)) for s in fm_specs]
        except ImportError as exc:
            skipped.append({"engine": eng, "method": "all", "reason": f"missing package: {exc}"})
        except AnystepError as exc:
            skipped.append({"engine": eng, "method": "all", "reason": str(exc).splitlines()[0]})
    return cases, skipped
