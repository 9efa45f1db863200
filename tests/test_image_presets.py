"""CIFAR-10 / ImageNet-32 presets (paper Table 4), their smoke run, and offline Inception FID."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from anystep.benchmarks import fid as fid_mod
from anystep.core.config import ConfigError
from anystep.training.config import validate_config
from anystep.training.presets_images import (
    TABLE4,
    cifar10_preset,
    image_presets,
    imagenet32_preset,
    main,
    run_smoke,
    smoke_config,
    write_synthetic_images,
)

# ------------------------------------------------------------------ presets


def test_every_image_preset_follows_table4():
    names = [n for n, _, _ in image_presets()]
    assert {"cifar10-velocity", "cifar10-lmd", "cifar10-emd", "cifar10-pfmm", "imagenet32-fmm4"} <= set(names)
    for name, desc, build in image_presets():
        cfg = build()
        bb = cfg.model.backbone
        assert cfg.preset == name and desc
        assert bb.name == "unet" and bb.channels == 256 and bb.channel_mult == (1, 2, 2, 2)
        assert cfg.model.data_shape == (3, 32, 32) == bb.data_shape
        assert cfg.lr == pytest.approx(1e-4) and cfg.batch_size == 256
        assert cfg.lr_schedule == "step" and cfg.lr_decay_every == 1000 and cfg.lr_decay_rate == pytest.approx(0.992)
        assert bb.time_inputs == (1 if cfg.model.kind == "velocity" else 2)
        data = name.split("-")[0]
        assert cfg.dataset.startswith("cifar10:" if data == "cifar10" else "folder:")


@pytest.mark.parametrize(
    "name, steps",
    [("cifar10-lmd", 150_000), ("cifar10-emd", 120_000), ("cifar10-pfmm", 130_000),
     ("imagenet32-lmd", 250_000), ("imagenet32-emd", 250_000), ("imagenet32-fmm4", 100_000)],
)
def test_table4_training_steps(name, steps):
    build = {n: b for n, _, b in image_presets()}[name]
    assert build().max_steps == steps == TABLE4["steps"][name.split("-")[0]][name.split("-")[1].replace("fmm4", "fmm")]


def test_objectives_and_teachers_of_presets():
    assert cifar10_preset("fmm4").objective_hparams == {"window": 4}
    assert cifar10_preset("pfmm").objective == "pfmm"
    assert cifar10_preset("velocity").model.kind == "velocity"
    assert imagenet32_preset("lmd").dataset_kwargs == {"size": 32, "mode": "RGB"}


def test_root_is_configurable_and_missing_data_is_a_clear_error(tmp_path):
    cfg = cifar10_preset("velocity", root=str(tmp_path / "nowhere"))
    assert cfg.dataset == f"cifar10:{tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match="cifar-10"):
        validate_config(cfg)


def test_unknown_objectives_are_rejected():
    with pytest.raises(ConfigError, match="Table 4"):
        imagenet32_preset("pfmm")
    with pytest.raises(ConfigError, match="unknown image objective"):
        cifar10_preset("sgd")


def test_main_requires_smoke(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cifar10-velocity", "--out", "x"])
    assert exc.value.code == 2
    assert "--smoke" in capsys.readouterr().err


# ------------------------------------------------------------------ data + smoke runs


def test_synthetic_images_load_as_a_folder_dataset(tmp_path):
    from anystep.core.data import get_dataset

    root = write_synthetic_images(tmp_path / "imgs", n=12)
    ds = get_dataset(f"folder:{root}", size=32, mode="RGB")
    assert ds.shape == (3, 32, 32) and len(ds) == 12
    x = ds.tensor
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05


def _write_fake_cifar_bin(root, per_file=4):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate(
            [rng.integers(0, 10, (per_file, 1)), rng.integers(0, 256, (per_file, 3072))], axis=1
        ).astype(np.uint8)
        rec.tofile(folder / name)
    return root


def test_cifar10_binary_root_trains_a_step(tmp_path, one_torch_thread):
    from anystep.core.modeldir import load_model_dir
    from anystep.training.trainer import Trainer

    root = _write_fake_cifar_bin(tmp_path / "cifar")
    base = cifar10_preset("velocity", root=str(root))
    cfg = smoke_config(base, tmp_path, steps=1, batch_size=2, channels=16)
    cfg = cfg.replace(dataset=f"cifar10:{root}", dataset_kwargs={})
    res = Trainer(cfg, tmp_path / "run", eval_fn=None, progress=False).fit()
    assert res.completed and res.steps == 1 and np.isfinite(res.final_loss)
    lm = load_model_dir(tmp_path / "run")
    assert lm.config.dataset == f"cifar10:{root}" and lm.config.backbone.channel_mult == (1, 2, 2, 2)


@pytest.mark.parametrize(
    "name", ["cifar10-velocity", pytest.param("cifar10-pfmm", marks=pytest.mark.slow)]
)
def test_smoke_run_on_synthetic_pngs(tmp_path, name, one_torch_thread):
    from anystep.core.modeldir import load_model_dir
    from anystep.core.samplers import sample_flowmap

    res = run_smoke(name, tmp_path / "run", steps=2, batch_size=2, channels=16)
    assert res.completed and res.steps == 2 and np.isfinite(res.final_loss)
    lm = load_model_dir(tmp_path / "run")
    assert lm.config.provenance["preset"] == name
    assert lm.config.backbone.channel_mult == (1, 2, 2, 2) and lm.config.backbone.attention_levels == (1,)
    if lm.config.kind == "flowmap":
        x = sample_flowmap(lm.model, torch.randn(2, 3, 32, 32), steps=1).x
        assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


@pytest.mark.slow
def test_smoke_run_with_the_full_table4_unet(tmp_path, one_torch_thread):
    res = run_smoke("cifar10-lmd", tmp_path / "run", steps=1, batch_size=2)
    assert res.completed and np.isfinite(res.final_loss)


# ------------------------------------------------------------------ Inception FID (offline only)


@pytest.fixture
def no_fid_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(fid_mod.ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_download(*a, **k):  # any download attempt fails the test
        raise AssertionError("FID code tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def test_missing_weights_message_names_paths_and_remedy(no_fid_weights):
    with pytest.raises(fid_mod.FIDUnavailableError) as exc:
        fid_mod.find_inception_weights()
    msg = str(exc.value)
    assert "never downloaded" in msg and fid_mod.ENV_VAR in msg
    assert str(no_fid_weights / fid_mod.WEIGHT_FILES["torch-fidelity"]) in msg
    assert str(no_fid_weights / fid_mod.WEIGHT_FILES["pytorch-fid"]) in msg
    with pytest.raises(fid_mod.FIDUnavailableError, match="not present locally"):
        fid_mod.InceptionFID()
    assert fid_mod.fid_status().startswith("unavailable:")


def test_weights_found_in_env_var_or_hub_cache(no_fid_weights, tmp_path, monkeypatch):
    no_fid_weights.mkdir(parents=True)
    cached = no_fid_weights / fid_mod.WEIGHT_FILES["pytorch-fid"]
    cached.write_bytes(b"not really weights")
    w = fid_mod.find_inception_weights()
    assert w.backend == "pytorch-fid" and w.path == cached
    env_file = tmp_path / fid_mod.WEIGHT_FILES["torch-fidelity"]
    env_file.write_bytes(b"x")
    monkeypatch.setenv(fid_mod.ENV_VAR, str(env_file))
    w = fid_mod.find_inception_weights()
    assert w.backend == "torch-fidelity" and w.path == env_file
    with pytest.raises(ValueError, match="unknown FID backend"):
        fid_mod.find_inception_weights("inception-tf")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
def test_weights_without_package_says_what_to_install(no_fid_weights, tmp_path, monkeypatch):
    env_file = tmp_path / fid_mod.WEIGHT_FILES["torch-fidelity"]
    env_file.write_bytes(b"x")
    monkeypatch.setenv(fid_mod.ENV_VAR, str(env_file))
    with pytest.raises(fid_mod.FIDUnavailableError, match="pip install torch-fidelity"):
        fid_mod.InceptionFID()
    assert "not installed" in fid_mod.fid_status()


def test_image_presets_are_listed_by_anystep_train():
    from click.testing import CliRunner

    from anystep.training.cli import train
    from anystep.training.presets import PRESETS

    names = [n for n, _, _ in image_presets()]
    if not any(n in PRESETS for n in names):
        pytest.skip("image presets not registered in anystep.training.presets yet (see presets_images docstring)")
    assert all(n in PRESETS for n in names)
    help_text = CliRunner().invoke(train, ["--help"]).output
    for n in names:
        assert n in help_text
    assert PRESETS["cifar10-lmd"].build().max_steps == 150_000
