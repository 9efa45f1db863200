"""Fixed-seed fingerprints of the distillation objectives LMD (eq. 3.7) and EMD (eq. 3.9).

Two checks per objective on a small float64 batch:

* the loss equals the equation recomputed here from its parts (the same time pairs,
  ``torch.func.jvp`` along the tangent the equation names, the teacher velocity), so the
  objective computes eq. 3.7 / 3.9 and nothing else;
* the loss and the squared gradient norm equal the values recorded below, so refactoring
  :mod:`anystep.training.distill` and the modules it is built from (``flow_objective``,
  ``jvp``, ``conditioning``, ``teacher``) cannot move the numerics of runs trained with it.
  These numbers are a fingerprint of the current code, not a result: a change that is MEANT
  to alter the objective updates them (print them with ``pytest -s`` on this file).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.interpolants import build_interpolant
from anystep.training.base import Batch, build_objective

LINEAR = build_interpolant("linear")
B = 32

# (id, objective, hyper-parameters, class-conditional, (loss, squared gradient norm)); float64, CPU
COND = {"guidance_min": 0.5, "guidance_max": 3.0, "label_dropout": 0.2}
FINGERPRINTS = [
    ("lmd", "lmd", {}, False, (0.0071682380072504515, 0.015474846964503242)),
    ("lmd-input-grad", "lmd", {"teacher_input_grad": True}, False, (0.0071682380072504515, 0.016075764568448808)),
    ("lmd-logit-both", "lmd", {"forward_only": False, "time_kind": "logit_normal", "diag_frac": 0.25}, False,
     (0.0030878571956788944, 0.003479496608813371)),
    ("emd", "emd", {}, False, (0.009099933510567534, 0.01564906420113739)),
    ("emd-window-start", "emd", {"window": 4, "start_frac": 0.25}, False,  # start rows at s = k/4 (times.py)
     (0.002624054469450092, 0.0033595440528088353)),
    ("lmd-guided", "lmd", COND, True, (0.6436307400335888, 149.02684122500833)),
    ("emd-guided", "emd", COND, True, (0.665607839497777, 151.9543706256982)),
]


def _model(kind: str, seed: int, classes: int = 0, guidance_input: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    backbone = BackboneConfig(
        name="mlp", data_shape=(2,), time_inputs=1 if kind == "velocity" else 2,
        width=32, depth=2, fourier_features=2,
    )
    cfg = ModelConfig(kind=kind, backbone=backbone, data_shape=(2,), num_classes=classes,
                      guidance_input=guidance_input)
    model = build_model(cfg).double()
    with torch.no_grad():  # zero-initialised layers (class / guidance embeddings) would hide y and w
        for p in model.parameters():
            if float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.3)
    return model


def _batch(conditional: bool) -> Batch:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    x1 = torch.tensor([1.0, -0.5], dtype=torch.float64) + torch.randn(B, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g) if conditional else None
    return Batch(x0=x0, x1=x1, z=torch.zeros_like(x0), y=y)


def _setup(name: str, hparams: dict, conditional: bool):
    objective = build_objective(name, LINEAR, **hparams)
    classes = 3 if conditional else 0
    model = _model("flowmap", 1, classes, guidance_input=conditional)
    teacher = _model("velocity", 2, classes).requires_grad_(False)  # frozen, as the trainer does
    return objective, model, teacher, _batch(conditional)


@pytest.mark.parametrize(("name", "hparams", "conditional", "want"), [f[1:] for f in FINGERPRINTS],
                         ids=[f[0] for f in FINGERPRINTS])
def test_distillation_loss_fingerprint(name, hparams, conditional, want, one_torch_thread) -> None:
    objective, model, teacher, batch = _setup(name, hparams, conditional)
    out = objective.loss(model, batch, torch.Generator().manual_seed(7), teacher=teacher, step=3)
    out.loss.backward()
    grad2 = sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)
    got = (float(out.loss.detach()), grad2)
    print(f"{name} {hparams} conditional={conditional}: {got!r}")
    assert got == pytest.approx(want, rel=1e-9, abs=0.0)
    assert all(p.grad is None for p in teacher.parameters()), "gradient leaked into the teacher"


@pytest.mark.parametrize("name", ["lmd", "emd"])
def test_distillation_loss_is_the_equation(name: str, one_torch_thread) -> None:
    """LMD: ``|∂_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s))|^2`` (eq. 3.7); EMD: ``|∂_s X + ∇X·b_s|^2`` (eq. 3.9)."""
    objective, model, teacher, batch = _setup(name, {}, False)
    loss = objective.loss(model, batch, torch.Generator().manual_seed(7), teacher=teacher).loss.detach()
    pair = objective.times.sample(B, torch.Generator().manual_seed(7)).to(batch.x0)
    I_s = LINEAR.interpolate(batch.x0, batch.x1, pair.s, batch.z).I_t
    ones = torch.ones_like(pair.t)
    with torch.no_grad():
        if name == "lmd":
            X_st, dt_X = torch.func.jvp(lambda t: model(I_s, pair.s, t), (pair.t,), (ones,))
            residual = dt_X - teacher(X_st, pair.t)
        else:
            b_s = teacher(I_s, pair.s)
            _, residual = torch.func.jvp(lambda x, s: model(x, s, pair.t), (I_s, pair.s), (b_s, ones))
    assert float(loss) == pytest.approx(float(residual.pow(2).mean()), rel=1e-12)
    assert float(loss) > 1e-6  # an untrained map is not the teacher's flow: the check is not vacuous
