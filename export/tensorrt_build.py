"""TensorRT engines (``.plan``) built from the exported ONNX graph, and a runner for them.

``anystep export MODEL_DIR --format tensorrt [--fp16] [--min-batch/--opt-batch/--max-batch]
[--timing-cache FILE]`` exports and validates the ONNX graph (step or fused), then

1. parses it with TensorRT's ONNX parser into a network with one optimization profile
   covering ``[min, max]`` batches (tuned for ``opt``) for every input;
2. builds and serializes the engine (``model.plan``), reading and updating an optional
   timing cache so rebuilds are fast;
3. deserializes it again and checks it against ONNX Runtime (CPU, fp32 graph) on the
   profile's min/opt/max batches (plus 1, 3, 64 inside the range) and several ``(s, t)``
   pairs, with tolerances per precision (fp32: 1e-3, fp16: 5e-2; stated in the manifest).

Precision and the TensorRT 10 -> 11 API change: TensorRT 11 removed
``BuilderFlag.FP16`` (weak typing). With ``--fp16`` this module builds a strongly typed
network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, present since TensorRT 9 and
implied in 11) from a mixed-precision ONNX graph
(:func:`anystep.export.precision.make_fp16_onnx`: fp16 network, fp32 time embeddings and
I/O), so TensorRT 10 and 11 build the same engine. ``--weakly-typed`` (TensorRT <= 10
only) builds from the fp32 graph with ``BuilderFlag.FP16`` instead, asking TensorRT to
keep the time-only layers in fp32 (``PREFER_PRECISION_CONSTRAINTS``). fp32 builds clear
``BuilderFlag.TF32`` where it exists, so "fp32" means fp32.

Buffers: device memory comes from torch (``torch.cuda``) when torch has CUDA, else from
cuda-python (``cuda.bindings.runtime`` / ``cuda.cudart``). tensorrt is an optional extra
(``anystep[gpu]``) imported lazily; without an NVIDIA GPU every entry point raises
:class:`~anystep.export.common.DeviceUnavailableError` (CLI: one line, exit 2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    MANIFEST_NAME,
    ONNX_NAME,
    PLAN_NAME,
    BatchRange,
    DeviceUnavailableError,
    ExportError,
    ParityError,
    sha256_file,
    staging_dir,
)
from .manifest import ExportManifest, Tolerance

FP16_ONNX_NAME = "model_fp16.onnx"


# --------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------


def cuda_device_count() -> int:
    """Number of CUDA devices visible to this process (0 when there is no driver/GPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.device_count())
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    rt = _cudart_module()
    if rt is not None:
        try:
            err, n = rt.cudaGetDeviceCount()
            if int(err) == 0:
                return int(n)
        except Exception:  # noqa: BLE001 - no driver
            return 0
    return 0


def gpu_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, in one line, or None when it can."""
    if cuda_device_count() == 0:
        return (
            "TensorRT export needs an NVIDIA GPU with a CUDA driver, and none is visible on this machine; "
            "run it on a GPU machine (pip install 'anystep[gpu]'), or use --format onnx"
        )
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"TensorRT is not installed ({e}); pip install 'anystep[gpu]' (tensorrt) on this GPU machine"
    return None


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise a one-line DeviceUnavailableError."""
    reason = gpu_unavailable_reason()
    if reason:
        raise DeviceUnavailableError(reason)
    import tensorrt as trt

    if not hasattr(trt.IExecutionContext, "execute_async_v3"):
        raise DeviceUnavailableError(
            f"TensorRT {trt.__version__} is too old: anystep needs TensorRT >= 8.6 (execute_async_v3)"
        )
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def has_weak_fp16(trt) -> bool:
    """True when this TensorRT still has ``BuilderFlag.FP16`` (TensorRT <= 10)."""
    return hasattr(trt.BuilderFlag, "FP16")


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------


@dataclass
class TensorRTOptions:
    """How to build an engine.

    Attributes:
        fp16: build for fp16 (strongly typed from an fp16 graph on TensorRT 11).
        batch: the optimization profile's min/opt/max batch.
        timing_cache: file to read tactic timings from and write them back to (optional).
        workspace_mib: builder workspace memory-pool limit.
        strongly_typed: force (True) or forbid (False) a strongly typed build; None picks:
            strongly typed for fp16 (weakly typed only on TensorRT 8, which lacks it).
        atol, rtol: parity tolerance vs ONNX Runtime (default per precision).
        device: CUDA device index.
    """

    fp16: bool = False
    batch: BatchRange = field(default_factory=BatchRange)
    timing_cache: Path | None = None
    workspace_mib: int = 2048
    strongly_typed: bool | None = None
    atol: float | None = None
    rtol: float | None = None
    device: int = 0

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"


@dataclass
class BuildResult:
    """A built engine.

    Attributes:
        plan: the serialized engine bytes.
        build_time_s: seconds spent in ``build_serialized_network``.
        strongly_typed: whether the network was strongly typed.
        onnx_path: the ONNX graph the engine was parsed from.
        timing_cache_written: the timing-cache file updated, if any.
        tensorrt_version: ``tensorrt.__version__``.
    """

    plan: bytes
    build_time_s: float
    strongly_typed: bool
    onnx_path: Path
    timing_cache_written: Path | None
    tensorrt_version: str


class _Logger:
    """A TensorRT logger that also keeps error messages for our one-line errors."""

    def __init__(self, trt) -> None:
        self.trt = trt
        self.errors: list[str] = []

        class L(trt.ILogger):
            def __init__(inner):
                trt.ILogger.__init__(inner)

            def log(inner, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(str(msg))

        self.logger = L()


def build_engine(
    onnx_path: str | os.PathLike,
    input_names: Sequence[str],
    opts: TensorRTOptions,
    *,
    fp16_onnx_path: str | os.PathLike | None = None,
) -> BuildResult:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile.

    Args:
        onnx_path: the fp32 graph (inputs ``[batch, ...]``).
        input_names: graph inputs (each gets ``[min|opt|max, *rest]`` in the profile).
        opts: build options.
        fp16_onnx_path: where to write the mixed-precision graph for a strongly typed fp16
            build (default: beside ``onnx_path``).

    Returns:
        BuildResult.

    Raises:
        DeviceUnavailableError: no GPU / no tensorrt.
        ExportError: the parser or the builder failed (message holds TensorRT's first error).
    """
    import onnx

    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    ndcf = trt.NetworkDefinitionCreationFlag
    strongly_typed = opts.strongly_typed
    if strongly_typed is None:
        strongly_typed = bool(
            opts.fp16 and (hasattr(ndcf, "STRONGLY_TYPED") or not has_weak_fp16(trt))
        )
    if opts.fp16 and not strongly_typed and not has_weak_fp16(trt):
        raise ExportError(
            f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing); drop --weakly-typed"
        )
    src = onnx_path
    if opts.fp16 and strongly_typed:
        from .precision import make_fp16_onnx

        src = Path(fp16_onnx_path) if fp16_onnx_path else onnx_path.with_name(FP16_ONNX_NAME)
        make_fp16_onnx(onnx_path, src)

    log = _Logger(trt)
    builder = trt.Builder(log.logger)
    flags = 0
    if trt_major(trt) < 10 and hasattr(ndcf, "EXPLICIT_BATCH"):
        flags |= 1 << int(ndcf.EXPLICIT_BATCH)
    if strongly_typed:
        if hasattr(ndcf, "STRONGLY_TYPED"):
            flags |= 1 << int(ndcf.STRONGLY_TYPED)
        elif trt_major(trt) < 11:
            raise ExportError(
                f"TensorRT {trt.__version__} cannot build strongly typed networks; use TensorRT >= 9"
            )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(src)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT's ONNX parser rejected {src.name}: {errs[0] if errs else 'unknown error'}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mib) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        _pin_time_layers_fp32(trt, network, config)

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input
    }
    profile = builder.create_optimization_profile()
    b = opts.batch
    for name in input_names:
        rest = tuple(int(d) for d in dims[name][1:])
        profile.set_shape(name, (b.min, *rest), (b.opt, *rest), (b.max, *rest))
    config.add_optimization_profile(profile)

    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=True)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_time = time.perf_counter() - t0
    if serialized is None:
        first = log.errors[0] if log.errors else "no message"
        raise ExportError(f"TensorRT failed to build the engine: {first}")
    written = None
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            blob = bytes(memoryview(cache.serialize()))
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, cache_path)
            written = cache_path
    return BuildResult(
        plan=bytes(memoryview(serialized)),
        build_time_s=build_time,
        strongly_typed=bool(strongly_typed),
        onnx_path=src,
        timing_cache_written=written,
        tensorrt_version=str(trt.__version__),
    )


def _pin_time_layers_fp32(trt, network, config, data_inputs: Sequence[str] = ("x", "x0")) -> int:
    """Weakly typed fp16: ask TensorRT to keep layers that do not depend on ``x`` in fp32.

    Those compute the time embeddings (Fourier phases ``2 pi f t`` need fp32; see
    :mod:`anystep.export.precision`). Returns the number of layers pinned.
    """
    dependent = {network.get_input(i).name for i in range(network.num_inputs)} & set(data_inputs)
    pinned = 0
    for li in range(network.num_layers):
        layer = network.get_layer(li)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        if any(t is not None and t.name in dependent for t in ins):
            dependent.update(layer.get_output(j).name for j in range(layer.num_outputs))
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(o.dtype != trt.float32 for o in outs):
            continue  # shape/index layers keep their own types
        try:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
        except (AttributeError, TypeError, RuntimeError):
            continue
    if pinned and hasattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS"):
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return pinned


# --------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------


def _cudart_module():
    """cuda-python's runtime module (new or old layout), or None."""
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6

        return rt
    except ImportError:
        pass
    try:
        from cuda import cudart as rt  # older cuda-python

        return rt
    except ImportError:
        return None


class _TorchBuffers:
    """Device buffers and a stream from torch.cuda."""

    def __init__(self, device: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        # the stream torch queues the host->device copies on, so TensorRT runs after them
        self.stream = torch.cuda.current_stream(self.device)
        self._keep: list[Any] = []

    def to_device(self, arr: np.ndarray) -> int:
        t = self.torch.from_numpy(np.ascontiguousarray(arr)).to(self.device, non_blocking=False)
        self._keep.append(t)
        return int(t.data_ptr())

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, Any]:
        tdtype = {
            np.dtype(np.float32): self.torch.float32,
            np.dtype(np.float16): self.torch.float16,
        }[np.dtype(dtype)]
        t = self.torch.empty(shape, dtype=tdtype, device=self.device)
        self._keep.append(t)
        return int(t.data_ptr()), t

    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def to_host(self, handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return handle.cpu().numpy().astype(np.float32, copy=False)

    def release(self) -> None:
        self._keep.clear()


class _CudaPythonBuffers:
    """Device buffers and a stream from cuda-python (cudaMalloc / cudaMemcpy)."""

    def __init__(self, device: int) -> None:
        rt = _cudart_module()
        if rt is None:
            raise DeviceUnavailableError(
                "running a TensorRT engine needs torch with CUDA or cuda-python (pip install cuda-python)"
            )
        self.rt = rt
        self._check(rt.cudaSetDevice(device))
        self.stream = self._check(rt.cudaStreamCreate())
        self._ptrs: list[int] = []

    def _check(self, res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise ExportError(f"CUDA runtime call failed with error {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def _malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))
        self._ptrs.append(ptr)
        return ptr

    def to_device(self, arr: np.ndarray) -> int:
        arr = np.ascontiguousarray(arr)
        ptr = self._malloc(arr.nbytes)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, kind))
        return ptr

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, Any]:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self._malloc(nbytes)
        return ptr, ptr

    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))

    def to_host(self, handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpy(out.ctypes.data, handle, out.nbytes, kind))
        return out.astype(np.float32, copy=False)

    def release(self) -> None:
        for p in self._ptrs:
            self.rt.cudaFree(p)
        self._ptrs.clear()


def _make_buffers(device: int):
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchBuffers(device)
    except ImportError:  # pragma: no cover
        pass
    return _CudaPythonBuffers(device)


class TensorRTRunner:
    """Deserialize a ``.plan`` and run it on numpy inputs with per-call shapes.

    Args:
        plan: engine bytes or a path to a ``.plan`` file.
        device: CUDA device index.

    Attributes:
        input_names / output_names: the engine's I/O tensor names.
        profile: ``{input: (min_shape, opt_shape, max_shape)}`` of profile 0.
    """

    def __init__(self, plan: bytes | str | os.PathLike, device: int = 0) -> None:
        trt = require_tensorrt()
        self.trt = trt
        blob = plan if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
        self._log = _Logger(trt)
        self.runtime = trt.Runtime(self._log.logger)
        self.engine = self.runtime.deserialize_cuda_engine(bytes(blob))
        if self.engine is None:
            raise ExportError(
                "TensorRT could not deserialize the engine (built with another TensorRT version or GPU?): "
                + (self._log.errors[0] if self._log.errors else "no message")
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.profile = {
            n: tuple(tuple(int(v) for v in s) for s in self.engine.get_tensor_profile_shape(n, 0))
            for n in self.input_names
        }
        self.device = device
        self._buffers = _make_buffers(device)

    def _np_dtype(self, name: str) -> np.dtype:
        dt = self.engine.get_tensor_dtype(name)
        return np.dtype(np.float16) if dt == self.trt.DataType.HALF else np.dtype(np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine once.

        Args:
            feeds: ``{input name: float32 array [B, ...]}`` with B inside the profile.

        Returns:
            ``{output name: float32 array}``.

        Raises:
            ExportError: a missing input or a shape outside the optimization profile.
        """
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExportError(f"engine inputs {missing} missing; it takes {self.input_names}")
        buf = self._buffers
        try:
            for name in self.input_names:
                arr = np.ascontiguousarray(feeds[name], dtype=self._np_dtype(name))
                lo, _, hi = self.profile[name]
                if len(arr.shape) != len(lo) or any(
                    a < l or a > h for a, l, h in zip(arr.shape, lo, hi)
                ):
                    raise ExportError(
                        f"input {name} of shape {arr.shape} is outside the engine's profile {lo} .. {hi}"
                    )
                if not self.context.set_input_shape(name, tuple(arr.shape)):
                    raise ExportError(f"TensorRT rejected shape {arr.shape} for input {name}")
                self.context.set_tensor_address(name, buf.to_device(arr))
            outs = {}
            for name in self.output_names:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                ptr, handle = buf.empty(shape, self._np_dtype(name))
                self.context.set_tensor_address(name, ptr)
                outs[name] = (handle, shape, self._np_dtype(name))
            if not self.context.execute_async_v3(buf.stream_handle()):
                raise ExportError("TensorRT execute_async_v3 failed")
            buf.synchronize()
            return {n: buf.to_host(h, s, d) for n, (h, s, d) in outs.items()}
        finally:
            buf.release()


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def check_engine_parity(
    runner: TensorRTRunner,
    onnx_path: Path,
    manifest: ExportManifest,
    batches: Sequence[int],
    *,
    atol: float,
    rtol: float,
    seed: int = 0,
) -> Tolerance:
    """Compare the engine with ONNX Runtime (CPU) on the fp32 graph.

    Raises:
        ParityError: above tolerance.
    """
    import torch

    from .onnx_export import (
        FLOWMAP_TIME_PAIRS,
        VELOCITY_TIMES,
        ErrorStats,
        ort_session,
        step_inputs,
    )

    sess = ort_session(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    stats = ErrorStats(atol, rtol)
    shape = tuple(manifest.data_shape)
    if manifest.graph == "fused":
        pairs: Sequence[Any] = ["fused"]
    else:
        pairs = FLOWMAP_TIME_PAIRS if manifest.kind == "flowmap" else VELOCITY_TIMES
    out_name = manifest.outputs[0].name
    for B in batches:
        for pair in pairs:
            if pair == "fused":
                feeds = {"x0": torch.randn(B, *shape, generator=gen).numpy()}
            else:
                feeds = {
                    k: v.numpy() for k, v in step_inputs(manifest.kind, shape, B, pair, gen).items()
                }
            ref = sess.run(None, feeds)[0]
            y = runner.run(feeds)[out_name]
            stats.update(y, ref, f"batch={B}, times={pair}")
    stats.raise_if_failed("TensorRT vs ONNX Runtime")
    return Tolerance(
        atol=atol,
        rtol=rtol,
        max_abs_err=stats.max_abs_err,
        max_rel_err=stats.max_rel_err,
        reference="onnxruntime",
        batches=list(batches),
        time_pairs=[list(p) if isinstance(p, tuple) else p for p in pairs],
    )


def _latency_ms(
    runner: TensorRTRunner, manifest: ExportManifest, B: int, repeats: int = 20
) -> float:
    """Median wall time of one engine call (host copies included) at batch ``B``."""
    shape = (B, *manifest.data_shape)
    feeds = {}
    for spec in manifest.inputs:
        feeds[spec.name] = (
            np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            if len(spec.shape) > 1
            else np.full((B,), 0.5, np.float32)
        )
    runner.run(feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def write_tensorrt(loaded, folder: Path, onnx_opts, trt_opts: TensorRTOptions) -> ExportManifest:
    """Export the ONNX graph into ``folder``, build ``model.plan`` from it and validate it.

    Writes ``model.onnx`` (the fp32 source graph), ``model_fp16.onnx`` (strongly typed fp16
    builds), ``model.plan`` and ``anystep-export.json`` (format ``tensorrt``).
    """
    from .onnx_export import write_onnx
    from .precision import tolerance_for

    require_tensorrt()  # fail fast, before the ONNX export
    onnx_manifest = write_onnx(loaded, folder, onnx_opts)
    onnx_path = folder / ONNX_NAME
    result = build_engine(
        onnx_path, onnx_manifest.input_names, trt_opts, fp16_onnx_path=folder / FP16_ONNX_NAME
    )
    plan_path = folder / PLAN_NAME
    plan_path.write_bytes(result.plan)
    runner = TensorRTRunner(plan_path, device=trt_opts.device)
    atol, rtol = tolerance_for("tensorrt", trt_opts.precision)
    atol = atol if trt_opts.atol is None else trt_opts.atol
    rtol = rtol if trt_opts.rtol is None else trt_opts.rtol
    tol = check_engine_parity(
        runner,
        onnx_path,
        onnx_manifest,
        trt_opts.batch.check_sizes(),
        atol=atol,
        rtol=rtol,
        seed=onnx_opts.seed,
    )
    latency = _latency_ms(runner, onnx_manifest, trt_opts.batch.opt)
    import tensorrt as trt

    device_name = ""
    try:
        import torch

        if torch.cuda.is_available():
            device_name = torch.cuda.get_device_name(trt_opts.device)
    except ImportError:  # pragma: no cover
        pass
    m = onnx_manifest
    m.format = "tensorrt"
    m.artifact = PLAN_NAME
    m.artifact_sha256 = sha256_file(plan_path)
    m.precision = trt_opts.precision
    m.tolerance = tol
    m.versions["tensorrt"] = str(trt.__version__)
    m.tensorrt = {
        "version": str(trt.__version__),
        "profile": trt_opts.batch.to_dict(),
        "strongly_typed": result.strongly_typed,
        "built_from": result.onnx_path.name,
        "onnx_sha256": sha256_file(result.onnx_path),
        "onnx_tolerance": {
            "atol": onnx_manifest.tolerance.atol,
            "max_abs_err": onnx_manifest.tolerance.max_abs_err,
        },
        "timing_cache": str(result.timing_cache_written) if result.timing_cache_written else None,
        "workspace_mib": trt_opts.workspace_mib,
        "build_time_s": round(result.build_time_s, 3),
        "latency_ms_opt_batch": round(latency, 4),
        "device": device_name,
    }
    m.write(folder)
    return m


def export_tensorrt(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    onnx_opts=None,
    trt_opts: TensorRTOptions | None = None,
    *,
    overwrite: bool = False,
):
    """``anystep export MODEL_DIR --format tensorrt --out DIR``.

    Args:
        model_dir: model directory.
        out_dir: output folder (appears only after every check passed).
        onnx_opts: :class:`~anystep.export.onnx_export.OnnxOptions` of the source graph
            (its batch range is replaced by ``trt_opts.batch``).
        trt_opts: build options.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        :class:`~anystep.export.onnx_export.ExportResult` pointing at ``model.plan``.

    Raises:
        DeviceUnavailableError: no NVIDIA GPU or no tensorrt (CLI exit 2).
        ModelDirError / ExportError: bad input (exit 2). ParityError: engine off (exit 1).
    """
    import dataclasses

    from .onnx_export import ExportResult, OnnxOptions, load_for_export

    trt_opts = trt_opts or TensorRTOptions()
    onnx_opts = dataclasses.replace(
        onnx_opts or OnnxOptions(), batch=trt_opts.batch, precision="fp32"
    )
    if trt_opts.timing_cache is not None and Path(trt_opts.timing_cache).is_dir():
        raise ExportError(f"--timing-cache {trt_opts.timing_cache} is a folder; give a file path")
    require_tensorrt()
    loaded = load_for_export(model_dir)
    final = Path(out_dir)
    with staging_dir(final, overwrite=overwrite) as tmp:
        manifest = write_tensorrt(loaded, tmp, onnx_opts, trt_opts)
    final = final.absolute()
    manifest.path = final / MANIFEST_NAME
    return ExportResult(out_dir=final, artifact=final / PLAN_NAME, manifest=manifest)


__all__ = [
    "BuildResult",
    "ParityError",
    "TensorRTOptions",
    "TensorRTRunner",
    "build_engine",
    "check_engine_parity",
    "cuda_device_count",
    "export_tensorrt",
    "gpu_unavailable_reason",
    "require_tensorrt",
]
