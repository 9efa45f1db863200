"""Export helpers shared by the test_export_* modules, and tests of anystep.export.common.

Model directories here are real ones (ModelConfig + build_model + save_model_dir) with
small networks whose weights are perturbed away from their initialisation, so a wrong
export cannot pass by accident (the U-Net's output layer starts at zero).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import save_model_dir
from anystep.export.common import BatchRange, ExportError, staging_dir


def make_model_dir(
    path: Path,
    kind: str = "flowmap",
    data_shape: tuple[int, ...] = (2,),
    dataset: str = "checkerboard",
    seed: int = 0,
) -> Path:
    """Write a small random model directory (MLP for vectors, U-Net for images)."""
    torch.manual_seed(seed)
    ti = 2 if kind == "flowmap" else 1
    if len(data_shape) == 3:
        bb = BackboneConfig(
            name="unet",
            data_shape=data_shape,
            time_inputs=ti,
            channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(1,),
            fourier_features=4,
        )
    else:
        bb = BackboneConfig(
            name="mlp", data_shape=data_shape, time_inputs=ti, width=32, depth=2, fourier_features=4
        )
    cfg = ModelConfig(kind=kind, backbone=bb, data_shape=data_shape, dataset=dataset)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return save_model_dir(path, model, cfg)


def leftovers(parent: Path) -> list[str]:
    """Temporary export folders left in ``parent`` (there must be none)."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Model directories: 2D flow map, 2D velocity model, 8x8 image flow map."""
    root = tmp_path_factory.mktemp("model_dirs")
    return {
        "flowmap": make_model_dir(root / "flowmap", "flowmap", (2,), seed=0),
        "velocity": make_model_dir(root / "velocity", "velocity", (2,), seed=1),
        "unet": make_model_dir(root / "unet", "flowmap", (1, 8, 8), dataset="digits", seed=2),
    }


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"min": 8, "opt": 4, "max": 16}, "does not contain the example batch"),
        ({"min": 8, "opt": 8, "max": 4}, "batch range is empty"),
        ({"min": 0, "opt": 1, "max": 4}, "--min-batch must be an integer >= 1"),
        ({"min": 1, "opt": 32, "max": 16}, "does not contain the example batch"),
    ],
)
def test_batch_range_rejects_bad_ranges(kw, fragment):
    with pytest.raises(ExportError, match=fragment):
        BatchRange(**kw)


def test_batch_range_check_sizes_cover_defaults_and_profile():
    b = BatchRange(2, 5, 40)
    sizes = b.check_sizes((1, 3, 64))
    assert sizes == sorted(set(sizes))
    assert {2, 3, 5, 40} <= set(sizes)
    assert 1 not in sizes and 64 not in sizes  # outside [2, 40]


def test_staging_dir_commits_only_on_success(tmp_path):
    final = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError), staging_dir(final) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")
    assert not final.exists()
    assert not (tmp_path / "new").exists(), "parent folders created for the export must go too"
    with staging_dir(final) as tmp:
        (tmp / "model.onnx").write_bytes(b"whole")
    assert (final / "model.onnx").read_bytes() == b"whole"
    assert leftovers(final.parent) == []


def test_staging_dir_refuses_non_empty_without_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--overwrite"), staging_dir(final):
        pass
    assert (final / "keep.txt").read_text() == "mine"
    with staging_dir(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert leftovers(tmp_path) == []
