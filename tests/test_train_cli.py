"""Tests of ``anystep train``: help, presets, one-line errors with exit code 2, a tiny run
through the CLI, and resuming after the process was killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, save_model_dir
from anystep.training.cli import train
from anystep.training.config import TrainConfig
from anystep.training.presets import PRESETS, get_preset, list_presets
from anystep.training.trainer import read_log

REPO = Path(__file__).resolve().parents[1]
ANYSTEP = REPO / ".venv" / "bin" / "anystep"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_model(kind: str = "velocity", width: int = 16) -> ModelConfig:
    return ModelConfig(
        kind=kind,
        backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1 if kind == "velocity" else 2,
                                width=width, depth=2, fourier_features=4),
        ansatz="residual",
        data_shape=(2,),
    )


def write_config(path: Path, **kw) -> Path:
    base = {"model": tiny_model(kw.pop("kind", "velocity"), kw.pop("width", 16)), "objective": "velocity",
                "batch_size": 32, "max_steps": 10, "lr": 1e-3, "lr_schedule": "constant", "log_every": 1, "ckpt_every": 5,
                "eval_every": -1, "seed": 1}
    base.update(kw)
    TrainConfig(**base).save(path)
    return path


def anystep_cmd() -> list[str]:
    if ANYSTEP.exists():
        return [str(ANYSTEP)]
    return [sys.executable, "-m", "anystep.cli"]


# --------------------------------------------------------------------------------------
# help and presets
# --------------------------------------------------------------------------------------


def test_help_lists_every_preset_and_option_default():
    proc = subprocess.run([*anystep_cmd(), "train", "--help"], capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for p in list_presets():
        assert p.name in text
        assert p.description[:30] in text
    for opt in ("--out", "--max-steps", "--resume", "--teacher", "--batch-size", "--lr", "--seed", "--device", "--set"):
        assert opt in text
    assert text.count("default:") >= 9


def test_required_presets_exist_and_follow_the_paper():
    required = {
        "checkerboard-velocity", "checkerboard-lmd", "checkerboard-emd", "checkerboard-fmm1", "checkerboard-fmm4",
        "checkerboard-pfmm", "checkerboard-ee", "checkerboard-lsd", "checkerboard-esd", "checkerboard-psd",
        "checkerboard-ayf-emd", "checkerboard-ayf-lmd", "digits-velocity", "digits-lmd", "digits-fmm4",
        "digits-pfmm", "digits-lsd",
    }
    assert required <= set(PRESETS)
    from anystep.training.base import OBJECTIVES, objective_class

    for name in PRESETS:
        cfg = get_preset(name)
        assert cfg.preset == name
        assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
        cls = objective_class(cfg.objective)
        assert cfg.objective in OBJECTIVES and cls.model_kind == cfg.model.kind, name
        if name.startswith("checkerboard"):
            b = cfg.model.backbone
            assert (b.name, b.width, b.depth, cfg.max_steps) == ("mlp", 512, 6, 50_000)
            assert cfg.optimizer == "adam" and cfg.dataset == "checkerboard"
        elif name.startswith("digits"):
            assert cfg.model.data_shape == (1, 8, 8) and cfg.model.backbone.name == "unet"
        else:  # CIFAR-10 / ImageNet-32 presets of the paper's Table 4
            assert cfg.model.data_shape == (3, 32, 32) and cfg.model.backbone.channels == 256
    assert get_preset("checkerboard-fmm4").objective_hparams["window"] == 4
    assert get_preset("checkerboard-fmm1").objective_hparams["window"] == 1


# --------------------------------------------------------------------------------------
# errors: exit code 2, one line
# --------------------------------------------------------------------------------------


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_bad_configs_exit_2_with_one_line(tmp_path):
    torch.manual_seed(0)
    fm_dir = save_model_dir(tmp_path / "fm", build_model(tiny_model("flowmap")), tiny_model("flowmap"))
    cfg = write_config(tmp_path / "c.json")
    runner = CliRunner()
    out = str(tmp_path / "out")
    cases = [
        (["no-such-preset", "--out", out], "unknown preset"),
        ([str(cfg), "--out", out, "--set", "objective=nope"], "unknown objective"),
        ([str(cfg), "--out", out, "--set", "kind=1"], "unknown key"),
        (["checkerboard-lmd", "--out", out, "--max-steps", "1"], "needs a velocity teacher"),
        (["checkerboard-lmd", "--out", out, "--teacher", str(fm_dir)], "velocity teacher but"),
        ([str(cfg), "--out", out, "--set", "dataset=digits"], "shape"),
        ([str(cfg), "--out", out, "--resume"], "no checkpoint"),
        ([str(tmp_path / "missing.json"), "--out", out], "does not exist"),
        ([str(cfg), "--out", out, "--lr", "-1"], "lr"),
    ]
    for args, match in cases:
        line = _one_line_error(runner.invoke(train, args))
        assert match in line, (args, line)
    assert not Path(out).exists()


def test_bad_config_exit_2_through_the_installed_command(tmp_path):
    proc = subprocess.run(
        [*anystep_cmd(), "train", "checkerboard-lmd", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=ENV, timeout=120, check=False,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "teacher" in lines[0]


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------


def test_tiny_run_through_cli_runner(tmp_path):
    cfg = write_config(tmp_path / "c.json")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [str(cfg), "--out", str(out), "--max-steps", "6", "--seed", "4", "--batch-size", "16", "--no-progress",
         "--set", "model.backbone.width=8", "--set", "log_every=2"],
    )
    assert result.exit_code == 0, result.output
    assert "trained 6 steps" in result.output
    loaded = load_model_dir(out)
    assert loaded.config.backbone.width == 8
    tc = TrainConfig.load(out / "train_config.json")
    assert (tc.max_steps, tc.seed, tc.batch_size, tc.log_every) == (6, 4, 16, 2)
    assert [r["step"] for r in read_log(out)] == [2, 4, 6]


def test_print_config_applies_overrides():
    result = CliRunner().invoke(
        train, ["checkerboard-fmm4", "--out", "unused", "--print-config", "--lr", "3e-4", "--set", "seed=9"]
    )
    assert result.exit_code == 0, result.output
    cfg = TrainConfig.from_dict(json.loads(result.output))
    assert cfg.lr == 3e-4 and cfg.seed == 9 and cfg.objective == "fmm" and cfg.preset == "checkerboard-fmm4"


def _wait(proc: subprocess.Popen, timeout: float = 180) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.slow  # two training subprocesses; ~15-35 s on 2 cores (test_trainer.py has the fast variant)
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    cfg = write_config(tmp_path / "c.json", max_steps=400, ckpt_every=20, width=64, batch_size=64,
                       lr_schedule="cosine", ema_decay=0.99)
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    cmd = [*anystep_cmd(), "train", str(cfg), "--no-progress", "--out"]
    a = subprocess.Popen([*cmd, str(a_out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen([*cmd, str(b_out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (b_out / "checkpoint" / "state.json").exists():
        assert b.poll() is None, "run b ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(b.pid, signal.SIGKILL)
    _wait(b)
    assert b.returncode == -signal.SIGKILL
    killed_at = json.loads((b_out / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < killed_at < 400
    assert not (b_out / "model.safetensors").exists()
    resumed = subprocess.run([*cmd, str(b_out), "--resume"], env=ENV, capture_output=True, text=True, timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stderr
    _wait(a)
    assert a.returncode == 0, a.stderr.read().decode()

    la = {r["step"]: r["loss"] for r in read_log(a_out)}
    lb = {r["step"]: r["loss"] for r in read_log(b_out)}
    assert sorted(lb) == list(range(1, 401))
    assert la == lb
    wa, wb = load_model_dir(a_out).model.state_dict(), load_model_dir(b_out).model.state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
