"""Fully connected backbone: the paper's 2D network (Sec. 4.1: 512 units, 6 layers).

The input is ``concat(x_flat, phi(t_1), ..., phi(t_n)[, phi(t - s)][, gamma(x)])`` with
:class:`~anystep.core.networks.embeddings.FourierFeatures` ``phi`` and, when
``backbone.x_features > 0``, random Fourier features ``gamma`` of ``x``
(:class:`SpatialFourierFeatures`); the output has ``x``'s shape. Works for any
``data_shape`` (flattens, reshapes back).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from anystep.core.config import BackboneConfig, ConfigError
from anystep.core.networks.embeddings import (
    FourierFeatures,
    build_condition_embedding,
    prepare_condition,
    prepare_times,
)

__all__ = ["MLPBackbone", "SpatialFourierFeatures"]

# Seed of the frequencies B of SpatialFourierFeatures: fixed, so that a config names one network
# (B is also saved with the weights, as a buffer).
X_FEATURE_SEED = 0


class SpatialFourierFeatures(nn.Module):
    """Random Fourier features of the spatial input (Tancik et al. 2020, "Fourier features
    let networks learn high frequency functions in low dimensional domains").

    ``gamma(x) = [sin(2 pi B x), cos(2 pi B x)]`` with ``B ~ N(0, sigma^2)`` of shape
    ``[m, dim]``, drawn once from a generator seeded with :data:`X_FEATURE_SEED` and kept as
    a (saved) buffer. An MLP on ``x`` alone is biased towards smooth functions; ``gamma``
    lets it make transitions as steep as ``1 / sigma`` (the one-step checkerboard map jumps
    at the preimages of the squares' edges).

    Args:
        dim: input dimension ``prod(data_shape)``.
        num_features: ``m`` (>= 1); the output has ``2 m`` features.
        scale: ``sigma``, in cycles per unit of ``x``.
    """

    def __init__(self, dim: int, num_features: int, scale: float) -> None:
        super().__init__()
        if int(num_features) < 1 or not scale > 0:
            raise ConfigError(f"x_features must be >= 1 and x_feature_scale > 0, got {num_features}, {scale}")
        g = torch.Generator().manual_seed(X_FEATURE_SEED)
        freqs = 2.0 * math.pi * float(scale) * torch.randn(int(num_features), int(dim), generator=g)
        self.register_buffer("freqs", freqs)

    @property
    def out_features(self) -> int:
        """Feature dimension ``2 m``."""
        return 2 * self.freqs.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[B, 2 m]`` of flattened samples ``x`` ``[B, dim]``."""
        angles = x @ self.freqs.to(x.dtype).T
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


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

    With ``x_features = m > 0`` the first layer also reads ``2 m`` random Fourier features of
    ``x`` (:class:`SpatialFourierFeatures`, scale ``x_feature_scale``), as its last columns:
    zeroing those columns gives back the network without them (the teacher warm start does).

    Conditional variant (``num_classes > 0``): a class embedding ``e(y)`` (plus
    ``e_w(w)`` of the guidance scale when ``guidance_input``), see
    :class:`~anystep.core.networks.embeddings.ConditionEmbedding`, is added to the first
    hidden layer's pre-activation, i.e. to the network's joint embedding of ``(x, t)``.
    It starts at zero, so the unconditional weights load into it unchanged.

    Args:
        cfg: backbone configuration; uses ``data_shape``, ``time_inputs``,
            ``width``, ``depth``, ``fourier_features``, ``dropout``, ``x_features``,
            ``x_feature_scale``.
        num_classes: number of classes of ``y`` (0: unconditional, no ``y`` input).
        guidance_input: take a guidance scale ``w`` (flow maps distilled from a
            classifier-free-guided teacher).

    Raises:
        ConfigError: if ``width``, ``depth`` or ``dropout`` are out of range.
    """

    def __init__(self, cfg: BackboneConfig, num_classes: int = 0, guidance_input: bool = False) -> None:
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
        self.x_features = (SpatialFourierFeatures(self.dim, cfg.x_features, cfg.x_feature_scale)
                           if cfg.x_features > 0 else None)
        if self.x_features is not None:
            in_dim += self.x_features.out_features
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers.append(nn.Linear(in_dim if i == 0 else cfg.width, cfg.width))
            layers.append(nn.SiLU())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(cfg.width, self.dim))
        self.net = nn.Sequential(*layers)
        self.num_classes = int(num_classes)
        self.guidance_input = bool(guidance_input)
        self.cond = build_condition_embedding(cfg, self.num_classes, self.guidance_input, cfg.width)

    def forward(
        self, x: Tensor, *times: Tensor, y: Tensor | None = None, w: Tensor | None = None
    ) -> Tensor:
        """Evaluate the network.

        Args:
            x: samples, shape ``[B, *data_shape]``.
            *times: ``(t,)`` for a velocity model or ``(s, t)`` for a flow map,
                each of shape ``[B]``.
            y: conditional networks only: class labels ``[B]`` in ``0..num_classes``
                (``num_classes`` = null class ∅); None means ∅.
            w: networks with ``guidance_input`` only: guidance scales ``[B]``.

        Returns:
            Output of shape ``[B, *data_shape]``.

        Raises:
            ValueError: wrong number of times, wrong shapes or conditioning.
        """
        ts = prepare_times(x, times, self.data_shape, self.time_inputs, "MLPBackbone")
        y_, w_ = prepare_condition(x, y, w, self.num_classes, self.guidance_input, "MLPBackbone")
        if self.time_inputs == 2:
            ts.append(ts[1] - ts[0])
        x_flat = x.flatten(1)
        parts = [x_flat] + [self.features(t) for t in ts]
        if self.x_features is not None:
            parts.append(self.x_features(x_flat))
        h = torch.cat(parts, dim=1)
        if self.cond is None:
            return self.net(h).unflatten(1, self.data_shape)
        h = self.net[0](h) + self.cond(y_, w_).to(h.dtype)
        for layer in self.net[1:]:
            h = layer(h)
        return h.unflatten(1, self.data_shape)
