"""The one ONNX export cache (anystep.export.cache) that the server and the latency benchmark share."""

from __future__ import annotations

import json
import shutil

import pytest

from anystep.export import cache as C
from anystep.export.common import BatchRange, ExportError
from anystep.export.onnx_export import OnnxOptions
from anystep.server.testing import make_tiny_models


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("cache-models"), digits=False)["checkerboard"]


@pytest.fixture
def fake_export(monkeypatch):
    """export_onnx replaced by a writer of the two files (counts its calls; no torch export)."""
    calls = []

    def export_onnx(model_dir, out_dir, opts=None, *, overwrite=False):
        calls.append((str(model_dir), opts))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / C.ONNX_NAME).write_bytes(b"graph")
        (out_dir / "anystep-export.json").write_text(json.dumps({"graph": "step" if not opts or not opts.fused_steps else "fused"}))

    import anystep.export.onnx_export as oe

    monkeypatch.setattr(oe, "export_onnx", export_onnx)
    return calls


def test_keys_follow_the_content_and_the_options_and_defaults_share_one(model_dir, tmp_path):
    k0 = C.export_cache_key(model_dir)
    assert k0 == C.export_cache_key(model_dir, OnnxOptions())  # None and the defaults: one entry
    fused = C.export_cache_key(model_dir, OnnxOptions(fused_steps=4))
    assert fused != k0 and fused.startswith(k0 + "-")
    assert fused != C.export_cache_key(model_dir, OnnxOptions(fused_steps=8))
    assert C.export_cache_key(model_dir, OnnxOptions(batch=BatchRange(1, 8, 64))) != k0
    edited = tmp_path / "edited"
    shutil.copytree(model_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["provenance"] = {"note": "edited"}
    (edited / "config.json").write_text(json.dumps(cfg))
    assert C.export_cache_key(edited) != k0  # another content, another export


def test_exports_once_per_key_and_reuses_the_folder(model_dir, tmp_path, fake_export):
    a = C.cached_onnx_export(model_dir, tmp_path)
    assert a == tmp_path / "onnx" / C.export_cache_key(model_dir) and C.is_complete_export(a)
    assert C.cached_onnx_export(model_dir, tmp_path, OnnxOptions()) == a
    f = C.cached_onnx_export(model_dir, tmp_path, OnnxOptions(fused_steps=4))
    assert f != a and C.cached_onnx_export(model_dir, tmp_path, OnnxOptions(fused_steps=4)) == f
    assert len(fake_export) == 2  # one export per key


def test_an_unfinished_folder_is_exported_again(model_dir, tmp_path, fake_export):
    folder = tmp_path / "onnx" / C.export_cache_key(model_dir)
    folder.mkdir(parents=True)
    (folder / C.ONNX_NAME).write_bytes(b"half")  # no manifest: a crashed export
    assert C.cached_onnx_export(model_dir, tmp_path) == folder and len(fake_export) == 1


def test_default_root_is_the_environment_or_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ANYSTEP_CACHE_DIR", str(tmp_path / "c"))
    assert C.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ANYSTEP_CACHE_DIR")
    assert C.default_cache_dir().parts[-2:] == (".cache", "anystep")


def test_bad_options_fail_before_anything_is_written(model_dir, tmp_path):
    with pytest.raises(ExportError, match="exporter"):
        C.cached_onnx_export(model_dir, tmp_path, OnnxOptions(exporter="nope"))
    assert not (tmp_path / "onnx").exists()


def test_the_latency_benchmark_and_the_server_use_this_cache(model_dir, tmp_path, fake_export):
    from anystep.benchmarks.latency_engines import ensure_export

    d = ensure_export(model_dir, tmp_path, fused_steps=2, solver="euler", exporter="auto", log=lambda m: None)
    assert d == tmp_path / "exports" / "onnx" / C.export_cache_key(model_dir, OnnxOptions(fused_steps=2))
    assert ensure_export(model_dir, tmp_path, fused_steps=2, log=lambda m: None) == d and len(fake_export) == 1
