"""The checkerboard ablation runner: each variant changes exactly the factor it names."""

from __future__ import annotations

import json

import pytest

from anystep.benchmarks import checkerboard_ablations as AB
from anystep.benchmarks.checkerboard import METHODS, Settings, build_train_config


@pytest.mark.parametrize("name", list(AB.VARIANTS))
def test_variant_changes_only_its_factor(name, tmp_path):
    v = AB.VARIANTS[name]
    settings = Settings()
    base = build_train_config(METHODS[v.method], settings, tmp_path).to_dict()
    cfg = AB._train_config(v, settings, tmp_path).to_dict()
    diff = {k for k in set(base) | set(cfg) if base.get(k) != cfg.get(k)}
    expected = set()
    if v.hparams:
        expected.add("objective_hparams")
        for k, val in v.hparams.items():
            assert cfg["objective_hparams"][k] == val
    if v.steps is not None:
        expected.add("max_steps")
        assert cfg["max_steps"] == v.steps
    if v.lr is not None:
        expected.add("lr")
        assert cfg["lr"] == v.lr
    if v.init_from is not None:
        expected.add("init_from")
        assert cfg["init_from"] == (str(tmp_path / v.init_from) if v.init_from else None)
    for s in v.sets:
        key, _, val = s.partition("=")
        expected.add(key)
        assert cfg[key] == json.loads(val)
    assert diff == expected
    if v.baseline:
        assert cfg == base  # the baseline reuses the benchmark's own run


def test_cli_lists_and_rejects_unknown_variants(capsys):
    assert AB.main(["--list"]) == 0
    assert "ayf_lmd_unit" in capsys.readouterr().out
    assert AB.main(["--only", "nope"]) == 2
    assert "unknown variant" in capsys.readouterr().err


def test_missing_teacher_is_a_clear_error(tmp_path, capsys):
    assert AB.main(["--only", "ee", "--work-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no trained teacher" in capsys.readouterr().err


def test_markdown_marks_failed_variants():
    res = {"machine_description": "m", "command": "c", "date": "d", "teacher_kl": 0.25, "data_std": 2.3,
           "settings": {"width": 8, "depth": 2, "steps": 10, "batch_size": 4, "lr": 1e-3, "n_samples": 1000},
           "variants": {"ee_ot": {"method": "ee", "factor": "f", "steps": 10, "failed": "NaN loss"},
                        "ee": {"method": "ee", "factor": "baseline", "steps": 10, "train_seconds": 1.0,
                               "final_loss": 7.5,
                               "scores": {k: {"kl_ratio": 2.0, "coupling_l2": 0.1, "std": 1.01}
                                          for k in ("1", "2", "4")}}}}
    md = AB.render_markdown(res)
    assert "| ee_ot | ee | f | 10 | – | – | failed |" in md
    assert "| ee | ee | baseline | 10 | 1 | 7.5 | 2 | 2 | 2 | 0.1 | 0.1 | 1.01 |" in md
    assert "data: 2.30" in md
