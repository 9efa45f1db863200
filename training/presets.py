"""Named training presets: each is a function returning a :class:`TrainConfig`.

Checkerboard (paper Sec. 4.1 / App. D.1): a fully connected network with 512 units per
hidden layer and 6 layers, for a velocity ``b_t(x)`` or a flow map ``X_{s,t}(x)``,
optimised with Adam for ``5 x 10^4`` iterations; Gaussian base, linear interpolant
``I_t = (1 - t) x0 + t x1`` (``gamma = 0``), independent coupling. The paper lists no
learning rate or batch size for the 2D runs; we use its image settings (Table 4):
learning rate ``1e-4`` decayed by ``0.992`` every 1000 steps, batch 256. The flow maps of
the paper's experiments use the convex ansatz (eq. 4.1); the successor objectives
(self-distillation, Eulerian estimation, Align Your Flow) use the residual form
``x + (t - s) v_{s,t}(x)`` of their papers.

Digits (8x8, ``data_shape (1, 8, 8)``): a small U-Net (32 channels, multipliers (1, 2),
one residual block per level), batch 256, the same learning-rate schedule, ``2 x 10^4``
steps (a laptop-scale stand-in for the paper's CIFAR-10 runs, Table 4).

Teacher chains (pass the teacher with ``--teacher DIR``):
``*-velocity`` -> ``*-lmd`` / ``*-emd`` / ``*-ayf-*``; ``*-fmm4`` -> ``*-pfmm``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anystep.core.config import BackboneConfig, ConfigError, InterpolantConfig, ModelConfig
from anystep.training.config import TrainConfig

__all__ = ["PRESETS", "Preset", "checkerboard_config", "digits_config", "get_preset", "list_presets"]

# Paper settings (Sec. 4.1; Table 4 for the learning rate schedule and batch size).
PAPER_2D = {
    "width": 512,
    "depth": 6,
    "max_steps": 50_000,
    "batch_size": 256,
    "lr": 1e-4,
    "lr_decay_every": 1000,
    "lr_decay_rate": 0.992,
}


@dataclass(frozen=True)
class Preset:
    """A named configuration.

    Attributes:
        name: preset name (``anystep train NAME``).
        description: one line for ``anystep train --help``.
        build: function returning a fresh :class:`TrainConfig`.
    """

    name: str
    description: str
    build: Callable[[], TrainConfig]


PRESETS: dict[str, Preset] = {}


def _register(name: str, description: str) -> Callable[[Callable[[], TrainConfig]], Callable[[], TrainConfig]]:
    def deco(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
        def build() -> TrainConfig:
            cfg = fn()
            return cfg.replace(preset=name)

        build.__doc__ = fn.__doc__
        build.__name__ = fn.__name__
        PRESETS[name] = Preset(name, description, build)
        return build

    return deco


def list_presets() -> list[Preset]:
    """All presets in definition order."""
    return list(PRESETS.values())


def get_preset(name: str) -> TrainConfig:
    """The config of preset ``name``.

    Raises:
        ConfigError: unknown name (the message lists the presets).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (or give a JSON config file)")
    return PRESETS[name].build()


# ------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------


def checkerboard_config(
    kind: str, objective: str, hparams: dict[str, Any] | None = None, ansatz: str = "convex"
) -> TrainConfig:
    """The paper's checkerboard run (Sec. 4.1 / App. D.1) for one objective.

    The base of every checkerboard preset (``presets``, ``presets_family``, ...).

    An MLP of ``PAPER_2D`` width x depth on ``data_shape (2,)``, linear interpolant
    (``gamma = 0``), Gaussian base, independent coupling, Adam with the step schedule of
    Table 4 for ``5 x 10^4`` steps.

    Args:
        kind: ``"velocity"`` (a field ``b_t``, one time input) or ``"flowmap"`` (``X_{s,t}``,
            two time inputs).
        objective: a registered objective name (``"lmd"``, ``"fmm"``, ...).
        hparams: the objective's hyper-parameters (copied); None: its defaults.
        ansatz: the flow-map parameterisation, ``"convex"`` (eq. 4.1) or ``"residual"``
            (``x + (t - s) v_{s,t}(x)``).

    Returns:
        A fresh config without a preset name (the preset registry sets it).
    """
    model = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(
            name="mlp",
            data_shape=(2,),
            time_inputs=1 if kind == "velocity" else 2,
            width=PAPER_2D["width"],
            depth=PAPER_2D["depth"],
        ),
        interpolant=InterpolantConfig(name="linear", gamma=0.0),
        ansatz=ansatz,
        data_shape=(2,),
    )
    return TrainConfig(
        model=model,
        objective=objective,
        objective_hparams=dict(hparams or {}),
        dataset="checkerboard",
        base="gaussian",
        coupling="independent",
        batch_size=PAPER_2D["batch_size"],
        max_steps=PAPER_2D["max_steps"],
        lr=PAPER_2D["lr"],
        lr_schedule="step",
        lr_decay_every=PAPER_2D["lr_decay_every"],
        lr_decay_rate=PAPER_2D["lr_decay_rate"],
        optimizer="adam",
        ema_decay=0.999,
        log_every=100,
        ckpt_every=2000,
        eval_every=5000,
        eval_samples=20_000,
    )


def digits_config(
    kind: str, objective: str, hparams: dict[str, Any] | None = None, ansatz: str = "convex"
) -> TrainConfig:
    """The 8x8 digits run for one objective.

    The base of every digits preset (``presets``, ``presets_family``, ``presets_cond``).

    A small U-Net (32 channels, multipliers (1, 2), one residual block per level) on
    ``data_shape (1, 8, 8)``, linear interpolant, Gaussian base, independent coupling,
    batch 256, the step schedule of Table 4, ``2 x 10^4`` steps.

    Args:
        kind: ``"velocity"`` or ``"flowmap"``.
        objective: a registered objective name.
        hparams: the objective's hyper-parameters (copied); None: its defaults.
        ansatz: ``"convex"`` (eq. 4.1) or ``"residual"`` (``x + (t - s) v_{s,t}(x)``).

    Returns:
        A fresh config without a preset name (the preset registry sets it).
    """
    model = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(
            name="unet",
            data_shape=(1, 8, 8),
            time_inputs=1 if kind == "velocity" else 2,
            channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(),
        ),
        interpolant=InterpolantConfig(name="linear", gamma=0.0),
        ansatz=ansatz,
        data_shape=(1, 8, 8),
    )
    return TrainConfig(
        model=model,
        objective=objective,
        objective_hparams=dict(hparams or {}),
        dataset="digits",
        base="gaussian",
        coupling="independent",
        batch_size=256,
        max_steps=20_000,
        lr=1e-4,
        lr_schedule="step",
        lr_decay_every=1000,
        lr_decay_rate=0.992,
        optimizer="adam",
        ema_decay=0.999,
        log_every=100,
        ckpt_every=1000,
        eval_every=0,
    )


# -- checkerboard -----------------------------------------------------------------------


@_register("checkerboard-velocity", "SI / flow-matching velocity b_t (eq. 3.14), the teacher of lmd/emd/ayf")
def checkerboard_velocity() -> TrainConfig:
    """Velocity model on the checkerboard (paper Fig. 3, first panel)."""
    return checkerboard_config("velocity", "velocity")


@_register("checkerboard-lmd", "Lagrangian map distillation (eq. 3.7); needs --teacher from checkerboard-velocity")
def checkerboard_lmd() -> TrainConfig:
    """LMD one-step map distilled from a velocity teacher (paper Fig. 3, fifth panel)."""
    return checkerboard_config("flowmap", "lmd")


# Random Fourier features of x for the one-step map (issue 13, benchmarks/results/checkerboard_lever.md):
# 64 frequencies B ~ N(0, 1) (cycles per unit); zero columns under the teacher warm start v_st = b_s.
CHECKERBOARD_X_FEATURES = {"x_features": 64, "x_feature_scale": 1.0}


@_register("checkerboard-lmd-ff", "LMD with random Fourier features of x (sharper one-step maps); residual ansatz "
           "for --init-from a checkerboard-velocity teacher")
def checkerboard_lmd_ff() -> TrainConfig:
    """LMD one-step map whose MLP also reads 64 random Fourier features of ``x`` (sigma 1)."""
    cfg = checkerboard_config("flowmap", "lmd", ansatz="residual")
    bb = dataclasses.replace(cfg.model.backbone, **CHECKERBOARD_X_FEATURES)
    return cfg.replace(model=dataclasses.replace(cfg.model, backbone=bb))


@_register("checkerboard-emd", "Eulerian map distillation (eq. 3.9); needs --teacher from checkerboard-velocity")
def checkerboard_emd() -> TrainConfig:
    """EMD one-step map distilled from a velocity teacher (paper Fig. 3, sixth panel)."""
    return checkerboard_config("flowmap", "emd")


@_register("checkerboard-fmm1", "flow map matching (eq. 3.15) on the whole square |t-s|<=1: a one-step map")
def checkerboard_fmm1() -> TrainConfig:
    """FMM with ``w_{s,t} = 1`` (paper Fig. 3, second panel)."""
    return checkerboard_config("flowmap", "fmm", {"window": 1})


@_register("checkerboard-fmm4", "flow map matching (eq. 3.15) with |t-s|<=1/4: a 4-step map (pfmm's teacher)")
def checkerboard_fmm4() -> TrainConfig:
    """FMM with ``w_{s,t} = 1(|t - s| <= 1/4)``, sampled with 4 steps (paper Fig. 3, third panel)."""
    return checkerboard_config("flowmap", "fmm", {"window": 4})


@_register("checkerboard-pfmm", "progressive FMM (eq. 3.16): distil a 4-step map into one step; --teacher from fmm4")
def checkerboard_pfmm() -> TrainConfig:
    """PFMM with K = 4 teacher steps, warm-started from the teacher (paper Fig. 3, fourth panel)."""
    return checkerboard_config("flowmap", "pfmm", {"steps": 4})


@_register(
    "checkerboard-pfmm-progressive",
    "progressive FMM with M=2 < K=4: two rounds (4 -> 2 -> 1 steps); --teacher from fmm4",
)
def checkerboard_pfmm_progressive() -> TrainConfig:
    """PFMM with M = 2 teacher steps per round, ``ceil(log2 4) = 2`` rounds (Sec. 3.4)."""
    return checkerboard_config("flowmap", "pfmm", {"steps": 4, "M": 2})


@_register("checkerboard-ee", "Eulerian estimation with stop-gradient (successors §1), no teacher")
def checkerboard_ee() -> TrainConfig:
    """Direct Eulerian estimation of the flow map."""
    return checkerboard_config("flowmap", "ee", ansatz="residual").replace(coupling="minibatch_ot")


@_register("checkerboard-lsd", "Lagrangian self-distillation (successors §2), no teacher")
def checkerboard_lsd() -> TrainConfig:
    """LSD: diagonal velocity + Lagrangian self-distillation."""
    return checkerboard_config("flowmap", "lsd", ansatz="residual")


@_register("checkerboard-esd", "Eulerian self-distillation (successors §2), no teacher")
def checkerboard_esd() -> TrainConfig:
    """ESD: diagonal velocity + Eulerian self-distillation."""
    return checkerboard_config("flowmap", "esd", ansatz="residual")


@_register("checkerboard-psd", "progressive self-distillation (successors §2), no teacher")
def checkerboard_psd() -> TrainConfig:
    """PSD: diagonal velocity + two-step self-consistency."""
    return checkerboard_config("flowmap", "psd", ansatz="residual")


# Align Your Flow on the checkerboard: tangent normalisation g / (|g| + 0.1) and the learned
# per-(s, t) log-variance weight (sCM's adaptive weighting). Without the adaptive weight the
# semi-gradient update diverges at lr 1e-3 from the teacher warm start (benchmarks/results/
# checkerboard.md, investigation notes); start from the teacher with --init-from.
AYF_RECIPE: dict[str, Any] = {"tangent_norm": True, "norm_c": 0.1, "adaptive": True}


@_register("checkerboard-ayf-emd", "Align Your Flow, Eulerian (successors §3); --teacher from checkerboard-velocity")
def checkerboard_ayf_emd() -> TrainConfig:
    """AYF-EMD distillation of a velocity teacher."""
    return checkerboard_config("flowmap", "ayf_emd", AYF_RECIPE, ansatz="residual")


@_register("checkerboard-ayf-lmd", "Align Your Flow, Lagrangian (successors §3); --teacher from checkerboard-velocity")
def checkerboard_ayf_lmd() -> TrainConfig:
    """AYF-LMD distillation of a velocity teacher."""
    return checkerboard_config("flowmap", "ayf_lmd", AYF_RECIPE, ansatz="residual")


# -- digits ---------------------------------------------------------------------------


@_register("digits-velocity", "8x8 digits, small U-Net velocity b_t (eq. 3.14), the teacher of digits-lmd")
def digits_velocity() -> TrainConfig:
    """Velocity model on 8x8 digits."""
    return digits_config("velocity", "velocity")


@_register("digits-lmd", "8x8 digits, Lagrangian map distillation (eq. 3.7); --teacher from digits-velocity")
def digits_lmd() -> TrainConfig:
    """LMD on digits."""
    return digits_config("flowmap", "lmd")


@_register("digits-fmm4", "8x8 digits, flow map matching with |t-s|<=1/4 (eq. 3.15): a 4-step map")
def digits_fmm4() -> TrainConfig:
    """FMM 4-step map on digits (teacher of digits-pfmm)."""
    return digits_config("flowmap", "fmm", {"window": 4})


@_register("digits-pfmm", "8x8 digits, progressive FMM (eq. 3.16) from a 4-step map; --teacher from digits-fmm4")
def digits_pfmm() -> TrainConfig:
    """PFMM on digits, warm-started from the teacher."""
    return digits_config("flowmap", "pfmm", {"steps": 4})


@_register("digits-lsd", "8x8 digits, Lagrangian self-distillation (successors §2), no teacher")
def digits_lsd() -> TrainConfig:
    """LSD on digits."""
    return digits_config("flowmap", "lsd", ansatz="residual")


def _register_image_presets() -> None:
    """Add the CIFAR-10 / ImageNet-32 presets of the paper's Table 4 (training/presets_images.py)."""
    from anystep.training.presets_images import image_presets

    for name, description, build in image_presets():
        PRESETS[name] = Preset(name, description, build)


_register_image_presets()


def _register_family_presets() -> None:
    """Add MeanFlow, shortcut, CD/CT, PD and operator presets (training/presets_family.py, issue 14)."""
    from anystep.training.presets_family import family_presets

    for name, description, build in family_presets():
        PRESETS[name] = Preset(name, description, build)


_register_family_presets()


def _register_cond_presets() -> None:
    """Add the class-conditional presets (training/presets_cond.py)."""
    from anystep.training.presets_cond import cond_presets

    for name, description, build in cond_presets():
        PRESETS[name] = Preset(name, description, build)


_register_cond_presets()
