"""ONNX export of single steps: graph signature, dynamic batch, parity with PyTorch, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export_common import leftovers, model_dirs  # noqa: F401  (fixture)

from anystep.core.modeldir import load_model_dir, model_dir_sha256
from anystep.export import onnx_export
from anystep.export.common import MANIFEST_NAME, BatchRange, ParityError, sha256_file
from anystep.export.manifest import ManifestError, load_manifest
from anystep.export.onnx_export import OnnxOptions, check_step_parity, export_onnx, ort_session

# (s, t) pairs of the independent parity check: forward, identity, backwards (s > t).
PAIRS = [(0.0, 1.0), (0.2, 0.6), (0.5, 0.5), (1.0, 0.0), (0.8, 0.1)]


@pytest.fixture(scope="module")
def flow_export(model_dirs, tmp_path_factory):  # noqa: F811
    """The flow map exported with the default exporter (auto: dynamo first)."""
    out = tmp_path_factory.mktemp("onnx") / "flow"
    return export_onnx(model_dirs["flowmap"], out, OnnxOptions(batch=BatchRange(1, 16, 64)))


@pytest.fixture(scope="module")
def velocity_export(model_dirs, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("onnx") / "velocity"
    return export_onnx(
        model_dirs["velocity"],
        out,
        OnnxOptions(exporter="torchscript", batch=BatchRange(1, 16, 64)),
    )


def _dims(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _ort_vs_torch(onnx_path: Path, model, feeds: dict[str, torch.Tensor]) -> float:
    sess = ort_session(onnx_path)
    y = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        ref = model(*feeds.values()).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    return float(np.abs(y - ref).max())


def test_flowmap_graph_signature_is_x_s_t_to_x_t_with_symbolic_batch(flow_export):
    model = onnx.load(str(flow_export.artifact))
    onnx.checker.check_model(model, full_check=True)
    ins = {vi.name: _dims(vi) for vi in model.graph.input}
    outs = {vi.name: _dims(vi) for vi in model.graph.output}
    assert ins == {"x": ["batch", 2], "s": ["batch"], "t": ["batch"]}
    assert outs == {"x_t": ["batch", 2]}
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["anystep.kind"] == "flowmap"
    assert meta["anystep.time_convention"] == "t=0 base, t=1 data"


@pytest.mark.parametrize("B", [1, 3, 64])
def test_flowmap_parity_over_batches_and_time_pairs(flow_export, model_dirs, B):  # noqa: F811
    model = load_model_dir(model_dirs["flowmap"]).model
    gen = torch.Generator().manual_seed(100 + B)
    for s, t in PAIRS:
        feeds = {
            "x": torch.randn(B, 2, generator=gen),
            "s": torch.full((B,), s),
            "t": torch.full((B,), t),
        }
        _ort_vs_torch(flow_export.artifact, model, feeds)
    # per-sample times in one batch, some forward and some backwards
    feeds = {
        "x": torch.randn(B, 2, generator=gen),
        "s": torch.rand(B, generator=gen),
        "t": torch.rand(B, generator=gen),
    }
    _ort_vs_torch(flow_export.artifact, model, feeds)


def test_dynamic_batch_is_honoured_at_an_unchecked_size(flow_export, model_dirs):  # noqa: F811
    manifest = load_manifest(flow_export.out_dir)
    assert 7 not in manifest.tolerance.batches  # B = 7 was never traced nor checked
    model = load_model_dir(model_dirs["flowmap"]).model
    gen = torch.Generator().manual_seed(7)
    feeds = {
        "x": torch.randn(7, 2, generator=gen),
        "s": torch.rand(7, generator=gen),
        "t": torch.rand(7, generator=gen),
    }
    _ort_vs_torch(flow_export.artifact, model, feeds)


def test_identity_at_equal_times(flow_export):
    # X_{s,s} = id (eq. 3.5) holds exactly in the exported graph too.
    sess = ort_session(flow_export.artifact)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    s = np.linspace(0, 1, 5, dtype=np.float32)
    y = sess.run(None, {"x": x, "s": s, "t": s})[0]
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_manifest_records_provenance_versions_and_tolerance(flow_export, model_dirs):  # noqa: F811
    m = load_manifest(flow_export.out_dir / MANIFEST_NAME)
    assert m.format == "onnx" and m.graph == "step" and m.kind == "flowmap"
    assert Path(m.source_model_dir) == Path(model_dirs["flowmap"]).absolute()
    assert m.model_dir_sha256 == model_dir_sha256(model_dirs["flowmap"])
    assert m.artifact_path == flow_export.artifact.absolute()
    assert m.artifact_sha256 == sha256_file(flow_export.artifact)
    assert m.data_shape == [2] and m.dataset == "checkerboard"
    assert m.time_convention == "t=0 base, t=1 data"
    assert m.opset >= 17 and m.precision == "fp32" and m.exporter in ("dynamo", "torchscript")
    assert [t.name for t in m.inputs] == ["x", "s", "t"] and [t.name for t in m.outputs] == ["x_t"]
    assert m.inputs[0].shape == ["batch", 2]
    assert (
        m.tolerance.atol == 1e-4 and m.tolerance.rtol == 1e-4 and m.tolerance.reference == "torch"
    )
    assert 0.0 <= m.tolerance.max_abs_err <= 1e-4 and m.tolerance.max_rel_err <= 1.0
    assert {1, 3, 64} <= set(m.tolerance.batches)
    assert [
        1.0,
        0.0,
    ] in m.tolerance.time_pairs and "mixed" in m.tolerance.time_pairs  # s > t checked
    for pkg in ("anystep", "torch", "onnx", "onnxruntime"):
        assert m.versions.get(pkg), pkg
    assert m.fused_steps is None and m.grid is None and m.nfe == 1
    # the JSON on disk is plain and round-trips
    raw = json.loads((flow_export.out_dir / MANIFEST_NAME).read_text())
    assert raw == m.to_dict()


def test_load_manifest_rejects_missing_and_malformed(tmp_path, flow_export):
    with pytest.raises(ManifestError, match="no export manifest"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not a readable JSON"):
        load_manifest(tmp_path)
    data = json.loads((flow_export.out_dir / MANIFEST_NAME).read_text())
    del data["model_dir_sha256"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="model_dir_sha256"):
        load_manifest(tmp_path)


def test_velocity_export_has_inputs_x_t_and_output_v(velocity_export, model_dirs):  # noqa: F811
    m = velocity_export.manifest
    assert m.kind == "velocity" and m.exporter == "torchscript"
    assert [t.name for t in m.inputs] == ["x", "t"] and [t.name for t in m.outputs] == ["v"]
    model = load_model_dir(model_dirs["velocity"]).model
    gen = torch.Generator().manual_seed(3)
    for B in (1, 3, 64):
        for t in (0.0, 0.37, 1.0):
            _ort_vs_torch(
                velocity_export.artifact,
                model,
                {"x": torch.randn(B, 2, generator=gen), "t": torch.full((B,), t)},
            )


def test_image_flowmap_export(model_dirs, tmp_path):  # noqa: F811
    res = export_onnx(
        model_dirs["unet"],
        tmp_path / "unet",
        OnnxOptions(exporter="torchscript", batch=BatchRange(1, 2, 4)),
    )
    assert res.manifest.inputs[0].shape == ["batch", 1, 8, 8]
    model = load_model_dir(model_dirs["unet"]).model
    gen = torch.Generator().manual_seed(5)
    for B in (1, 3, 5):
        feeds = {
            "x": torch.randn(B, 1, 8, 8, generator=gen),
            "s": torch.rand(B, generator=gen),
            "t": torch.rand(B, generator=gen),
        }
        err = _ort_vs_torch(res.artifact, model, feeds)
        assert err <= 1e-4


def test_parity_check_catches_a_wrong_runtime(model_dirs):  # noqa: F811
    model = load_model_dir(model_dirs["flowmap"]).model

    def off_by_a_bit(feeds):
        with torch.no_grad():
            y = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        return y + 3e-4  # above atol + rtol |y| for |y| < 2

    with pytest.raises(ParityError, match="exceeds atol"):
        check_step_parity(model, off_by_a_bit, "flowmap", (2,), [1, 3], atol=1e-4, rtol=1e-4)


def test_parity_failure_writes_nothing(model_dirs, tmp_path, monkeypatch):  # noqa: F811
    real = onnx_export.session_runner

    def skewed(sess):
        run = real(sess)
        return lambda feeds: run(feeds) * 1.01 + 1e-3

    monkeypatch.setattr(onnx_export, "session_runner", skewed)
    out = tmp_path / "nested" / "out"
    with pytest.raises(ParityError):
        export_onnx(
            model_dirs["flowmap"],
            out,
            OnnxOptions(exporter="torchscript", batch=BatchRange(1, 2, 4)),
        )
    assert not out.exists() and not (tmp_path / "nested").exists()
    assert leftovers(tmp_path) == []


def test_fp16_graph_keeps_float32_io_and_meets_fp16_tolerance(model_dirs, tmp_path):  # noqa: F811
    res = export_onnx(
        model_dirs["flowmap"],
        tmp_path / "fp16",
        OnnxOptions(exporter="torchscript", precision="fp16", batch=BatchRange(1, 4, 16)),
    )
    m = res.manifest
    assert m.precision == "fp16" and m.tolerance.atol == 5e-2 and m.tolerance.max_rel_err <= 1.0
    graph = onnx.load(str(res.artifact))
    fp16_weights = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_weights, "the network weights should be stored as float16"
    for vi in [*graph.graph.input, *graph.graph.output]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    model = load_model_dir(model_dirs["flowmap"]).model
    x = torch.randn(6, 2)
    s, t = torch.rand(6), torch.rand(6)
    y = ort_session(res.artifact).run(None, {"x": x.numpy(), "s": s.numpy(), "t": t.numpy()})[0]
    with torch.no_grad():
        ref = model(x, s, t).numpy()
    np.testing.assert_allclose(y, ref, atol=5e-2, rtol=5e-2)
    assert np.abs(y - ref).max() > 0  # it really is a different (lower) precision
