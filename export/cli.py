"""``anystep export``: ONNX graphs, TensorRT engines and Triton model repositories.

Examples::

    anystep export runs/checker --format onnx --out exports/checker-onnx
    anystep export runs/checker --format onnx --fused-steps 4 --out exports/checker-k4
    anystep export runs/checker --format onnx --fused-steps 3 --grid 0,0.5,0.8,1 --out exports/k3
    anystep export runs/checker --format tensorrt --fp16 --max-batch 512 --timing-cache trt.cache --out exports/trt
    anystep export runs/checker --format triton --out model_repository [--plan exports/trt]

Exit codes: 0 written and validated; 2 bad input (missing or corrupt model directory,
unknown format, bad batch range or grid, no GPU for TensorRT), one ``error:`` line;
1 the artifact failed its parity check. Nothing is left half-written in either case.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

FORMATS = ("onnx", "tensorrt", "triton")


def _grid(text: str | None) -> list[float] | None:
    if text is None:
        return None
    from .common import ExportError

    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ExportError(
            f"--grid {text!r}: give comma-separated times from 0 to 1, e.g. 0,0.5,1"
        ) from None


@click.command(name="export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx | tensorrt | triton")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder (triton: the model repository root).",
)
@click.option(
    "--fused-steps",
    type=int,
    default=None,
    help="Export the whole K-step sampler as one graph (x0 -> x1).",
)
@click.option(
    "--grid",
    default=None,
    help="Custom fused-step times, e.g. 0,0.4,0.8,1 (starts at 0, ends at 1).",
)
@click.option(
    "--solver",
    type=click.Choice(["euler", "heun", "rk4"]),
    default="euler",
    show_default=True,
    help="Fixed-step solver of a fused velocity-model graph.",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (>= 17).")
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="torch.onnx exporter; auto tries dynamo, then torchscript.",
)
@click.option(
    "--fp16",
    is_flag=True,
    help="fp16 precision (onnx: mixed-precision graph; tensorrt: fp16 engine).",
)
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option(
    "--opt-batch", type=int, default=16, show_default=True, help="Batch the engine is tuned for."
)
@click.option(
    "--max-batch",
    type=int,
    default=256,
    show_default=True,
    help="Largest batch (Triton max_batch_size).",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    default=None,
    help="TensorRT timing cache file (read if present, updated after the build).",
)
@click.option(
    "--workspace-mib", type=int, default=2048, show_default=True, help="TensorRT builder workspace."
)
@click.option(
    "--strongly-typed/--weakly-typed",
    default=None,
    help="TensorRT network typing (default: strongly typed only where BuilderFlag.FP16 is gone).",
)
@click.option("--name", default=None, help="Triton model name (default <dataset>_<kind>[_k<K>]).")
@click.option(
    "--plan",
    type=click.Path(path_type=Path),
    default=None,
    help="Triton: also add NAME_trt from this --format tensorrt output folder.",
)
@click.option(
    "--instance-kind",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Triton instance_group kind of the ONNX model (auto: GPU when one is visible).",
)
@click.option(
    "--max-queue-delay-us",
    type=int,
    default=100,
    show_default=True,
    help="Triton dynamic batching delay.",
)
@click.option(
    "--atol", type=float, default=None, help="Parity tolerance (default per precision: fp32 1e-4)."
)
@click.option(
    "--rtol", type=float, default=None, help="Parity tolerance (default per precision: fp32 1e-4)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder / Triton model.")
def export(
    model_dir: Path,
    fmt: str,
    out: Path,
    fused_steps: int | None,
    grid: str | None,
    solver: str,
    opset: int,
    exporter: str,
    fp16: bool,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    timing_cache: Path | None,
    workspace_mib: int,
    strongly_typed: bool | None,
    name: str | None,
    plan: Path | None,
    instance_kind: str,
    max_queue_delay_us: int,
    atol: float | None,
    rtol: float | None,
    overwrite: bool,
) -> None:
    """Export MODEL_DIR's X_{s,t} (or b_t) as ONNX, a TensorRT engine or a Triton repository.

    Graph: inputs x [B, ...], s [B], t [B] (float32, per-sample times; velocity models:
    x, t), output x_t (velocity: v); time convention t=0 base, t=1 data. Every artifact is
    validated against PyTorch / ONNX Runtime and gets an anystep-export.json manifest.
    """
    from .common import BatchRange, ExportError, ParityError

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    try:
        from .onnx_export import OnnxOptions, export_onnx
    except ImportError as e:
        raise ExportError(
            f"export needs onnx and onnxruntime ({e}); pip install 'anystep[export]'"
        ) from None
    batch = BatchRange(min=min_batch, opt=opt_batch, max=max_batch)
    if fp16 and fmt == "triton":
        raise ExportError(
            "--fp16 does not apply to --format triton; build an fp16 plan with --format tensorrt --fp16 "
            "and pass it with --plan"
        )
    trt_only = {
        "--timing-cache": timing_cache is not None,
        "--strongly-typed/--weakly-typed": strongly_typed is not None,
    }
    for flag, given in trt_only.items():
        if given and fmt != "tensorrt":
            raise ExportError(f"{flag} only applies to --format tensorrt")
    triton_only = {"--name": name is not None, "--plan": plan is not None}
    for flag, given in triton_only.items():
        if given and fmt != "triton":
            raise ExportError(f"{flag} only applies to --format triton")
    onnx_precision = "fp16" if (fp16 and fmt == "onnx") else "fp32"
    opts = OnnxOptions(
        opset=opset,
        exporter=exporter,
        precision=onnx_precision,
        atol=atol if fmt != "tensorrt" else None,
        rtol=rtol if fmt != "tensorrt" else None,
        batch=batch,
        fused_steps=fused_steps,
        grid=_grid(grid),
        solver=solver,
    )
    if opts.fused:
        from .fused import fused_grid

        fused_grid(opts.fused_steps, opts.grid)  # validate before loading anything
    try:
        if fmt == "onnx":
            res = export_onnx(model_dir, out, opts, overwrite=overwrite)
            _report(res.manifest, res.artifact)
        elif fmt == "tensorrt":
            from .tensorrt_build import TensorRTOptions, export_tensorrt

            trt_opts = TensorRTOptions(
                fp16=fp16,
                batch=batch,
                timing_cache=timing_cache,
                workspace_mib=workspace_mib,
                strongly_typed=strongly_typed,
                atol=atol,
                rtol=rtol,
            )
            res = export_tensorrt(model_dir, out, opts, trt_opts, overwrite=overwrite)
            _report(res.manifest, res.artifact)
        else:
            from .triton_repo import export_triton

            tres = export_triton(
                model_dir,
                out,
                opts,
                name=name,
                plan=plan,
                instance_kind=instance_kind,
                max_queue_delay_us=max_queue_delay_us,
                overwrite=overwrite,
            )
            for model_name in tres.models:
                m = tres.manifests[model_name]
                _report(m, tres.repository / model_name / m.artifact)
            click.echo(f"model repository: {tres.repository} (models: {', '.join(tres.models)})")
    except ParityError as e:
        # Not a user-input error (those exit 2): the artifact was made but is numerically off.
        # sys.exit, because click returns (not raises) Exit codes in anystep's non-standalone mode.
        click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        sys.exit(1)


def _report(m, artifact: Path) -> None:
    graph = f"fused {m.fused_steps}-step" if m.graph == "fused" else "single step"
    tol = m.tolerance
    click.echo(
        f"wrote {artifact} ({m.format}, {m.kind} {graph}, {m.precision}, opset {m.opset}, exporter {m.exporter}); "
        f"max |err| {tol.max_abs_err:.3g} vs {tol.reference} (atol={tol.atol:g}, rtol={tol.rtol:g})"
    )
