"""Tests for anystep.core.data: samplers, loaders, registry, per-sample seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from anystep.core import data as D
from anystep.core.data import DataError

TOYS = ["checkerboard", "8gaussians", "moons", "spirals", "rings", "gaussian"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- 2D sets


@pytest.mark.parametrize("name", TOYS)
def test_2d_shape_dtype_and_determinism(name):
    ds = D.get_dataset(name)
    assert ds.kind == "2d" and ds.shape == (2,)
    a = ds.sample(500, gen(3))
    b = ds.sample(500, gen(3))
    c = ds.sample(500, gen(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert ds.sample(0, gen(0)).shape == (0, 2)


def test_sample_validates_arguments():
    ds = D.get_dataset("moons")
    with pytest.raises(DataError, match="torch.Generator"):
        ds.sample(10, 0)
    with pytest.raises(DataError, match="non-negative"):
        ds.sample(-1, gen(0))


def test_checkerboard_samples_fill_the_eight_squares_equally():
    n = 200_000
    x = D.get_dataset("checkerboard").sample(n, gen(0)).numpy()
    dens = D.checkerboard_density(x)
    assert (dens > 0).all()
    assert np.all(np.abs(x) <= 4.0)
    # square indices i, j in {-2..1}; filled iff i + j even
    i = np.floor(x[:, 0] / 2).astype(int)
    j = np.floor(x[:, 1] / 2).astype(int)
    assert np.all((i + j) % 2 == 0)
    squares, counts = np.unique(np.stack([i, j], 1), axis=0, return_counts=True)
    assert len(squares) == 8
    np.testing.assert_allclose(counts / n, 1 / 8, atol=0.005)
    # uniform within a square: quadrant of the square [0, 2)^2 hit equally
    sel = (i == 0) & (j == 0)
    frac_left = np.mean(x[sel, 0] < 1.0)
    assert abs(frac_left - 0.5) < 0.02


def test_checkerboard_density_values_and_normalisation():
    pts = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [3.0, 1.0], [5.0, 5.0], [-3.9, -3.9]])
    np.testing.assert_allclose(D.checkerboard_density(pts), [1 / 32, 1 / 32, 0, 0, 0, 1 / 32])
    # integrates to 1 (midpoint rule on a fine grid)
    h = 9.0 / 900
    c = -4.5 + (np.arange(900) + 0.5) * h
    gx, gy = np.meshgrid(c, c)
    total = D.checkerboard_density(np.stack([gx, gy], -1)).sum() * h * h
    assert abs(total - 1.0) < 1e-2
    with pytest.raises(DataError):
        D.checkerboard_density(np.zeros((4, 3)))


def test_moons_lie_on_two_half_circles():
    x = D.get_dataset("moons").sample(20_000, gen(1)).numpy()
    d0 = np.abs(np.linalg.norm(x - [-1.0, -0.2], axis=1) - 2.0)
    d1 = np.abs(np.linalg.norm(x - [1.0, 0.8], axis=1) - 2.0)
    on_0 = (d0 < 0.5) & (x[:, 1] > -0.2 - 0.6)
    on_1 = (d1 < 0.5) & (x[:, 1] < 0.8 + 0.6)
    assert np.mean(on_0 | on_1) > 0.97
    upper = x[:, 1] > 0.3  # moon 0 is the upper moon
    assert abs(np.mean(upper) - 0.5) < 0.05


def test_rings_radii_and_weights():
    x = D.get_dataset("rings").sample(40_000, gen(2)).numpy()
    r = np.linalg.norm(x, axis=1)
    radii = np.array(D.RING_RADII)
    k = np.argmin(np.abs(r[:, None] - radii[None]), axis=1)
    assert np.mean(np.abs(r - radii[k]) < 0.25) > 0.99
    np.testing.assert_allclose(np.bincount(k, minlength=4) / len(k), 0.25, atol=0.015)
    # angles uniform: mean of unit vectors ~ 0
    assert np.linalg.norm((x / r[:, None]).mean(0)) < 0.03


def test_8gaussians_centres():
    x = D.get_dataset("8gaussians").sample(40_000, gen(5)).numpy()
    ang = np.arange(8) * math.pi / 4
    centres = np.stack([np.cos(ang), np.sin(ang)], 1) * (4 / math.sqrt(2))
    dist = np.linalg.norm(x[:, None] - centres[None], axis=2)
    k = dist.argmin(1)
    np.testing.assert_allclose(np.bincount(k, minlength=8) / len(k), 1 / 8, atol=0.01)
    resid = x - centres[k]
    np.testing.assert_allclose(resid.std(0), 0.5 / math.sqrt(2), rtol=0.05)


def test_spirals_symmetric_and_bounded():
    x = D.get_dataset("spirals").sample(40_000, gen(6)).numpy()
    assert np.linalg.norm(x.mean(0)) < 0.05
    assert np.mean(np.abs(x) < 4.5) > 0.999
    r = np.linalg.norm(x, axis=1)
    assert r.max() > 2.5  # arms reach out to ~3 pi / 3


def test_gaussian_mean_cov_any_dimension():
    mean = [1.0, -2.0, 0.5]
    cov = [[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]]
    ds = D.get_dataset("gaussian", mean=mean, cov=cov)
    assert ds.shape == (3,) and ds.kind == "vector"
    x = ds.sample(200_000, gen(7)).numpy().astype(np.float64)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.03)
    # defaults and shorthands
    assert D.get_dataset("gaussian").shape == (2,)
    assert D.get_dataset("gaussian", dim=5).shape == (5,)
    np.testing.assert_allclose(np.array(D.GaussianDataset(cov=[1.0, 4.0]).cov), np.diag([1.0, 4.0]))
    with pytest.raises(DataError, match="positive definite"):
        D.get_dataset("gaussian", cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(DataError, match="2x2"):
        D.get_dataset("gaussian", mean=[0.0, 0.0], cov=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    with pytest.raises(DataError, match="mean has"):
        D.get_dataset("gaussian", mean=[0.0, 0.0], dim=3)


# --------------------------------------------------------------------------- digits


def test_digits_split_shape_and_units():
    tr = D.get_dataset("digits")
    te = D.get_dataset("digits:test")
    al = D.get_dataset("digits", split="all")
    assert tr.kind == "image" and tr.shape == (1, 8, 8)
    assert tr.tensor.shape == (1437, 1, 8, 8) and te.tensor.shape == (360, 1, 8, 8)
    assert len(al) == 1797
    for ds in (tr, te):
        t = ds.tensor
        assert t.min() >= -1 and t.max() <= 1 and t.min() == -1 and t.max() == 1
    # the two splits partition the full set (per-class counts add up)
    counts = torch.bincount(tr.labels, minlength=10) + torch.bincount(te.labels, minlength=10)
    assert torch.equal(counts, torch.bincount(al.labels, minlength=10))
    assert set(tr.labels.tolist()) == set(range(10))
    # deterministic split
    assert torch.equal(D.DigitsDataset("train").tensor, tr.tensor)

    x = tr.sample(64, gen(0))
    assert x.shape == (64, 1, 8, 8)
    assert torch.equal(x, tr.sample(64, gen(0)))
    # every sampled row is a row of the split
    flat = tr.tensor.reshape(len(tr), -1)
    assert all((flat == row).all(1).any() for row in x.reshape(64, -1))

    g = tr.to_units(x)
    assert g.shape == (64, 8, 8)
    assert g.min() >= 0 and g.max() <= 16
    np.testing.assert_allclose(g, np.round(g))  # data rows are integer grey levels
    torch.testing.assert_close(tr.from_units(g), x)
    clipped = tr.to_units(torch.full((2, 1, 8, 8), 3.0))
    assert np.all(clipped == 16)
    with pytest.raises(DataError, match=r"\[n, 1, 8, 8\]"):
        tr.to_units(np.zeros((2, 64)))


# --------------------------------------------------------------------------- image folder


def test_image_folder_loader(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((6, 6), 255, np.uint8)).save(tmp_path / "a" / "white.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "b" / "black.png")
    grad = np.tile(np.arange(0, 240, 60, dtype=np.uint8), (4, 1))
    Image.fromarray(grad).save(tmp_path / "b" / "grad.png")
    (tmp_path / "notes.txt").write_text("not an image")

    ds = D.ImageFolderDataset(tmp_path, 4)
    assert ds.mode == "L" and ds.shape == (1, 4, 4) and ds.kind == "image"
    t = ds.tensor
    assert t.shape == (3, 1, 4, 4)
    # sorted files: a/white.png, b/black.png, b/grad.png
    assert torch.allclose(t[0], torch.ones(1, 4, 4))
    assert torch.allclose(t[1], -torch.ones(1, 4, 4))
    torch.testing.assert_close(t[2, 0, 0], torch.tensor([0, 60, 120, 180]) / 127.5 - 1)
    assert ds.labels.tolist() == [0, 1, 1] and ds.classes == ("a", "b")
    units = ds.to_units(t)
    assert units.shape == (3, 4, 4)
    np.testing.assert_allclose(units[2], grad, atol=1e-4)
    torch.testing.assert_close(ds.from_units(units), t)
    assert ds.sample(5, gen(0)).shape == (5, 1, 4, 4)


def test_image_folder_rgb_channel_order_and_errors(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "grey.jpg")
    ds = D.get_dataset(f"folder:{tmp_path}", size=(4, 2))
    assert ds.mode == "RGB" and ds.shape == (3, 4, 2)
    t = ds.tensor  # sorted: grey.jpg, red.png
    assert torch.allclose(t[1, 0], torch.ones(4, 2)) and torch.allclose(
        t[1, 1:], -torch.ones(2, 4, 2)
    )
    assert ds.labels.tolist() == [-1, -1]
    assert ds.to_units(t).shape == (2, 4, 2, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .png"):
        D.ImageFolderDataset(empty, 4)
    with pytest.raises(DataError, match="not a directory"):
        D.ImageFolderDataset(tmp_path / "missing", 4)


# --------------------------------------------------------------------------- npz


def test_npz_loader_float_uint8_and_errors(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    y = np.arange(10)
    np.savez(tmp_path / "f.npz", x=x, y=y)
    ds = D.get_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert ds.shape == (3,) and ds.kind == "vector"
    np.testing.assert_array_equal(ds.tensor.numpy(), x)
    assert ds.labels.tolist() == list(range(10))
    np.testing.assert_array_equal(ds.to_units(ds.tensor), x)

    img = np.random.default_rng(1).integers(0, 256, (4, 1, 2, 2), dtype=np.uint8)
    np.savez(tmp_path / "u.npz", pixels=img)
    du = D.NpzDataset(tmp_path / "u.npz", key="pixels")
    assert du.shape == (1, 2, 2) and du.kind == "image"
    assert du.tensor.min() >= -1 and du.tensor.max() <= 1
    np.testing.assert_allclose(du.to_units(du.tensor), img, atol=1e-4)
    torch.testing.assert_close(du.from_units(img.astype(np.float32)), du.tensor)
    assert (du.labels == -1).all()

    with pytest.raises(DataError, match="holds"):
        D.NpzDataset(tmp_path / "f.npz", key="nope")
    with pytest.raises(DataError, match="not found"):
        D.NpzDataset(tmp_path / "missing.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        D.NpzDataset(tmp_path / "obj.npz")


# --------------------------------------------------------------------------- CIFAR-10 binary


def _write_cifar_batch(path, labels, offset):
    recs = []
    for k, lab in enumerate(labels):
        pix = (np.arange(3072) + offset + k) % 256
        recs.append(np.concatenate([[lab], pix]).astype(np.uint8))
    np.concatenate(recs).tofile(path)


def test_cifar10_binary_loader(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}.bin", [i, (i + 3) % 10], offset=10 * i)
    _write_cifar_batch(folder / "test_batch.bin", [9, 0], offset=7)

    ds = D.get_dataset(f"cifar10:{tmp_path}")
    assert ds.shape == (3, 32, 32) and ds.kind == "image"
    assert ds.labels.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8]
    t = ds.tensor
    assert t.shape == (10, 3, 32, 32)
    # pixel order: byte 1 + c*1024 + h*32 + w  ->  [c, h, w]
    raw = torch.round((t + 1) * 127.5).to(torch.int64)
    c, h, w = 2, 5, 17
    assert raw[0, c, h, w].item() == (c * 1024 + h * 32 + w + 10) % 256
    assert raw[1, 0, 0, 1].item() == (1 + 10 + 1) % 256
    assert raw[9, 1, 31, 31].item() == (1024 + 31 * 32 + 31 + 50 + 1) % 256
    units = ds.to_units(t[:1])
    assert units.shape == (1, 32, 32, 3)
    assert units[0, h, w, c] == pytest.approx((c * 1024 + h * 32 + w + 10) % 256, abs=1e-3)

    te = D.Cifar10Dataset(folder, train=False)  # root may be the batches folder itself
    assert te.labels.tolist() == [9, 0] and len(te) == 2


def test_cifar10_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError) as err:
        D.Cifar10Dataset(tmp_path)
    msg = str(err.value)
    assert (
        "cifar-10-batches-bin" in msg
        and "data_batch_1.bin" in msg
        and "cifar-10-binary.tar.gz" in msg
    )
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    np.zeros(100, np.uint8).tofile(folder / "test_batch.bin")
    with pytest.raises(DataError, match="3073"):
        D.Cifar10Dataset(tmp_path, train=False)


# --------------------------------------------------------------------------- registry, base, seeds


def test_registry_and_describe_roundtrip():
    names = D.list_datasets()
    for n in (
        "checkerboard",
        "8gaussians",
        "moons",
        "spirals",
        "rings",
        "gaussian",
        "digits",
        "folder",
        "npz",
        "cifar10",
    ):
        assert n in names
    with pytest.raises(DataError) as err:
        D.get_dataset("nonsense")
    assert "checkerboard" in str(err.value) and "cifar10" in str(err.value)
    with pytest.raises(DataError, match="unknown argument"):
        D.get_dataset("moons", noise=0.3)
    with pytest.raises(DataError, match="no ':' argument"):
        D.get_dataset("moons:x")
    with pytest.raises(DataError, match="needs argument"):
        D.get_dataset("folder")
    ds = D.get_dataset("gaussian", mean=[1.0, 2.0], cov=[[2.0, 0.0], [0.0, 1.0]])
    spec = ds.describe()
    assert D.get_dataset(spec["name"], **spec["kwargs"]) == ds
    assert D.get_dataset(name="digits:test").describe() == {
        "name": "digits",
        "kwargs": {"split": "test"},
    }


def test_base_sample():
    g = gen(11)
    x = D.base_sample("gaussian", (1, 8, 8), 6, g)
    assert x.shape == (6, 1, 8, 8)
    torch.testing.assert_close(x, torch.randn((6, 1, 8, 8), generator=gen(11)))
    cb = D.base_sample("checkerboard", (2,), 50, gen(1))
    torch.testing.assert_close(cb, D.get_dataset("checkerboard").sample(50, gen(1)))
    with pytest.raises(DataError, match="sample shape"):
        D.base_sample("moons", (3,), 5, gen(0))
    assert D.base_sample(D.get_dataset("rings"), [2], 4, gen(0)).shape == (4, 2)
