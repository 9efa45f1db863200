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

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

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
        WarmStartError: not MLP + residual ansatz, or different width/depth/fourier_features/data shape.
    """
    fb, vb = flowmap_cfg.backbone, velocity_cfg.backbone
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
        flowmap: a residual-ansatz :class:`~anystep.core.flowmap.FlowMap` with an MLP
            backbone (``time_inputs = 2``).
        velocity: a :class:`~anystep.core.flowmap.VelocityModel` with an MLP backbone of the
            same width, depth, Fourier features and data shape (``time_inputs = 1``).

    Raises:
        WarmStartError: other backbones, the convex ansatz, or mismatched sizes.
    """
    from anystep.core.networks.mlp import MLPBackbone

    fb, vb = getattr(flowmap, "backbone", None), getattr(velocity, "backbone", None)
    if getattr(flowmap, "kind", None) != "flowmap" or getattr(velocity, "kind", None) != "velocity":
        raise WarmStartError("warm start from a velocity model needs (flow map, velocity model)")
    if not isinstance(fb, MLPBackbone) or not isinstance(vb, MLPBackbone):
        raise WarmStartError(
            "warm start of a flow map from a velocity model is exact only for the MLP backbone; for the U-Net, "
            "warm-start from a flow map (init_from a flowmap model) or train from scratch"
        )
    if getattr(flowmap, "ansatz", "residual") != "residual":
        raise WarmStartError("warm start from a velocity model needs the residual ansatz X = x + (t - s) v")
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
