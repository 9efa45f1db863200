"""A data set's units are anystep.core.units' record: the same map a served model applies."""

import numpy as np
import pytest
import torch
from PIL import Image

from anystep.core.data import DataError, get_dataset
from anystep.core.units import units_for


def _image_sets(tmp_path):
    (tmp_path / "grey" / "a").mkdir(parents=True)
    (tmp_path / "rgb").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / "grey" / "a" / "x.png")
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "rgb" / "x.png")
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([[3], rng.integers(0, 256, 3072)]).astype(np.uint8)
        rec.tofile(folder / f)
    return [
        get_dataset(f"folder:{tmp_path / 'grey'}", size=4),
        get_dataset(f"folder:{tmp_path / 'rgb'}", size=(4, 2)),
        get_dataset(f"cifar10:{tmp_path}"),
    ]


def test_every_data_set_uses_the_served_units_record(tmp_path):
    pytest.importorskip("sklearn")
    sets = [get_dataset(n) for n in ("checkerboard", "blobs", "digits", "digits-noisy")]
    sets += [get_dataset("gaussian", dim=3)] + _image_sets(tmp_path)
    want = {"checkerboard": "identity", "blobs": "identity", "gaussian": "identity",
            "digits": "digits-grey-levels", "digits-noisy": "digits-grey-levels"}
    for ds in sets:
        assert ds.units == units_for(ds.name, ds.shape)
        assert ds.units.name == want.get(ds.name, "uint8-levels")
        x = torch.randn(6, *ds.shape) * 1.5  # outside [-1, 1] too: clipped where the units clip
        np.testing.assert_array_equal(ds.to_units(x), units_for(ds.name, ds.shape).to_units(x.numpy()))
    clipped = get_dataset("digits").to_units(torch.full((1, 1, 8, 8), 3.0))
    unclipped = get_dataset("digits-noisy").to_units(torch.full((1, 1, 8, 8), 3.0))
    assert clipped.max() == 16.0 and unclipped.max() == 32.0


def test_uint8_levels_round_trip_and_one_channel_layouts(tmp_path):
    grey, rgb, cifar = _image_sets(tmp_path)
    for ds, shape in ((grey, (4, 4)), (rgb, (4, 2, 3)), (cifar, (32, 32, 3))):
        levels = ds.to_units(ds.tensor)
        assert levels.shape == (len(ds), *shape) and levels.min() >= 0 and levels.max() <= 255
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # 8-bit pixels come back whole
        torch.testing.assert_close(ds.from_units(levels), ds.tensor)
    # one channel: [n, H, W] and [n, H, W, 1] levels are both accepted
    lv = grey.to_units(grey.tensor)
    assert torch.equal(grey.from_units(lv[..., None]), grey.from_units(lv))
    with pytest.raises(DataError, match=r"\[n, 4, 2, 3\]"):
        rgb.from_units(np.zeros((1, 4, 2)))


def test_npz_units_follow_the_stored_dtype(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (3, 2, 3, 4), dtype=np.uint8)
    np.savez(tmp_path / "u.npz", x=img)
    np.savez(tmp_path / "f.npz", x=img.astype(np.float32))
    du, df = get_dataset(f"npz:{tmp_path / 'u.npz'}"), get_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert du.units.name == "uint8-levels" and du.units.layout == "same" and df.units.identity
    np.testing.assert_allclose(du.to_units(du.tensor), img, atol=1e-4)
    np.testing.assert_array_equal(df.to_units(df.tensor), img.astype(np.float32))


def test_from_units_returns_a_new_tensor_and_names_the_set():
    ds = get_dataset("checkerboard")
    arr = np.zeros((3, 2), np.float32)
    t = ds.from_units(arr)
    arr[0, 0] = 5.0
    assert t[0, 0] == 0.0 and t.dtype == torch.float32
    with pytest.raises(DataError, match=r"checkerboard\.from_units .*\[n, 2\]"):
        ds.from_units(np.zeros((3, 5)))
