"""Export one step of a model as an ONNX graph and prove it matches PyTorch.

A flow map exports as ``X_{s,t}`` (Definition 3.2; residual ansatz
``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` or the convex ansatz of eq. 4.1) with graph

    inputs  ``x [batch, *data_shape]``, ``s [batch]``, ``t [batch]`` (float32)
    output  ``x_t [batch, *data_shape]``

and per-sample times, so samples at different steps of different requests can share a
batch; ``s > t`` runs the map backwards (encoding, Proposition 3.3). A velocity model
exports as ``b_t(x)`` (eq. 3.1): inputs ``x``, ``t``; output ``v``. The batch dim is
symbolic (``"batch"``). Time convention: ``t = 0`` base, ``t = 1`` data.

Class-conditional models take further per-sample inputs after the times: ``y [batch]``
(int64 labels, ``num_classes`` = the null class) and, for flow maps distilled from a
guided teacher, ``w [batch]`` (float32 guidance scales); unconditional graphs are unchanged.

Validation, which fails the export rather than warning: ``onnx.checker`` (full check),
then ONNX Runtime against PyTorch on several batch sizes (1, 3, 64 and the batch range's
min/opt/max) and several ``(s, t)`` pairs, including ``s > t``, ``s = t`` and random
per-sample pairs in one batch, element-wise ``|y - y_ref| <= atol + rtol |y_ref|``.

Exporters: ``dynamo`` (``torch.onnx.export(..., dynamo=True)`` with a ``torch.export.Dim``
batch; the default since torch 2.9) and ``torchscript`` (``dynamo=False`` with
``dynamic_axes``; deprecated upstream but still present in torch 2.13). ``auto`` tries
dynamo and falls back to torchscript if dynamo raises.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anystep.core.modeldir import LoadedModel, load_model_dir, model_dir_sha256

from .common import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ONNX_NAME,
    TIME_CONVENTION,
    BatchRange,
    ExportError,
    ParityError,
    sha256_file,
    staging_dir,
    versions,
)
from .manifest import ExportManifest, TensorSpec, Tolerance

EXPORTERS = ("auto", "dynamo", "torchscript")
BATCH_DIM = "batch"
#: (s, t) pairs checked for flow maps: forward, partial, identity, backwards, and "mixed"
#: (independent random s and t per sample in one batch).
FLOWMAP_TIME_PAIRS: tuple[Any, ...] = (
    (0.0, 1.0),
    (0.0, 0.25),
    (0.3, 0.7),
    (0.5, 0.5),
    (1.0, 0.0),
    (0.9, 0.2),
    "mixed",
)
#: times checked for velocity models.
VELOCITY_TIMES: tuple[Any, ...] = (0.0, 0.5, 1.0, "mixed")
DEFAULT_CHECK_BATCHES = (1, 3, 64)


@dataclass
class OnnxOptions:
    """How to export and validate an ONNX graph.

    Attributes:
        opset: ONNX opset (>= 17).
        exporter: ``"auto"``, ``"dynamo"`` or ``"torchscript"``.
        precision: ``"fp32"``, or ``"fp16"`` for a mixed-precision graph (see
            :mod:`anystep.export.precision`; inputs/outputs stay float32).
        atol, rtol: parity tolerance against the reference (default per precision:
            1e-4 each for fp32, 5e-2 for fp16).
        batch: batch range; parity runs on 1, 3, 64 inside it plus its min/opt/max.
        fused_steps: K for a fused K-step sampler graph (None: a single step).
        grid: custom K+1 times ``0 = t_0 < ... < t_K = 1`` of the fused graph.
        solver: fixed-step solver of a fused velocity graph (``euler``, ``heun``, ``rk4``).
        seed: seed of the random parity inputs.
    """

    opset: int = DEFAULT_OPSET
    exporter: str = "auto"
    precision: str = "fp32"
    atol: float | None = None
    rtol: float | None = None
    batch: BatchRange = field(default_factory=BatchRange)
    fused_steps: int | None = None
    grid: Sequence[float] | None = None
    solver: str = "euler"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ExportError(f"--opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        if self.exporter not in EXPORTERS:
            raise ExportError(f"--exporter {self.exporter!r}: use one of {', '.join(EXPORTERS)}")
        if self.precision not in ("fp32", "fp16"):
            raise ExportError(f"precision {self.precision!r}: use fp32 or fp16 (--fp16)")
        from .precision import tolerance_for

        atol, rtol = tolerance_for("onnx", self.precision)
        self.atol = atol if self.atol is None else float(self.atol)
        self.rtol = rtol if self.rtol is None else float(self.rtol)
        if not (self.atol >= 0 and self.rtol >= 0) or not (
            math.isfinite(self.atol) and math.isfinite(self.rtol)
        ):
            raise ExportError("--atol and --rtol must be finite numbers >= 0")
        if self.atol == 0 and self.rtol == 0:
            raise ExportError("--atol and --rtol cannot both be 0; the default is 1e-4")

    @property
    def fused(self) -> bool:
        return self.fused_steps is not None or self.grid is not None


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        out_dir: folder holding the artifact and its manifest.
        artifact: the artifact file (``model.onnx`` / ``model.plan``).
        manifest: the manifest written beside it.
    """

    out_dir: Path
    artifact: Path
    manifest: ExportManifest


# --------------------------------------------------------------------------------------
# Graph signatures
# --------------------------------------------------------------------------------------


def cond_specs(num_classes: int = 0, guidance_input: bool = False) -> list[TensorSpec]:
    """The conditioning inputs of a graph: ``y [batch]`` int64 and ``w [batch]`` float32 (if taken)."""
    out = [TensorSpec("y", [BATCH_DIM], "int64")] if num_classes else []
    if guidance_input:
        out.append(TensorSpec("w", [BATCH_DIM]))
    return out


def step_signature(
    kind: str, data_shape: Sequence[int], cond: Sequence[TensorSpec] = ()
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a single-step graph.

    Args:
        kind: ``"flowmap"`` (``x, s, t -> x_t``) or ``"velocity"`` (``x, t -> v``).
        data_shape: shape of one sample.
        cond: conditioning inputs appended after the times (:func:`cond_specs`).

    Returns:
        ``(inputs, outputs)`` with the batch dim named ``"batch"``.
    """
    xs = [BATCH_DIM, *[int(d) for d in data_shape]]
    if kind == "flowmap":
        ins = [
            TensorSpec("x", list(xs)),
            TensorSpec("s", [BATCH_DIM]),
            TensorSpec("t", [BATCH_DIM]),
        ]
        outs = [TensorSpec("x_t", list(xs))]
    elif kind == "velocity":
        ins = [TensorSpec("x", list(xs)), TensorSpec("t", [BATCH_DIM])]
        outs = [TensorSpec("v", list(xs))]
    else:
        raise ExportError(
            f"model kind {kind!r} cannot be exported; expected 'flowmap' or 'velocity'"
        )
    return ins + list(cond), outs


def fused_signature(
    data_shape: Sequence[int], cond: Sequence[TensorSpec] = ()
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs/outputs of a fused sampler graph: ``x0 [batch, *shape] (, y, w) -> x1 [batch, *shape]``."""
    xs = [BATCH_DIM, *[int(d) for d in data_shape]]
    return [TensorSpec("x0", list(xs)), *cond], [TensorSpec("x1", list(xs))]


# --------------------------------------------------------------------------------------
# Export + structural checks
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence exporter chatter (deprecation/tracer warnings, registry log lines)."""
    names = [
        "torch.onnx",
        "torch.export",
        "torch._dynamo",
        "torch.fx.experimental.symbolic_shapes",
        "onnxscript",
    ]
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


def _export_dynamo(
    module: nn.Module, args: tuple, in_names: list[str], out_names: list[str], opset: int
):
    batch = torch.export.Dim(BATCH_DIM, min=1)
    dynamic_shapes = tuple({0: batch} for _ in args)
    prog = torch.onnx.export(
        module,
        args,
        None,
        input_names=in_names,
        output_names=out_names,
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    return prog.model_proto


def _export_torchscript(
    module: nn.Module, args: tuple, in_names: list[str], out_names: list[str], opset: int
):
    import io

    import onnx

    buf = io.BytesIO()
    torch.onnx.export(
        module,
        args,
        buf,
        input_names=in_names,
        output_names=out_names,
        opset_version=opset,
        dynamo=False,
        dynamic_axes={n: {0: BATCH_DIM} for n in [*in_names, *out_names]},
        do_constant_folding=True,
    )
    return onnx.load_from_string(buf.getvalue())


def _set_signature(model_proto, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Name the batch dim ``batch`` and pin every other dim of the graph's inputs/outputs."""
    by_name = {t.name: t for t in [*inputs, *outputs]}
    graph = model_proto.graph
    for vi in [*graph.input, *graph.output]:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        shape = vi.type.tensor_type.shape
        while len(shape.dim) > len(spec.shape):
            shape.dim.pop()
        while len(shape.dim) < len(spec.shape):
            shape.dim.add()
        for d, want in zip(shape.dim, spec.shape):
            if isinstance(want, str):
                d.Clear()
                d.dim_param = want
            else:
                d.Clear()
                d.dim_value = int(want)


def export_graph(
    module: nn.Module,
    example_args: tuple[torch.Tensor, ...],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    metadata: dict[str, str] | None = None,
) -> str:
    """Export ``module(*example_args)`` to a single-file ONNX graph with a dynamic batch dim.

    Args:
        module: eval-mode module; ``module(*args)`` returns one tensor.
        example_args: example inputs, each ``[B, ...]`` with the same ``B >= 2``.
        inputs, outputs: graph signature (names and dims, batch dim a string).
        path: the ``.onnx`` file to write.
        opset: ONNX opset.
        exporter: ``"auto"``, ``"dynamo"`` or ``"torchscript"``.
        metadata: key/values stored in the graph's ``metadata_props``.

    Returns:
        The exporter actually used (``"dynamo"`` or ``"torchscript"``).

    Raises:
        ExportError: both exporters failed (the message names the first error).
    """
    import onnx

    in_names = [t.name for t in inputs]
    out_names = [t.name for t in outputs]
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    proto = None
    used = ""
    module = module.eval()
    for name in order:
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            with _quiet_export(), torch.no_grad():
                proto = fn(module, tuple(example_args), in_names, out_names, opset)
            used = name
            break
        except Exception as e:  # noqa: BLE001 - any exporter failure falls through to the next
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if proto is None:
        raise ExportError(
            f"torch.onnx.export failed ({'; '.join(errors)}); try --exporter torchscript or dynamo"
        )
    _set_signature(proto, inputs, outputs)
    for k, v in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    proto.doc_string = f"anystep export ({TIME_CONVENTION})"
    onnx.save(proto, str(path))
    return used


def check_graph(
    path: str | os.PathLike, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    """Structural validation: ``onnx.checker`` (full check) and the expected signature.

    Raises:
        ParityError: the graph is invalid, or an input/output is missing or has a fixed batch dim.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ParityError(f"onnx.checker rejected {path}: {str(e).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    got = {vi.name: vi for vi in [*model.graph.input, *model.graph.output]}
    for spec in [*inputs, *outputs]:
        vi = got.get(spec.name)
        if vi is None:
            raise ParityError(f"{path} has no tensor {spec.name!r}; graph has {sorted(got)}")
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape) or not dims[0].dim_param or dims[0].HasField("dim_value"):
            raise ParityError(f"{path}: {spec.name} should have a symbolic batch dim, got {dims}")
        want = onnx.TensorProto.INT64 if spec.dtype == "int64" else onnx.TensorProto.FLOAT
        if vi.type.tensor_type.elem_type != want:
            raise ParityError(f"{path}: {spec.name} must be {spec.dtype}")


def ort_session(path: str | os.PathLike, providers: Sequence[str] | None = None):
    """An ONNX Runtime session on ``path`` (CPU execution provider unless told otherwise)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(
        str(path), sess_options=so, providers=list(providers or ["CPUExecutionProvider"])
    )


# --------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------


@dataclass
class ErrorStats:
    """Running maxima of ``|y - y_ref|`` and of its ratio to ``atol + rtol |y_ref|``."""

    atol: float
    rtol: float
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    worst: str = ""

    def update(self, y: np.ndarray, ref: np.ndarray, where: str) -> None:
        """Fold in one comparison (non-finite outputs count as infinite error)."""
        y = np.asarray(y, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if y.shape != ref.shape:
            raise ParityError(f"{where}: output shape {y.shape} != reference shape {ref.shape}")
        err = np.abs(y - ref)
        err = np.where(np.isfinite(y) == np.isfinite(ref), np.nan_to_num(err, nan=0.0), np.inf)
        bound = self.atol + self.rtol * np.abs(np.nan_to_num(ref))
        abs_max = float(err.max()) if err.size else 0.0
        rel_max = float((err / bound).max()) if err.size else 0.0
        if rel_max > self.max_rel_err:
            self.worst = where
        self.max_abs_err = max(self.max_abs_err, abs_max)
        self.max_rel_err = max(self.max_rel_err, rel_max)

    @property
    def passed(self) -> bool:
        return self.max_rel_err <= 1.0

    def raise_if_failed(self, what: str) -> None:
        if not self.passed:
            raise ParityError(
                f"{what}: max |error| {self.max_abs_err:.3g} exceeds atol={self.atol:g}, rtol={self.rtol:g} "
                f"(worst at {self.worst}); the artifact was not written"
            )


def _times(spec: Any, B: int, gen: torch.Generator) -> torch.Tensor:
    if spec == "mixed":
        return torch.rand(B, generator=gen)
    return torch.full((B,), float(spec))


def cond_inputs(cond: Sequence[TensorSpec], B: int, gen: torch.Generator, num_classes: int) -> dict[str, torch.Tensor]:
    """Random per-sample conditioning: labels in ``0..num_classes`` (null included), scales in [0, 4]."""
    out: dict[str, torch.Tensor] = {}
    for spec in cond:
        if spec.name == "y":
            out["y"] = torch.randint(0, num_classes + 1, (B,), generator=gen)
        else:
            out[spec.name] = 4.0 * torch.rand(B, generator=gen)
    return out


def step_inputs(
    kind: str,
    data_shape: Sequence[int],
    B: int,
    pair: Any,
    gen: torch.Generator,
    cond: Sequence[TensorSpec] = (),
    num_classes: int = 0,
) -> dict[str, torch.Tensor]:
    """Random parity inputs of a single-step graph.

    Args:
        kind: ``"flowmap"`` (``pair`` is ``(s, t)`` or ``"mixed"``) or ``"velocity"``
            (``pair`` is ``t`` or ``"mixed"``).
        data_shape: shape of one sample.
        B: batch size.
        pair: times as above.
        gen: torch generator.

        cond, num_classes: conditioning inputs (:func:`cond_specs`) and the class count.

    Returns:
        ``{"x": [B, *shape], "s": [B], "t": [B]}`` (no ``s`` for velocity models), float32,
        then ``y`` (int64) / ``w`` of conditional models.
    """
    x = torch.randn(B, *data_shape, generator=gen)
    if kind == "flowmap":
        if pair == "mixed":
            out = {"x": x, "s": _times("mixed", B, gen), "t": _times("mixed", B, gen)}
        else:
            s, t = pair
            out = {"x": x, "s": _times(s, B, gen), "t": _times(t, B, gen)}
    else:
        out = {"x": x, "t": _times(pair, B, gen)}
    return {**out, **cond_inputs(cond, B, gen, num_classes)}


def check_step_parity(
    model: nn.Module,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    kind: str,
    data_shape: Sequence[int],
    batches: Sequence[int],
    *,
    atol: float,
    rtol: float,
    seed: int = 0,
    reference: str = "torch",
    cond: Sequence[TensorSpec] = (),
    num_classes: int = 0,
) -> Tolerance:
    """Compare a single-step runtime with the PyTorch model on several batches and times.

    Args:
        model: the PyTorch model (``model(x, s, t)`` or ``model(x, t)``).
        run: the exported graph: ``run({"x": ..., "s": ..., "t": ...}) -> y`` (numpy).
        kind: ``"flowmap"`` or ``"velocity"``.
        data_shape: shape of one sample.
        batches: batch sizes to check.
        atol, rtol: tolerance.
        seed: seed of the random inputs.
        reference: name recorded in the result.
        cond, num_classes: conditioning inputs (random per-sample labels and scales).

    Returns:
        The :class:`Tolerance` reached.

    Raises:
        ParityError: some output exceeds ``atol + rtol |y_ref|``.
    """
    gen = torch.Generator().manual_seed(seed)
    stats = ErrorStats(atol, rtol)
    pairs = FLOWMAP_TIME_PAIRS if kind == "flowmap" else VELOCITY_TIMES
    for B in batches:
        for pair in pairs:
            feeds = step_inputs(kind, data_shape, B, pair, gen, cond, num_classes)
            with torch.no_grad():
                ref = model(*feeds.values()).float().numpy()
            y = run({k: v.numpy() for k, v in feeds.items()})
            stats.update(y, ref, f"batch={B}, times={pair}")
    stats.raise_if_failed(f"ONNX Runtime vs {reference}")
    return Tolerance(
        atol=atol,
        rtol=rtol,
        max_abs_err=stats.max_abs_err,
        max_rel_err=stats.max_rel_err,
        reference=reference,
        batches=list(batches),
        time_pairs=[list(p) if isinstance(p, tuple) else p for p in pairs],
    )


def session_runner(sess) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Wrap an ORT session as ``run(feeds) -> first output``."""

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(
            None,
            {
                k: np.ascontiguousarray(v, dtype=np.int64 if np.asarray(v).dtype.kind in "iu" else np.float32)
                for k, v in feeds.items()
            },
        )[0]

    return run


# --------------------------------------------------------------------------------------
# Model directories -> artifacts
# --------------------------------------------------------------------------------------


def load_for_export(model_dir: str | os.PathLike) -> LoadedModel:
    """Load a model directory in float32 eval mode (its weights are the EMA weights).

    Raises:
        ModelDirError: the directory is missing or corrupt (message says which file).
    """
    loaded = load_model_dir(model_dir, device="cpu")
    loaded.model.float().eval()
    return loaded


def _metadata(
    loaded: LoadedModel, graph: str, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    md = {
        "anystep.kind": loaded.config.kind,
        "anystep.graph": graph,
        "anystep.time_convention": TIME_CONVENTION,
        "anystep.dataset": loaded.config.dataset,
        "anystep.data_shape": ",".join(str(d) for d in loaded.config.data_shape),
        "anystep.model_dir_sha256": model_dir_sha256(loaded.path),
    }
    if loaded.config.num_classes:
        md["anystep.num_classes"] = str(loaded.config.num_classes)
        md["anystep.guidance_input"] = str(bool(loaded.config.guidance_input)).lower()
    md.update({k: str(v) for k, v in (extra or {}).items()})
    return md


def model_cond_specs(cfg: Any) -> list[TensorSpec]:
    """The conditioning inputs of a model config (none for unconditional models)."""
    return cond_specs(cfg.num_classes, cfg.guidance_input)


def trace_batch(batch: BatchRange) -> int:
    """Example batch size for tracing: the opt batch, at least 2 (size 1 would specialise)."""
    return max(2, batch.opt)


def base_manifest(
    loaded: LoadedModel,
    *,
    artifact: str,
    artifact_path: Path,
    graph: str,
    opts: OnnxOptions,
    exporter: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    tolerance: Tolerance,
    fmt: str = "onnx",
    precision: str = "fp32",
    extra_versions: dict[str, str] | None = None,
) -> ExportManifest:
    """Fill the fields every manifest shares."""
    cfg = loaded.config
    return ExportManifest(
        format=fmt,
        artifact=artifact,
        artifact_sha256=sha256_file(artifact_path),
        kind=cfg.kind,
        graph=graph,
        source_model_dir=str(Path(loaded.path).absolute()),
        model_dir_sha256=model_dir_sha256(loaded.path),
        data_shape=list(cfg.data_shape),
        dataset=cfg.dataset,
        base=cfg.base,
        opset=opts.opset,
        precision=precision,
        exporter=exporter,
        inputs=inputs,
        outputs=outputs,
        tolerance=tolerance,
        versions=versions(extra_versions),
        batch=opts.batch.to_dict(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def write_step_onnx(loaded: LoadedModel, folder: Path, opts: OnnxOptions) -> ExportManifest:
    """Export, check and validate the single-step graph into ``folder`` (no atomicity here).

    Writes ``folder/model.onnx`` and ``folder/anystep-export.json``.

    Raises:
        ParityError: checker or parity failure.
    """
    cfg = loaded.config
    cond = model_cond_specs(cfg)
    inputs, outputs = step_signature(cfg.kind, cfg.data_shape, cond)
    B = trace_batch(opts.batch)
    gen = torch.Generator().manual_seed(opts.seed + 12345)
    example = step_inputs(cfg.kind, cfg.data_shape, B, "mixed", gen, cond, cfg.num_classes)
    path = folder / ONNX_NAME
    used = export_graph(
        loaded.model,
        tuple(example.values()),
        inputs,
        outputs,
        path,
        opset=opts.opset,
        exporter=opts.exporter,
        metadata=_metadata(loaded, "step"),
    )
    to_precision(path, opts.precision)
    check_graph(path, inputs, outputs)
    sess = ort_session(path)
    tol = check_step_parity(
        loaded.model,
        session_runner(sess),
        cfg.kind,
        cfg.data_shape,
        opts.batch.check_sizes(DEFAULT_CHECK_BATCHES),
        atol=opts.atol,
        rtol=opts.rtol,
        seed=opts.seed,
        cond=cond,
        num_classes=cfg.num_classes,
    )
    manifest = base_manifest(
        loaded,
        artifact=ONNX_NAME,
        artifact_path=path,
        graph="step",
        opts=opts,
        exporter=used,
        inputs=inputs,
        outputs=outputs,
        tolerance=tol,
        precision=opts.precision,
    )
    manifest.write(folder)
    return manifest


def to_precision(path: Path, precision: str) -> None:
    """Turn the fp32 graph at ``path`` into ``precision`` in place (no-op for fp32)."""
    if precision == "fp32":
        return
    from .precision import make_fp16_onnx

    tmp = path.with_name(f".{path.name}.fp32")
    os.replace(path, tmp)
    try:
        make_fp16_onnx(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_onnx(loaded: LoadedModel, folder: Path, opts: OnnxOptions) -> ExportManifest:
    """Write the step graph, or the fused K-step graph when ``opts.fused``, into ``folder``."""
    if opts.fused:
        from .fused import write_fused_onnx

        return write_fused_onnx(loaded, folder, opts)
    return write_step_onnx(loaded, folder, opts)


def export_onnx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    opts: OnnxOptions | None = None,
    *,
    overwrite: bool = False,
) -> ExportResult:
    """``anystep export MODEL_DIR --format onnx --out DIR``: validated ONNX graph + manifest.

    Args:
        model_dir: model directory (``config.json`` + ``model.safetensors``, EMA weights).
        out_dir: output folder (must not exist, or be empty, unless ``overwrite``); it
            appears only after every check passed.
        opts: export options (default: single step, opset 18, atol = rtol = 1e-4).
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        ExportResult with ``out_dir/model.onnx`` and its manifest.

    Raises:
        ModelDirError, ExportError, GridError: bad input (CLI exit 2).
        ParityError: the graph disagrees with PyTorch (CLI exit 1).
    """
    opts = opts or OnnxOptions()
    loaded = load_for_export(model_dir)
    final = Path(out_dir)
    with staging_dir(final, overwrite=overwrite) as tmp:
        manifest = write_onnx(loaded, tmp, opts)
    final = final.absolute()
    manifest.path = final / "anystep-export.json"
    return ExportResult(out_dir=final, artifact=final / manifest.artifact, manifest=manifest)
