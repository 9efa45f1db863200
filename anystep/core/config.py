"""Typed configuration dataclasses shared by every part of anystep.

Time convention (stated once, used everywhere): ``t = 0`` is the base
distribution rho_0 (e.g. a Gaussian), ``t = 1`` is the data distribution rho_1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message says how to fix it."""


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list) and "tuple" in str(f.type):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


@dataclass
class BackboneConfig:
    """Network that takes ``x`` and one (velocity) or two (flow map) times.

    Attributes:
        name: ``"mlp"`` (Fourier time features, the paper's 2D net) or ``"unet"``.
        data_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        time_inputs: 1 for a velocity model ``b_t(x)``, 2 for a flow map ``(s, t)``.
        width: MLP hidden width (paper: 512).
        depth: number of MLP hidden layers (paper: 6).
        fourier_features: number of Fourier frequencies per time input.
        channels: U-Net base channel count.
        channel_mult: U-Net channel multiplier per resolution level.
        num_res_blocks: U-Net residual blocks per level.
        attention_levels: U-Net levels (indices into channel_mult) with self-attention.
        dropout: dropout probability (0 disables it).
    """

    name: str = "mlp"
    data_shape: tuple[int, ...] = (2,)
    time_inputs: int = 2
    width: int = 512
    depth: int = 6
    fourier_features: int = 16
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(d) for d in self.data_shape)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        if self.name not in ("mlp", "unet"):
            raise ConfigError(f"backbone.name={self.name!r}: use 'mlp' or 'unet'")
        if self.time_inputs not in (1, 2):
            raise ConfigError("backbone.time_inputs must be 1 (velocity) or 2 (flow map)")
        if self.name == "unet" and len(self.data_shape) != 3:
            raise ConfigError(
                f"backbone 'unet' needs image data_shape (C, H, W), got {self.data_shape}; "
                "use 'mlp' for vector data"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        return _from_dict(cls, data, "backbone")


@dataclass
class InterpolantConfig:
    """Stochastic interpolant ``I_t = alpha_t x0 + beta_t x1 + gamma_t z`` (eq. 3.12).

    Attributes:
        name: ``"linear"``, ``"trig"`` or ``"vp"``.
        gamma: noise scale ``a`` in ``gamma_t = sqrt(a t (1 - t))``; 0 disables the latent term.
    """

    name: str = "linear"
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("linear", "trig", "vp"):
            raise ConfigError(f"interpolant.name={self.name!r}: use 'linear', 'trig' or 'vp'")
        if self.gamma < 0:
            raise ConfigError("interpolant.gamma must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterpolantConfig:
        return _from_dict(cls, data, "interpolant")


@dataclass
class ModelConfig:
    """What a model directory's ``config.json`` holds.

    Attributes:
        kind: ``"velocity"`` (b_t, sampled with an ODE solver) or ``"flowmap"`` (X_{s,t}).
        backbone: the network.
        interpolant: the interpolant the model was trained with.
        ansatz: flow maps only: ``"residual"`` for ``x + (t-s) v_{s,t}(x)`` or
            ``"convex"`` for eq. 4.1 ``(1-t+s) x + (t-s) f_{s,t}(x)``.
        base: name of the base distribution rho_0 (``"gaussian"`` or a data set name).
        dataset: name of the data set rho_1 (e.g. ``"checkerboard"``, ``"digits"``).
        data_shape: shape of one sample.
        provenance: free-form record of how the model was made (preset, steps, ...).
    """

    kind: str = "flowmap"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    interpolant: InterpolantConfig = field(default_factory=InterpolantConfig)
    ansatz: str = "residual"
    base: str = "gaussian"
    dataset: str = "checkerboard"
    data_shape: tuple[int, ...] = (2,)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(d) for d in self.data_shape)
        if self.kind not in ("velocity", "flowmap"):
            raise ConfigError(f"kind={self.kind!r}: use 'velocity' or 'flowmap'")
        if self.ansatz not in ("residual", "convex"):
            raise ConfigError(f"ansatz={self.ansatz!r}: use 'residual' or 'convex'")
        want = 1 if self.kind == "velocity" else 2
        if self.backbone.time_inputs != want:
            raise ConfigError(
                f"a {self.kind} model needs backbone.time_inputs={want}, "
                f"got {self.backbone.time_inputs}"
            )
        if tuple(self.backbone.data_shape) != self.data_shape:
            raise ConfigError(
                f"backbone.data_shape {self.backbone.data_shape} != data_shape {self.data_shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError("config.json must hold a JSON object")
        data = dict(data)
        if "backbone" in data:
            data["backbone"] = BackboneConfig.from_dict(data["backbone"])
        if "interpolant" in data:
            data["interpolant"] = InterpolantConfig.from_dict(data["interpolant"])
        return _from_dict(cls, data, "config.json")
