"""Digits benchmark: classifier metric (digits-FD, Teacher-FD, coverage), evaluation, outputs, bundled models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anystep.benchmarks import digits as bench
from anystep.benchmarks.digits_classifier import (
    ClassifierError,
    DigitsMetric,
    class_coverage,
    load_classifier,
    save_classifier,
    train_classifier,
)
from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.data import DigitsDataset
from anystep.core.flowmap import build_model

REPO = Path(__file__).resolve().parents[1]


# one CPU thread: on a shared 2-core machine two threads oversubscribe badly
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def metric() -> DigitsMetric:
    return DigitsMetric.create()


def _tiny(kind: str) -> torch.nn.Module:
    cfg = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(
            name="unet", data_shape=(1, 8, 8), time_inputs=1 if kind == "velocity" else 2, channels=8,
            channel_mult=(1, 2),
        ),
        dataset="digits",
        data_shape=(1, 8, 8),
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


# ------------------------------------------------------------------ classifier


def test_cached_classifier_is_accurate_on_the_held_out_split(metric):
    report = metric.classifier.report
    assert report.n_train == 1437 and report.n_test == 360
    assert report.test_accuracy >= 0.95
    test = DigitsDataset(split="test")
    measured = float((metric.logits(test.tensor).argmax(1) == test.labels).float().mean())
    assert measured == pytest.approx(report.test_accuracy, abs=1e-6)


def test_training_save_and_load_round_trip(tmp_path):
    trained = train_classifier(epochs=1, seed=1)
    assert 0.2 < trained.report.test_accuracy <= 1.0  # one epoch already beats chance (0.1)
    save_classifier(trained, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf", train_if_missing=False)
    x = DigitsDataset(split="test").tensor[:32]
    assert torch.equal(loaded.model(x), trained.model(x))
    assert loaded.report.test_accuracy == trained.report.test_accuracy


def test_missing_or_bad_classifier_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ClassifierError, match="no digit classifier"):
        load_classifier(tmp_path / "empty", train_if_missing=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"junk")
    (bad / "config.json").write_text("{}")
    with pytest.raises(ClassifierError, match="delete"):
        load_classifier(bad)
    with pytest.raises(ClassifierError, match="epochs"):
        train_classifier(epochs=0)


# ------------------------------------------------------------------ metrics


def test_digits_fd_separates_real_digits_from_noise(metric):
    test = DigitsDataset(split="test").tensor
    real_fd = metric.digits_fd(test)
    noise_fd = metric.digits_fd(torch.rand(360, 1, 8, 8) * 2 - 1)
    g = torch.Generator().manual_seed(0)
    corrupt = [metric.digits_fd((test + k * torch.randn(test.shape, generator=g)).clamp(-1, 1)) for k in (0.3, 0.6)]
    assert real_fd < corrupt[0] < corrupt[1] < noise_fd  # FD grows with the corruption
    assert noise_fd > 10 * real_fd
    assert metric.fd(test, test) == pytest.approx(0.0, abs=1e-6)


def test_teacher_fd_and_units(metric):
    test = DigitsDataset(split="test").tensor
    s = metric.score(test, teacher=test)
    assert s.teacher_fd == pytest.approx(0.0, abs=1e-6) and s.n == 360
    # [n, 8, 8] input is accepted; out-of-range values are clipped like DigitsDataset.to_units
    np.testing.assert_array_equal(metric.features(test[:, 0] * 3), metric.features((test * 3).clamp(-1, 1)))
    with pytest.raises(ClassifierError, match=r"\[n, 1, 8, 8\]"):
        metric.features(torch.zeros(4, 64))
    with pytest.raises(ClassifierError, match="NaN"):
        metric.features(torch.full((4, 1, 8, 8), float("nan")))


def test_class_coverage_detects_mode_collapse(metric):
    ds = DigitsDataset(split="all")
    full = metric.score(ds.tensor).coverage
    assert full.normalized_entropy > 0.99 and full.min_fraction > 0.08
    threes = ds.tensor[ds.labels == 3]
    collapsed = metric.score(threes).coverage
    assert collapsed.entropy < 0.2 and collapsed.min_fraction == 0.0
    assert collapsed.fractions[3] > 0.95
    logits = torch.zeros(10, 10)
    logits[torch.arange(10), torch.arange(10)] = 5.0
    assert class_coverage(logits).entropy == pytest.approx(math.log(10))


# ------------------------------------------------------------------ evaluation and outputs


def test_evaluate_teacher_and_flowmap(metric):
    x0 = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rows, samples = bench.evaluate_teacher(_tiny("velocity"), x0, metric, euler_steps=(1, 2), rtol=1e-3)
    assert [(r.sampler, r.steps) for r in rows] == [("dopri5", None), ("euler", 1), ("euler", 2)]
    assert rows[0].teacher_fd == pytest.approx(0.0, abs=1e-6) and rows[0].nfe >= 6
    assert [r.nfe for r in rows[1:]] == [1, 2]
    f_rows, f_samples = bench.evaluate_flowmap("m", _tiny("flowmap"), x0, metric, (1, 3), samples["dopri5"])
    assert [(r.steps, r.nfe) for r in f_rows] == [(1, 1.0), (3, 3.0)]
    # fresh networks are identity maps (zero-initialised output layer), so student == teacher samples
    assert all(r.teacher_fd == pytest.approx(0.0, abs=1e-6) for r in f_rows)
    assert f_samples["3"].shape == (64, 1, 8, 8)


def test_write_grid_and_markdown(tmp_path):
    from PIL import Image

    x = torch.rand(20, 1, 8, 8) * 2 - 1
    p = bench.write_grid(tmp_path / "g.png", [("1 step", x), ("2 steps", -x)], per_row=16, scale=4)
    im = Image.open(p)
    assert im.size == (80 + 16 * 34 + 2, 2 * 34 + 2)
    row = {"method": "lmd", "sampler": "flow map", "steps": 1, "nfe": 1.0, "digits_fd": 2.5, "teacher_fd": 1.0,
           "entropy": 2.29, "min_class_fraction": 0.08, "mean_confidence": 0.9, "sample_seconds": 0.1}
    result = {
        "machine": {"description": "test cpu"}, "command": "python -m x --flag", "date": "today",
        "n": 64, "seed": 0, "classifier": {"test_accuracy": 0.99, "n_test": 360, "n_train": 1437},
        "floor": {"test_vs_train_fd": 0.5, "n_test": 360}, "inception_fid": "unavailable: ...",
        "rows": [row, {**row, "method": "teacher", "sampler": "dopri5", "steps": None, "teacher_fd": 0.0}],
        "goal": bench._goal([bench.EvalRow(**row), bench.EvalRow(**{**row, "method": "teacher",
                                                                      "sampler": "dopri5", "steps": None})]),
        "training": [], "grids": ["g.png"],
    }
    md = bench.render_markdown(result)
    assert "test cpu" in md and "`python -m x --flag`" in md and "| lmd | flow map | 1 |" in md
    assert result["goal"]["methods"]["lmd"]["ratio_1"] == pytest.approx(1.0)


def test_cli_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--out", "--methods", "--steps"):
        assert flag in out
    for bad in (["--methods", "lmd,sgd"], ["--steps", "0"], ["-n", "3"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(bad)
        assert exc.value.code == 2
        assert "error" in capsys.readouterr().err


def test_module_is_runnable():
    res = subprocess.run([sys.executable, "-m", "anystep.benchmarks.digits", "--help"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0 and "--quick" in res.stdout


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "anystep.benchmarks.digits", "--quick", "--runs", str(tmp_path / "runs"),
         "--out", str(tmp_path / "out"), "--threads", "1"],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "digits.json").read_text())
    methods = {r["method"] for r in data["rows"]}
    assert methods == set(bench.DEFAULT_METHODS)  # shortcut, meanflow: opt-in rows (--methods)
    assert (tmp_path / "out" / "digits.md").is_file() and (tmp_path / "out" / "digits_lmd.png").is_file()


# ------------------------------------------------------------------ committed results and bundled models


def test_committed_results_cover_every_method_and_step():
    path = REPO / "benchmarks" / "results" / "digits.json"
    data = json.loads(path.read_text())
    assert not data["quick"] and data["machine"]["description"] and data["command"].startswith("python -m")
    rows = data["rows"]
    for m in ("lmd", "fmm4", "pfmm", "lsd"):
        assert sorted(r["steps"] for r in rows if r["method"] == m) == [1, 2, 4, 8]
    teacher = [r for r in rows if r["method"] == "teacher"]
    assert sorted(r["steps"] for r in teacher if r["sampler"] == "euler") == [1, 2, 4, 8, 16, 32, 64]
    assert any(r["sampler"] == "dopri5" for r in teacher)
    assert all(np.isfinite(r["digits_fd"]) for r in rows)
    for grid in data["grids"]:
        assert (path.parent / grid).is_file()
    assert (path.parent / "digits.md").is_file()


def test_bundled_models_load_and_are_small():
    from anystep.core.modeldir import load_model_dir

    fm = load_model_dir(REPO / "models" / "digits")
    teacher = load_model_dir(REPO / "models" / "digits-teacher")
    assert fm.config.kind == "flowmap" and teacher.config.kind == "velocity"
    assert fm.config.dataset == "digits" and fm.config.data_shape == (1, 8, 8)
    for d in ("digits", "digits-teacher", "digits-classifier"):
        assert (REPO / "models" / d / "model.safetensors").stat().st_size < 8 * 2**20
    assert "/tmp" not in (REPO / "models" / "digits" / "config.json").read_text()


def test_cli_one_step_samples_are_recognisable_digits_in_data_units(tmp_path, metric):
    out = tmp_path / "s.npy"
    res = subprocess.run(
        [sys.executable, "-m", "anystep.cli", "sample", str(REPO / "models" / "digits"), "--steps", "1",
         "-n", "200", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, res.stderr
    g = np.load(out, allow_pickle=False)
    assert g.shape in ((200, 8, 8), (200, 1, 8, 8)) and g.min() >= 0 and g.max() <= 16
    x = DigitsDataset().from_units(g.reshape(200, 8, 8))
    cov = metric.score(x).coverage
    assert cov.min_fraction > 0 and cov.normalized_entropy > 0.9  # every class appears
    assert cov.mean_confidence > 0.8  # and the classifier is confident they are digits


def test_second_stage_method_starts_from_its_first_stage(tmp_path):
    spec = bench.METHODS["lmd_long"]
    cfg = bench._method_config(spec, tmp_path, quick=False)
    assert cfg.init_from == str(tmp_path / "lmd") and cfg.teacher == str(tmp_path / "teacher")
    assert cfg.objective == "lmd" and cfg.max_steps == spec.steps
    # the first stage comes before the second in the training order
    order = list(bench.METHODS)
    assert order.index("lmd") < order.index("lmd_long")
