"""Warm-start a two-time flow map from a trained velocity model (teacher initialisation).

Consistency-style objectives (Align Your Flow, sCM; successors §3) start the map from the
pretrained velocity rather than from scratch. With the residual ansatz
``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` (Definition 3.2) the natural starting point is

    v_{s,t}(x) = b_s(x)        so that   X_{s,t}(x) = x + (t - s) b_s(x),

one Euler step of the teacher's ODE (eq. 3.1): exact on the diagonal (the tangent condition
``v_{t,t} = b_t``) and a first-order map off it. For the MLP backbone this is exact weight
surgery: the flow map's first layer reads ``[x, phi(s), phi(t), phi(t - s)]`` where the
velocity's reads ``[x, phi(t)]``; the ``x`` and time columns are copied (time to ``s``), the
``phi(t)`` and ``phi(t - s)`` columns are zero, every other layer is copied. A map with
random Fourier features of ``x`` (``backbone.x_features``, the last input columns) starts with
those columns at zero when the velocity has none (they then learn from the first step), or
copied when the velocity has the same ones.

For the U-Net (:func:`_unet_from_velocity`) every layer but the time embedding is copied; the
map's embedding ``W SiLU([e_s(s), e_t(t), e_gap(t - s)]) + c_0`` gets ``e_s`` = the velocity's
embedding ``e(s)`` shifted by a constant ``c`` (``c = 20 + max |e|`` over ``s`` in ``[0, 1]``),
``W = [I, 0, 0]`` and ``c_0 = -c``: ``SiLU(y) = y (1 - sigmoid(-y))`` is the identity up to
``y e^{-y} < 1e-7`` for ``y >= 20``, so the map's embedding is ``e(s)`` to float32 rounding
(about ``1e-6``) and ``v_{s,t} = b_s`` as for the MLP. The ``e_t`` and ``e_gap`` columns start
at zero and learn from the first step.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from anystep.core.config import ConfigError, ModelConfig

__all__ = ["WarmStartError", "check_warm_start", "flowmap_from_velocity"]


class WarmStartError(ConfigError):
    """The flow map cannot be initialised from this velocity model; the message says why."""


def check_warm_start(flowmap_cfg: ModelConfig, velocity_cfg: ModelConfig, source: str = "the velocity model") -> None:
    """Check, from the configs alone, that :func:`flowmap_from_velocity` can start this map.

    Args:
        flowmap_cfg: the flow map's model config.
        velocity_cfg: the velocity model's config.
        source: how to name the velocity model in the message (e.g. its path).

    Raises:
        WarmStartError: not the residual ansatz, not two MLPs or two unconditional U-Nets, or different
            backbone settings (width/depth/channels/fourier_features/data shape).
    """
    fb, vb = flowmap_cfg.backbone, velocity_cfg.backbone
    if fb.name == vb.name == "unet":
        if dataclasses.replace(vb, time_inputs=fb.time_inputs) != fb or flowmap_cfg.ansatz != "residual" or (
            getattr(flowmap_cfg, "num_classes", None) or getattr(velocity_cfg, "num_classes", None)
        ):
            raise WarmStartError(
                f"{source} is a U-Net velocity model: a flow map can start from it (v_st = b_s) only with the "
                "residual ansatz, no class conditioning and the same U-Net settings (channels, channel_mult, "
                f"num_res_blocks, attention_levels, fourier_features); the map has ansatz {flowmap_cfg.ansatz}, "
                f"channels {fb.channels} (velocity {vb.channels}), channel_mult {fb.channel_mult} "
                f"(velocity {vb.channel_mult})"
            )
        return
    same = (fb.name == vb.name == "mlp" and fb.width == vb.width and fb.depth == vb.depth
            and fb.fourier_features == vb.fourier_features and tuple(fb.data_shape) == tuple(vb.data_shape))
    if vb.x_features > 0 and (vb.x_features, vb.x_feature_scale) != (fb.x_features, fb.x_feature_scale):
        raise WarmStartError(
            f"{source} has {vb.x_features} Fourier features of x (scale {vb.x_feature_scale}); a flow map starts "
            f"from it only with the same ones (it has {fb.x_features}, scale {fb.x_feature_scale})"
        )
    if not same or flowmap_cfg.ansatz != "residual":
        raise WarmStartError(
            f"{source} is a velocity model: a flow map can start from it (v_st = b_s) only with the residual "
            f"ansatz and an MLP backbone of the same width/depth/fourier_features (it has {vb.name}, width "
            f"{vb.width}, depth {vb.depth}; the map has {fb.name}, width {fb.width}, depth {fb.depth}, ansatz "
            f"{flowmap_cfg.ansatz})"
        )


@torch.no_grad()
def flowmap_from_velocity(flowmap: nn.Module, velocity: nn.Module) -> None:
    """Set ``flowmap``'s weights so that ``v_{s,t}(x) = b_s(x)`` exactly (in place).

    Args:
        flowmap: a residual-ansatz :class:`~anystep.core.flowmap.FlowMap` with an MLP or an
            unconditional U-Net backbone (``time_inputs = 2``).
        velocity: a :class:`~anystep.core.flowmap.VelocityModel` with the same backbone and
            settings (``time_inputs = 1``). For the U-Net, ``v_{s,t} = b_s`` holds to float32
            rounding (module docstring), for the MLP exactly.

    Raises:
        WarmStartError: other backbones, the convex ansatz, or mismatched sizes.
    """
    from anystep.core.networks.mlp import MLPBackbone

    fb, vb = getattr(flowmap, "backbone", None), getattr(velocity, "backbone", None)
    if getattr(flowmap, "kind", None) != "flowmap" or getattr(velocity, "kind", None) != "velocity":
        raise WarmStartError("warm start from a velocity model needs (flow map, velocity model)")
    from anystep.core.networks.unet import UNetBackbone

    if getattr(flowmap, "ansatz", "residual") != "residual":
        raise WarmStartError("warm start from a velocity model needs the residual ansatz X = x + (t - s) v")
    if isinstance(fb, UNetBackbone) and isinstance(vb, UNetBackbone):
        _unet_from_velocity(fb, vb)
        return
    if not isinstance(fb, MLPBackbone) or not isinstance(vb, MLPBackbone):
        raise WarmStartError(
            f"warm start of a flow map from a velocity model needs the same backbone, an MLP or a U-Net (the map "
            f"has {type(fb).__name__}, the velocity {type(vb).__name__}); otherwise train from scratch"
        )
    if fb.time_inputs != 2 or vb.time_inputs != 1:
        raise WarmStartError("the flow map must take (s, t) and the velocity model t")
    f_layers = [m for m in fb.net if isinstance(m, nn.Linear)]
    v_layers = [m for m in vb.net if isinstance(m, nn.Linear)]
    feats = fb.features.out_features
    fx, vx = getattr(fb, "x_features", None), getattr(vb, "x_features", None)
    if (
        len(f_layers) != len(v_layers)
        or feats != vb.features.out_features
        or any(a.weight.shape != b.weight.shape for a, b in zip(f_layers[1:], v_layers[1:], strict=True))
        or (vx is not None and (fx is None or not torch.equal(fx.freqs, vx.freqs)))
    ):
        raise WarmStartError(
            "the velocity model's MLP differs from the flow map's (width, depth, fourier_features, x_features or "
            "data shape); warm start needs the same backbone settings"
        )
    fb.features.load_state_dict(vb.features.state_dict())
    first_f, first_v = f_layers[0], v_layers[0]
    d = fb.dim
    w = torch.zeros_like(first_f.weight)
    w[:, :d] = first_v.weight[:, :d]  # x
    w[:, d : d + feats] = first_v.weight[:, d : d + feats]  # phi(t_velocity) -> phi(s)
    if vx is not None:  # gamma(x): the last columns of both
        n = vx.out_features
        w[:, w.shape[1] - n :] = first_v.weight[:, first_v.weight.shape[1] - n :]
    first_f.weight.copy_(w)  # phi(t), phi(t - s) (and gamma(x) of a velocity without it) columns stay 0
    first_f.bias.copy_(first_v.bias)
    for a, b in zip(f_layers[1:], v_layers[1:], strict=True):
        a.weight.copy_(b.weight)
        a.bias.copy_(b.bias)


_UNET_SHIFT_MARGIN = 20.0  # SiLU(y) = y to y e^{-y} < 1e-7 for y >= 20


def _unet_from_velocity(fb: nn.Module, vb: nn.Module) -> None:
    """U-Net branch of :func:`flowmap_from_velocity` (module docstring: the shifted-SiLU embedding)."""
    if fb.time_inputs != 2 or vb.time_inputs != 1:
        raise WarmStartError("the flow map must take (s, t) and the velocity model t")
    if fb.num_classes or vb.num_classes or fb.guidance_input or vb.guidance_input:
        raise WarmStartError("warm start of a U-Net flow map from a velocity model supports unconditional models only")
    f_emb, v_emb = fb.time_embed, vb.time_embed
    if len(f_emb.embeds) != 3 or len(v_emb.embeds) != 1:
        raise WarmStartError("the U-Net flow map must embed (s, t, t - s) and the velocity model t")
    f_rest = {k: v for k, v in fb.state_dict().items() if not k.startswith("time_embed.")}
    v_rest = {k: v for k, v in vb.state_dict().items() if not k.startswith("time_embed.")}
    shapes_f = {k: tuple(v.shape) for k, v in f_rest.items()}
    if shapes_f != {k: tuple(v.shape) for k, v in v_rest.items()} or any(
        a.shape != b.shape for a, b in zip(f_emb.embeds[0].parameters(), v_emb.embeds[0].parameters(), strict=True)
    ):
        raise WarmStartError(
            "the velocity model's U-Net differs from the flow map's (channels, channel_mult, num_res_blocks, "
            "attention_levels or fourier_features); warm start needs the same backbone settings"
        )
    fb.load_state_dict({**fb.state_dict(), **v_rest})
    e_s = f_emb.embeds[0]
    e_s.load_state_dict(v_emb.embeds[0].state_dict())
    ref = next(vb.parameters())
    grid = torch.linspace(0.0, 1.0, 4097, device=ref.device, dtype=ref.dtype)
    shift = float(math.ceil(v_emb.embeds[0](grid).abs().max().item() + _UNET_SHIFT_MARGIN))
    e_s.mlp[-1].bias.add_(shift)
    combine = f_emb.combine[-1]  # SiLU -> Linear(3 D, D)
    dim = f_emb.embed_dim
    w = torch.zeros_like(combine.weight)
    w[:, :dim] = torch.eye(dim, dtype=w.dtype, device=w.device)
    combine.weight.copy_(w)
    combine.bias.fill_(-shift)
