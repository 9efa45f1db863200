"""Triton model repositories: config.pbtxt parses with Triton's schema, and a real Triton serves it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_export_common import leftovers, make_model_dir, model_dirs  # noqa: F401  (fixture)

from anystep.export.common import MANIFEST_NAME, BatchRange, ExportError
from anystep.export.manifest import ManifestError, load_manifest
from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session
from anystep.export.triton_repo import (
    TritonUnavailableError,
    export_triton,
    parse_config,
    serve_with_pytriton,
)

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient is not installed (pip install 'anystep[triton]')",
)

BATCH = BatchRange(1, 8, 32)


@pytest.fixture(scope="module")
def repo(model_dirs, tmp_path_factory):  # noqa: F811
    """A repository with a flow-map step model and a fused 3-step velocity model."""
    root = tmp_path_factory.mktemp("triton") / "models"
    a = export_triton(model_dirs["flowmap"], root, OnnxOptions(exporter="torchscript", batch=BATCH))
    b = export_triton(
        model_dirs["velocity"],
        root,
        OnnxOptions(exporter="torchscript", fused_steps=3, solver="heun", batch=BATCH),
        instance_kind="cpu",
    )
    return root, a, b


def test_config_parses_with_triton_schema_and_declares_batching(repo):
    root, a, _ = repo
    assert a.models == ["checkerboard_flowmap"]
    cfg = parse_config(root / "checkerboard_flowmap" / "config.pbtxt")
    assert isinstance(cfg, model_config_pb2.ModelConfig)
    assert cfg.name == "checkerboard_flowmap" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == BATCH.max
    assert list(cfg.dynamic_batching.preferred_batch_size) == [BATCH.opt]
    assert cfg.HasField("dynamic_batching")
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    ins = {i.name: i for i in cfg.input}
    assert list(ins["x"].dims) == [2] and not ins["x"].HasField("reshape")  # batch dim implicit
    for name in ("s", "t"):  # per-sample times: [B, 1] on the wire, [B] in the model
        assert list(ins[name].dims) == [1]
        assert ins[name].HasField("reshape") and list(ins[name].reshape.shape) == []
        assert ins[name].data_type == model_config_pb2.TYPE_FP32
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("x_t", [2])]


def test_repository_layout_and_manifest(repo):
    root, _, b = repo
    name = b.models[0]
    assert name == "checkerboard_velocity_k3"
    assert (root / name / "1" / "model.onnx").is_file()
    assert not (root / name / "1" / MANIFEST_NAME).exists()
    m = load_manifest(root / name)
    assert m.artifact == "1/model.onnx" and m.artifact_path.is_file()
    assert m.triton["model_name"] == name and m.triton["max_batch_size"] == BATCH.max
    assert m.graph == "fused" and m.solver == "heun" and m.nfe == 6
    cfg = parse_config(root / name / "config.pbtxt")
    assert [i.name for i in cfg.input] == ["x0"] and [o.name for o in cfg.output] == ["x1"]
    assert leftovers(root.parent) == []


def test_existing_model_is_not_replaced_without_overwrite(repo, model_dirs):  # noqa: F811
    root, _, _ = repo
    before = (root / "checkerboard_flowmap" / "config.pbtxt").read_text()
    with pytest.raises(ExportError, match="already exists"):
        export_triton(model_dirs["flowmap"], root, OnnxOptions(exporter="torchscript", batch=BATCH))
    assert (root / "checkerboard_flowmap" / "config.pbtxt").read_text() == before
    assert leftovers(root.parent) == []


def _fake_plan_dir(onnx_dir, dst, *, profile=(1, 8, 32)):
    """A TensorRT export folder as --format tensorrt writes it (plan bytes are a stand-in)."""
    shutil.copytree(onnx_dir, dst)
    (dst / "model.plan").write_bytes(b"not a real engine")
    data = json.loads((dst / MANIFEST_NAME).read_text())
    data.update(format="tensorrt", artifact="model.plan", precision="fp16")
    data["tensorrt"] = {"profile": dict(zip(("min", "opt", "max"), profile)), "version": "10.x"}
    (dst / MANIFEST_NAME).write_text(json.dumps(data))
    return dst


def test_plan_variant_gets_a_tensorrt_plan_config(model_dirs, tmp_path):  # noqa: F811
    onnx_dir = export_onnx(
        model_dirs["flowmap"], tmp_path / "onnx", OnnxOptions(exporter="torchscript", batch=BATCH)
    ).out_dir
    plan_dir = _fake_plan_dir(onnx_dir, tmp_path / "trt", profile=(1, 16, 128))
    res = export_triton(
        model_dirs["flowmap"],
        tmp_path / "repo",
        OnnxOptions(exporter="torchscript", batch=BATCH),
        name="cb",
        plan=plan_dir,
    )
    assert res.models == ["cb", "cb_trt"]
    cfg = parse_config(tmp_path / "repo" / "cb_trt" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 128
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert cfg.default_model_filename == "model.plan"
    ins = {i.name: i for i in cfg.input}
    assert list(ins["s"].dims) == [1] and list(ins["s"].reshape.shape) == []
    assert (tmp_path / "repo" / "cb_trt" / "1" / "model.plan").read_bytes() == b"not a real engine"
    assert load_manifest(tmp_path / "repo" / "cb_trt").precision == "fp16"


def test_plan_from_another_model_or_format_is_refused(model_dirs, tmp_path):  # noqa: F811
    other = make_model_dir(tmp_path / "other", "flowmap", (2,), seed=9)
    onnx_dir = export_onnx(
        other, tmp_path / "onnx", OnnxOptions(exporter="torchscript", batch=BATCH)
    ).out_dir
    with pytest.raises(ExportError, match="holds a onnx export"):
        export_triton(
            model_dirs["flowmap"], tmp_path / "repo", OnnxOptions(batch=BATCH), plan=onnx_dir
        )
    plan_dir = _fake_plan_dir(onnx_dir, tmp_path / "trt")
    with pytest.raises(ExportError, match="another model directory"):
        export_triton(
            model_dirs["flowmap"], tmp_path / "repo", OnnxOptions(batch=BATCH), plan=plan_dir
        )
    with pytest.raises(ManifestError):
        export_triton(
            model_dirs["flowmap"],
            tmp_path / "repo",
            OnnxOptions(batch=BATCH),
            plan=tmp_path / "nowhere",
        )
    assert not (tmp_path / "repo").exists()


def _http_inputs(tc, arrays):
    out = []
    for name, arr in arrays.items():
        i = tc.InferInput(name, list(arr.shape), "FP32")
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def test_triton_serves_the_repository_and_answers_like_onnxruntime(repo):
    """The Triton bundled in nvidia-pytriton serves both models; answers equal ONNX Runtime's."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    root, a, b = repo
    step_name, fused_name = a.models[0], b.models[0]
    step_sess = ort_session(root / step_name / "1" / "model.onnx")
    fused_sess = ort_session(root / fused_name / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    try:
        server_cm = serve_with_pytriton(root, startup_timeout_s=90)
        server = server_cm.__enter__()
    except TritonUnavailableError as e:
        pytest.skip(f"pytriton cannot start here: {e}")
    try:
        assert sorted(server.models) == sorted([step_name, fused_name])
        client = thttp.InferenceServerClient(server.http_url, concurrency=4)
        try:
            assert client.is_model_ready(step_name) and client.is_model_ready(fused_name)
            # concurrent requests with per-sample times (some s > t): the dynamic batcher
            # may merge them, and each must still get its own answer.
            requests = []
            for B in (1, 5, 3, 8):
                x = rng.standard_normal((B, 2)).astype(np.float32)
                s = rng.random((B, 1)).astype(np.float32)
                t = rng.random((B, 1)).astype(np.float32)
                fut = client.async_infer(step_name, _http_inputs(thttp, {"x": x, "s": s, "t": t}))
                requests.append((fut, x, s, t))
            for fut, x, s, t in requests:
                got = fut.get_result().as_numpy("x_t")
                ref = step_sess.run(None, {"x": x, "s": s[:, 0], "t": t[:, 0]})[0]
                assert got.shape == ref.shape
                # equal up to float32 rounding (the batcher may run a merged batch)
                np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        finally:
            client.close()
        gclient = tgrpc.InferenceServerClient(server.grpc_url)
        try:
            x0 = rng.standard_normal((6, 2)).astype(np.float32)
            inp = tgrpc.InferInput("x0", [6, 2], "FP32")
            inp.set_data_from_numpy(x0)
            got = gclient.infer(fused_name, [inp]).as_numpy("x1")
            np.testing.assert_allclose(
                got, fused_sess.run(None, {"x0": x0})[0], rtol=1e-6, atol=1e-6
            )
            assert np.abs(got - x0).max() > 1e-3
        finally:
            gclient.close()
    finally:
        server_cm.__exit__(None, None, None)
    assert server.process.poll() is not None, "the pytriton worker must be stopped"
