"""TensorRT engines: built and checked where an NVIDIA GPU and tensorrt exist, skipped elsewhere.

The CPU-only parts of the TensorRT path run everywhere: the no-GPU error (exit 2, one
line, nothing written) and the mixed-precision ONNX graph that TensorRT 11's strongly
typed fp16 build starts from.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_export_common import leftovers, model_dirs  # noqa: F401  (fixture)

from anystep.cli import main
from anystep.export.common import BatchRange, DeviceUnavailableError, ExportError
from anystep.export.manifest import load_manifest
from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session
from anystep.export.precision import make_fp16_onnx, time_only_nodes
from anystep.export.tensorrt_build import gpu_unavailable_reason

REASON = gpu_unavailable_reason()
needs_gpu = pytest.mark.skipif(
    REASON is not None, reason=f"needs an NVIDIA GPU and tensorrt: {REASON}"
)
needs_no_gpu = pytest.mark.skipif(REASON is None, reason="this machine has a GPU and tensorrt")


@needs_no_gpu
def test_without_gpu_the_cli_exits_2_with_one_line(model_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "trt"
    with pytest.raises(SystemExit) as e:
        main(["export", str(model_dirs["flowmap"]), "--format", "tensorrt", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "GPU" in err[0]
    assert not out.exists() and leftovers(tmp_path) == []


@needs_no_gpu
def test_without_gpu_the_api_raises_device_unavailable(model_dirs, tmp_path):  # noqa: F811
    from anystep.export.tensorrt_build import TensorRTRunner, export_tensorrt

    with pytest.raises(DeviceUnavailableError):
        export_tensorrt(model_dirs["flowmap"], tmp_path / "trt")
    with pytest.raises(DeviceUnavailableError):
        TensorRTRunner(b"")


def test_fp16_graph_for_strongly_typed_builds(model_dirs, tmp_path):  # noqa: F811
    """The graph a TensorRT 11 fp16 build parses: fp16 network, fp32 times and I/O (runs on CPU)."""
    res = export_onnx(
        model_dirs["flowmap"],
        tmp_path / "fp32",
        OnnxOptions(exporter="torchscript", batch=BatchRange(1, 4, 8)),
    )
    dst = tmp_path / "model_fp16.onnx"
    kept = make_fp16_onnx(res.artifact, dst)
    src_graph, g16 = onnx.load(str(res.artifact)), onnx.load(str(dst))
    assert kept == len(time_only_nodes(src_graph)) > 0
    types = {i.data_type for i in g16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    for vi in [*g16.graph.input, *g16.graph.output]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((8, 2)).astype(np.float32),
        "s": rng.random(8).astype(np.float32),
        "t": rng.random(8).astype(np.float32),
    }
    ref = ort_session(res.artifact).run(None, feeds)[0]
    y = ort_session(dst).run(None, feeds)[0]
    np.testing.assert_allclose(y, ref, atol=5e-2, rtol=5e-2)


# ------------------------------- GPU only ---------------------------------------------


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("fp16, strongly_typed", [(False, None), (True, None), (True, False)])
def test_engine_builds_and_matches_onnxruntime(model_dirs, tmp_path, fp16, strongly_typed):  # noqa: F811
    import tensorrt as trt

    from anystep.export.tensorrt_build import (
        TensorRTOptions,
        TensorRTRunner,
        export_tensorrt,
        has_weak_fp16,
    )

    if strongly_typed is False and not has_weak_fp16(trt):
        pytest.skip(
            f"TensorRT {trt.__version__} has no weakly typed fp16 (BuilderFlag.FP16 removed in 11)"
        )
    batch = BatchRange(1, 8, 64)
    cache = tmp_path / "timing.cache"
    res = export_tensorrt(
        model_dirs["flowmap"],
        tmp_path / "trt",
        OnnxOptions(batch=batch),
        TensorRTOptions(fp16=fp16, batch=batch, timing_cache=cache, strongly_typed=strongly_typed),
    )
    m = load_manifest(res.out_dir)
    assert (
        m.format == "tensorrt"
        and m.artifact_path.is_file()
        and m.precision == ("fp16" if fp16 else "fp32")
    )
    assert m.tolerance.reference == "onnxruntime" and m.tolerance.max_rel_err <= 1.0
    assert m.tolerance.atol == (5e-2 if fp16 else 1e-3)
    assert (
        m.tensorrt["profile"] == {"min": 1, "opt": 8, "max": 64} and m.tensorrt["build_time_s"] > 0
    )
    assert cache.is_file() and cache.stat().st_size > 0
    if (
        fp16 and strongly_typed is None
    ):  # the default fp16 build: strongly typed from the fp16 graph
        assert m.tensorrt["strongly_typed"] and (res.out_dir / "model_fp16.onnx").is_file()
    if strongly_typed is False:
        assert not m.tensorrt["strongly_typed"]
    runner = TensorRTRunner(res.artifact)
    sess = ort_session(res.out_dir / "model.onnx")
    rng = np.random.default_rng(1)
    for B in (1, 7, 64):  # per-profile shapes, including one never checked at build time
        feeds = {
            "x": rng.standard_normal((B, 2)).astype(np.float32),
            "s": rng.random(B).astype(np.float32),
            "t": rng.random(B).astype(np.float32),
        }
        got = runner.run(feeds)["x_t"]
        np.testing.assert_allclose(
            got, sess.run(None, feeds)[0], atol=m.tolerance.atol, rtol=m.tolerance.rtol
        )
    with pytest.raises(ExportError, match="outside the engine's profile"):
        runner.run(
            {
                "x": np.zeros((65, 2), np.float32),
                "s": np.zeros(65, np.float32),
                "t": np.zeros(65, np.float32),
            }
        )


@needs_gpu
@pytest.mark.gpu
def test_fused_engine_and_triton_plan_variant(model_dirs, tmp_path):  # noqa: F811
    from anystep.export.tensorrt_build import TensorRTOptions, TensorRTRunner, export_tensorrt
    from anystep.export.triton_repo import export_triton, parse_config

    batch = BatchRange(1, 4, 16)
    opts = OnnxOptions(fused_steps=4, batch=batch)
    res = export_tensorrt(
        model_dirs["flowmap"], tmp_path / "trt", opts, TensorRTOptions(batch=batch)
    )
    x0 = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    got = TensorRTRunner(res.artifact).run({"x0": x0})["x1"]
    ref = ort_session(res.out_dir / "model.onnx").run(None, {"x0": x0})[0]
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
    tres = export_triton(
        model_dirs["flowmap"],
        tmp_path / "repo",
        OnnxOptions(fused_steps=4, batch=batch),
        plan=res.out_dir,
    )
    cfg = parse_config(tmp_path / "repo" / tres.models[1] / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
