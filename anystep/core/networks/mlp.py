"""Fully connected backbone: the paper's 2D network (Sec. 4.1: 512 units, 6 layers).

The input is ``concat(x_flat, phi(t_1), ..., phi(t_n)[, phi(t - s)])`` with
:class:`~anystep.core.networks.embeddings.FourierFeatures` ``phi``; the output
has ``x``'s shape. Works for any ``data_shape`` (flattens, reshapes back).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from anystep.core.config import BackboneConfig, ConfigError
from anystep.core.networks.embeddings import FourierFeatures, prepare_times

__all__ = ["MLPBackbone"]


class MLPBackbone(nn.Module):
    """MLP ``f(x, t_1, ..., t_n)`` approximating ``b_t(x)`` or ``v_{s,t}(x)``.

    Architecture: ``depth`` hidden layers ``Linear(width) -> SiLU``, then a
    ``Linear`` to ``prod(data_shape)`` outputs. PyTorch's default initialisation
    is kept (the output is not zero at init; see :class:`UNetBackbone` for the
    zero-initialised alternative).

    For a flow map (``time_inputs = 2``) the time features are
    ``[phi(s), phi(t), phi(t - s)]``, so the gap ``t - s`` that multiplies
    ``v_{s,t}`` in the ansatz ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` is an explicit
    input.

    Args:
        cfg: backbone configuration; uses ``data_shape``, ``time_inputs``,
            ``width``, ``depth``, ``fourier_features``, ``dropout``.

    Raises:
        ConfigError: if ``width``, ``depth`` or ``dropout`` are out of range.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.width < 1:
            raise ConfigError(f"backbone.width must be >= 1 (paper: 512), got {cfg.width}")
        if cfg.depth < 1:
            raise ConfigError(f"backbone.depth must be >= 1 (paper: 6), got {cfg.depth}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"backbone.dropout must be in [0, 1), got {cfg.dropout}")
        if len(cfg.data_shape) == 0 or any(d < 1 for d in cfg.data_shape):
            raise ConfigError(
                f"backbone.data_shape must be non-empty and positive, got {cfg.data_shape}"
            )
        self.data_shape = tuple(cfg.data_shape)
        self.time_inputs = cfg.time_inputs
        self.dim = math.prod(self.data_shape)
        self.features = FourierFeatures(cfg.fourier_features)
        n_time_feats = cfg.time_inputs + (1 if cfg.time_inputs == 2 else 0)
        in_dim = self.dim + n_time_feats * self.features.out_features
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers.append(nn.Linear(in_dim if i == 0 else cfg.width, cfg.width))
            layers.append(nn.SiLU())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(cfg.width, self.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, *times: Tensor) -> Tensor:
        """Evaluate the network.

        Args:
            x: samples, shape ``[B, *data_shape]``.
            *times: ``(t,)`` for a velocity model or ``(s, t)`` for a flow map,
                each of shape ``[B]``.

        Returns:
            Output of shape ``[B, *data_shape]``.

        Raises:
            ValueError: wrong number of times or wrong shapes.
        """
        ts = prepare_times(x, times, self.data_shape, self.time_inputs, "MLPBackbone")
        if self.time_inputs == 2:
            ts.append(ts[1] - ts[0])
        h = torch.cat([x.flatten(1)] + [self.features(t) for t in ts], dim=1)
        return self.net(h).unflatten(1, self.data_shape)
