"""Corrupt model directories (issue 19 item 3): every one is refused with one line naming
the file, by the loader and by ``anystep sample``, ``anystep serve`` and ``anystep export``
(exit code 2), and nothing is ever unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import run_cli as _cli
from safetensors.torch import load_file, save_file

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import ModelDirError, load_model_dir, read_config, save_model_dir

REPO = Path(__file__).resolve().parents[1]


class _Marker:
    """Unpickling this writes a file: proves whether anything unpickled the weights."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled!"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2, width=16, depth=2, fourier_features=4)
    cfg = ModelConfig(kind="flowmap", backbone=bb, data_shape=(2,), dataset="checkerboard")
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("good") / "m", build_model(cfg), cfg)


def _edit_config(d: Path, fn) -> None:
    data = json.loads((d / "config.json").read_text())
    fn(data)
    (d / "config.json").write_text(json.dumps(data))


def _set_weight(d: Path, value: float) -> None:
    state = load_file(str(d / "model.safetensors"))
    k = min(state)
    state[k] = state[k].clone()
    state[k].view(-1)[0] = value
    save_file(state, str(d / "model.safetensors"))


def _truncate(d: Path) -> None:
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _pickle(d: Path) -> None:
    with open(d / "model.safetensors", "wb") as f:
        pickle.dump({"w": _Marker(str(d / "UNPICKLED"))}, f)


def _config_pickle(d: Path) -> None:
    (d / "config.json").write_bytes(pickle.dumps(_Marker(str(d / "UNPICKLED"))))


# case -> (corruption, file named in the message, fragment of the message)
CASES = {
    "truncated": (_truncate, "model.safetensors", "not a readable safetensors"),
    "truncated_config": (
        lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:50]),
        "config.json",
        "not valid JSON",
    ),
    "nan": (lambda d: _set_weight(d, float("nan")), "model.safetensors", "non-finite"),
    "inf": (lambda d: _set_weight(d, float("inf")), "model.safetensors", "non-finite"),
    "missing_ansatz": (lambda d: _edit_config(d, lambda c: c.pop("ansatz")), "config.json", "ansatz"),
    "missing_time_region": (
        lambda d: _edit_config(d, lambda c: c.pop("time_region")),
        "config.json",
        "time_region",
    ),
    "missing_backbone_field": (
        lambda d: _edit_config(d, lambda c: c["backbone"].pop("fourier_features")),
        "config.json",
        "fourier_features",
    ),
    "wrong_type": (
        lambda d: _edit_config(d, lambda c: c["backbone"].update(width="256")),
        "config.json",
        "backbone.width must be an integer",
    ),
    "wrong_type_shape": (
        lambda d: _edit_config(d, lambda c: c.update(data_shape="2")),
        "config.json",
        "data_shape",
    ),
    "absurd_size": (
        lambda d: _edit_config(d, lambda c: c["backbone"].update(width=10_000_000)),
        "config.json",
        "out of range",
    ),
    "shape_mismatch": (
        lambda d: _edit_config(d, lambda c: c["backbone"].update(width=64)),
        "model.safetensors",
        "config.json implies",
    ),
    "pickle": (_pickle, "model.safetensors", "not a readable safetensors"),
    "pickle_config": (_config_pickle, "config.json", "not valid JSON"),
    "bad_region": (
        lambda d: _edit_config(d, lambda c: c.update(time_region="backward")),
        "config.json",
        "time_region",
    ),
}


def _make(good: Path, tmp_path: Path, case: str) -> Path:
    d = tmp_path / case
    shutil.copytree(good, d)
    CASES[case][0](d)
    return d


def _check_one_line(code: int, err: str, d: Path, case: str) -> None:
    _, fname, fragment = CASES[case]
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(d / fname) in lines[0] and fragment in lines[0], lines[0]
    assert not (d / "UNPICKLED").exists(), "a corrupt model directory was unpickled"


def test_good_model_loads(good):
    lm = load_model_dir(good)
    assert lm.config.time_region == "forward"


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_refuses_with_the_file_named(good, tmp_path, case):
    d = _make(good, tmp_path, case)
    with pytest.raises(ModelDirError) as ei:
        load_model_dir(d)
    msg = str(ei.value)
    assert "\n" not in msg and str(d / CASES[case][1]) in msg and CASES[case][2] in msg, msg
    assert not (d / "UNPICKLED").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_sample_refuses(good, tmp_path, case, capsys):
    d = _make(good, tmp_path, case)
    out = tmp_path / "x.npy"
    code, err = _cli(["sample", str(d), "-n", "4", "--out", str(out)], capsys)
    _check_one_line(code, err, d, case)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_refuses_before_listening(good, tmp_path, case, capsys, monkeypatch):
    import uvicorn

    def _no_server(*a, **k):
        raise AssertionError("serve started although the model directory is corrupt")

    monkeypatch.setattr(uvicorn, "run", _no_server)
    monkeypatch.setattr(uvicorn.Server, "run", _no_server, raising=False)
    d = _make(good, tmp_path, case)
    code, err = _cli(["serve", "--model", f"m={d}", "--port", "1", "--no-warmup"], capsys)
    _check_one_line(code, err, d, case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_refuses(good, tmp_path, case, capsys):
    pytest.importorskip("onnx")
    d = _make(good, tmp_path, case)
    out = tmp_path / "exp"
    code, err = _cli(["export", str(d), "--out", str(out), "--exporter", "torchscript"], capsys)
    _check_one_line(code, err, d, case)
    assert not out.exists()


@pytest.mark.parametrize("name", ["checkerboard", "checkerboard-teacher", "digits", "digits-teacher"])
def test_bundled_models_state_every_required_field(name):
    d = REPO / "models" / name
    if not (d / "config.json").is_file():
        pytest.skip(f"models/{name} is not bundled in this checkout")
    cfg = read_config(d)  # strict: every required field present
    data = json.loads((d / "config.json").read_text())
    if cfg.kind == "flowmap":
        assert data["time_region"] in ("forward", "both")
    load_model_dir(d)  # finite weights of the shapes the config implies


def test_optional_fields_have_documented_defaults_that_keep_the_output():
    """Only fields whose absence leaves the unconditional model unchanged may be omitted."""
    # supported_steps (issue 14) restricts which requests are served, never an answer: absent = any K
    # units (issue 16) only converts answers to data units: absent = derived from dataset/data_shape
    # (units_for), the rule every model directory written before the field was served with
    assert set(ModelConfig.OPTIONAL) <= {"provenance", "num_classes", "guidance_input", "supported_steps", "units"}
    assert ModelConfig.OPTIONAL["supported_steps"] is None and ModelConfig.OPTIONAL["units"] is None
    assert ModelConfig.optional_fields({"kind": "velocity"})["time_region"] == "both"
    assert "time_region" not in ModelConfig.optional_fields({"kind": "flowmap"})
