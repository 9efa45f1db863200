import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import ModelDirError, load_model_dir, model_dir_sha256, save_model_dir


def small_config(kind="flowmap", shape=(2,)):
    bb = BackboneConfig(name="mlp", data_shape=shape, time_inputs=2 if kind == "flowmap" else 1, width=32, depth=2)
    return ModelConfig(kind=kind, backbone=bb, data_shape=shape, dataset="checkerboard")


@pytest.mark.parametrize("kind", ["flowmap", "velocity"])
def test_round_trip(tmp_path, kind):
    cfg = small_config(kind)
    torch.manual_seed(0)
    model = build_model(cfg)
    out = save_model_dir(tmp_path / "m", model, cfg)
    lm = load_model_dir(out)
    assert lm.config == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, lm.model.state_dict()[k])
    x = torch.randn(4, 2)
    args = (torch.zeros(4), torch.ones(4)) if kind == "flowmap" else (torch.rand(4),)
    torch.testing.assert_close(model(x, *args), lm.model(x, *args))
    assert len(model_dir_sha256(out)) == 64


def test_identity_on_diagonal_for_real_backbones(tmp_path):
    for shape, name in (((2,), "mlp"), ((1, 8, 8), "unet")):
        bb = BackboneConfig(name=name, data_shape=shape, width=32, depth=2, channels=16)
        model = build_model(ModelConfig(kind="flowmap", backbone=bb, data_shape=shape))
        for p in model.parameters():  # make sure the net is not zero (U-Net zero-inits its output)
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(3, *shape)
        t = torch.rand(3)
        torch.testing.assert_close(model(x, t, t), x, rtol=0, atol=0)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    cfg = small_config()
    save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_write_keeps_old_dir(tmp_path):
    cfg = small_config()
    save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    before = model_dir_sha256(tmp_path / "m")
    with pytest.raises(TypeError):
        save_model_dir(tmp_path / "m", build_model(cfg), cfg, extra_files={"bad.json": object()})
    assert model_dir_sha256(tmp_path / "m") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_clear_errors(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model_dir(tmp_path / "empty")
    cfg = small_config()
    d = save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_model_dir(d)
    bad = cfg.to_dict()
    bad["kind"] = "diffusion"
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelDirError, match="kind"):
        load_model_dir(d)
    bad = cfg.to_dict()
    bad["backbone"]["width"] = 64  # weights no longer match
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelDirError, match="shape"):
        load_model_dir(d)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    (d / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelDirError, match="safetensors"):
        load_model_dir(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="no model.safetensors"):
        load_model_dir(d)


def test_unknown_config_key(tmp_path):
    cfg = small_config()
    d = save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    data = cfg.to_dict()
    data["backbone"]["widht"] = 3
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="widht"):
        load_model_dir(d)


def _anystep(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "anystep.cli", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


def test_cli_sample_and_errors(tmp_path):
    cfg = small_config()
    d = save_model_dir(tmp_path / "m", build_model(cfg), cfg)
    r = _anystep("sample", str(d), "--steps", "2", "-n", "16", "--seed", "3", "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 0, r.stderr
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (16, 2)
    r = _anystep("sample", str(d), "--steps", "2", "-n", "4", "--seed", "3", "--out", str(tmp_path / "b.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), a[:4], atol=1e-6)
    r = _anystep("sample", str(d), "--out", str(tmp_path / "a.png"), "-n", "100")
    assert r.returncode == 0 and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    # bad inputs: exit 2, one line
    for args in (
        ["sample", str(tmp_path / "missing"), "--out", "x.npy"],
        ["sample", str(d), "--out", "x.txt"],
        ["sample", str(d), "--grid", "0,0.7,0.2,1", "--out", str(tmp_path / "x.npy")],
        ["sample", str(d), "--solver", "rk4", "--out", str(tmp_path / "x.npy")],
        ["sample", str(d), "--steps", "0", "--out", str(tmp_path / "x.npy")],
    ):
        r = _anystep(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr


def test_cli_velocity_model_solver(tmp_path):
    cfg = small_config("velocity")
    d = save_model_dir(tmp_path / "v", build_model(cfg), cfg)
    r = _anystep("sample", str(d), "--solver", "heun", "--steps", "5", "-n", "8", "--out", str(tmp_path / "v.npy"))
    assert r.returncode == 0, r.stderr
    assert "nfe=10" in r.stdout
    r = _anystep("sample", str(d), "--grid", "0,1", "--out", str(tmp_path / "v.npy"))
    assert r.returncode == 2


def test_cli_help_lists_commands():
    r = _anystep("--help")
    assert r.returncode == 0
    for cmd in ("train", "sample", "export", "serve", "generate", "bench", "data"):
        assert cmd in r.stdout
