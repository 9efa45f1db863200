"""The GPU check's code paths on the CPU (``--dry-run``), its timing, budget, report and bootstrap."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import pytest

from anystep.benchmarks import gpu_check
from anystep.benchmarks.gpu_check import Budget, Settings, bootstrap, parse_train_runs
from anystep.benchmarks.gpu_report import evaluate_goals, render_markdown
from anystep.benchmarks.gpu_sections import interleaved
from anystep.benchmarks.gpu_wheelhouse import LIMIT_BYTES, WHEELS, wheel_requirements


def _run(tmp_path, repo_root, *extra: str) -> dict:
    out = tmp_path / "out"
    argv = ["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
            "--models-dir", str(repo_root / "models"), "--strict", *extra]
    assert gpu_check.main(argv) == 0
    text = (out / "gpu.json").read_text()
    assert str(tmp_path) not in text  # no machine paths in the results
    md = (out / "gpu.md").read_text()
    assert "DRY RUN" in md and "## Goals" in md
    return json.loads(text)


def test_dry_run_train_and_step_sections(tmp_path, repo_root):
    data = _run(tmp_path, repo_root, "--sections", "train,step", "--train-runs", "velocity:fp32:cl",
                "--engines", "eager,cudagraph", "--train-steps", "1")
    assert data["dry_run"] and set(data["sections"]) == {"train", "step"}
    (run,) = data["sections"]["train"]["runs"]
    assert run["objective"] == "velocity" and run["channels_last"] and run["steps"] == 1
    assert run["images_per_s"] > 0 and run["final_loss"] > 0
    rows = data["sections"]["step"]["rows"]
    assert {(r["model"], r["batch"], r["engine"]) for r in rows} == {
        (m, b, e) for m in ("digits", "cifar") for b in (1, 3) for e in ("eager", "cudagraph")
    }
    assert all(r["median_ms"] > 0 and r["calls"] >= 4 for r in rows)
    assert all(r["max_abs_vs_eager"] < 1e-4 for r in rows)  # padded buckets = eager
    goals = {g["goal"][:20]: g for g in data["goals"]}
    assert len(goals) == 3 and all("dry run" in g["detail"] for g in data["goals"])


@pytest.mark.slow
def test_dry_run_every_section(tmp_path, repo_root):
    data = _run(tmp_path, repo_root, "--train-steps", "2")
    sec = data["sections"]
    assert [r["objective"] for r in sec["train"]["runs"]] == ["velocity", "velocity", "lmd"]
    assert {r["engine"] for r in sec["step"]["rows"]} == {"eager", "cudagraph"}
    assert {r["engine"] for r in sec["compile"]["rows"]} == {"eager", "compile", "cudagraph"}
    assert all(r["max_abs_vs_eager"] < 1e-4 for r in sec["compile"]["rows"])
    served = {(r["model"], r["method"], r["steps"], r["n"]): r for r in sec["serve"]["rows"]}
    assert served[("digits", "flowmap", 4, 2)]["nfe"] == 4
    assert served[("cifar-teacher", "dopri5", None, 1)]["nfe"] >= 6
    assert sec["onnx"]["rows"] and sec["onnx"]["rows"][0]["model"] == "cifar"  # GPU-trained first (then budget)
    assert all(r["passed"] and r["max_abs_err"] <= r["atol"] + 1e-3 for r in sec["onnx"]["rows"])


def test_goals_from_measured_rows():
    data = {"settings": {"batches": [1, 16]}, "dry_run": False, "sections": {
        "step": {"rows": [{"model": "digits", "batch": 1, "engine": "eager", "median_ms": 3.0},
                          {"model": "digits", "batch": 1, "engine": "cudagraph", "median_ms": 0.5}]},
        "serve": {"engine": "cudagraph", "rows": [
            {"model": "digits", "method": "flowmap", "steps": 1, "n": 1, "p50_ms": 0.9}]},
        "train": {"runs": [{"objective": "lmd", "precision": "bf16", "images_per_s": 1234.0}]},
    }}
    speed, served, train = evaluate_goals(data)
    assert speed["value"] == pytest.approx(6.0) and speed["met"] is True
    assert served["value"] == pytest.approx(1.8) and served["met"] is False
    assert train["value"] == 1234.0 and train["met"] is True
    data["sections"] = {"train": {"error": "RuntimeError: boom", "traceback": "tb"}}
    assert [g["met"] for g in evaluate_goals(data)] == [None, None, None]
    data.update(goals=evaluate_goals(data), command="x", machine={
        "gpu": None, "cpu_model": "cpu", "cores": 2, "python_version": "3", "torch_version": "2"},
        versions={}, tf32={"cudnn": True, "matmul": False}, seconds={"train": 1.0})
    md = render_markdown(data)
    assert "train failed" in md and "RuntimeError: boom" in md and "not measured" in md


def test_budget_shares_and_interleaved_rounds():
    b = Budget(100.0)
    assert b.share("train", list(gpu_check.SECTIONS)) == pytest.approx(36.0, abs=0.5)
    assert sum(gpu_check.SHARES.values()) == pytest.approx(1.0)
    assert b.share("onnx", ["onnx"]) == pytest.approx(100.0, abs=0.5)
    order = []

    def timer(fn):
        fn()
        return 1e-3

    res = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, timer,
                      rounds=5, calls=3, budget_s=60.0, seed=1)
    assert [len(v) for v in res.values()] == [15, 15]
    rounds = ["".join(order[i:i + 6]) for i in range(0, 30, 6)]
    assert set(rounds) == {"aaabbb", "bbbaaa"}  # blocks per method, order re-drawn per round
    assert interleaved({"a": lambda: None}, timer, rounds=9, calls=1, budget_s=0.0)["a"] == [1e-3] * 2


def test_bootstrap_unpacks_wheels_onto_the_path(tmp_path, monkeypatch):
    house = tmp_path / "wheels"
    house.mkdir()
    with zipfile.ZipFile(house / "fakepkg_gpu_check-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fakepkg_gpu_check/__init__.py", "VALUE = 42\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    site = bootstrap(house, tmp_path / "site")
    import fakepkg_gpu_check

    assert fakepkg_gpu_check.VALUE == 42 and sys.path[0] == str(site)
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(site), "elsewhere"]
    sys.modules.pop("fakepkg_gpu_check")
    with pytest.raises(SystemExit, match="make gpu-wheelhouse"):
        bootstrap(tmp_path / "empty", tmp_path / "site2")


def test_cli_input_errors_and_settings():
    assert parse_train_runs("velocity:fp32, lmd:bf16:cl") == (("velocity", "fp32", False), ("lmd", "bf16", True))
    for bad in ("velocity", "lmd:fp8", "pfmm:fp32", "lmd:bf16:nhwc", ","):
        with pytest.raises(SystemExit, match="train-runs"):
            parse_train_runs(bad)
    with pytest.raises(SystemExit, match="--sections"):
        gpu_check.main(["--dry-run", "--sections", "train,bogus"])
    d = Settings.dry(budget_s=5.0)
    assert d.device == "cpu" and d.dry_run and d.budget_s == 5.0 and Settings().batches == (1, 16, 256)


def test_torch_support_range(tmp_path, repo_root):
    from anystep.benchmarks.gpu_check import torch_support

    pyproject = repo_root / "pyproject.toml"
    assert torch_support(pyproject, "2.11.0+cu130") == {"range": ">=2.11,<2.14", "torch": "2.11.0+cu130", "inside": True}
    assert torch_support(pyproject, "2.13.0+cpu")["inside"] is True
    assert torch_support(pyproject, "2.10.1")["inside"] is False
    assert torch_support(pyproject, "2.14.0")["inside"] is False
    assert torch_support(tmp_path / "missing.toml", "2.13.0")["inside"] is None


def test_wheelhouse_pins_the_tested_versions():
    reqs = wheel_requirements()
    assert len(reqs) == len(WHEELS) and "torch" not in " ".join(reqs)
    from importlib.metadata import version

    assert f"fastapi=={version('fastapi')}" in reqs
    assert LIMIT_BYTES == 64 * 2**20
