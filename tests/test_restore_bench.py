"""The restoration benchmark: its oracle references, metrics and report (exact cases), and a small run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from anystep.benchmarks.digits_restore import (
    RestoreData,
    evaluate_restoration,
    goal_line,
    input_rows,
    oracle_rows,
    psnr,
    render_restoration,
    restore_data,
    teacher_rows,
)


class _Identity(nn.Module):
    """X_{s,t}(x) = x: restores nothing, and is its own inverse."""

    def forward(self, x, s, t):
        return x


class _Metric:
    """A stand-in classifier: the label is the index of the brightest of 10 pixels."""

    def logits(self, x):
        return x.reshape(len(x), -1)[:, :10]


def _data(noise: float = 0.05) -> RestoreData:
    from anystep.core.data import get_dataset

    train = get_dataset("digits-noisy", noise=noise)  # train digits: the oracle's own prior
    clean, y = train.tensor[:40], train.labels[:40]
    return RestoreData(clean, train.degrade(clean, torch.Generator().manual_seed(0)), y, noise)


def test_psnr_of_known_errors():
    a = torch.zeros(2, 1, 8, 8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.2) == pytest.approx(20.0)  # [0, 1] error 0.1 -> 20 dB


def test_oracle_recovers_train_digits_at_small_noise():
    """With the train set as the prior and little noise, the posterior sits on the true digit."""
    from anystep.benchmarks.digits_classifier import DigitsMetric

    data = _data(0.05)
    metric = DigitsMetric.create()
    mean, bayes = oracle_rows(metric, data)
    assert bayes.accuracy == 1.0
    assert mean.psnr > 40 and mean.accuracy == pytest.approx(float((metric.logits(data.clean).argmax(1) == data.y)
                                                                    .double().mean()))


def test_identity_map_restores_nothing_and_inverts_exactly():
    data = _data(0.3)
    rows, stats, samples = evaluate_restoration(_Identity(), _Metric(), data, steps=(1, 2))
    deg = input_rows(_Metric(), data)[1]
    for r in rows:
        assert r.psnr == pytest.approx(deg.psnr) and r.accuracy == deg.accuracy and r.nfe == r.steps
    assert stats["encoded_minus_clean_std"] == 0.0 and stats["round_trip_psnr"] == math.inf
    assert torch.equal(samples["K=2"], data.degraded)


class _ConstantVelocity(nn.Module):
    """b_t(x) = clean - degraded for the benchmark's batch: the straight path, exact for any solver."""

    def __init__(self, delta):
        super().__init__()
        self.delta = delta

    def forward(self, x, t):
        return self.delta


def test_teacher_rows_dopri5_and_euler_at_the_map_budget():
    from anystep.benchmarks.digits_classifier import DigitsMetric

    data, metric = _data(0.3), DigitsMetric.create()
    clean = input_rows(metric, data)[0]
    rows = teacher_rows(_ConstantVelocity(data.clean - data.degraded), metric, data, euler_steps=(1, 4))
    assert [(r.what, r.steps) for r in rows] == [("teacher dopri5", None), ("teacher euler", 1), ("teacher euler", 4)]
    assert [r.nfe for r in rows[1:]] == [1.0, 4.0]
    for r in rows:  # a constant field is integrated exactly: every row lands on the clean digits
        assert r.psnr > 60 and r.accuracy == clean.accuracy
    assert [r.what for r in teacher_rows(_ConstantVelocity(data.clean - data.degraded), _Metric(), data)] == [
        "teacher dopri5"]


def test_draws_repeat_the_test_digits_with_new_noise():
    one, three = restore_data(0.6, seed=0, draws=1), restore_data(0.6, seed=0, draws=3)
    assert len(three.y) == 3 * len(one.y) == 3 * 360
    assert torch.equal(three.degraded[:360], one.degraded) and not torch.equal(three.degraded[360:720], one.degraded)
    assert torch.equal(three.clean[360:720], one.clean)


def test_goal_line_and_report():
    rows = [{"what": "clean", "steps": None, "psnr": None, "accuracy": 0.99, "seconds": 0.0, "nfe": None}]
    good = [{"what": "restored", "steps": 1, "psnr": 18.0, "accuracy": 0.945, "seconds": 0.1, "nfe": 1.0}]
    bad = [{"what": "restored", "steps": 1, "psnr": 18.0, "accuracy": 0.93, "seconds": 0.1, "nfe": 1.0}]
    assert goal_line(rows + good).endswith("4.5 points below -> met.")
    assert goal_line(rows + bad).endswith("6.0 points below -> not met.")
    edge = [dict(rows[0], accuracy=1790 / 1800), dict(good[0], accuracy=1700 / 1800)]  # exactly 5 points (float: 5 + 4e-15)
    assert goal_line(edge).endswith("5.0 points below -> met.")
    assert goal_line([edge[0], dict(good[0], accuracy=1699 / 1800)]).endswith("not met.")
    section = {"n": 720, "noise": 0.6, "draws": 2, "rows": rows,
               "maps": {"m": {"path": "models/m", "rows": bad, "encode": {
                   "encoded_minus_clean_std": 0.5, "training_noise_std": 0.6, "encoded_accuracy": 0.8,
                   "round_trip_psnr": 25.0}}}}
    md = "\n".join(render_restoration(section))
    assert "360 held-out test digits x 2 noise draws" in md and "not met" in md
    for line in md.splitlines():  # every table row has the six columns
        if line.startswith("| "):
            assert line.count("|") == 7, line


def test_small_run_on_the_bundled_map(tmp_path):
    from pathlib import Path

    from anystep.benchmarks.digits_restore import main

    model = Path(__file__).resolve().parents[1] / "models" / "digits-restore"
    if not (model / "config.json").is_file():
        pytest.skip("models/digits-restore is not bundled")
    assert main(["--map", f"m={model}", "--draws", "1", "--steps", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "digits_restore.json").read_text())
    rows = {r["what"]: r for r in data["restoration"]["rows"]}
    one = data["restoration"]["maps"]["m"]["rows"][0]
    assert one["accuracy"] > rows["degraded"]["accuracy"] + 0.05  # it restores
    assert data["restoration"]["maps"]["m"]["path"] == "models/digits-restore"  # no machine paths
    assert main(["--map", f"m={tmp_path}", "--out", str(tmp_path)]) == 2  # not a model directory
    with pytest.raises(SystemExit):
        main(["--map", "no-equals-sign"])


def test_anystep_bench_lists_and_runs_digits_restore(monkeypatch):
    from click.testing import CliRunner

    import anystep.benchmarks.digits_restore as R
    from anystep.benchmarks.cli import bench

    runner = CliRunner()
    res = runner.invoke(bench, ["--help"])
    assert res.exit_code == 0
    assert "digits-restore" in res.output
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 0

    monkeypatch.setattr(R, "main", fake_main)
    res = runner.invoke(bench, ["digits-restore", "--draws", "1", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert seen["argv"] == ["--draws", "1", "--steps", "1"]
    monkeypatch.undo()
    res = runner.invoke(bench, ["digits-restore", "--help"])  # the real parser: its own options
    assert res.exit_code == 0
    assert "--teacher" in res.output and "--map" in res.output
