"""Trainer execution options: bf16/fp16 autocast (JVPs in fp32), loss scaling, channels_last,
torch.compile and the samples/s log — on CPU (the same code runs on CUDA)."""

from __future__ import annotations

import pytest
import torch

from anystep.core.config import BackboneConfig, ConfigError, InterpolantConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.training.accel import AccelOptions, MixedPrecision, prepare_model, uses_channels_last
from anystep.training.checkpoint import load_checkpoint
from anystep.training.config import TrainConfig
from anystep.training.distill import jvp_times
from anystep.training.trainer import Trainer, read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def image_model(kind: str = "velocity") -> ModelConfig:
    bb = BackboneConfig(
        name="unet", data_shape=(1, 8, 8), time_inputs=1 if kind == "velocity" else 2,
        channels=8, channel_mult=(1, 2), num_res_blocks=1, fourier_features=4,
    )
    return ModelConfig(kind=kind, backbone=bb, data_shape=(1, 8, 8), ansatz="convex",
                       interpolant=InterpolantConfig(name="linear", gamma=0.0))


def image_config(**kw) -> TrainConfig:
    base = {
        "model": image_model(kw.pop("kind", "velocity")), "objective": "velocity", "dataset": "digits",
        "batch_size": 8, "max_steps": 4, "lr": 1e-3, "lr_schedule": "constant", "log_every": 1,
        "ckpt_every": 2, "eval_every": -1, "ema_decay": 0.5, "seed": 1,
    }
    base.update(kw)
    return TrainConfig(**base)


def final_weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_jvp_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model(image_model("flowmap"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 1, 8, 8)
    s, t = torch.rand(3), torch.rand(3)
    ref = jvp_times(model, x, s, t, dt=1.0)
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        assert model.backbone(x, s, t).dtype == torch.bfloat16  # the backbone is autocast...
        half = jvp_times(model, x.bfloat16(), s, t, dt=1.0)
    assert half.value.dtype == half.tangent.dtype == torch.float32  # ...the JVP is not
    torch.testing.assert_close(half.tangent, ref.tangent, rtol=1e-2, atol=1e-2)  # x was rounded to bf16
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        same = jvp_times(model, x, s, t, dt=1.0)
    assert torch.equal(same.tangent, ref.tangent)  # float32 input: bitwise the fp32 JVP


def test_bf16_and_fp16_train_and_log_throughput(tmp_path):
    for precision in ("bf16", "fp16"):
        out = tmp_path / precision
        res = Trainer(image_config(precision=precision), out, progress=False, eval_fn=None).fit()
        assert res.completed and res.final_loss is not None and res.final_loss == res.final_loss
        rows = [r for r in read_log(out) if "loss" in r]
        assert len(rows) == 4 and all(r["samples_per_s"] > 0 for r in rows)
        amp = load_checkpoint(out).state["amp"]
        assert (amp is None) == (precision == "bf16")
        if precision == "fp16":
            assert amp["scale"] > 0 and "_growth_tracker" in amp


def test_fp16_loss_scaling_resumes_exactly(tmp_path):
    cfg = image_config(precision="fp16", kind="flowmap", objective="fmm", objective_hparams={"window": 4},
                       grad_clip=1.0)
    Trainer(cfg, tmp_path / "full", progress=False, eval_fn=None).fit()
    Trainer(cfg, tmp_path / "part", progress=False, eval_fn=None).fit(until=2)
    Trainer(cfg, tmp_path / "part", resume=True, progress=False, eval_fn=None).fit()
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_and_compile_do_not_change_the_update(tmp_path):
    cfg = image_config()
    Trainer(cfg, tmp_path / "plain", progress=False, eval_fn=None).fit()
    opts = AccelOptions(channels_last=True, compile="default", compile_backend="eager")
    Trainer(cfg, tmp_path / "fast", progress=False, eval_fn=None, accel=opts).fit()
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "fast")
    assert set(a) == set(b)  # compiling in place keeps parameter names
    for k in a:
        assert b[k].is_contiguous()
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_lmd_with_a_compiled_channels_last_teacher(tmp_path):
    Trainer(image_config(max_steps=1), tmp_path / "teacher", progress=False, eval_fn=None).fit()
    cfg = image_config(kind="flowmap", objective="lmd", teacher=str(tmp_path / "teacher"), max_steps=2,
                       precision="bf16")
    opts = AccelOptions(channels_last=True, compile="default", compile_backend="eager")
    res = Trainer(cfg, tmp_path / "lmd", progress=False, eval_fn=None, accel=opts).fit()
    assert res.completed and res.final_loss == res.final_loss
    # the flow-map student stays contiguous (GroupNorm's JVP rejects channels_last), the teacher not
    student = build_model(cfg.model)
    assert not uses_channels_last(student, opts, student=True)
    assert uses_channels_last(student, opts, student=False)
    assert uses_channels_last(build_model(image_model()), opts, student=True)


def test_bad_accel_options_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="compile"):
        AccelOptions(compile="reduce-overhead")
    with pytest.raises(ConfigError, match="precision"):
        MixedPrecision("fp8", torch.device("cpu"))
    mlp = ModelConfig(kind="velocity", backbone=BackboneConfig(name="mlp", data_shape=(2,), width=8, depth=1, time_inputs=1),
                      data_shape=(2,))
    with pytest.raises(ConfigError, match="channels_last needs image data"):
        prepare_model(build_model(mlp), AccelOptions(channels_last=True), (2,))
    with pytest.raises(ConfigError, match="AccelOptions"):
        Trainer(image_config(), tmp_path / "x", accel={"channels_last": True})
    mlp_cfg = image_config(model=mlp, dataset="checkerboard")
    with pytest.raises(ConfigError, match="channels_last needs image data"):
        Trainer(mlp_cfg, tmp_path / "y", accel=AccelOptions(channels_last=True))
    assert not (tmp_path / "y").exists()  # refused before anything was written
