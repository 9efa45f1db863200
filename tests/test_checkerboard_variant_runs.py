"""The one config builder of the checkerboard variant studies (benchmarks/checkerboard_variant_runs.py)."""

from pathlib import Path

from anystep.benchmarks.checkerboard_variant_runs import variant_config


def test_variant_config_is_the_row_plus_its_overrides_and_continuations():
    plain = variant_config("lmd", {}, "t0")
    cfg = variant_config("lmd", {"model.backbone.x_features": 64, "objective_hparams.start_frac": 0.5}, "t1",
                         init_from=Path("runs/x/a"), teacher_from=Path("runs/x/b"))
    assert plain.model.backbone.x_features == 0 and cfg.model.backbone.x_features == 64
    assert cfg.objective_hparams["start_frac"] == 0.5 and "start_frac" not in (plain.objective_hparams or {})
    assert cfg.init_from == str(Path("runs/x/a")) and cfg.teacher == str(Path("runs/x/b"))
    assert plain.init_from != cfg.init_from and plain.teacher != cfg.teacher
    assert cfg.preset.endswith("(t1)") and plain.preset.endswith("(t0)")
    assert cfg.replace(preset=plain.preset, init_from=plain.init_from, teacher=plain.teacher,
                       objective_hparams=plain.objective_hparams, model=plain.model) == plain
