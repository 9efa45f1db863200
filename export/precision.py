"""Mixed-precision (fp16) ONNX graphs and the tolerances each precision is held to.

TensorRT 11 removed ``BuilderFlag.FP16`` (weak typing): reduced precision must be
spelled out in the graph and built as a strongly typed network. :func:`make_fp16_onnx`
writes such a graph from the fp32 export:

* graph inputs and outputs stay float32 (``keep_io_types``), so callers and the Triton
  config do not change;
* every node that does not depend on the data input ``x`` (``x0`` for fused graphs) stays
  float32: these compute the time embeddings ``phi(s), phi(t), phi(t - s)`` from ``s``
  and ``t``, whose Fourier phases ``2 pi f t`` lose too much in fp16 (spacing 4.9e-4
  near t = 1), and are cheap ``[B, F]`` tensors anyway;
* the rest (the MLP / U-Net on ``x``) runs in fp16.

The same graph runs on ONNX Runtime (CPU and CUDA), so the fp16 path can be checked
on a machine without a GPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from .common import ExportError

#: (atol, rtol) per (runtime, precision): |y - y_ref| <= atol + rtol |y_ref| element-wise.
TOLERANCES: dict[str, tuple[float, float]] = {
    "onnx-fp32": (1e-4, 1e-4),  # ONNX Runtime fp32 vs PyTorch fp32: same math, other kernels
    "onnx-fp16": (5e-2, 5e-2),  # fp16 weights/activations (10-bit mantissa) vs fp32
    "tensorrt-fp32": (1e-3, 1e-3),  # TF32 disabled; TensorRT's fused kernels reorder sums
    "tensorrt-fp16": (5e-2, 5e-2),
}
DATA_INPUTS = ("x", "x0")


def tolerance_for(runtime: str, precision: str) -> tuple[float, float]:
    """``(atol, rtol)`` for ``runtime`` in ``{"onnx", "tensorrt"}`` and ``precision`` in ``{"fp32", "fp16"}``."""
    key = f"{runtime}-{precision}"
    if key not in TOLERANCES:
        raise ExportError(f"no tolerance defined for {runtime} at {precision}; use fp32 or fp16")
    return TOLERANCES[key]


def _toposort(graph) -> None:
    """Reorder ``graph.node`` topologically (the fp16 converter appends Cast nodes at the end)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in produced for i in node.input):
                ordered.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in produced})[:5]
            raise ExportError(f"fp16 conversion produced a graph with unresolved inputs {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def time_only_nodes(model, data_inputs: Iterable[str] = DATA_INPUTS) -> list[str]:
    """Names of the nodes whose inputs do not depend on the data input (time embeddings).

    Args:
        model: an ``onnx.ModelProto`` with topologically sorted nodes.
        data_inputs: graph inputs holding samples (``x`` or ``x0``).

    Returns:
        Node names to keep in float32.
    """
    dependent = {i.name for i in model.graph.input if i.name in set(data_inputs)}
    keep = []
    for node in model.graph.node:
        if any(i in dependent for i in node.input):
            dependent.update(node.output)
        else:
            keep.append(node.name)
    return keep


def make_fp16_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Write a mixed-precision copy of the fp32 graph ``src`` to ``dst`` (see module doc).

    Args:
        src: fp32 ``.onnx`` file (inputs/outputs float32).
        dst: where to write the fp16 graph (inputs/outputs still float32).

    Returns:
        Number of nodes kept in float32.

    Raises:
        ExportError: the conversion failed or the result does not pass ``onnx.checker``.
    """
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - ships with onnxruntime
        raise ExportError(
            f"fp16 conversion needs onnxruntime's float16 tool ({e}); pip install onnxruntime"
        ) from None

    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):  # the converter's block list is by node name
        if not node.name:
            node.name = f"anystep_node_{i}"
    keep = time_only_nodes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    _toposort(m16.graph)
    del m16.graph.value_info[:]  # stale fp32 annotations; shape inference re-derives them
    try:
        onnx.checker.check_model(m16, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"fp16 graph failed onnx.checker: {str(e).splitlines()[0]}") from None
    entry = m16.metadata_props.add()
    entry.key, entry.value = "anystep.precision", "fp16"
    onnx.save(m16, str(dst))
    return len(keep)
