"""ONNX export of class-conditional models: inputs x, s, t, y, w with per-sample labels and scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import save_model_dir

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session, session_runner


def _save(tmp_path, kind: str, num_classes: int = 4, guidance: bool = True):
    cfg = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2 if kind == "flowmap" else 1, width=32, depth=2),
        data_shape=(2,), num_classes=num_classes, guidance_input=guidance and kind == "flowmap", ansatz="residual",
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # the conditioning embeddings start at 0: give them weights so y, w matter
        for name, p in model.named_parameters():
            if ".cond." in f".{name}":
                p.copy_(torch.randn(p.shape))
    return save_model_dir(tmp_path / kind, model, cfg), model


def test_conditional_flowmap_step_graph_takes_per_sample_labels_and_scales(tmp_path):
    src, model = _save(tmp_path, "flowmap")
    res = export_onnx(src, tmp_path / "onnx")
    names = [(t.name, t.dtype, t.shape) for t in res.manifest.inputs]
    assert names == [("x", "float32", ["batch", 2]), ("s", "float32", ["batch"]), ("t", "float32", ["batch"]),
                     ("y", "int64", ["batch"]), ("w", "float32", ["batch"])]
    from anystep.export.triton_repo import _validate_config, triton_config_text

    text = triton_config_text("digits_cond", res.manifest, max_batch_size=64)
    _validate_config(text)
    assert 'name: "y"\n    data_type: TYPE_INT64\n    dims: [ 1 ]' in text and 'name: "w"' in text
    run = session_runner(ort_session(res.artifact))
    g = torch.Generator().manual_seed(1)
    for B in (1, 5, 33):
        x, s, t = torch.randn(B, 2, generator=g), torch.rand(B, generator=g), torch.rand(B, generator=g)
        y, w = torch.randint(0, 5, (B,), generator=g), 4 * torch.rand(B, generator=g)
        got = run({"x": x.numpy(), "s": s.numpy(), "t": t.numpy(), "y": y.numpy(), "w": w.numpy()})
        with torch.no_grad():
            ref = model(x, s, t, y=y, w=w).numpy()
            other = model(x, s, t, y=(y + 1) % 5, w=w).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
        assert not np.allclose(got, other, atol=1e-3)  # the label really is an input of the graph


@pytest.mark.slow
def test_unconditional_graph_signature_unchanged(tmp_path):
    src, _ = _save(tmp_path, "flowmap", num_classes=0, guidance=False)
    res = export_onnx(src, tmp_path / "onnx")
    assert [t.name for t in res.manifest.inputs] == ["x", "s", "t"]


@pytest.mark.slow
def test_conditional_fused_and_velocity_graphs(tmp_path):
    src, model = _save(tmp_path, "flowmap")
    res = export_onnx(src, tmp_path / "fused", OnnxOptions(fused_steps=3))
    assert [t.name for t in res.manifest.inputs] == ["x0", "y", "w"]
    run = session_runner(ort_session(res.artifact))
    g = torch.Generator().manual_seed(2)
    x0, y, w = torch.randn(7, 2, generator=g), torch.randint(0, 4, (7,), generator=g), 1 + torch.rand(7, generator=g)
    from anystep.core.flowmap import Conditioned
    from anystep.core.samplers import sample_flowmap

    ref = sample_flowmap(Conditioned(model, y, w), x0, steps=3).x.numpy()
    np.testing.assert_allclose(run({"x0": x0.numpy(), "y": y.numpy(), "w": w.numpy()}), ref, atol=1e-4, rtol=1e-4)
    vsrc, _ = _save(tmp_path, "velocity")
    vres = export_onnx(vsrc, tmp_path / "v")
    assert [t.name for t in vres.manifest.inputs] == ["x", "t", "y"]
