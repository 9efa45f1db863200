"""A flow map records the (s, t) region it was trained on (issue 19 item 7): training
writes ``time_region``, and ``sample --reverse`` / ``POST /encode`` refuse a forward-only
map instead of answering wrongly; a teacher of another interpolant is rejected."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli as _cli

from anystep.core.config import (
    BackboneConfig,
    ConfigError,
    InterpolantConfig,
    ModelConfig,
    TimeRegionError,
)
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, read_config, save_model_dir

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _tiny(kind="flowmap", interpolant="linear"):
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2 if kind == "flowmap" else 1, width=16, depth=2,
                        fourier_features=4)
    return ModelConfig(kind=kind, backbone=bb, data_shape=(2,), interpolant=InterpolantConfig(name=interpolant))


def _save(path: Path, cfg: ModelConfig) -> Path:
    torch.manual_seed(0)
    return save_model_dir(path, build_model(cfg), cfg)


def test_code_default_is_the_conservative_forward_region():
    assert ModelConfig().time_region == "forward"
    assert _tiny("velocity").time_region == "both"
    assert ModelConfig(time_region="both").time_region == "both"
    with pytest.raises(ConfigError, match="time_region"):
        ModelConfig(time_region="reverse")


def test_sample_reverse_refuses_a_forward_only_map(tmp_path, capsys):
    d = _save(tmp_path / "fwd", _tiny())
    np.save(tmp_path / "x1.npy", np.zeros((3, 2), np.float32))
    code, err = _cli(["sample", str(d), "--reverse", "--x0", str(tmp_path / "x1.npy"), "--model-units",
                      "--out", str(tmp_path / "z.npy")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "forward times only" in lines[0] and "forward_only=false" in lines[0] and str(d) in lines[0]
    assert not (tmp_path / "z.npy").exists()
    # forward sampling of the same map is fine
    code, err = _cli(["sample", str(d), "-n", "3", "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 0, err


def test_sample_reverse_runs_a_map_trained_both_ways(tmp_path, capsys):
    import dataclasses

    d = _save(tmp_path / "both", dataclasses.replace(_tiny(), time_region="both"))
    np.save(tmp_path / "x1.npy", np.ones((3, 2), np.float32))
    code, err = _cli(["sample", str(d), "--reverse", "--steps", "2", "--x0", str(tmp_path / "x1.npy"),
                      "--model-units", "--out", str(tmp_path / "z.npy")], capsys)
    assert code == 0, err
    from anystep.core.samplers import sample_flowmap

    want = sample_flowmap(load_model_dir(d).model, torch.ones(3, 2), steps=2, reverse=True).x.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), want, atol=1e-6)


def test_encode_route_refuses_forward_only_maps(tmp_path):
    from fastapi.testclient import TestClient

    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import ModelSpec

    fwd = _save(tmp_path / "fwd", _tiny())
    specs = [ModelSpec("fwd", fwd)]
    if (REPO / "models" / "digits" / "config.json").is_file():
        specs.append(ModelSpec("digits", REPO / "models" / "digits"))
    with TestClient(create_app(ServerConfig(models=specs))) as c:
        deadline = time.monotonic() + 120  # the auto engine exports each model once before it is ready
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        for spec in specs:
            r = c.post("/encode", json={"model": spec.name, "x": [[0.0, 0.0]] if spec.name == "fwd"
                                         else np.full((1, 8, 8), 8.0).tolist(), "steps": 1})
            assert r.status_code == 422, r.text
            body = r.json()
            assert "forward times only" in json.dumps(body) and "forward_only=false" in json.dumps(body)
        ok = c.post("/generate", json={"model": "fwd", "n": 2, "steps": 1})
        assert ok.status_code == 200
        info = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert all(info[spec.name]["invertible"] is False for spec in specs)


def test_bundled_digits_map_is_declared_forward_only():
    """The bundled digits map was trained by LMD with the forward weight 1(s <= t)."""
    if not (REPO / "models" / "digits" / "config.json").is_file():
        pytest.skip("models/digits not bundled")
    cfg = read_config(REPO / "models" / "digits")
    assert cfg.provenance["objective"] == "lmd" and cfg.provenance["objective_hparams"].get("forward_only", True) is True
    assert cfg.time_region == "forward"
    from anystep.core.config import check_invertible

    with pytest.raises(TimeRegionError):
        check_invertible(cfg, "digits")


@pytest.mark.parametrize("hparams, region", [({}, "both"), ({"window": 2}, "both")])
def test_training_records_the_region_fmm(tmp_path, hparams, region):
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import Trainer

    cfg = TrainConfig(model=_tiny(), objective="fmm", objective_hparams=hparams, batch_size=16, max_steps=2,
                      lr=1e-3, lr_schedule="constant", eval_every=-1, ckpt_every=0, log_every=1)
    Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit()
    assert read_config(tmp_path / "r").time_region == region


@pytest.mark.parametrize("forward_only, region", [(True, "forward"), (False, "both")])
def test_training_records_the_region_lmd(tmp_path, forward_only, region):
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import Trainer

    teacher = _save(tmp_path / "teacher", _tiny("velocity"))
    cfg = TrainConfig(model=_tiny(), objective="lmd", objective_hparams={"forward_only": forward_only},
                      teacher=str(teacher), batch_size=16, max_steps=2, lr=1e-3, lr_schedule="constant",
                      eval_every=-1, ckpt_every=0, log_every=1)
    Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit()
    data = json.loads((tmp_path / "r" / "config.json").read_text())
    assert data["time_region"] == region


def test_teacher_of_another_interpolant_is_rejected_before_training(tmp_path):
    from anystep.training.config import TrainConfig, validate_config

    teacher = _save(tmp_path / "teacher", _tiny("velocity", interpolant="trig"))
    cfg = TrainConfig(model=_tiny(), objective="lmd", teacher=str(teacher), batch_size=16, max_steps=2)
    with pytest.raises(ConfigError, match="interpolant 'trig'.*'linear'"):
        validate_config(cfg)
    same = _save(tmp_path / "teacher2", _tiny("velocity"))
    validate_config(cfg.replace(teacher=str(same)))  # the same interpolant passes


def test_forward_only_flowmap_teacher_cannot_teach_backward_maps(tmp_path):
    import dataclasses

    from anystep.training.config import TrainConfig, validate_config

    fwd = _save(tmp_path / "fwd", _tiny())
    both = _save(tmp_path / "both", dataclasses.replace(_tiny(), time_region="both"))
    cfg = TrainConfig(model=_tiny(), objective="pfmm", teacher=str(fwd), batch_size=16, max_steps=2,
                      objective_hparams={"steps": 2, "forward_only": False})
    with pytest.raises(ConfigError, match="forward times only.*forward_only=true"):
        validate_config(cfg)
    validate_config(cfg.replace(objective_hparams={"steps": 2}))  # forward student: fine
    validate_config(cfg.replace(teacher=str(both), init_from=str(both)))  # a teacher trained both ways
