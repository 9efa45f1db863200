"""Class-conditional training: label dropout, the guided (CFG) teacher of LMD / EMD, the trainer's labels.

Analytic case. Class ``c`` (the null class ``∅`` included) is ``N(m_c, sigma^2 I)`` with the
base ``N(0, I)`` and the linear interpolant, so ``b_t(x; c) = m_c + k_t (x - t m_c)`` with
``k_t = S_t'/S_t`` the same for every class. The guided velocity
``b(x; ∅) + w (b(x; y) - b(x; ∅))`` is then exactly the velocity towards
``N(m_w, sigma^2 I)`` with ``m_w = m_∅ + w (m_y - m_∅)``, whose flow map is known:
``X_{s,t}(x) = t m_w + (S_t / S_s)(x - s m_w)``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from anystep.core.config import BackboneConfig, InterpolantConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.interpolants import build_interpolant
from anystep.training.base import Batch, build_objective
from anystep.training.config import TrainConfig
from anystep.training.distill import ObjectiveError
from anystep.training.trainer import Trainer, TrainingError

SIGMA = 0.3
MEANS = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]], dtype=torch.float64)  # classes 0..2
NULL_MEAN = torch.tensor([0.0, -1.0], dtype=torch.float64)  # the null class
K = MEANS.shape[0]


def _means(y: Tensor) -> Tensor:
    table = torch.cat([MEANS, NULL_MEAN[None]])
    return table[y]


def _S(t: Tensor) -> Tensor:
    return torch.sqrt((1 - t) ** 2 + t**2 * SIGMA**2)[:, None]


def _k(t: Tensor) -> Tensor:
    return ((t * SIGMA**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * SIGMA**2))[:, None]


class ExactConditionalVelocity(nn.Module):
    """``b_t(x; c)`` of the analytic case (parameter-free, any dtype)."""

    kind = "velocity"

    def __init__(self) -> None:
        super().__init__()
        self.backbone = SimpleNamespace(num_classes=K, guidance_input=False)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        y = torch.full((x.shape[0],), K) if y is None else y
        m = _means(y).to(x)
        return m + _k(t.to(x)) * (x - t.to(x)[:, None] * m)

    def velocity(self, x, t, y=None):
        return self(x, t, y)


class ExactGuidedMap(nn.Module):
    """The exact flow map of the guided ODE, ``X_{s,t}(x; y, w)``; ``ignore_w`` uses w = 1."""

    kind = "flowmap"

    def __init__(self, ignore_w: bool = False) -> None:
        super().__init__()
        self.backbone = SimpleNamespace(num_classes=K, guidance_input=True)
        self.ignore_w = ignore_w

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        w_ = torch.ones_like(s) if self.ignore_w else w
        m_null = NULL_MEAN.to(x)[None]
        m_w = m_null + w_.to(x)[:, None] * (_means(y).to(x) - m_null)
        return t[:, None] * m_w + _S(t) / _S(s) * (x - s[:, None] * m_w)


def _batch(n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x1 = MEANS[y] + SIGMA * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return Batch(x0=x0, x1=x1, z=torch.zeros_like(x0), y=y)


def _objective(name: str, **hp):
    return build_objective(name, build_interpolant(InterpolantConfig()), **hp)


@pytest.mark.parametrize("name", ["lmd", "emd"])
def test_guided_teacher_is_the_target_of_distillation(name):
    """The exact guided map has zero loss at every w; the unguided (w = 1) map does not."""
    obj = _objective(name, guidance_min=0.0, guidance_max=4.0)
    teacher = ExactConditionalVelocity()
    batch = _batch(512)
    exact = obj.loss(ExactGuidedMap(), batch, torch.Generator().manual_seed(1), teacher=teacher).loss
    wrong = obj.loss(ExactGuidedMap(ignore_w=True), batch, torch.Generator().manual_seed(1), teacher=teacher).loss
    assert float(exact) < 1e-12
    assert float(wrong) > 1e-2


def test_fixed_guidance_for_a_map_without_w_input():
    """A conditional map without a w input learns one fixed scale; a range is refused."""

    class FixedMap(ExactGuidedMap):
        def __init__(self, w: float) -> None:
            super().__init__()
            self.backbone = SimpleNamespace(num_classes=K, guidance_input=False)
            self.w_fixed = w

        def forward(self, x, s, t, y=None, w=None):
            assert w is None
            return super().forward(x, s, t, y, torch.full_like(s, self.w_fixed))

    teacher, batch = ExactConditionalVelocity(), _batch(256)
    ok = _objective("lmd", guidance_min=2.0, guidance_max=2.0)
    assert float(ok.loss(FixedMap(2.0), batch, torch.Generator(), teacher=teacher).loss) < 1e-12
    assert float(ok.loss(FixedMap(1.0), batch, torch.Generator(), teacher=teacher).loss) > 1e-2
    with pytest.raises(ObjectiveError, match="guidance_input"):
        _objective("lmd", guidance_min=1.0, guidance_max=3.0).loss(FixedMap(2.0), batch, torch.Generator(), teacher=teacher)


def test_conditional_student_needs_labels_and_a_conditional_teacher():
    obj = _objective("lmd")
    batch = dataclasses.replace(_batch(16), y=None)
    with pytest.raises(ObjectiveError, match="no labels"):
        obj.loss(ExactGuidedMap(), batch, torch.Generator(), teacher=ExactConditionalVelocity())

    class Uncond(nn.Module):
        kind = "velocity"

        def forward(self, x, t):
            return x

    with pytest.raises(ObjectiveError, match="teacher has none"):
        obj.loss(ExactGuidedMap(), _batch(16), torch.Generator(), teacher=Uncond())


class _Spy(nn.Module):
    """A velocity model recording the labels it is given."""

    kind = "velocity"

    def __init__(self) -> None:
        super().__init__()
        self.backbone = SimpleNamespace(num_classes=K, guidance_input=False)
        self.p = nn.Parameter(torch.zeros(()))
        self.seen: list[Tensor] = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return x * self.p


@pytest.mark.parametrize("p, lo, hi", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.3, 0.22, 0.38)])
def test_label_dropout_replaces_labels_by_the_null_class(p, lo, hi):
    spy = _Spy()
    batch = _batch(400)
    _objective("velocity", label_dropout=p).loss(spy, batch, torch.Generator().manual_seed(0))
    y = spy.seen[-1]
    dropped = y == K
    assert lo <= float(dropped.double().mean()) <= hi
    assert torch.equal(y[~dropped], batch.y[~dropped])


def _tiny_cond(kind: str, **kw) -> TrainConfig:
    model = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1 if kind == "velocity" else 2,
                                width=64, depth=2),
        data_shape=(2,), dataset="blobs", num_classes=4, guidance_input=kind == "flowmap", ansatz="residual",
    )
    base = {"model": model, "objective": "velocity", "dataset": "blobs", "batch_size": 128, "max_steps": 5,
            "lr": 1e-3, "lr_schedule": "constant", "log_every": 1, "ckpt_every": 5, "eval_every": -1,
            "ema_decay": 0.0, "seed": 0}
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_passes_labels_and_checks_the_class_count(tmp_path):
    out = Trainer(_tiny_cond("velocity"), tmp_path / "v", progress=False).fit()
    assert out is not None
    from anystep.core.modeldir import load_model_dir

    lm = load_model_dir(tmp_path / "v")
    assert lm.config.num_classes == 4
    bad = _tiny_cond("velocity", model=dataclasses.replace(_tiny_cond("velocity").model, num_classes=3))
    with pytest.raises(TrainingError, match="num_classes=3"):
        Trainer(bad, tmp_path / "bad", progress=False).fit()


def test_unconditional_training_stream_is_unchanged():
    """An unconditional model ignores labels: the velocity loss equals the label-free loss exactly."""
    model = build_model(dataclasses.replace(_tiny_cond("velocity").model, num_classes=0, dataset="moons"))
    batch = _batch(64)
    obj = _objective("velocity")
    a = obj.loss(model, dataclasses.replace(batch, x0=batch.x0.float(), x1=batch.x1.float(), z=batch.z.float()),
                 torch.Generator().manual_seed(4)).loss
    b = obj.loss(model, Batch(x0=batch.x0.float(), x1=batch.x1.float(), z=batch.z.float()),
                 torch.Generator().manual_seed(4)).loss
    assert torch.equal(a, b)


@pytest.mark.slow
def test_lmd_learns_the_guided_one_step_map(tmp_path):
    """Train a small conditional map by LMD on the exact teacher; one step lands on m_w for two w."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="flowmap", backbone=BackboneConfig(name="mlp", data_shape=(2,), width=128, depth=3),
                      data_shape=(2,), num_classes=K, guidance_input=True, ansatz="residual")
    model = build_model(cfg)
    obj = _objective("lmd", guidance_min=1.0, guidance_max=2.0)
    teacher = ExactConditionalVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=600, eta_min=1e-4)
    for step in range(600):
        b = _batch(256, seed=step)
        b = Batch(x0=b.x0.float(), x1=b.x1.float(), z=b.z.float(), y=b.y)
        loss = obj.loss(model, b, g, teacher=teacher).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    n = 2000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for w in (1.0, 2.0):
            y = torch.zeros(n, dtype=torch.long)
            x1 = model(x0, torch.zeros(n), torch.ones(n), y=y, w=torch.full((n,), w))
            want = (NULL_MEAN + w * (MEANS[0] - NULL_MEAN)).float()
            assert torch.allclose(x1.mean(0), want, atol=0.2), (w, x1.mean(0), want)
            assert 0.5 * SIGMA < float(x1.std(0).mean()) < 2.0 * SIGMA


def test_paired_restoration_preset_draws_degraded_copies(tmp_path):
    """digits-restore-*: the trainer draws (noisy, clean) pairs from the base; the map runs both ways."""
    from anystep.training.presets import get_preset

    cfg = get_preset("digits-restore-velocity").replace(max_steps=1, batch_size=8, ckpt_every=1, log_every=1)
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    trainer._setup_data()
    (batch,) = trainer._draw_batches()
    assert abs(float((batch.x0 - batch.x1).std()) - 0.6) < 0.1
    assert batch.y is None
    lmd = get_preset("digits-restore-lmd")
    assert lmd.coupling == "paired" and lmd.objective_hparams["forward_only"] is False
