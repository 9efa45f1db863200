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
    FourierFeatures,
    FourierTimeEmbedding,
    MultiTimeEmbedding,
    prepare_times,
)
from anystep.core.networks.mlp import MLPBackbone
from anystep.core.networks.unet import UNetBackbone

__all__ = [
    "FourierFeatures",
    "FourierTimeEmbedding",
    "MLPBackbone",
    "MultiTimeEmbedding",
    "UNetBackbone",
    "build_backbone",
    "prepare_times",
]


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """Build the backbone named by ``cfg.name``.

    Args:
        cfg: backbone configuration (``name`` is ``"mlp"`` or ``"unet"``).

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
        return MLPBackbone(cfg)
    if cfg.name == "unet":
        return UNetBackbone(cfg)
    raise ConfigError(f"backbone.name={cfg.name!r}: use 'mlp' or 'unet'")
