"""Step counts a flow map supports (issue 14): recorded in the model directory, refused
elsewhere by the core sampling contract, 422 over HTTP naming the field and listing the
supported values, exit 2 with one line from ``anystep sample``, reported by /v1/models.

Shortcut models support the dyadic uniform grids ``K = 1, 2, 4, ...``; consistency models
(cd/ct) and trajectory regression only ``K = 1``; progressive distillation its own N.
Absent ``supported_steps`` (every model written before) means any K and any grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli

from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, read_config, save_model_dir
from anystep.core.params import ParamError, UnsupportedStepsError, resolve_sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cfg(supported=None) -> ModelConfig:
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2, width=16, depth=2, fourier_features=4)
    return ModelConfig(kind="flowmap", backbone=bb, data_shape=(2,), supported_steps=supported)


def _save(path: Path, supported=None) -> Path:
    torch.manual_seed(0)
    cfg = _cfg(supported)
    return save_model_dir(path, build_model(cfg), cfg)


# ------------------------------------------------------------------------------------------
# the core contract
# ------------------------------------------------------------------------------------------
def test_supported_step_counts_pass_and_others_are_refused_naming_the_values():
    sup = (1, 2, 4, 8)
    for K in sup:
        assert resolve_sampling("flowmap", steps=K, supported_steps=sup).steps == K
    for K in (3, 5, 16):
        with pytest.raises(UnsupportedStepsError) as e:
            resolve_sampling("flowmap", steps=K, supported_steps=sup)
        assert e.value.field == "steps" and e.value.supported == [1, 2, 4, 8]
        assert "[1, 2, 4, 8]" in str(e.value) and f"steps={K}" in str(e.value)
    assert isinstance(e.value, ParamError)  # the HTTP layer maps every ParamError to a 422


def test_a_custom_grid_passes_only_as_a_supported_uniform_grid():
    sup = (1, 2, 4)
    spec = resolve_sampling("flowmap", grid="0,0.5,1", supported_steps=sup)
    assert spec.steps == 2 and spec.custom_grid
    for grid in ("0,0.3,1", "0,0.25,0.5,0.75,0.9,1", "0,0.2,0.4,0.6,1"):
        with pytest.raises(UnsupportedStepsError) as e:
            resolve_sampling("flowmap", grid=grid, supported_steps=sup)
        assert e.value.field == "grid" and "[1, 2, 4]" in str(e.value)


def test_absent_steps_mean_the_models_own_count_and_none_means_any():
    assert resolve_sampling("flowmap", supported_steps=(1, 2)).steps == 1
    assert resolve_sampling("flowmap", supported_steps=(2,)).steps == 2  # a PD round's N
    assert resolve_sampling("flowmap", steps=3, supported_steps=None).steps == 3
    assert resolve_sampling("flowmap", grid="0,0.3,1", supported_steps=None).steps == 2
    # a velocity model integrates an ODE: the flow-map restriction does not apply
    assert resolve_sampling("velocity", solver="euler", steps=7, supported_steps=(1,)).steps == 7
    # the conflicts still come first (steps + grid names the conflict, not the support)
    with pytest.raises(ParamError, match="not both"):
        resolve_sampling("flowmap", steps=1, grid="0,1", supported_steps=(1,))


# ------------------------------------------------------------------------------------------
# the model directory
# ------------------------------------------------------------------------------------------
def test_model_dir_records_supported_steps_and_absent_means_any(tmp_path):
    d = _save(tmp_path / "sc", [4, 1, 2, 2])
    raw = json.loads((d / "config.json").read_text())
    assert raw["supported_steps"] == [1, 2, 4]
    assert read_config(d).supported_steps == (1, 2, 4)
    # backward compatible: an older config.json without the key loads as "any"
    old = _save(tmp_path / "any")
    assert "supported_steps" not in json.loads((old / "config.json").read_text())
    assert load_model_dir(old).config.supported_steps is None


@pytest.mark.parametrize("bad", [[], [0], [1, -2], ["2"], [1.5], "1,2", 2, [True]])
def test_invalid_supported_steps_are_config_errors(bad):
    with pytest.raises(ConfigError, match="supported_steps"):
        ModelConfig.from_dict({**_cfg().to_dict(), "supported_steps": bad})


def test_a_velocity_model_cannot_declare_supported_steps():
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1, width=16, depth=2, fourier_features=4)
    with pytest.raises(ConfigError, match="flow maps"):
        ModelConfig(kind="velocity", backbone=bb, data_shape=(2,), supported_steps=(1,))


@pytest.mark.parametrize(
    "objective, hparams, want",
    [("cd", {}, [1]), ("pd", {"steps": 2}, [2]), ("shortcut", {"levels": 3}, [1, 2, 4]), ("lmd", {}, None)],
)
def test_the_trainer_records_the_objectives_supported_steps(objective, hparams, want, tmp_path):
    from anystep.core.config import InterpolantConfig
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import Trainer

    teacher = None
    if objective in ("cd", "lmd"):  # a velocity teacher
        bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1, width=16, depth=1, fourier_features=4)
        vcfg = ModelConfig(kind="velocity", backbone=bb, data_shape=(2,), interpolant=InterpolantConfig())
        teacher = save_model_dir(tmp_path / "teacher", build_model(vcfg), vcfg)
    elif objective == "pd":  # a flow-map teacher
        teacher = _save(tmp_path / "teacher")
    cfg = TrainConfig(
        model=_cfg(), objective=objective, objective_hparams=hparams, dataset="checkerboard", batch_size=8,
        max_steps=2, log_every=1, ckpt_every=0, eval_every=-1, teacher=None if teacher is None else str(teacher),
    )
    Trainer(cfg, tmp_path / "run", progress=False, eval_fn=None).fit()
    cfg_out = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg_out.get("supported_steps") == want


# ------------------------------------------------------------------------------------------
# CLI and HTTP
# ------------------------------------------------------------------------------------------
def test_sample_cli_refuses_unsupported_steps_with_exit_2_and_one_line(tmp_path, capsys):
    d = _save(tmp_path / "cm", [1])
    out = tmp_path / "x.npy"
    for args, field in ((["--steps", "2"], "steps=2"), (["--grid", "0,0.5,1"], "custom grid")):
        code, err = run_cli(["sample", str(d), *args, "-n", "4", "--out", str(out), "--model-units"], capsys)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and field in err and "[1]" in err
        assert not out.exists()
    code, err = run_cli(["sample", str(d), "--steps", "1", "-n", "4", "--out", str(out), "--model-units"], capsys)
    assert code == 0, err
    assert np.isfinite(np.load(out)).all()


def test_http_refuses_unsupported_steps_with_422_and_lists_them(tmp_path):
    from fastapi.testclient import TestClient

    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import ModelSpec

    specs = [ModelSpec("sc", _save(tmp_path / "sc", [1, 2, 4])), ModelSpec("any", _save(tmp_path / "any"))]
    with TestClient(create_app(ServerConfig(models=specs, engine="torch"))) as c:
        deadline = time.monotonic() + 120  # each model warms up before it serves
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        info = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert info["sc"]["supported_steps"] == [1, 2, 4] and info["any"]["supported_steps"] is None
        for body, field in (({"steps": 3}, "steps"), ({"grid": [0.0, 0.3, 1.0]}, "grid")):
            r = c.post("/generate", json={"model": "sc", "n": 2, **body})
            assert r.status_code == 422, r.text
            err = r.json()
            assert err["field"] == field and err["error"] == "unsupported_steps" and "[1, 2, 4]" in err["message"]
        r = c.post("/generate", params={"model": "sc", "n": 2, "steps": 8})  # query string
        assert r.status_code == 422 and r.json()["field"] == "steps"
        for body in ({"steps": 4}, {"grid": [0.0, 0.5, 1.0]}):
            ok = c.post("/generate", json={"model": "sc", "n": 2, **body})
            assert ok.status_code == 200, ok.text
        assert c.post("/generate", json={"model": "any", "n": 2, "steps": 3}).status_code == 200
        # a latency budget chooses among the supported counts only
        lat = c.post("/generate", json={"model": "sc", "n": 2, "latency_ms": 10_000})
        assert lat.status_code == 200 and lat.json()["steps"] in (1, 2, 4)
