"""Typed configuration dataclasses shared by every part of anystep.

Time convention (stated once, used everywhere): ``t = 0`` is the base
distribution rho_0 (e.g. a Gaussian), ``t = 1`` is the data distribution rho_1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from anystep.errors import AnystepError

from .units import Units, UnitsError


class ConfigError(AnystepError):
    """A configuration value is invalid; the message says how to fix it."""


# Upper bounds of the sizes a config may ask for: far above any model anystep trains, low
# enough that a typo (``width: 10000000``) is refused before anything is allocated.
MAX_WIDTH = 65_536
MAX_DEPTH = 1_024
MAX_FEATURES = 4_096
MAX_CHANNELS = 8_192
MAX_DIM = 65_536
MAX_SAMPLE_NUMEL = 1 << 24
MAX_CLASSES = 100_000
MAX_STEP_COUNT = 1 << 20

TIME_REGIONS = ("forward", "both")


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    """``v`` as an int in ``[lo, hi]`` (bools, strings and floats are refused)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {type(v).__name__} {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name}={v} is out of range: use an integer in [{lo}, {hi}]")
    return int(v)


def _num(v: Any, name: str, lo: float, hi: float, hi_open: bool = False) -> float:
    """``v`` as a finite number in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {type(v).__name__} {v!r}")
    if v < lo or v > hi or (hi_open and v >= hi):
        raise ConfigError(f"{name}={v} is out of range [{lo}, {hi}{')' if hi_open else ']'}")
    return float(v)


def _ints(v: Any, name: str, lo: int, hi: int, min_len: int, max_len: int) -> tuple[int, ...]:
    """``v`` as a tuple of ints in ``[lo, hi]`` with ``min_len <= len <= max_len``."""
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{name} must be a list of integers, got {type(v).__name__} {v!r}")
    if not min_len <= len(v) <= max_len:
        raise ConfigError(f"{name} must have {min_len} to {max_len} entries, got {len(v)}")
    return tuple(_int(d, f"{name}[{i}]", lo, hi) for i, d in enumerate(v))


def _name(v: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{name}={v!r}: use one of {list(choices)}")
    return v


def _from_dict(cls, data: dict[str, Any], where: str, strict: bool = False):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    if strict:
        optional = cls.optional_fields(data) if hasattr(cls, "optional_fields") else {}
        missing = sorted(n for n in names if n not in data and n not in optional)
        if missing:
            raise ConfigError(
                f"{where}: missing required key(s) {missing}; a model directory states every field "
                "that changes its output (re-save it with anystep, or add the key)"
            )
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
        x_features: MLP only: number ``m`` of random Fourier features of the spatial input,
            ``[sin(2 pi B x), cos(2 pi B x)]`` with ``B ~ N(0, x_feature_scale^2)`` of shape
            ``[m, prod(data_shape)]`` (Tancik et al. 2020), appended to the first layer's input
            so that a small MLP can make steep transitions (the one-step checkerboard map);
            0 (default, and what an absent key means) disables them.
        x_feature_scale: ``sigma`` of those frequencies, in cycles per unit of ``x``.
    """

    OPTIONAL: ClassVar[dict[str, Any]] = {"x_features": 0, "x_feature_scale": 1.0}

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
    x_features: int = 0
    x_feature_scale: float = 1.0

    def __post_init__(self) -> None:
        self.name = _name(self.name, "backbone.name", ("mlp", "unet"))
        self.data_shape = _ints(self.data_shape, "backbone.data_shape", 1, MAX_DIM, 1, 4)
        if math.prod(self.data_shape) > MAX_SAMPLE_NUMEL:
            raise ConfigError(f"backbone.data_shape {self.data_shape} has over {MAX_SAMPLE_NUMEL} values per sample")
        if isinstance(self.time_inputs, bool) or self.time_inputs not in (1, 2):
            raise ConfigError("backbone.time_inputs must be 1 (velocity) or 2 (flow map)")
        self.width = _int(self.width, "backbone.width", 1, MAX_WIDTH)
        self.depth = _int(self.depth, "backbone.depth", 1, MAX_DEPTH)
        self.fourier_features = _int(self.fourier_features, "backbone.fourier_features", 1, MAX_FEATURES)
        self.channels = _int(self.channels, "backbone.channels", 1, MAX_CHANNELS)
        self.channel_mult = _ints(self.channel_mult, "backbone.channel_mult", 1, 64, 1, 8)
        self.num_res_blocks = _int(self.num_res_blocks, "backbone.num_res_blocks", 1, 64)
        self.attention_levels = _ints(
            self.attention_levels, "backbone.attention_levels", 0, len(self.channel_mult) - 1, 0, 8
        )
        self.dropout = _num(self.dropout, "backbone.dropout", 0.0, 1.0, hi_open=True)
        self.x_features = _int(self.x_features, "backbone.x_features", 0, MAX_FEATURES)
        self.x_feature_scale = _num(self.x_feature_scale, "backbone.x_feature_scale", 1e-6, 1e4)
        if self.name == "unet" and self.x_features > 0:
            raise ConfigError("backbone.x_features (Fourier features of x) is an MLP option; set it to 0 for 'unet'")
        if self.name == "unet" and len(self.data_shape) != 3:
            raise ConfigError(
                f"backbone 'unet' needs image data_shape (C, H, W), got {self.data_shape}; "
                "use 'mlp' for vector data"
            )

    @classmethod
    def optional_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fields a model directory's ``backbone`` may omit (written before they existed), with
        the value an absent key means (the behaviour of those models: no features of ``x``)."""
        return dict(cls.OPTIONAL)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> BackboneConfig:
        """Build from a dict; ``strict`` (model directories) requires every field but :attr:`OPTIONAL`."""
        return _from_dict(cls, data, "backbone", strict)


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
        self.name = _name(self.name, "interpolant.name", ("linear", "trig", "vp"))
        self.gamma = _num(self.gamma, "interpolant.gamma", 0.0, 1e6)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> InterpolantConfig:
        """Build from a dict; ``strict`` (model directories) requires every field."""
        return _from_dict(cls, data, "interpolant", strict)


@dataclass
class ModelConfig:
    """What a model directory's ``config.json`` holds.

    Attributes:
        kind: ``"velocity"`` (b_t, sampled with an ODE solver) or ``"flowmap"`` (X_{s,t}).
        backbone: the network.
        interpolant: the interpolant the model was trained with.
        time_region: which time pairs a flow map was trained on: ``"forward"`` (``s <= t``
            only: ``X_{s,t}`` with ``s > t``, e.g. the encoder ``X_{1,0}``, was never fitted)
            or ``"both"`` (``s <= t`` and ``s > t``: the map also inverts). Required in a flow
            map's config.json; written by the trainer from the objective's time sampler. In
            code it defaults to ``"forward"`` for flow maps and ``"both"`` for velocity models.
        ansatz: flow maps only: ``"residual"`` for ``x + (t-s) v_{s,t}(x)`` or
            ``"convex"`` for eq. 4.1 ``(1-t+s) x + (t-s) f_{s,t}(x)``.
        base: name of the base distribution rho_0 (``"gaussian"`` or a data set name).
        dataset: name of the data set rho_1 (e.g. ``"checkerboard"``, ``"digits"``).
        data_shape: shape of one sample.
        provenance: free-form record of how the model was made (preset, steps, ...).
        num_classes: optional; class-conditional model with labels ``0..num_classes-1`` and
            the null class ``num_classes`` (classifier-free guidance). 0 (or absent from
            ``config.json``): unconditional.
        guidance_input: optional; flow maps only: the network also takes the guidance
            scale ``w`` (distilled from the guided teacher ``b(x,∅) + w (b(x,y) - b(x,∅))``).
            False or absent: no ``w`` input.
        supported_steps: optional; flow maps only: the step counts K whose uniform K-step
            composition ``X_{t_k,t_{k+1}}`` stays on the time pairs the objective trained
            (issue 14: shortcut ``[1, 2, ..., 2^(L-1)]``, consistency / trajectory regression
            ``[1]``, progressive distillation ``[N]``); sampling refuses other K and custom
            grids. Written by the trainer from the objective; null or absent: any K, any grid.
        units: optional; the data units of the training set (:class:`anystep.core.units.Units`:
            scale, clip range and layout users see, e.g. 8-bit levels ``0..255``), written by the
            trainer from ``Dataset.units`` so that serving needs no data set. Absent (model
            directories written before the field): derived from ``dataset`` and ``data_shape``
            by :func:`anystep.core.units.units_for` (:func:`anystep.core.units.model_units`).
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
    num_classes: int = 0
    guidance_input: bool = False
    time_region: str | None = None
    supported_steps: tuple[int, ...] | None = None
    units: Units | None = None

    # Fields a model directory's config.json may omit, with the documented value an absent
    # key means. Only fields whose default leaves the (unconditional) output unchanged
    # belong here; every other field is required (ModelConfig.from_dict(strict=True)).
    OPTIONAL: ClassVar[dict[str, Any]] = {
        "provenance": {},  # a free-form record; never read by sampling
        "num_classes": 0,  # 0: unconditional
        "guidance_input": False,  # False: no guidance-scale input
        "supported_steps": None,  # None: any step count, any grid
        "units": None,  # None: derived from dataset and data_shape (units_for), as before the field
    }

    @classmethod
    def optional_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fields ``data`` (a config.json object) may omit, with the value an absent key means.

        ``time_region`` is required for flow maps (which pairs (s, t) they were trained on
        decides whether ``X_{1,0}`` may be used); a velocity model is defined for every t and
        can be integrated both ways, so for it an absent ``time_region`` means ``"both"``.
        """
        out = dict(cls.OPTIONAL)
        if data.get("kind") == "velocity":
            out["time_region"] = "both"
        return out

    def __post_init__(self) -> None:
        self.kind = _name(self.kind, "kind", ("velocity", "flowmap"))
        self.ansatz = _name(self.ansatz, "ansatz", ("residual", "convex"))
        self.data_shape = _ints(self.data_shape, "data_shape", 1, MAX_DIM, 1, 4)
        if not isinstance(self.backbone, BackboneConfig):
            raise ConfigError(f"backbone must be a JSON object, got {type(self.backbone).__name__}")
        if not isinstance(self.interpolant, InterpolantConfig):
            raise ConfigError(f"interpolant must be a JSON object, got {type(self.interpolant).__name__}")
        for name in ("base", "dataset"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{name} must be a non-empty data set name, got {v!r}")
        if not isinstance(self.provenance, dict):
            raise ConfigError(f"provenance must be a JSON object, got {type(self.provenance).__name__}")
        if isinstance(self.format_version, bool) or self.format_version != 1:
            raise ConfigError(f"format_version={self.format_version!r}: this anystep reads model format 1")
        if self.time_region is None:
            # flow maps built in code claim the conservative region (forward only: X_{1,0}
            # refused); the trainer records the region its objective really sampled
            self.time_region = "forward"
        self.time_region = _name(self.time_region, "time_region", TIME_REGIONS)
        if self.kind == "velocity":
            self.time_region = "both"  # b_t is defined for every t: its ODE runs either way
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
        # num_classes / guidance_input are optional (absent = unconditional): see to_dict
        self.num_classes = _int(self.num_classes, "num_classes (0 = unconditional)", 0, MAX_CLASSES)
        if not isinstance(self.guidance_input, bool):
            raise ConfigError(f"guidance_input={self.guidance_input!r}: use true or false")
        if self.guidance_input and (self.kind != "flowmap" or self.num_classes == 0):
            raise ConfigError(
                "guidance_input=true needs a class-conditional flow map (kind 'flowmap', num_classes > 0); "
                "a velocity model is guided at sampling time instead"
            )
        if self.supported_steps is not None:
            if self.kind != "flowmap":
                raise ConfigError("supported_steps applies to flow maps; drop it from a velocity model's config")
            steps = _ints(self.supported_steps, "supported_steps (null = any step count)", 1, MAX_STEP_COUNT, 1, 64)
            self.supported_steps = tuple(sorted(set(steps)))
        self._check_units()

    def _check_units(self) -> None:
        """``units``: None, a :class:`Units` or its JSON record, for samples of ``data_shape``."""
        fix = (
            "fix the record or delete the 'units' key (then the units are derived from "
            f"dataset {self.dataset!r}, as for model directories written before the field)"
        )
        if self.units is None:
            return
        if isinstance(self.units, dict):
            try:
                self.units = Units.from_dict(self.units)
            except UnitsError as e:
                raise ConfigError(f"units: {e}; {fix}") from None
        if not isinstance(self.units, Units):
            raise ConfigError(f"units must be a JSON object (a units record) or null, got {type(self.units).__name__}; {fix}")
        if tuple(self.units.data_shape) != self.data_shape:
            raise ConfigError(
                f"units.data_shape {list(self.units.data_shape)} != data_shape {list(self.data_shape)}; {fix}"
            )

    @property
    def conditional(self) -> bool:
        """True for a class-conditional model (``num_classes > 0``)."""
        return self.num_classes > 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # optional fields: absent means unconditional, so unconditional configs are unchanged
        for key, default in (("num_classes", 0), ("guidance_input", False), ("supported_steps", None)):
            if out.get(key) == default:
                out.pop(key)
        if self.units is None:  # absent: derived from the data set name (configs written before the field)
            out.pop("units")
        else:
            out["units"] = self.units.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> ModelConfig:
        """Build from a dict.

        Args:
            data: the JSON object.
            strict: a model directory's ``config.json``: every field that is not in
                :meth:`optional_fields` must be present (no default may change the output).

        Raises:
            ConfigError: unknown, missing or invalid field (one line naming it).
        """
        if not isinstance(data, dict):
            raise ConfigError("config.json must hold a JSON object")
        data = dict(data)
        if strict:
            names = {f.name for f in dataclasses.fields(cls)}
            missing = sorted(n for n in names if n not in data and n not in cls.optional_fields(data))
            if missing:
                raise ConfigError(
                    f"missing required key(s) {missing}; a model directory states every field that "
                    "changes its output (flow maps: time_region 'forward' if trained on s <= t only, "
                    "'both' if also on s > t)"
                )
        if "backbone" in data:
            data["backbone"] = BackboneConfig.from_dict(data["backbone"], strict)
        if "interpolant" in data:
            data["interpolant"] = InterpolantConfig.from_dict(data["interpolant"], strict)
        return _from_dict(cls, data, "config.json")


class TimeRegionError(ConfigError):
    """A flow map is asked for times ``(s, t)`` outside the region it was trained on."""


def check_invertible(config: ModelConfig, where: str = "this model") -> None:
    """Refuse to run ``X_{s,t}`` with ``s > t`` (encoding, ``X_{1,0}``) on a forward-only map.

    A flow map trained with the forward weight ``w_{s,t} = 1(s <= t)`` never fitted the
    backward maps, so ``X_{1,0}(x_1)`` is not ``X_{0,1}^{-1}(x_1)``; its answer would be
    wrong, not merely inaccurate. Velocity models pass (their ODE runs either way).

    Args:
        config: the model's configuration.
        where: the model's name or directory, used in the message.

    Raises:
        TimeRegionError: ``config`` is a flow map with ``time_region == "forward"``.
    """
    if config.kind == "flowmap" and config.time_region != "both":
        raise TimeRegionError(
            f"{where} was trained on forward times only (s <= t, time_region 'forward'), so it cannot "
            "encode (X_{1,0} was never fitted); use a map trained on both directions: train with "
            "--set objective_hparams.forward_only=false (lmd, emd, ayf-*) or the fmm objective"
        )
