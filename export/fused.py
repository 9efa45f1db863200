"""One ONNX graph for a whole K-step sampler: ``x0`` in, ``x1`` out.

For a flow map the graph unrolls the semigroup composition (eq. 3.6)

    ``x_{t_k} = X_{t_{k-1}, t_k}(x_{t_{k-1}})``,  ``k = 1..K``,  ``0 = t_0 < ... < t_K = 1``,

so one call costs K network evaluations and no per-step round trip. For a velocity
model it unrolls K steps of a fixed-step solver (Euler, Heun or RK4) of eq. 3.1 on the
same grid (``nfe = K * stages``). The grid is baked into the graph as float32 constants.

Parity: the fused graph is checked against K calls of the single-step ONNX graph
(the same composition done outside the graph) and against the PyTorch sampler.

Class-conditional models: the fused graph takes the step graph's conditioning inputs
too, ``x0, y [batch] (int64), w [batch]`` (the same labels and scales at every step).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from anystep.core.modeldir import LoadedModel
from anystep.core.samplers import make_grid
from anystep.core.solvers import FIXED_STEPPERS

from .common import ONNX_NAME, ExportError
from .manifest import ExportManifest, Tolerance
from .onnx_export import (
    DEFAULT_CHECK_BATCHES,
    ErrorStats,
    OnnxOptions,
    _metadata,
    base_manifest,
    check_graph,
    cond_inputs,
    export_graph,
    fused_signature,
    model_cond_specs,
    ort_session,
    session_runner,
    to_precision,
    trace_batch,
    write_step_onnx,
)

MAX_FUSED_STEPS = 256


def _full(x: Tensor, value: float) -> Tensor:
    """``[B]`` tensor of ``value`` with ``x``'s batch size, dtype and device (export-friendly)."""
    return x.new_full((x.shape[0],), float(value))


class FusedFlowMapSampler(nn.Module):
    """K flow-map steps on a fixed grid: ``x1 = X_{t_{K-1},1} o ... o X_{0,t_1}(x0)`` (eq. 3.6).

    Args:
        model: flow map ``model(x [B,*shape], s [B], t [B]) -> [B,*shape]``.
        grid: the K+1 times ``0 = t_0 < ... < t_K = 1``.
    """

    def __init__(self, model: nn.Module, grid: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.grid = [float(g) for g in grid]

    def forward(self, x0: Tensor, *cond: Tensor) -> Tensor:
        """``x0 [B, *shape]`` base samples (and ``y [B]``, ``w [B]``) -> ``x1 [B, *shape]`` data samples."""
        x = x0
        for s, t in zip(self.grid[:-1], self.grid[1:]):
            x = self.model(x, _full(x, s), _full(x, t), *cond)
        return x


class FusedODESampler(nn.Module):
    """K fixed-step solver steps of ``dx/dt = b_t(x)`` (eq. 3.1) on a fixed grid.

    Args:
        model: velocity ``model(x [B,*shape], t [B]) -> [B,*shape]``.
        grid: the K+1 times ``0 = t_0 < ... < t_K = 1``.
        solver: ``"euler"``, ``"heun"`` or ``"rk4"`` (1, 2, 4 evaluations per step).
    """

    def __init__(self, model: nn.Module, grid: Sequence[float], solver: str = "euler") -> None:
        super().__init__()
        if solver not in FIXED_STEPPERS:
            raise ExportError(
                f"--solver {solver!r}: a fused velocity graph needs one of {sorted(FIXED_STEPPERS)}"
            )
        self.model = model
        self.grid = [float(g) for g in grid]
        self.solver = solver
        self.stepper, self.per_step = FIXED_STEPPERS[solver]

    def forward(self, x0: Tensor, *cond: Tensor) -> Tensor:
        """``x0 [B, *shape]`` (and labels ``y [B]``) -> ``x1 [B, *shape]`` after K solver steps."""
        x = x0
        b = self.model if not cond else (lambda x_, t_: self.model(x_, t_, *cond))
        for t0, t1 in zip(self.grid[:-1], self.grid[1:]):
            x = self.stepper(b, x, _full(x, t0), _full(x, t1 - t0))
        return x


def fused_grid(steps: int | None, grid: Sequence[float] | None) -> list[float]:
    """Validate ``--fused-steps K [--grid t0,...,tK]`` and return the K+1 grid times.

    Raises:
        ExportError / GridError: K outside 1..256, or a malformed grid.
    """
    if steps is not None and (not isinstance(steps, int) or steps < 1 or steps > MAX_FUSED_STEPS):
        raise ExportError(
            f"--fused-steps must be an integer in 1..{MAX_FUSED_STEPS}, got {steps!r}"
        )
    g = make_grid(steps if grid is None else None, grid)
    if steps is not None and grid is not None and len(g) - 1 != steps:
        raise ExportError(
            f"--fused-steps {steps} disagrees with a --grid of {len(g) - 1} steps; give one of them"
        )
    if len(g) - 1 > MAX_FUSED_STEPS:
        raise ExportError(
            f"a fused graph holds at most {MAX_FUSED_STEPS} steps, the grid has {len(g) - 1}"
        )
    return [float(v) for v in g]


def build_fused_module(
    model: nn.Module, kind: str, grid: Sequence[float], solver: str = "euler"
) -> nn.Module:
    """The fused sampler module for a flow map or a velocity model."""
    if kind == "flowmap":
        return FusedFlowMapSampler(model, grid).eval()
    return FusedODESampler(model, grid, solver).eval()


def compose_steps(
    step: Callable[[dict[str, np.ndarray]], np.ndarray],
    kind: str,
    x0: np.ndarray,
    grid: Sequence[float],
    solver: str = "euler",
    cond: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Run the K-step sampler outside the graph with K calls of a single-step runtime.

    Args:
        step: single-step graph, ``step({"x", "s", "t"}) -> x_t`` or ``step({"x", "t"}) -> v``.
        kind: ``"flowmap"`` or ``"velocity"``.
        x0: ``[B, *shape]`` float32 start states.
        grid: the K+1 times.
        solver: fixed-step solver (velocity models).
        cond: conditioning feeds (``y``, ``w``) passed to every step.

    Returns:
        ``[B, *shape]`` end states.
    """
    B = x0.shape[0]
    extra = dict(cond or {})
    if kind == "flowmap":
        x = x0
        for s, t in itertools.pairwise(grid):
            x = step({"x": x, "s": np.full(B, s, np.float32), "t": np.full(B, t, np.float32), **extra})
        return x

    def b(x: Tensor, t: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(step({"x": x.numpy(), "t": t.numpy(), **extra})))

    stepper, _ = FIXED_STEPPERS[solver]
    x_t = torch.from_numpy(np.asarray(x0, dtype=np.float32))
    for t0, t1 in itertools.pairwise(grid):
        x_t = stepper(b, x_t, torch.full((B,), t0), torch.full((B,), t1 - t0))
    return x_t.numpy()


def write_fused_onnx(loaded: LoadedModel, folder: Path, opts: OnnxOptions) -> ExportManifest:
    """Export and validate the fused K-step graph into ``folder`` (``model.onnx`` + manifest).

    Parity: against K calls of the (itself validated) single-step graph, recorded as the
    manifest's tolerance, and against the PyTorch sampler, which must pass too.

    Raises:
        ExportError / GridError: bad ``--fused-steps`` / ``--grid`` / ``--solver``.
        ParityError: the fused graph disagrees with either reference.
    """
    cfg = loaded.config
    grid = fused_grid(opts.fused_steps, opts.grid)
    K = len(grid) - 1
    solver = opts.solver if cfg.kind == "velocity" else None
    module = build_fused_module(loaded.model, cfg.kind, grid, opts.solver)
    cond = model_cond_specs(cfg)
    inputs, outputs = fused_signature(cfg.data_shape, cond)
    B = trace_batch(opts.batch)
    gen = torch.Generator().manual_seed(opts.seed + 777)
    example = torch.randn(B, *cfg.data_shape, generator=gen)
    example_cond = cond_inputs(cond, B, gen, cfg.num_classes)
    path = folder / ONNX_NAME
    extra = {"anystep.fused_steps": K, "anystep.grid": ",".join(f"{g:.9g}" for g in grid)}
    if solver:
        extra["anystep.solver"] = solver
    used = export_graph(
        module,
        (example, *example_cond.values()),
        inputs,
        outputs,
        path,
        opset=opts.opset,
        exporter=opts.exporter,
        metadata=_metadata(loaded, "fused", extra),
    )
    to_precision(path, opts.precision)
    check_graph(path, inputs, outputs)
    fused_run = session_runner(ort_session(path))

    with tempfile.TemporaryDirectory(prefix="anystep-step-") as td:
        step_opts = OnnxOptions(
            opset=opts.opset,
            exporter=opts.exporter,
            precision=opts.precision,
            atol=opts.atol,
            rtol=opts.rtol,
            batch=opts.batch,
            seed=opts.seed,
        )
        write_step_onnx(loaded, Path(td), step_opts)  # validated against torch itself
        step_run = session_runner(ort_session(Path(td) / ONNX_NAME))
        batches = opts.batch.check_sizes(DEFAULT_CHECK_BATCHES)
        vs_steps = ErrorStats(opts.atol, opts.rtol)
        vs_torch = ErrorStats(opts.atol, opts.rtol)
        for Bc in batches:
            x0 = torch.randn(Bc, *cfg.data_shape, generator=gen)
            c = cond_inputs(cond, Bc, gen, cfg.num_classes)  # per-sample labels / scales
            c_np = {k: v.numpy() for k, v in c.items()}
            y = fused_run({"x0": x0.numpy(), **c_np})
            vs_steps.update(
                y, compose_steps(step_run, cfg.kind, x0.numpy(), grid, opts.solver, c_np), f"batch={Bc}"
            )
            with torch.no_grad():
                vs_torch.update(y, module(x0, *c.values()).numpy(), f"batch={Bc}")
    vs_steps.raise_if_failed(f"fused {K}-step graph vs {K} calls of the single-step graph")
    if opts.precision == "fp32":  # fp16 error compounds over K steps: recorded, not enforced
        vs_torch.raise_if_failed(f"fused {K}-step graph vs the PyTorch sampler")
    tol = Tolerance(
        atol=opts.atol,
        rtol=opts.rtol,
        max_abs_err=vs_steps.max_abs_err,
        max_rel_err=vs_steps.max_rel_err,
        reference="onnx-step-graph",
        batches=list(batches),
        time_pairs=[[s, t] for s, t in itertools.pairwise(grid)],
        other_references={"torch": vs_torch.max_abs_err},
    )
    manifest = base_manifest(
        loaded,
        artifact=ONNX_NAME,
        artifact_path=path,
        graph="fused",
        opts=opts,
        exporter=used,
        inputs=inputs,
        outputs=outputs,
        tolerance=tol,
        precision=opts.precision,
    )
    manifest.fused_steps = K
    manifest.grid = grid
    manifest.solver = solver
    manifest.nfe = K * (module.per_step if isinstance(module, FusedODESampler) else 1)
    manifest.write(folder)
    return manifest
