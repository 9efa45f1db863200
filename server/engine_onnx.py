"""The ``onnx`` engine: an ONNX Runtime session on the export package's single-step graph.

The graph comes from the model directory (an ``anystep export`` beside it) or from the
export package's one cache (:func:`anystep.export.cache.cached_onnx_export`: exported once,
validated against torch, keyed by the directory's content hash).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.export.cache import ONNX_NAME, cached_onnx_export, default_cache_dir

__all__ = ["MANIFEST_NAME", "ONNX_NAME", "OnnxArtifact", "OnnxEngine", "default_cache_dir", "export_onnx_cached",
           "find_onnx_artifact"]
from anystep.export.common import MANIFEST_NAME

from .engine_base import Engine, EngineError, log


@dataclass
class OnnxArtifact:
    """An exported ONNX model and what the server needs to call it.

    Attributes:
        onnx_path: the ``model.onnx`` file.
        kind: ``"flowmap"`` (inputs x, s, t) or ``"velocity"`` (inputs x, t).
        input_names: graph input names in the order ``x, s, t`` (or ``x, t``).
        output_name: the graph output holding ``X_st`` (or ``b_t``).
        manifest: the export manifest, when there is one.
    """

    onnx_path: Path
    kind: str | None = None
    input_names: list[str] | None = None
    output_name: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def _load_manifest(path: Path) -> dict[str, Any]:
    """Read an export manifest with the export package's loader, as a dict."""
    import dataclasses

    from anystep.export.manifest import load_manifest

    try:
        m = load_manifest(path)
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read export manifest {path}: {e}") from None
    if hasattr(m, "to_dict"):
        return dict(m.to_dict())
    if dataclasses.is_dataclass(m):
        return dataclasses.asdict(m)
    return dict(m) if isinstance(m, dict) else dict(vars(m))


def _manifest_names(manifest: dict[str, Any]) -> tuple[str | None, list[str] | None, str | None]:
    kind = manifest.get("kind")
    inputs = manifest.get("inputs") or manifest.get("input_names")
    names: list[str] | None = None
    if isinstance(inputs, list) and inputs:
        names = [i["name"] if isinstance(i, dict) else str(i) for i in inputs]
    outputs = manifest.get("outputs") or manifest.get("output_names")
    out: str | None = None
    if isinstance(outputs, list) and outputs:
        out = outputs[0]["name"] if isinstance(outputs[0], dict) else str(outputs[0])
    elif isinstance(manifest.get("output_name"), str):
        out = manifest["output_name"]
    return (kind if kind in ("flowmap", "velocity") else None), names, out


def find_onnx_artifact(path: str | os.PathLike) -> OnnxArtifact | None:
    """Find an ONNX export at ``path``: a ``.onnx`` file, or a directory holding one.

    Looks for ``model.onnx`` (with ``anystep-export.json`` beside it, when present) in
    ``path`` and in its ``onnx/`` and ``export/`` sub-folders.

    Returns:
        The artifact, or None when there is no export there.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        candidates = [p]
    else:
        candidates = [p / ONNX_NAME, p / "onnx" / ONNX_NAME, p / "export" / ONNX_NAME]
    for onnx_path in candidates:
        if onnx_path.is_file():
            manifest_path = onnx_path.parent / MANIFEST_NAME
            manifest = _load_manifest(manifest_path) if manifest_path.is_file() else {}
            if manifest.get("graph", "step") != "step":
                raise EngineError(
                    f"{onnx_path} is a fused {manifest.get('fused_steps')}-step sampler graph; the server steps "
                    "models itself and needs a single-step export (anystep export without --steps)"
                )
            kind, names, out = _manifest_names(manifest)
            return OnnxArtifact(
                onnx_path=onnx_path,
                kind=kind,
                input_names=names,
                output_name=out,
                manifest=manifest,
            )
    return None


def export_onnx_cached(
    model_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    onnx_options: Any = None,
) -> OnnxArtifact:
    """The single-step ONNX export of a model directory from the export package's one cache
    (:func:`anystep.export.cache.cached_onnx_export`: exported once, validated against torch,
    keyed by the directory's content hash and the options).

    Args:
        model_dir: a model directory (``config.json`` + ``model.safetensors``).
        cache_dir: cache root (default :func:`default_cache_dir`).
        onnx_options: ``anystep.export.onnx_export.OnnxOptions`` (exporter, batch range);
            part of the cache key.

    Returns:
        The cached artifact.
    """
    try:
        folder = cached_onnx_export(model_dir, cache_dir, onnx_options, log_fn=log.info)
    except ImportError:
        raise EngineError("the onnx engine needs the export extra: pip install 'anystep[export]'") from None
    except RuntimeError as e:  # ParityError: the graph disagrees with torch
        raise EngineError(f"ONNX export of {model_dir} failed its parity check: {e}") from None
    found = find_onnx_artifact(folder)
    if found is None:
        raise EngineError(f"export of {model_dir} produced no {ONNX_NAME} in {folder}")
    return found


class OnnxEngine(Engine):
    """ONNX Runtime session on an exported model (CPU, or CUDA with ``onnxruntime-gpu``).

    Args:
        artifact: the exported model (see :func:`find_onnx_artifact`).
        data_shape: shape of one sample.
        kind: ``"flowmap"`` or ``"velocity"`` (default: from the manifest or the graph inputs).
        providers: ORT execution providers (default: CUDA when available, then CPU).
        intra_op_threads: ORT intra-op threads (0 = ORT's default, one per core).
    """

    name = "onnx"

    def __init__(
        self,
        artifact: OnnxArtifact | str | os.PathLike,
        data_shape: Sequence[int],
        kind: str | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError(
                "the onnx engine needs onnxruntime: pip install 'anystep[export]'"
            ) from None
        if not isinstance(artifact, OnnxArtifact):
            found = find_onnx_artifact(artifact)
            if found is None:
                raise EngineError(
                    f"no {ONNX_NAME} found at {artifact}; export the model first (anystep export)"
                )
            artifact = found
        self.artifact = artifact
        available = ort.get_available_providers()
        if providers is None:
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(artifact.onnx_path), sess_options=opts, providers=list(providers)
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(f"ONNX Runtime cannot load {artifact.onnx_path}: {e}") from None
        graph_inputs = self.session.get_inputs()
        names = artifact.input_names or [i.name for i in graph_inputs]
        graph_names = {i.name for i in graph_inputs}
        if set(names) != graph_names:
            names = [i.name for i in graph_inputs]
        # class-conditional graphs: per-row y (int64 labels) and w (guidance) after the times
        self.cond_names = [n for n in names if n in ("y", "w")]
        names = [n for n in names if n not in ("y", "w")]
        self.num_classes = 0  # set by the registry from the model config (the null class of CFG)
        if len(names) not in (2, 3):
            raise EngineError(
                f"{artifact.onnx_path} has inputs {names}; expected (x, s, t) for a flow map or (x, t) for a velocity model"
            )
        by_name = {n.lower(): n for n in names}
        if len(names) == 3 and all(k in by_name for k in ("x", "s", "t")):
            names = [by_name["x"], by_name["s"], by_name["t"]]
        elif len(names) == 2 and all(k in by_name for k in ("x", "t")):
            names = [by_name["x"], by_name["t"]]
        inferred = "flowmap" if len(names) == 3 else "velocity"
        kind = kind or artifact.kind or inferred
        if kind != inferred:
            raise EngineError(
                f"{artifact.onnx_path} has {len(names)} inputs but the model is a {kind} model"
            )
        super().__init__(kind, data_shape)
        self.input_names = names
        ranks = {i.name: len(i.shape) for i in graph_inputs}
        self._time_rank = {n: ranks.get(n, 1) for n in names[1:]}
        outs = [o.name for o in self.session.get_outputs()]
        self.output_name = artifact.output_name if artifact.output_name in outs else outs[0]
        self._outputs = [self.output_name]
        self._time_names = names[1:]  # [B] times, or [B, 1, ...] where the graph takes them so
        self._time_shapes = [None if self._time_rank[n] <= 1 else (-1, *([1] * (self._time_rank[n] - 1))) for n in names[1:]]
        self.providers = self.session.get_providers()

    def _run(self, x: np.ndarray, *times: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        feeds = {}
        if cond or self.cond_names:
            if cond.keys() != set(self.cond_names):
                raise EngineError(f"this graph takes conditioning {self.cond_names}, got {sorted(cond)}")
            feeds = {n: np.ascontiguousarray(cond[n], dtype=np.int64 if n == "y" else np.float32) for n in self.cond_names}
        feeds[self.input_names[0]] = x
        for name, tt, shape in zip(self._time_names, times, self._time_shapes):
            feeds[name] = tt if shape is None else tt.reshape(shape)
        (y,) = self.session.run(self._outputs, feeds)
        return y if y.dtype == np.float32 else y.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "onnx": str(self.artifact.onnx_path),
            "providers": list(self.providers),
        }
