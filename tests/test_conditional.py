"""Class-conditional backbones, flow-map wrapper, guided velocity and labelled data sets (issue 15)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.data import DataError, get_dataset
from anystep.core.flowmap import (
    Conditioned,
    GuidedVelocity,
    build_model,
    guided_velocity,
    load_state_allowing_new_conditioning,
)
from anystep.core.modeldir import load_model_dir, read_config, save_model_dir

REPO = Path(__file__).resolve().parents[1]
BUNDLED = ("checkerboard", "checkerboard-teacher", "digits", "digits-teacher")


def _cfg(name: str, kind: str = "flowmap", num_classes: int = 3, guidance_input: bool = True) -> ModelConfig:
    shape = (2,) if name == "mlp" else (1, 8, 8)
    bb = BackboneConfig(name=name, data_shape=shape, time_inputs=2 if kind == "flowmap" else 1,
                        width=32, depth=2, channels=8, channel_mult=(1, 2))
    return ModelConfig(kind=kind, backbone=bb, data_shape=shape, num_classes=num_classes,
                       guidance_input=guidance_input and kind == "flowmap", ansatz="residual")


def _perturb(model: torch.nn.Module) -> None:
    """Give the (zero-initialised) conditioning embeddings non-zero weights."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".cond." in f".{name}" or "conv_out" in name:  # the U-Net's output conv starts at 0 too
                p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_stay_unconditional(name):
    """Bundled config.json files load without the new keys and re-serialise without them."""
    path = REPO / "models" / name
    lm = load_model_dir(path)
    assert lm.config.num_classes == 0 and lm.config.guidance_input is False
    assert getattr(lm.model.backbone, "cond", None) is None
    d = lm.config.to_dict()
    assert "num_classes" not in d and "guidance_input" not in d
    on_disk = json.loads((path / "config.json").read_text())
    assert "num_classes" not in on_disk


@pytest.mark.parametrize("name", ("digits", "checkerboard-teacher"))
def test_conditional_twin_of_bundled_model_is_bit_identical_at_init(name):
    """A conditional model loaded with unconditional weights computes the same function (zero embeddings)."""
    lm = load_model_dir(REPO / "models" / name)
    cfg = dataclasses.replace(lm.config, num_classes=10, guidance_input=lm.config.kind == "flowmap")
    twin = build_model(cfg).eval()
    new = load_state_allowing_new_conditioning(twin, lm.model.state_dict())
    assert new and all(".cond." in f".{k}" for k in new)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, *lm.config.data_shape, generator=g)
    s, t = torch.rand(6, generator=g), torch.rand(6, generator=g)
    y = torch.tensor([0, 3, 9, 10, 5, 1])
    with torch.no_grad():
        if lm.config.kind == "flowmap":
            ref = lm.model(x, s, t)
            out = twin(x, s, t, y=y, w=torch.linspace(0, 5, 6))
        else:
            ref = lm.model(x, t)
            out = twin(x, t, y=y)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", ("mlp", "unet"))
def test_labels_and_scales_change_the_output(name):
    model = build_model(_cfg(name)).eval()
    _perturb(model)
    x = torch.randn(4, *model.backbone.data_shape)
    s, t = torch.zeros(4), torch.ones(4)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    w1, w2 = torch.ones(4), torch.full((4,), 2.0)
    with torch.no_grad():
        a, b, c = model(x, s, t, y=y0, w=w1), model(x, s, t, y=y1, w=w1), model(x, s, t, y=y0, w=w2)
        ident = model(x, t, t, y=y0, w=w1)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    assert torch.equal(ident, x)  # X_{t,t} = id for every label and scale


@pytest.mark.parametrize("name", ("mlp", "unet"))
def test_per_sample_conditioning_is_batch_independent(name):
    """Row i depends only on (x_i, s_i, t_i, y_i, w_i): a mixed batch equals the rows run alone."""
    model = build_model(_cfg(name)).eval()
    _perturb(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, *model.backbone.data_shape, generator=g)
    s, t = torch.rand(5, generator=g) * 0.5, 0.5 + torch.rand(5, generator=g) * 0.5
    y, w = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1.0, 2.0, 0.5, 3.0, 4.0])
    with torch.no_grad():
        batch = model(x, s, t, y=y, w=w)
        rows = torch.cat([model(x[i : i + 1], s[i : i + 1], t[i : i + 1], y=y[i : i + 1], w=w[i : i + 1])
                          for i in range(5)])
    assert torch.allclose(batch, rows, atol=1e-5)


def test_conditioning_errors_say_what_to_do():
    cond = build_model(_cfg("mlp")).eval()
    uncond = build_model(_cfg("mlp", num_classes=0, guidance_input=False)).eval()
    x, s, t = torch.randn(2, 2), torch.zeros(2), torch.ones(2)
    y, w = torch.tensor([0, 1]), torch.ones(2)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, s, t, y=y)
    with pytest.raises(ValueError, match="0..2"):
        cond(x, s, t, y=torch.tensor([0, 4]), w=w)
    with pytest.raises(ValueError, match="guidance scale"):
        cond(x, s, t, y=y)
    with pytest.raises(ValueError, match="integer"):
        cond(x, s, t, y=torch.tensor([0.0, 1.0]), w=w)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        cond(x, s, t, y=y, w=torch.ones(3))
    with pytest.raises(ConfigError, match="guidance_input"):
        _cfg("mlp", kind="velocity", num_classes=0, guidance_input=False).__class__(
            kind="velocity", backbone=BackboneConfig(time_inputs=1), guidance_input=True, num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        dataclasses.replace(_cfg("mlp"), num_classes=-1)


def test_null_class_is_the_default_label():
    model = build_model(_cfg("mlp")).eval()
    _perturb(model)
    x, s, t, w = torch.randn(3, 2), torch.zeros(3), torch.ones(3), torch.ones(3)
    with torch.no_grad():
        assert torch.equal(model(x, s, t, w=w), model(x, s, t, y=torch.full((3,), 3), w=w))


def test_guided_velocity_is_cfg_combination():
    vel = build_model(_cfg("mlp", kind="velocity")).eval()
    _perturb(vel)
    x, t = torch.randn(4, 2), torch.rand(4)
    y = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([0.0, 1.0, 2.5, -1.0])
    with torch.no_grad():
        b_y, b_null = vel(x, t, y), vel(x, t, torch.full((4,), 3))
        want = b_null + w[:, None] * (b_y - b_null)
        got = guided_velocity(vel, x, t, y, w, null_class=3)
        wrapped = GuidedVelocity(vel, y, w, null_class=3)(x, t)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(wrapped, want, atol=1e-6)
    assert torch.allclose(got[1], b_y[1], atol=1e-6) and torch.allclose(got[0], b_null[0], atol=1e-6)


def test_conditioned_binds_labels_for_unconditional_call_sites():
    model = build_model(_cfg("unet")).eval()
    _perturb(model)
    x = torch.randn(2, 1, 8, 8)
    y, w = torch.tensor([1, 2]), torch.tensor([1.5, 2.5])
    bound = Conditioned(model, y, w)
    assert bound.kind == "flowmap"
    with torch.no_grad():
        assert torch.equal(bound(x, 0.0, 1.0), model(x, 0.0, 1.0, y=y, w=w))
        assert torch.equal(bound.velocity(x, 0.3), model.velocity(x, 0.3, y, w))


def test_conditional_model_dir_round_trip(tmp_path):
    model = build_model(_cfg("unet")).eval()
    _perturb(model)
    cfg = _cfg("unet")
    save_model_dir(tmp_path / "m", model, cfg)
    on_disk = json.loads((tmp_path / "m" / "config.json").read_text())
    assert on_disk["num_classes"] == 3 and on_disk["guidance_input"] is True
    assert read_config(tmp_path / "m").num_classes == 3
    lm = load_model_dir(tmp_path / "m")
    x = torch.randn(2, 1, 8, 8)
    y, w = torch.tensor([0, 2]), torch.ones(2)
    with torch.no_grad():
        assert torch.equal(lm.model(x, 0.0, 1.0, y=y, w=w), model(x, 0.0, 1.0, y=y, w=w))


def test_warm_start_refuses_other_missing_keys():
    model = build_model(_cfg("mlp"))
    state = {k: v for k, v in model.state_dict().items() if ".cond." not in k}
    state.pop("backbone.net.0.weight")
    with pytest.raises(ValueError, match="missing"):
        load_state_allowing_new_conditioning(model, state)


# -- labelled data sets ---------------------------------------------------------------------


def test_digits_yield_labels_matching_samples():
    ds = get_dataset("digits")
    assert ds.num_classes == 10
    a = ds.sample_labelled(64, torch.Generator().manual_seed(5))
    b = ds.sample(64, torch.Generator().manual_seed(5))
    assert torch.equal(a.x, b) and a.y.dtype == torch.int64
    # labels are the rows' own labels: each sample equals some training row of its class
    rows, labels = ds.tensor, ds.labels
    for i in range(8):
        match = (rows == a.x[i]).flatten(1).all(1)
        assert bool((labels[match] == a.y[i]).all())


def test_blobs_labels_and_means():
    ds = get_dataset("blobs", classes=4, radius=2.0, sigma=0.1)
    s = ds.sample_labelled(4000, torch.Generator().manual_seed(0))
    for k in range(4):
        m = s.x[s.y == k].mean(0)
        assert torch.allclose(m, ds.means()[k], atol=0.02)
    assert torch.equal(ds.sample(10, torch.Generator().manual_seed(1)),
                       ds.sample_labelled(10, torch.Generator().manual_seed(1)).x)


def test_unlabelled_sets_refuse_labelled_sampling(tmp_path):
    with pytest.raises(DataError, match="no class labels"):
        get_dataset("checkerboard").sample_labelled(4, torch.Generator())
    assert get_dataset("checkerboard").num_classes == 0
    pil = pytest.importorskip("PIL.Image")
    for sub in ("cat", "dog"):
        (tmp_path / sub).mkdir()
        pil.new("L", (4, 4), color=10 if sub == "cat" else 200).save(tmp_path / sub / "a.png")
    ds = get_dataset(f"folder:{tmp_path}", size=4)
    assert ds.num_classes == 2
    s = ds.sample_labelled(16, torch.Generator().manual_seed(0))
    assert torch.equal(s.x.mean((1, 2, 3)) > 0, s.y == 1)  # dog images are the bright ones
    pil.new("L", (4, 4)).save(tmp_path / "loose.png")
    mixed = get_dataset(f"folder:{tmp_path}", size=4)
    with pytest.raises(DataError, match="unlabelled"):
        mixed.sample_labelled(2, torch.Generator())


def test_noisy_digits_pairs_are_degraded_copies():
    ds = get_dataset("digits-noisy", noise=0.5)
    p = ds.sample_pair(512, torch.Generator().manual_seed(0))
    clean = get_dataset("digits").sample_labelled(512, torch.Generator().manual_seed(0))
    assert torch.equal(p.x1, clean.x) and torch.equal(p.y, clean.y)  # same rows as the clean set draws
    assert abs(float((p.x0 - p.x1).std()) - 0.5) < 0.02
    assert ds.describe() == {"name": "digits-noisy", "kwargs": {"split": "train", "noise": 0.5}}
    with pytest.raises(DataError, match="noise"):
        get_dataset("digits-noisy", noise=0)


# -- request-level conditioning (CLI / API / server) -----------------------------------------


def test_any_class_is_a_function_of_the_seed():
    from anystep.core.conditioning import classes_from_seeds

    a = classes_from_seeds(range(4000), 10)
    b = classes_from_seeds(range(17, 20), 10)
    assert torch.equal(a[17:20], b)  # batch-invariant
    counts = torch.bincount(a, minlength=10)
    assert int(counts.min()) > 320 and int(counts.max()) < 480  # ~uniform over the classes


def test_resolve_conditioning_errors_and_defaults():
    from anystep.core.conditioning import ConditioningError, resolve_conditioning

    cfg = dataclasses.replace(_cfg("mlp"), provenance={"objective_hparams": {"guidance_min": 1.0, "guidance_max": 3.0}})
    c = resolve_conditioning(cfg, [5, 6, 7], classes=[0, 1, 2], guidance=2.0)
    assert c.y.tolist() == [0, 1, 2] and c.w.tolist() == [2.0, 2.0, 2.0]
    assert resolve_conditioning(cfg, [5, 6, 7]).w.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConditioningError, match="0..2"):
        resolve_conditioning(cfg, [0], classes=3)
    with pytest.raises(ConditioningError, match="1..3"):
        resolve_conditioning(cfg, [0], guidance=5)
    with pytest.raises(ConditioningError, match="one per sample"):
        resolve_conditioning(cfg, [0, 1, 2], classes=[1, 2])
    uncond = _cfg("mlp", num_classes=0, guidance_input=False)
    with pytest.raises(ConditioningError, match="unconditional"):
        resolve_conditioning(uncond, [0], guidance=2)
    vel = _cfg("mlp", kind="velocity")
    assert resolve_conditioning(vel, [0, 1], classes=1, guidance=2).guided_teacher
    assert not resolve_conditioning(vel, [0, 1], classes=1).guided_teacher


def test_generate_with_class_and_guidance(tmp_path):
    from anystep.core.api import generate

    model = build_model(_cfg("mlp")).eval()
    _perturb(model)
    save_model_dir(tmp_path / "m", model, _cfg("mlp"))
    a = generate(tmp_path / "m", n=3, seed=4, classes=[0, 1, 2], guidance=[1.0, 2.0, 3.0])
    b = generate(tmp_path / "m", n=1, seed=5, classes=1, guidance=2.0)  # sample 1 alone: same result
    assert torch.allclose(a.x[1:2], b.x, atol=1e-6)
    vel = build_model(_cfg("mlp", kind="velocity")).eval()
    _perturb(vel)
    save_model_dir(tmp_path / "v", vel, _cfg("mlp", kind="velocity"))
    g = generate(tmp_path / "v", n=2, classes=0, guidance=2.0, solver="euler", steps=4)
    assert g.nfe == 8 and "guided" in g.method
