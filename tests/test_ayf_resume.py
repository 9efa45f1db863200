"""AYF's learned adaptive weight is part of the checkpoint: an interrupted run resumes exactly."""

from __future__ import annotations

from test_trainer import (
    assert_same_weights,
    losses,
    save_random_model,
    tiny_config,
    tiny_model,
    weights,
)

from anystep.training.trainer import Trainer


def test_ayf_adaptive_weight_resumes_exactly(tmp_path):
    teacher = save_random_model(tmp_path / "teacher", tiny_model("velocity"))
    cfg = tiny_config(objective="ayf_lmd", kind="flowmap", objective_hparams={"adaptive": True}, max_steps=12,
                      ckpt_every=5, teacher=str(teacher))
    Trainer(cfg, tmp_path / "a", progress=False, eval_fn=None).fit()
    Trainer(cfg, tmp_path / "b", progress=False, eval_fn=None).fit(until=7)
    Trainer(cfg, tmp_path / "b", resume=True, progress=False, eval_fn=None).fit()
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la == lb  # the weight net (and its Adam) came back from the checkpoint
    assert_same_weights(weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors"))
