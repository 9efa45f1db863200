"""Units stored with the model (issue 16): the trainer writes the data set's record into config.json,
the server and ``anystep sample`` use it without the data set; absent, they derive it as before."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli as _cli

from anystep.core.api import generate
from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import ModelDirError, load_model_dir, read_config, save_model_dir
from anystep.core.units import Units, UnitsError, model_units, units_for

REPO = Path(__file__).resolve().parents[1]
SHAPE = (2, 3, 4)  # [C, H, W] of the npz images: stored, and served, in this layout


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(kind: str = "flowmap", shape=SHAPE, **kw) -> ModelConfig:
    bb = BackboneConfig(name="mlp", data_shape=shape, time_inputs=1 if kind == "velocity" else 2, width=16, depth=2,
                        fourier_features=4)
    return ModelConfig(kind=kind, backbone=bb, data_shape=shape, **kw)


def _levels() -> Units:
    return Units("uint8-levels", SHAPE, scale=127.5, offset=1.0, lo=0.0, hi=255.0)


# ---- the config field ------------------------------------------------------------------------


def test_units_round_trip_through_config_json_and_are_absent_by_default():
    cfg = _model(dataset="npz:x.npz", units=_levels().to_dict())
    assert cfg.units == _levels()  # the JSON record is parsed into the core record
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["units"] == _levels().to_dict()
    back = ModelConfig.from_dict(d, strict=True)
    assert back == cfg and back.to_dict() == cfg.to_dict() and model_units(back) == _levels()
    plain = _model(dataset="npz:x.npz")
    assert "units" not in plain.to_dict()  # configs without the record are written as before
    assert model_units(plain) == units_for("npz:x.npz", SHAPE) and model_units(plain).identity


BAD = {
    "unknown name": ({"name": "kelvin"}, "unknown units name 'kelvin'"),
    "wrong shape": ({"data_shape": [1, 8, 8]}, r"units.data_shape \[1, 8, 8\] != data_shape \[2, 3, 4\]"),
    "unknown layout": ({"layout": "sideways"}, "unknown units layout 'sideways'"),
    "layout vs shape": ({"layout": "drop-channel"}, "'drop-channel' needs a data_shape"),
    "zero scale": ({"scale": 0}, "scale must be non-zero"),
    "string scale": ({"scale": "127.5"}, "scale must be a finite number"),
    "lo above hi": ({"lo": 300.0}, "lo=300.0 is above hi=255.0"),
    "unknown key": ({"gamma": 2.2}, r"unknown key\(s\) \['gamma'\]"),
    "not an object": ("uint8-levels", "units must be a JSON object"),
}


def _corrupt(d: Path, change) -> None:
    p = d / "config.json"
    data = json.loads(p.read_text())
    data["units"] = {**data["units"], **change} if isinstance(change, dict) else change
    p.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A random flow map whose config.json stores 8-bit levels."""
    torch.manual_seed(0)
    cfg = _model(dataset="npz:gone.npz", units=_levels().to_dict())
    return save_model_dir(tmp_path_factory.mktemp("m") / "m", build_model(cfg), cfg)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_corrupt_units_record_is_refused_saying_how_to_fix_it(stored, tmp_path, case, capsys):
    import shutil

    from anystep.server.registry import ModelSpec, load_models

    d = tmp_path / "m"
    shutil.copytree(stored, d)
    change, msg = BAD[case]
    _corrupt(d, change)
    with pytest.raises(ModelDirError, match=msg) as e:
        read_config(d)
    text = str(e.value)
    assert "config.json: units" in text and "delete the 'units' key" in text and "\n" not in text
    with pytest.raises(ModelDirError, match=msg):
        load_models([ModelSpec("m", d)], engine="torch")
    code, err = _cli(["sample", str(d), "-n", "2", "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "units" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.npy").exists()


def test_units_records_are_checked_in_code_too():
    with pytest.raises(UnitsError, match="unknown units name"):
        Units("furlongs", (2,))
    with pytest.raises(ConfigError, match="units must be a JSON object"):
        _model(units=[1, 2])


# ---- bundled and older model directories: unchanged ------------------------------------------


def _bundled() -> list[Path]:
    out = []
    for d in sorted((REPO / "models").glob("*/config.json")):
        if "dataset" in json.loads(d.read_text()):  # model directories (not e.g. the digits classifier)
            out.append(d.parent)
    return out


def test_bundled_models_without_the_field_keep_the_derived_units():
    dirs = _bundled()
    if not dirs:
        pytest.skip("no bundled models in this checkout")
    from anystep.server.registry import ModelSpec, load_models

    for d in dirs:
        raw = json.loads((d / "config.json").read_text())
        cfg = read_config(d)
        assert model_units(cfg) == units_for(cfg.dataset, cfg.data_shape), d.name  # the rule they were served with
        assert ModelConfig.from_dict(cfg.to_dict(), strict=True) == cfg
        if "units" in raw:  # re-bundled by a trainer that writes the record: it is the derived one, and re-saved as is
            assert cfg.units == Units.from_dict(raw["units"]) and cfg.to_dict()["units"] == raw["units"], d.name
            continue
        assert cfg.units is None
        assert "units" not in cfg.to_dict()  # re-saving leaves config.json (and its sha256) as it was
    served = {d.name: d for d in dirs if d.name in ("digits", "digits-restore")}  # what the server applies
    for m in load_models([ModelSpec(n, d) for n, d in served.items()], engine="torch"):
        assert m.units == units_for("digits", (1, 8, 8)) and m.units.name == "digits-grey-levels"
        if m.translation:  # the restoration map's sources: the base data set's own units, as before
            assert m.source_units == units_for("digits-noisy", (1, 8, 8))


# ---- a model trained on 8-bit npz images ------------------------------------------------------


@pytest.fixture(scope="module")
def npz_model(tmp_path_factory):
    """A flow map trained 3 steps on a small npz of uint8 pixels [N, 2, 3, 4]; the npz is then deleted."""
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import Trainer

    root = tmp_path_factory.mktemp("npz")
    img = np.random.default_rng(0).integers(0, 256, (64, *SHAPE), dtype=np.uint8)
    np.savez(root / "pixels.npz", x=img)
    cfg = TrainConfig(
        model=_model(), objective="fmm", objective_hparams={"window": 2}, dataset=f"npz:{root / 'pixels.npz'}",
        batch_size=16, max_steps=3, lr=1e-3, lr_schedule="constant", log_every=1, ckpt_every=0, eval_every=-1,
        seed=0,
    )
    Trainer(cfg, root / "run", progress=False).fit()
    (root / "pixels.npz").unlink()  # serving needs no data set
    return root / "run"


def test_the_trainer_stores_the_data_sets_units(npz_model):
    raw = json.loads((npz_model / "config.json").read_text())
    assert raw["units"] == _levels().to_dict()
    assert load_model_dir(npz_model).config.units == _levels()
    assert units_for(raw["dataset"], SHAPE).identity  # what the name alone would have given


def _serve(model_dir: Path, **body):
    from fastapi.testclient import TestClient

    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import Limits, ModelSpec

    cfg = ServerConfig(models=[ModelSpec("px", model_dir)], limits=Limits(max_steps=4, max_n=16), engine="torch")
    with TestClient(create_app(cfg)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = c.get("/v1/models").json()["models"][0]
        r = c.post("/generate", json={"model": "px", **body})
        assert r.status_code == 200, r.text
        return info, r.json()


def test_an_npz_uint8_model_is_served_and_sampled_in_pixel_levels(npz_model, tmp_path, capsys):
    info, d = _serve(npz_model, n=8, seed=5, steps=2)
    assert info["units"] == "uint8-levels" and info["units_shape"] == list(SHAPE)
    x = np.array(d["samples"], dtype=np.float32)
    assert d["shape"] == [8, *SHAPE] and x.min() >= 0 and x.max() <= 255
    model_x = generate(npz_model, n=8, seed=5, steps=2).x.numpy()  # model units, about N(0, 1): negative too
    assert model_x.min() < -0.5
    np.testing.assert_allclose(x, np.clip((model_x + 1) * 127.5, 0, 255), atol=5e-3)
    out = tmp_path / "s.npy"
    args = ["sample", str(npz_model), "-n", "8", "--seed", "5", "--steps", "2", "--out", str(out)]
    assert _cli(args, capsys)[0] == 0
    np.testing.assert_allclose(np.load(out), x, atol=5e-3)  # anystep sample writes the same levels
    assert _cli([*args, "--model-units"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(out), model_x, atol=1e-5)


def test_without_the_field_the_same_model_is_served_as_before(npz_model, tmp_path):
    """Delete the record: the name-derived units (the identity for npz:) come back, as before the field."""
    import shutil

    d = tmp_path / "old"
    shutil.copytree(npz_model, d)
    data = json.loads((d / "config.json").read_text())
    del data["units"]
    (d / "config.json").write_text(json.dumps(data))
    info, out = _serve(d, n=8, seed=5, steps=2)
    assert info["units"] == "identity"
    model_x = generate(d, n=8, seed=5, steps=2).x.numpy()
    np.testing.assert_allclose(np.array(out["samples"]), model_x, atol=1e-5)


def test_anystep_data_writes_an_npz_of_pixels_in_its_own_levels(tmp_path, capsys):
    """``anystep data`` applies the data set's record (npz uint8: levels 0..255), not the name's identity."""
    img = np.random.default_rng(2).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=img)
    out = tmp_path / "d.npy"
    code, err = _cli(["data", f"npz:{tmp_path / 'p.npz'}", "-n", "7", "--out", str(out)], capsys)
    assert code == 0, err
    x = np.load(out)
    assert x.shape == (7, *SHAPE) and np.isin(np.round(x), img).all()
    np.testing.assert_allclose(x, np.round(x), atol=1e-3)  # whole 8-bit levels come back


def test_reverse_writes_base_samples_in_base_units_not_the_data_levels(tmp_path, capsys):
    """``--reverse`` outputs base samples: Gaussian noise is never mapped to (and clipped at) grey levels 0..16;
    a translation map's base comes back in its base data set's units (noisy digits)."""
    clean = tmp_path / "clean.npy"
    assert _cli(["sample", str(REPO / "models/digits"), "-n", "4", "--model-units", "--out", str(clean)], capsys)[0] == 0
    for model, base_units in (("digits-teacher", None), ("digits-restore", units_for("digits-noisy", (1, 8, 8)))):
        outs = {}
        for flag in ("--units", "--model-units"):
            out = tmp_path / f"{model}{flag}.npy"
            args = ["sample", str(REPO / "models" / model), "--reverse", "--x0", str(clean), "-n", "4", flag, "--out", str(out)]
            if model == "digits-teacher":
                args += ["--solver", "euler", "--nfe", "2"]
            code, err = _cli(args, capsys)
            assert code == 0, err
            outs[flag] = np.load(out)
        if base_units is None:
            assert outs["--model-units"].min() < -0.5  # noise: negative values survive
            np.testing.assert_array_equal(outs["--units"], outs["--model-units"])
        else:
            np.testing.assert_allclose(outs["--units"], base_units.to_units(outs["--model-units"]), atol=1e-5)
