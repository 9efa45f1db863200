"""Tests of the trainer: model directory output, provenance, logs, exact resume, checkpoints
without pickle, config validation, learning-rate schedules, EMA and progressive PFMM."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch

from anystep.core.config import BackboneConfig, ConfigError, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import load_model_dir, model_dir_sha256, save_model_dir
from anystep.training.checkpoint import (
    CheckpointError,
    flatten_optimizer_state,
    load_checkpoint,
    unflatten_optimizer_state,
)
from anystep.training.config import TrainConfig, apply_overrides, learning_rate, validate_config
from anystep.training.ema import EMA
from anystep.training.trainer import Trainer, read_log

# tiny models run fastest (and deterministically) on one thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_model(kind: str = "velocity", data_shape=(2,), width: int = 16, ansatz: str = "residual") -> ModelConfig:
    return ModelConfig(
        kind=kind,
        backbone=BackboneConfig(
            name="mlp", data_shape=data_shape, time_inputs=1 if kind == "velocity" else 2, width=width, depth=2,
            fourier_features=4,
        ),
        ansatz=ansatz,
        data_shape=data_shape,
    )


def tiny_config(**kw) -> TrainConfig:
    base = {
        "model": tiny_model(kw.pop("kind", "velocity")),
        "objective": "velocity",
        "batch_size": 32,
        "max_steps": 20,
        "lr": 1e-3,
        "lr_schedule": "constant",
        "log_every": 1,
        "ckpt_every": 5,
        "eval_every": -1,
        "ema_decay": 0.9,
        "seed": 3,
    }
    base.update(kw)
    return TrainConfig(**base)


def save_random_model(path: Path, cfg: ModelConfig, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_model_dir(path, build_model(cfg), cfg)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# --------------------------------------------------------------------------------------
# output of a run
# --------------------------------------------------------------------------------------


def test_tiny_velocity_training_writes_loadable_model_dir(tmp_path):
    cfg = tiny_config(max_steps=50, log_every=10, ckpt_every=25, preset="unit-test")
    out = tmp_path / "run"
    result = Trainer(cfg, out, progress=False, eval_fn=None).fit()

    assert result.completed and result.steps == 50 and result.out_dir == out
    assert math.isfinite(result.final_loss)
    loaded = load_model_dir(out)
    assert loaded.config.kind == "velocity"
    prov = loaded.config.provenance
    assert prov["objective"] == "velocity" and prov["steps"] == 50 and prov["preset"] == "unit-test"
    assert prov["torch_version"] == torch.__version__ and prov["anystep_version"]
    assert prov["teacher"] is None and prov["weights"] == "ema"
    assert TrainConfig.from_dict(prov["train_config"]).max_steps == 50
    assert prov["final_loss"] == result.final_loss
    # the model directory holds the EMA weights of the final checkpoint, not the raw weights
    ck = load_checkpoint(out)
    assert ck.state["step"] == 50
    assert_same_weights(weights(out / "model.safetensors"), ck.ema)
    assert any(not torch.equal(ck.ema[k], ck.model[k]) for k in ck.model)
    # train_config.json round-trips to the config that was run
    assert TrainConfig.load(out / "train_config.json") == cfg
    rows = read_log(out)
    steps = [r["step"] for r in rows]
    assert steps == [10, 20, 30, 40, 50]
    for r in rows:
        assert {"loss", "lr", "time", "steps_per_s", "velocity"} <= set(r)
        assert r["lr"] == cfg.lr
    assert rows[-1]["loss"] == result.final_loss
    # training on the checkerboard reduced the loss (first vs. last logged loss)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_default_eval_logs_2d_kl(tmp_path):
    cfg = tiny_config(max_steps=4, eval_every=2, eval_samples=500, kind="flowmap", objective="fmm",
                      objective_hparams={"window": 4})
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    evals = [r for r in read_log(tmp_path / "run") if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[-1]["eval"]) == {"kl_1step", "kl_2step", "kl_4step"}
    assert result.eval == evals[-1]["eval"] and all(v > 0 for v in result.eval.values())
    assert load_model_dir(tmp_path / "run").config.provenance["eval"] == result.eval


def test_custom_eval_hook_gets_ema_model(tmp_path):
    seen = []

    def hook(model, step):
        seen.append((step, model.training, getattr(model, "kind", None)))
        return {"answer": 42.0}

    Trainer(tiny_config(max_steps=6, eval_every=3), tmp_path / "r", progress=False, eval_fn=hook).fit()
    assert seen == [(3, False, "velocity"), (6, False, "velocity")]


# --------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective,kind,hparams",
    [("velocity", "velocity", {}), ("fmm", "flowmap", {"window": 2})],
)
def test_resume_continues_exactly(tmp_path, objective, kind, hparams):
    cfg = tiny_config(objective=objective, kind=kind, objective_hparams=hparams, max_steps=16, ckpt_every=5,
                      lr_schedule="cosine", lr_warmup_steps=3)
    a = Trainer(cfg, tmp_path / "a", progress=False, eval_fn=None).fit()
    # run b is interrupted after step 7 (between checkpoints 5 and 10), then resumed
    b1 = Trainer(cfg, tmp_path / "b", progress=False, eval_fn=None).fit(until=7)
    assert not b1.completed and b1.steps == 7
    assert not (tmp_path / "b" / "model.safetensors").exists()
    b2 = Trainer(cfg, tmp_path / "b", resume=True, progress=False, eval_fn=None).fit()
    assert b2.resumed_from == 7 and b2.steps == 16
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(lb) == list(range(1, 17))  # log has one line per step, no duplicates
    assert la == lb
    assert a.final_loss == b2.final_loss
    assert_same_weights(weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors"))
    ca, cb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert_same_weights(ca.model, cb.model)


def test_ctrl_c_checkpoints_at_a_step_boundary_and_resumes_exactly(tmp_path):
    import os
    import signal

    cfg = tiny_config(max_steps=12, ckpt_every=0, eval_every=1)
    Trainer(cfg, tmp_path / "a", progress=False, eval_fn=lambda m, s: {}).fit()

    def press_ctrl_c(model, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return {}

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt, match="after step 7"):
        Trainer(cfg, tmp_path / "b", progress=False, eval_fn=press_ctrl_c).fit()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert load_checkpoint(tmp_path / "b").state["step"] == 7
    Trainer(cfg, tmp_path / "b", resume=True, progress=False, eval_fn=lambda m, s: {}).fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert_same_weights(weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors"))


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    cfg = tiny_config(max_steps=12, ckpt_every=5)
    Trainer(cfg, tmp_path / "a", progress=False, eval_fn=None).fit()
    Trainer(cfg, tmp_path / "b", progress=False, eval_fn=None).fit(until=5)
    # simulate a crash after step 8: the log has lines beyond the checkpoint, one cut short
    log = tmp_path / "b" / "train_log.jsonl"
    with open(log, "a") as f:
        f.writelines(json.dumps({"step": step, "loss": -1.0}) + "\n" for step in (6, 7, 8))
        f.write('{"step": 9, "lo')
    Trainer(cfg, tmp_path / "b", resume=True, progress=False, eval_fn=None).fit()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_resume_refuses_a_different_config_and_missing_checkpoint(tmp_path):
    cfg = tiny_config(max_steps=6)
    Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit(until=5)
    with pytest.raises(CheckpointError, match="lr"):
        Trainer(cfg.replace(lr=5e-3), tmp_path / "r", resume=True, progress=False).fit()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(cfg, tmp_path / "empty", resume=True, progress=False).fit()
    # max_steps may grow on resume
    r = Trainer(cfg.replace(max_steps=8), tmp_path / "r", resume=True, progress=False, eval_fn=None).fit()
    assert r.steps == 8 and r.completed


def test_fresh_run_refuses_an_existing_run_dir(tmp_path):
    cfg = tiny_config(max_steps=2)
    Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg, tmp_path / "r", progress=False).fit()


# --------------------------------------------------------------------------------------
# checkpoint format
# --------------------------------------------------------------------------------------


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 8:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(header, dict)


def test_checkpoint_files_are_safetensors_or_json_never_pickle(tmp_path):
    cfg = tiny_config(max_steps=6, ckpt_every=3, kind="flowmap", objective="fmm", objective_hparams={"window": 2})
    Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit()
    files = sorted(p for p in (tmp_path / "r").rglob("*") if p.is_file())
    names = {p.relative_to(tmp_path / "r").as_posix() for p in files}
    assert {"checkpoint/model.safetensors", "checkpoint/ema.safetensors", "checkpoint/optimizer.safetensors",
            "checkpoint/optimizer.json", "checkpoint/rng.safetensors", "checkpoint/state.json"} <= names
    for p in files:
        data = p.read_bytes()
        assert not data.startswith(b"\x80"), f"{p} looks like a pickle"
        assert not data.startswith(b"PK"), f"{p} looks like a torch.save zip"
        if p.suffix == ".safetensors":
            assert _is_safetensors(data), p
        else:
            json.loads(data) if p.suffix == ".json" else [json.loads(line) for line in data.splitlines()]
    rng = weights(tmp_path / "r" / "checkpoint" / "rng.safetensors")
    assert all(t.dtype == torch.uint8 for t in rng.values())
    assert {"rank0.data", "rank0.torch", "rank0.objective0"} <= set(rng)
    # no temporary folders are left behind
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]


def test_optimizer_state_round_trips_through_tensors_and_json():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9), weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(meta))))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for idx in s1["state"]:
        for k, v in s1["state"][idx].items():
            assert torch.equal(v, s2["state"][idx][k])


# --------------------------------------------------------------------------------------
# config and validation
# --------------------------------------------------------------------------------------


def test_config_json_round_trip_and_unknown_keys():
    cfg = tiny_config(objective_hparams={"time_kind": "uniform"}, grad_clip=1.0, betas=(0.9, 0.99))
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown training config key") as e:
        TrainConfig.from_dict({**cfg.to_dict(), "lrr": 1})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.dataset"):
        TrainConfig.from_dict({**cfg.to_dict(), "dataset": "moons"})


def test_overrides_set_nested_and_free_keys():
    cfg = apply_overrides(
        tiny_config(),
        ["model.backbone.width=8", "objective_hparams.time_kind=logit_normal", "dataset=moons", "grad_clip=null"],
    )
    assert cfg.model.backbone.width == 8 and cfg.objective_hparams == {"time_kind": "logit_normal"}
    assert cfg.dataset == "moons" and cfg.model.dataset == "moons" and cfg.grad_clip is None
    for bad in ("nokey=1", "model.nokey=1", "lr", "lr=-1"):
        with pytest.raises(ConfigError):
            apply_overrides(tiny_config(), [bad])


@pytest.mark.parametrize(
    "change,match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr_schedule": "exp"}, "lr_schedule"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"coupling": "magic"}, "coupling"),
        ({"precision": "fp8"}, "precision"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"batch_size": 30, "micro_batches": 4}, "divisible"),
    ],
)
def test_config_rejects_bad_values_with_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        tiny_config(**change)
    assert "\n" not in str(e.value)


def test_validation_errors_before_training(tmp_path):
    vel_dir = save_random_model(tmp_path / "vel", tiny_model("velocity"))
    fm_dir = save_random_model(tmp_path / "fm", tiny_model("flowmap"))
    digits_model = tiny_model("velocity", data_shape=(1, 8, 8))
    digits_vel = save_random_model(tmp_path / "dv", digits_model)
    fm = tiny_model("flowmap")
    cases = [
        (tiny_config(objective="no-such-objective"), "unknown objective"),
        (tiny_config(objective="lmd", model=fm), "needs a velocity teacher"),
        (tiny_config(objective="lmd", model=fm, teacher=str(fm_dir)), "velocity teacher but"),
        (tiny_config(objective="pfmm", model=fm, teacher=str(vel_dir)), "flowmap teacher but"),
        (tiny_config(objective="lmd", model=fm, teacher=str(digits_vel)), "data shape"),
        (tiny_config(objective="lmd", model=fm, teacher=str(tmp_path / "missing")), "does not exist"),
        (tiny_config(objective="velocity", teacher=str(vel_dir)), "takes no teacher"),
        (tiny_config(objective="velocity", dataset="digits"), "shape"),
        (tiny_config(objective="velocity", model=digits_model), "shape"),
        (tiny_config(objective="velocity", base="digits"), "base"),
        (tiny_config(objective="fmm"), "model.kind"),
        (tiny_config(objective="fmm", model=fm, objective_hparams={"K": 4}), "hyper-parameter"),
        (tiny_config(objective="lmd", model=tiny_model("flowmap", width=8), teacher=str(vel_dir),
                     init_from=str(fm_dir)), "architecture"),
    ]
    for cfg, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            Trainer(cfg, tmp_path / "never", progress=False)
        assert "\n" not in str(e.value), match
    assert not (tmp_path / "never").exists()


def test_validate_accepts_a_good_distillation_config(tmp_path):
    vel_dir = save_random_model(tmp_path / "vel", tiny_model("velocity"))
    v = validate_config(tiny_config(objective="lmd", model=tiny_model("flowmap"), teacher=str(vel_dir)))
    assert v.teacher_config.kind == "velocity" and v.objective_cls.name == "lmd"


# --------------------------------------------------------------------------------------
# learning rate, EMA
# --------------------------------------------------------------------------------------


def test_learning_rate_schedules():
    step_cfg = tiny_config(lr=1e-4, lr_schedule="step", lr_decay_every=1000, lr_decay_rate=0.992, max_steps=50_000)
    assert learning_rate(step_cfg, 0) == 1e-4 and learning_rate(step_cfg, 999) == 1e-4
    assert learning_rate(step_cfg, 1000) == pytest.approx(1e-4 * 0.992)
    assert learning_rate(step_cfg, 10_500) == pytest.approx(1e-4 * 0.992**10)
    lin = tiny_config(lr=1.0, lr_schedule="linear", lr_decay_start=100, max_steps=300, lr_min=0.1)
    assert learning_rate(lin, 50) == 1.0 and learning_rate(lin, 100) == 1.0
    assert learning_rate(lin, 200) == pytest.approx(0.55) and learning_rate(lin, 300) == pytest.approx(0.1)
    cos = tiny_config(lr=1.0, lr_schedule="cosine", max_steps=100)
    assert learning_rate(cos, 50) == pytest.approx(0.5) and learning_rate(cos, 100) == pytest.approx(0.0)
    warm = tiny_config(lr=1.0, lr_schedule="constant", lr_warmup_steps=4)
    assert [learning_rate(warm, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_ema_update_rule_and_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9))
    ema2 = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema2.update(model)
    assert torch.allclose(ema2.module.weight, torch.full((1, 2), 2.0))
    assert not ema2.module.weight.requires_grad


# --------------------------------------------------------------------------------------
# progressive PFMM
# --------------------------------------------------------------------------------------


def test_pfmm_warm_starts_from_the_teacher(tmp_path):
    fm = tiny_model("flowmap")
    teacher = save_random_model(tmp_path / "teacher", fm, seed=5)
    cfg = tiny_config(objective="pfmm", model=fm, teacher=str(teacher), objective_hparams={"steps": 2},
                      max_steps=1, lr=1e-12, ema_decay=0.0)
    tr = Trainer(cfg, tmp_path / "run", progress=False, eval_fn=None)
    assert tr.config.init_from == str(teacher)
    tr.fit()
    # with a negligible learning rate the student still equals its warm start, the teacher
    got = weights(tmp_path / "run" / "model.safetensors")
    want = weights(teacher / "model.safetensors")
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-9)
    prov = load_model_dir(tmp_path / "run").config.provenance
    assert prov["teacher_sha256"] == model_dir_sha256(teacher) and prov["init_from_sha256"] == model_dir_sha256(teacher)
    # recorded without the machine's directories: outside the working directory only the last two parts
    assert prov["init_from"] == prov["teacher"] == "/".join(teacher.parts[-2:])


def test_progressive_pfmm_rounds_replace_the_teacher_and_resume_exactly(tmp_path):
    fm = tiny_model("flowmap")
    teacher = save_random_model(tmp_path / "teacher", fm, seed=5)
    cfg = tiny_config(objective="pfmm", model=fm, teacher=str(teacher),
                      objective_hparams={"steps": 4, "M": 2}, max_steps=10, ckpt_every=5)
    tr = Trainer(cfg, tmp_path / "a", progress=False, eval_fn=None)
    assert [(r.start, r.end, r.hparams["steps"], r.hparams["window"]) for r in tr.rounds] == [(0, 5, 2, 2), (5, 10, 2, 1)]
    tr.fit()
    rows = read_log(tmp_path / "a")
    assert [r["round"] for r in rows] == [0] * 5 + [1] * 5
    ck = load_checkpoint(tmp_path / "a")
    assert ck.teacher is not None and ck.state["round"] == 1
    # the round-1 teacher is the student's EMA at the end of round 0, not the original teacher
    orig = weights(teacher / "model.safetensors")
    assert any(not torch.equal(ck.teacher[k], orig[k]) for k in orig)
    prov = load_model_dir(tmp_path / "a").config.provenance
    assert len(prov["progressive_rounds"]) == 2
    # interrupted exactly at the round boundary, then resumed
    Trainer(cfg, tmp_path / "b", progress=False, eval_fn=None).fit(until=5)
    Trainer(cfg, tmp_path / "b", resume=True, progress=False, eval_fn=None).fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert_same_weights(weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors"))


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    from anystep.training.trainer import TrainingError

    cfg = tiny_config(lr=1e30, max_steps=200, ckpt_every=0)
    with pytest.raises(TrainingError, match="lower lr"):
        Trainer(cfg, tmp_path / "r", progress=False, eval_fn=None).fit()
