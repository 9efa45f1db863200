"""Inference engines behind one interface: a batched step with per-sample times.

Every engine wraps one network and exposes numpy in / numpy out:

* flow maps: ``step(x, s, t) -> X_st`` with ``x: [B, *shape]`` float32 and
  ``s, t: [B]`` float32, i.e. one evaluation of ``X_{s,t}`` (Definition 3.2) where
  each row may have its own ``(s, t)``;
* velocity models: ``velocity(x, t) -> b_t(x)`` (eq. 3.1), ``t: [B]``.

Because the times are per sample, the server's scheduler can fuse the samples of
concurrent requests with different step counts into one call (step-level batching).

Engines: ``torch`` (eager, optionally ``torch.compile``), ``onnx`` (ONNX Runtime,
CPU or CUDA execution provider), ``tensorrt`` (needs an NVIDIA GPU and the ``gpu``
extra) and ``triton`` (a Triton Inference Server reached with ``tritonclient``;
each step is one Triton request while the step loop stays in the gateway).
Heavy optional dependencies are imported lazily inside the engine that needs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.errors import AnystepError

log = logging.getLogger("anystep.server")

ENGINES = ("torch", "onnx", "tensorrt", "triton")
"""Engine names accepted by :func:`build_engine` and ``anystep serve --engine``."""

ONNX_NAME = "model.onnx"
MANIFEST_NAME = "anystep-export.json"


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

    # -- the interface ---------------------------------------------------------------
    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """One flow-map jump ``X_st = X_{s,t}(x)`` per row (Definition 3.2).

        Args:
            x: ``[B, *shape]`` float32 states at times ``s``.
            s: ``[B]`` float32 start times.
            t: ``[B]`` float32 end times.

        Returns:
            ``[B, *shape]`` float32 states at times ``t``.
        """
        raise EngineError(
            f"the {self.name} engine serves a {self.kind} model; step() needs a flow map"
        )

    def velocity(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Velocity ``b_t(x)`` per row (eq. 3.1).

        Args:
            x: ``[B, *shape]`` float32.
            t: ``[B]`` float32 times.

        Returns:
            ``[B, *shape]`` float32.
        """
        raise EngineError(
            f"the {self.name} engine serves a {self.kind} model; velocity() needs a velocity model"
        )

    def evaluate(self, x: np.ndarray, s: np.ndarray | None, t: np.ndarray) -> np.ndarray:
        """Dispatch to :meth:`step` (flow maps, ``s`` given) or :meth:`velocity`."""
        if self.kind == "flowmap":
            if s is None:
                raise EngineError("a flow-map engine needs start times s")
            return self.step(x, s, t)
        return self.velocity(x, t)

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
            times = []
            for _ in range(max(1, repeats) + 1):
                t0 = time.perf_counter()
                y = self.evaluate(x, s, t)
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


# ------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------


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

    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "flowmap":
            return super().step(x, s, t)
        x, s, t = self._check(x, s, t)
        with self._torch.inference_mode():
            y = self._fn(self._to(x), self._to(s), self._to(t))
        return y.detach().to("cpu", self._torch.float32).numpy()

    def velocity(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x, t = self._check(x, t)
        with self._torch.inference_mode():
            if self.kind == "velocity":
                y = self._fn(self._to(x), self._to(t))
            else:  # diagonal v_tt of a flow map (tangent condition)
                y = self.model.velocity(self._to(x), self._to(t))
        return y.detach().to("cpu", self._torch.float32).numpy()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.device),
            "compiled": self.compiled,
            "threads": self.threads,
        }


# ------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------


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
    """Read an export manifest through the export package's loader when it exists."""
    try:
        from anystep.export.manifest import load_manifest  # type: ignore[import-not-found]
    except ImportError:
        load_manifest = None
    if load_manifest is not None:
        try:
            m = load_manifest(path)
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot read export manifest {path}: {e}") from None
        if hasattr(m, "to_dict"):
            return dict(m.to_dict())
        if isinstance(m, dict):
            return m
        import dataclasses

        if dataclasses.is_dataclass(m):
            return dataclasses.asdict(m)
        return dict(vars(m))
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"cannot read export manifest {path}: {e}") from None
    if not isinstance(data, dict):
        raise EngineError(f"export manifest {path} must hold a JSON object")
    return data


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


def _sha256_dir(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where on-the-fly exports go: ``$ANYSTEP_CACHE_DIR`` or ``~/.cache/anystep``."""
    return Path(os.environ.get("ANYSTEP_CACHE_DIR") or Path.home() / ".cache" / "anystep")


def export_onnx_cached(
    model_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    onnx_options: Any = None,
) -> OnnxArtifact:
    """Export a model directory to ONNX once, keyed by the directory's content hash.

    Uses the export package (:func:`anystep.export.onnx_export.export_onnx`: a validated
    single-step graph and its manifest) when it is importable, and a plain
    ``torch.onnx.export`` with inputs ``x, s, t`` (or ``x, t``) otherwise.

    Args:
        model_dir: a model directory (``config.json`` + ``model.safetensors``).
        cache_dir: cache root (default :func:`default_cache_dir`).
        onnx_options: ``anystep.export.onnx_export.OnnxOptions`` (exporter, batch range);
            part of the cache key.

    Returns:
        The cached artifact.
    """
    src = Path(model_dir)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _sha256_dir(src)[:24]
    if onnx_options is not None:
        key += "-" + hashlib.sha256(repr(onnx_options).encode()).hexdigest()[:8]
    out_dir = root / "onnx" / key
    found = find_onnx_artifact(out_dir)
    if found is not None:
        return found
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        exported = _export_with_export_package(src, tmp, onnx_options)
        if not exported:
            _export_with_torch(src, tmp / ONNX_NAME)
        if out_dir.exists():  # a concurrent export won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = find_onnx_artifact(out_dir)
    if found is None:
        raise EngineError(f"export of {src} produced no {ONNX_NAME} in {out_dir}")
    return found


def _export_with_export_package(src: Path, out: Path, onnx_options: Any = None) -> bool:
    """Export with the export package (validated graph + manifest); False when it is absent."""
    try:
        from anystep.export.onnx_export import export_onnx
    except ImportError:
        return False
    try:
        export_onnx(src, out, onnx_options, overwrite=True)
    except RuntimeError as e:  # ParityError: the graph disagrees with torch
        raise EngineError(f"ONNX export of {src} failed its parity check: {e}") from None
    return True


def _export_with_torch(src: Path, onnx_path: Path) -> None:
    """Minimal ONNX export with a dynamic batch dimension (fallback exporter)."""
    import torch

    from anystep.core.modeldir import load_model_dir

    lm = load_model_dir(src)
    model, cfg = lm.model, lm.config
    x = torch.randn(2, *cfg.data_shape)
    t = torch.full((2,), 0.5)
    if cfg.kind == "flowmap":
        args, names = (x, torch.zeros(2), t), ["x", "s", "t"]
    else:
        args, names = (x, t), ["x", "t"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = {n: {0: batch} for n in names}
    torch.onnx.export(
        model,
        args,
        str(onnx_path),
        input_names=names,
        output_names=["y"],
        dynamic_shapes=dyn,
        dynamo=True,
    )
    (onnx_path.parent / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "kind": cfg.kind,
                "inputs": names,
                "outputs": ["y"],
                "data_shape": list(cfg.data_shape),
            }
        )
        + "\n"
    )


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
        self.providers = self.session.get_providers()

    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        feeds = {self.input_names[0]: x}
        for name, tt in zip(self.input_names[1:], times):
            feeds[name] = (
                tt.reshape(-1, *([1] * (self._time_rank[name] - 1)))
                if self._time_rank[name] > 1
                else tt
            )
        (y,) = self.session.run([self.output_name], feeds)
        return np.asarray(y, dtype=np.float32)

    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "flowmap":
            return super().step(x, s, t)
        return self._run(*self._check(x, s, t))

    def velocity(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "velocity":
            return super().velocity(x, t)
        return self._run(*self._check(x, t))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "onnx": str(self.artifact.onnx_path),
            "providers": list(self.providers),
        }


# ------------------------------------------------------------------------------------
# TensorRT
# ------------------------------------------------------------------------------------


class TensorRTEngine(Engine):
    """A TensorRT engine built from the ONNX export (dynamic batch), run on CUDA via torch buffers.

    Needs an NVIDIA GPU, ``tensorrt`` (extra ``gpu``) and a CUDA build of torch. The
    serialized plan is cached beside the ONNX file, keyed by the GPU and TensorRT version.

    Args:
        artifact: the ONNX export to build from.
        data_shape: shape of one sample.
        max_batch: largest batch of the optimisation profile.
        fp16: allow FP16 kernels.
        device: CUDA device string.
    """

    name = "tensorrt"

    def __init__(
        self,
        artifact: OnnxArtifact | str | os.PathLike,
        data_shape: Sequence[int],
        max_batch: int = 256,
        fp16: bool = False,
        device: str = "cuda",
    ) -> None:
        try:
            import tensorrt as trt  # noqa: F401
        except ImportError:
            raise EngineError(
                "the tensorrt engine needs TensorRT: pip install 'anystep[gpu]'"
            ) from None
        import torch

        if not torch.cuda.is_available():
            raise EngineError("the tensorrt engine needs an NVIDIA GPU and a CUDA build of torch")
        if not isinstance(artifact, OnnxArtifact):
            found = find_onnx_artifact(artifact)
            if found is None:
                raise EngineError(f"no {ONNX_NAME} at {artifact}; export the model first")
            artifact = found
        self.artifact = artifact
        self._torch = torch
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.fp16 = bool(fp16)
        self._engine, names, self.output_name = self._build(artifact)
        kind = artifact.kind or ("flowmap" if len(names) == 3 else "velocity")
        super().__init__(kind, data_shape)
        self.input_names = names
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device)

    def _build(self, artifact: OnnxArtifact):
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        gpu = self._torch.cuda.get_device_name(self.device).replace(" ", "_")
        digest = hashlib.sha256(artifact.onnx_path.read_bytes()).hexdigest()[:16]
        plan = artifact.onnx_path.with_name(
            f"model.{digest}.{gpu}.trt{trt.__version__}.b{self.max_batch}{'.fp16' if self.fp16 else ''}.plan"
        )
        runtime = trt.Runtime(logger)
        engine = None
        if plan.is_file():
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(artifact.onnx_path.read_bytes()):
                errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise EngineError(f"TensorRT cannot parse {artifact.onnx_path}: {errs}")
            config = builder.create_builder_config()
            if self.fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                inp = network.get_input(i)
                rest = tuple(int(d) for d in inp.shape[1:])
                opt = max(1, min(self.max_batch, 64))
                profile.set_shape(inp.name, (1, *rest), (opt, *rest), (self.max_batch, *rest))
            config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise EngineError(f"TensorRT failed to build an engine from {artifact.onnx_path}")
            data = bytes(serialized)
            try:
                plan.write_bytes(data)
            except OSError:
                pass
            engine = runtime.deserialize_cuda_engine(data)
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            (inputs if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outputs).append(n)
        if artifact.input_names and set(artifact.input_names) == set(inputs):
            inputs = list(artifact.input_names)
        out = artifact.output_name if artifact.output_name in outputs else outputs[0]
        return engine, inputs, out

    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        torch = self._torch
        if x.shape[0] > self.max_batch:  # the profile caps the batch: run in chunks
            parts = [
                self._run(x[i : i + self.max_batch], *(tt[i : i + self.max_batch] for tt in times))
                for i in range(0, x.shape[0], self.max_batch)
            ]
            return np.concatenate(parts)
        ctx = self._context
        keep = []
        for name, arr in zip(self.input_names, (x, *times)):
            shape = tuple(self._engine.get_tensor_shape(name))
            a = torch.from_numpy(arr).to(self.device)
            if len(shape) == 2 and a.ndim == 1:
                a = a[:, None]
            a = a.contiguous()
            keep.append(a)
            ctx.set_input_shape(name, tuple(a.shape))
            ctx.set_tensor_address(name, a.data_ptr())
        out = torch.empty(
            tuple(ctx.get_tensor_shape(self.output_name)), dtype=torch.float32, device=self.device
        )
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        self._stream.synchronize()
        return out.cpu().numpy()

    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "flowmap":
            return super().step(x, s, t)
        return self._run(*self._check(x, s, t))

    def velocity(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "velocity":
            return super().velocity(x, t)
        return self._run(*self._check(x, t))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "onnx": str(self.artifact.onnx_path), "fp16": self.fp16}


# ------------------------------------------------------------------------------------
# Triton
# ------------------------------------------------------------------------------------


class TritonEngine(Engine):
    """A model on a Triton Inference Server, called over HTTP with ``tritonclient``.

    The step loop stays in this gateway: every :meth:`step` is one Triton request
    carrying the whole fused batch with its per-sample ``(s, t)``. Input and output
    names, and the rank of the time inputs, are read from the server's model metadata.

    Args:
        url: ``host:port`` or ``http://host:port`` of Triton's HTTP endpoint.
        model_name: the Triton model name.
        data_shape: shape of one sample.
        kind: ``"flowmap"`` or ``"velocity"`` (checked against the number of inputs).
        timeout_s: network timeout of one request.
        max_batch: largest batch sent in one request (larger batches are split).
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        model_name: str,
        data_shape: Sequence[int],
        kind: str,
        timeout_s: float = 30.0,
        max_batch: int | None = None,
    ) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise EngineError(
                "the triton engine needs tritonclient: pip install 'anystep[triton]'"
            ) from None
        super().__init__(kind, data_shape)
        self._http = httpclient
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        host = url.split("://", 1)[1] if "://" in url else url
        self.url = host.rstrip("/")
        self.model_name = model_name
        self._timeout = float(timeout_s)
        self._local = threading.local()
        try:
            client = self._client()
            if not client.is_model_ready(model_name):
                raise EngineError(
                    f"Triton at {self.url} has no ready model {model_name!r}; load it first"
                )
            meta = client.get_model_metadata(model_name)
            cfg = client.get_model_config(model_name)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, protocol errors
            raise EngineError(
                f"cannot reach Triton model {model_name!r} at {self.url}: {e}"
            ) from None
        inputs = meta.get("inputs", [])
        outputs = meta.get("outputs", [])
        names = [i["name"] for i in inputs]
        want = 3 if kind == "flowmap" else 2
        if len(names) != want:
            raise EngineError(
                f"Triton model {model_name!r} has inputs {names}; a {kind} model needs "
                f"{'(x, s, t)' if want == 3 else '(x, t)'}"
            )
        by_name = {n.lower(): n for n in names}
        order = ("x", "s", "t") if want == 3 else ("x", "t")
        if all(k in by_name for k in order):
            names = [by_name[k] for k in order]
        self.input_names = names
        self._meta_shape = {i["name"]: list(i["shape"]) for i in inputs}
        self.output_name = outputs[0]["name"]
        mb = int(cfg.get("max_batch_size", 0) or 0) if isinstance(cfg, dict) else 0
        self._batched = mb > 0  # Triton adds the batch dim to the declared dims
        self.max_batch = int(max_batch or mb or 1 << 30)

    def _client(self):
        """This thread's client (tritonclient's HTTP client is bound to the thread that made it)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(
                url=self.url, connection_timeout=self._timeout, network_timeout=self._timeout
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _shape_of(self, name: str, arr: np.ndarray) -> np.ndarray:
        dims = self._meta_shape.get(name, [])
        rank = len(dims)
        if name != self.input_names[0] and rank == 2:
            return arr.reshape(-1, 1)
        return arr

    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        if x.shape[0] > self.max_batch:
            parts = [
                self._run(x[i : i + self.max_batch], *(tt[i : i + self.max_batch] for tt in times))
                for i in range(0, x.shape[0], self.max_batch)
            ]
            return np.concatenate(parts)
        infer_inputs = []
        for name, arr in zip(self.input_names, (x, *times)):
            a = np.ascontiguousarray(self._shape_of(name, arr), dtype=np.float32)
            ii = self._http.InferInput(name, list(a.shape), "FP32")
            ii.set_data_from_numpy(a, binary_data=True)
            infer_inputs.append(ii)
        out = self._http.InferRequestedOutput(self.output_name, binary_data=True)
        try:
            res = self._client().infer(self.model_name, infer_inputs, outputs=[out])
        except Exception as e:  # noqa: BLE001 - tritonclient raises many types
            raise EngineError(f"Triton request to {self.model_name!r} failed: {e}") from None
        y = res.as_numpy(self.output_name)
        return np.asarray(y, dtype=np.float32).reshape(x.shape)

    def step(self, x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "flowmap":
            return super().step(x, s, t)
        return self._run(*self._check(x, s, t))

    def velocity(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.kind != "velocity":
            return super().velocity(x, t)
        return self._run(*self._check(x, t))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "model_name": self.model_name}

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients), []
        for client in clients:
            try:
                client.close()
            except Exception:
                log.debug("closing a Triton client failed", exc_info=True)


# ------------------------------------------------------------------------------------
# factory
# ------------------------------------------------------------------------------------


@dataclass
class EngineOptions:
    """How to build engines (shared by every served model).

    Attributes:
        device: torch device for the torch engine.
        compile: ``torch.compile`` the torch engine.
        onnx_providers: ONNX Runtime providers (default: CUDA if available, then CPU).
        cache_dir: where on-the-fly ONNX exports are cached.
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


def available_engines(options: EngineOptions | None = None) -> list[str]:
    """Engines this process could build (their dependencies import), in :data:`ENGINES` order."""
    import importlib.util

    out = ["torch"]
    if importlib.util.find_spec("onnxruntime") is not None:
        out.append("onnx")
    if importlib.util.find_spec("tensorrt") is not None:
        out.append("tensorrt")
    if (
        importlib.util.find_spec("tritonclient") is not None
        and options is not None
        and options.triton_url
    ):
        out.append("triton")
    return out


def build_engine(
    engine: str,
    name: str,
    model_dir: Path,
    config: Any,
    options: EngineOptions | None = None,
    model: Any = None,
) -> Engine:
    """Build the named engine for one model directory.

    Args:
        engine: one of :data:`ENGINES`.
        name: the served model name (default Triton model name).
        model_dir: the model directory (config + weights, and maybe an ONNX export).
        config: its :class:`~anystep.core.config.ModelConfig`.
        options: shared engine options.
        model: an already loaded torch model (torch engine), to avoid loading twice.

    Returns:
        The engine (not yet warmed up).
    """
    options = options or EngineOptions()
    shape = tuple(config.data_shape)
    if engine == "torch":
        if model is None:
            from anystep.core.modeldir import load_model_dir

            model = load_model_dir(model_dir).model
        return TorchEngine(
            model, shape, device=options.device, compile=options.compile, threads=options.threads
        )
    if engine in ("onnx", "tensorrt"):
        artifact = find_onnx_artifact(model_dir) or export_onnx_cached(model_dir, options.cache_dir)
        if engine == "onnx":
            return OnnxEngine(
                artifact,
                shape,
                kind=config.kind,
                providers=options.onnx_providers,
                intra_op_threads=options.threads or 0,
            )
        return TensorRTEngine(artifact, shape, max_batch=options.max_batch, fp16=options.fp16)
    if engine == "triton":
        if not options.triton_url:
            raise EngineError(
                "--engine triton needs --triton-url (Triton's HTTP endpoint, e.g. 127.0.0.1:8000)"
            )
        return TritonEngine(
            options.triton_url,
            options.triton_models.get(name, name),
            shape,
            kind=config.kind,
            max_batch=options.max_batch,
        )
    raise EngineError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
