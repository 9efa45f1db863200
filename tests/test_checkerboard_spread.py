"""The KL spread study (benchmarks/checkerboard_spread.py): draws, ratios on the same draw, CLI errors."""

from __future__ import annotations

import statistics

import pytest
import torch

from anystep.benchmarks.checkerboard_spread import _markdown, main, spread
from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import save_model_dir


def _model_dir(path, kind: str):
    torch.manual_seed(0)
    b = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1 if kind == "velocity" else 2, width=16, depth=1,
                       fourier_features=4)
    cfg = ModelConfig(kind=kind, backbone=b, data_shape=(2,))
    return save_model_dir(path, build_model(cfg), cfg)


def test_spread_scores_every_draw_and_divides_by_the_teacher_on_the_same_draw(tmp_path):
    teacher = _model_dir(tmp_path / "teacher", "velocity")
    run = _model_dir(tmp_path / "map", "flowmap")
    res = spread([run], draws=2, steps=[1, 2], log=lambda m: None, teacher_dir=teacher, n_samples=3000)
    assert res["seeds"][0] == 10_000 and len(res["seeds"]) == 3 and len(set(res["seeds"])) == 3
    name = run.as_posix()
    for k in ("1", "2"):
        kls, rat = res["runs"][name][k], res["ratios"][name][k]
        assert len(kls) == 3 and len(set(kls)) == 3  # other base points, other estimates
        assert rat == pytest.approx([a / b for a, b in zip(kls, res["teacher"])])
    assert statistics.stdev(res["teacher"]) > 0
    res.update({"machine": "test", "date": "now", "command": "cmd", "seconds": 1.0})
    md = _markdown(res)
    assert "teacher (dopri5)" in md and f"`{name}` | 2 |" in md


def test_cli_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--draws", "0"]) == 2
    assert "--draws 0" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no model in" in err and "nothing" in err and len(err.splitlines()) == 1
