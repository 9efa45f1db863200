"""Training runs can always be continued or restarted (issue 19 item 8): a run killed
before its first checkpoint resumes from step 0, stale temporaries are cleaned, and a
damaged checkpoint is one line with exit code 2 (then ``--restart`` starts again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import run_cli
from safetensors.torch import save_file

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.training.config import TrainConfig
from anystep.training.trainer import Trainer, read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cfg(width: int = 16, **kw) -> TrainConfig:
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1, width=width, depth=2, fourier_features=4)
    base = {
        "model": ModelConfig(kind="velocity", backbone=bb, data_shape=(2,)), "objective": "velocity",
        "batch_size": 16, "max_steps": 6, "lr": 1e-3, "lr_schedule": "constant", "log_every": 1,
        "ckpt_every": 3, "eval_every": -1, "ema_decay": 0.9, "seed": 1,
    }
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


def _train_cli(args, capsys) -> tuple[int, str]:
    return run_cli(["train", *args, "--no-progress"], capsys)


def _one_line(code: int, err: str, *fragments: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def test_killed_before_the_first_checkpoint_resumes_from_step_0(tmp_path, capsys):
    cfg = _cfg()
    Trainer(cfg, tmp_path / "ref", progress=False, eval_fn=None).fit()
    out = tmp_path / "killed"
    out.mkdir()
    cfg.save(out / "train_config.json")  # what a run killed before step ckpt_every leaves
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "lo')
    (out / ".checkpoint.tmp-dead").mkdir()
    (out / ".checkpoint.tmp-dead" / "model.safetensors").write_bytes(b"x" * 1000)
    # a fresh start is refused, naming both ways out
    cfg_file = tmp_path / "c.json"
    cfg.save(cfg_file)
    code, err = _train_cli([str(cfg_file), "--out", str(out)], capsys)
    _one_line(code, err, "--resume", "--restart")
    code, err = _train_cli([str(cfg_file), "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert _losses(out) == _losses(tmp_path / "ref")  # the same run, from step 0
    assert not list(out.glob(".*.tmp-*"))


def test_stale_checkpoint_temps_are_cleaned_on_the_next_write(tmp_path):
    cfg = _cfg()
    out = tmp_path / "r"
    Trainer(cfg, out, progress=False, eval_fn=None).fit(until=3)
    for i in range(3):
        d = out / f".checkpoint.tmp-{i}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 100)
    (out / ".train_config.json.tmp-x").write_text("{")
    r = Trainer(cfg, out, resume=True, progress=False, eval_fn=None).fit()
    assert r.steps == 6
    assert not list(out.glob(".*.tmp-*"))


def _damage_state(key, value):
    def fn(ck: Path) -> None:
        st = json.loads((ck / "state.json").read_text())
        if value is KeyError:
            st.pop(key)
        else:
            st[key] = value
        (ck / "state.json").write_text(json.dumps(st))
    return fn


def _write(name, text):
    def fn(ck: Path) -> None:
        (ck / name).write_text(text)
    return fn


def _other_width(ck: Path) -> None:
    from anystep.core.flowmap import build_model

    m = build_model(_cfg(width=32).model)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(ck / "model.safetensors"))


DAMAGE = {
    "step_text": (_damage_state("step", "abc"), "state.json", "step='abc'"),
    "step_negative": (_damage_state("step", -10), "state.json", "step=-10"),
    "step_missing": (_damage_state("step", KeyError), "state.json", "lacks 'step'"),
    "round_text": (_damage_state("round", "x"), "state.json", "round="),
    "state_list": (_write("state.json", "[]"), "state.json", "JSON object"),
    "state_truncated": (_write("state.json", '{"step": 3, "for'), "state.json", "not valid JSON"),
    "optimizer_empty": (_write("optimizer.json", "{}"), "optimizer.json", "param_groups"),
    "optimizer_list": (_write("optimizer.json", "[]"), "optimizer.json", "JSON object"),
    "weights_other_width": (_other_width, "model.safetensors", "shape"),
    "weights_garbage": (lambda ck: (ck / "ema.safetensors").write_bytes(b"\x00" * 9), "ema.safetensors",
                        "safetensors"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_is_one_line_then_restart_works(tmp_path, capsys, case):
    cfg = _cfg()
    cfg_file = tmp_path / "c.json"
    cfg.save(cfg_file)
    out = tmp_path / "r"
    Trainer(cfg, out, progress=False, eval_fn=None).fit(until=3)
    fn, fname, fragment = DAMAGE[case]
    fn(out / "checkpoint")
    code, err = _train_cli([str(cfg_file), "--out", str(out), "--resume"], capsys)
    _one_line(code, err, fname, fragment)
    code, err = _train_cli([str(cfg_file), "--out", str(out), "--restart"], capsys)
    assert code == 0, err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    assert (out / "config.json").is_file()


def test_resume_and_restart_are_exclusive(tmp_path, capsys):
    code, err = _train_cli(["checkerboard-velocity", "--out", str(tmp_path / "x"), "--resume", "--restart"], capsys)
    _one_line(code, err, "--restart")


def test_restart_keeps_files_it_did_not_write(tmp_path):
    from anystep.training.checkpoint import discard_run

    out = tmp_path / "r"
    Trainer(_cfg(), out, progress=False, eval_fn=None).fit(until=3)
    (out / "notes.txt").write_text("mine")
    removed = discard_run(out)
    assert "checkpoint" in removed and "train_config.json" in removed
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_missing_folder_dataset_says_the_path_is_missing(tmp_path, capsys):
    missing = tmp_path / "missing"
    code, err = _train_cli(["checkerboard-velocity", "--out", str(tmp_path / "r"), "--set",
                            f"dataset=folder:{missing}"], capsys)
    _one_line(code, err, str(missing), "does not exist")
