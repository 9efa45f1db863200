"""Neural backbones ``f(x, t)`` / ``f(x, s, t)`` for velocity fields and flow maps.

Every backbone has the interface ``forward(x, *times) -> Tensor`` with ``x`` of
shape ``[B, *cfg.data_shape]`` and exactly ``cfg.time_inputs`` time tensors of
shape ``[B]`` (``(t,)`` for ``b_t(x)``, ``(s, t)`` for ``X_{s,t}(x)``); the output
has ``x``'s shape. Backbones support ``torch.func.jvp`` in ``x`` and every time,
and ``torch.export`` with a dynamic batch dimension.
"""

from __future__ import annotations

from torch import nn

from anystep.core.config import BackboneConfig, ConfigError
from anystep.core.networks.embeddings import (
    ConditionEmbedding,
    FourierFeatures,
    FourierTimeEmbedding,
    MultiTimeEmbedding,
    prepare_condition,
    prepare_times,
)
from anystep.core.networks.mlp import MLPBackbone
from anystep.core.networks.unet import UNetBackbone

__all__ = [
    "ConditionEmbedding",
    "FourierFeatures",
    "FourierTimeEmbedding",
    "MLPBackbone",
    "MultiTimeEmbedding",
    "UNetBackbone",
    "build_backbone",
    "prepare_condition",
    "prepare_times",
]


def build_backbone(cfg: BackboneConfig, num_classes: int = 0, guidance_input: bool = False) -> nn.Module:
    """Build the backbone named by ``cfg.name``.

    Args:
        cfg: backbone configuration (``name`` is ``"mlp"`` or ``"unet"``).
        num_classes: class-conditional backbone with labels ``0..num_classes-1`` and the
            null class ``num_classes`` (0: unconditional).
        guidance_input: also take a guidance scale ``w`` (needs ``num_classes > 0``).

    Returns:
        An :class:`MLPBackbone` or :class:`UNetBackbone` (float32, train mode).

    Raises:
        ConfigError: unknown name or invalid configuration values.
    """
    if not isinstance(cfg, BackboneConfig):
        raise ConfigError(
            f"build_backbone expects a BackboneConfig, got {type(cfg).__name__}; "
            "use BackboneConfig.from_dict(...) for a dict"
        )
    if cfg.name == "mlp":
        return MLPBackbone(cfg, num_classes=num_classes, guidance_input=guidance_input)
    if cfg.name == "unet":
        return UNetBackbone(cfg, num_classes=num_classes, guidance_input=guidance_input)
    raise ConfigError(f"backbone.name={cfg.name!r}: use 'mlp' or 'unet'")
