"""The lever study's variants (benchmarks/checkerboard_lever.py) are runnable configs.

No training here: every variant's TrainConfig is built from its benchmark row, and its
objective accepts the hyper-parameters (e.g. LSD's diagonal 3/4 leaves room for its
``start_frac``), so a ``train NAME`` chain never dies on a config error after hours of others.
"""

from __future__ import annotations

import torch

from anystep.benchmarks.checkerboard_lever import LEVER_DIR, VARIANTS, _cfg, _run_path
from anystep.benchmarks.checkerboard_methods import METHODS
from anystep.benchmarks.checkerboard_variant_runs import BENCH_DIR
from anystep.core.interpolants import build_interpolant
from anystep.training.base import build_objective


def test_every_variant_names_a_benchmark_row_and_existing_variants():
    for v in VARIANTS.values():
        assert v.base in METHODS, v.name
        for other in (v.init_from, v.teacher_from):
            if other is not None and other.startswith("bench:"):  # a benchmark row's own run directory
                assert other.removeprefix("bench:") in METHODS, (v.name, other)
            else:
                assert other is None or other in VARIANTS, (v.name, other)


def test_every_variant_builds_a_config_its_objective_accepts():
    for v in VARIANTS.values():
        cfg = _cfg(v)
        obj = build_objective(cfg.objective, build_interpolant(), **cfg.objective_hparams)
        frac = cfg.objective_hparams.get("start_frac", 0.0)
        pair = obj.times.sample(512, torch.Generator().manual_seed(0))
        if frac:  # the s = 0 (and, both directions, s = 1) rows are there; s = k/K with a window 1/K
            K = int(cfg.objective_hparams.get("window", 1))
            on_grid = (pair.s * K - (pair.s * K).round()).abs() < 1e-6
            assert int(on_grid.sum()) >= round(frac * 512), v.name
        for key, val in v.sets.items():
            if key.startswith("model.backbone."):
                assert getattr(cfg.model.backbone, key.split(".")[-1]) == val, (v.name, key)
        if v.init_from is not None:
            assert cfg.init_from == str(_run_path(v.init_from))
        if v.teacher_from is not None:
            assert cfg.teacher == str(_run_path(v.teacher_from))


def test_run_path_maps_bench_names_to_the_benchmark_dir():
    assert _run_path("bench:lmd_both_xl") == BENCH_DIR / "lmd_both_xl"
    assert _run_path("ff64_s1") == LEVER_DIR / "ff64_s1"
    assert VARIANTS["lmd_both_xl_xxl"].init_from == "bench:lmd_both_xl"
