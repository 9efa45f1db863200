"""Small OpenAI-style U-Net (Dhariwal & Nichol, "guided-diffusion") for images.

The paper (Sec. 4.2, App. C) uses this U-Net with the time embedding modified for
two times: "both s and t are embedded identically to t in the original
architecture; the result is concatenated and treated like t", which is what
:class:`~anystep.core.networks.embeddings.MultiTimeEmbedding` does.

Input/output: ``[B, C, H, W]`` with ``H`` and ``W`` divisible by
``2 ** (len(channel_mult) - 1)``.

The final convolution is zero-initialised, so a freshly built network outputs
exactly 0. For a flow map in the residual form ``X_{s,t}(x) = x + (t - s)
v_{s,t}(x)`` this makes the initial map the identity, and for the convex form
(eq. 4.1) it makes it ``(1 - t + s) x``; both are a gentle warm start. Only that
one layer is zeroed (unlike guided-diffusion, the residual branches keep their
default initialisation) so gradients reach every layer from the first step.

Only ops with forward-mode AD and ONNX export support are used (conv, GroupNorm,
SiLU, nearest upsampling, attention as matmul + softmax); no BatchNorm, so each
output sample depends only on its own input sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anystep.core.config import BackboneConfig, ConfigError
from anystep.core.networks.embeddings import (
    MultiTimeEmbedding,
    build_condition_embedding,
    prepare_condition,
    prepare_times,
)

__all__ = ["UNetBackbone", "group_norm_groups"]


def group_norm_groups(channels: int) -> int:
    """Number of GroupNorm groups for ``channels`` channels.

    The largest divisor ``g <= 32`` of ``channels`` that leaves at least 4 channels
    per group (32 groups for 128+ channels as in guided-diffusion, 8 for 32
    channels); 1 if no such divisor exists.

    Args:
        channels: number of channels (>= 1).

    Returns:
        The number of groups, a divisor of ``channels``.
    """
    best = 1
    for g in range(1, 33):
        if channels % g == 0 and channels // g >= 4:
            best = g
    return best


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_norm_groups(channels), channels)


class ResBlock(nn.Module):
    """Residual block with the time embedding injected as scale/shift.

    ``h = conv(SiLU(GN(x)))``; ``h = GN(h) * (1 + scale(e)) + shift(e)``;
    ``h = conv(dropout(SiLU(h)))``; output ``skip(x) + h``.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        emb_dim: time embedding dimension.
        dropout: dropout probability.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip: nn.Module = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: features, shape ``[B, in_ch, H, W]``.
            emb: time embedding, shape ``[B, emb_dim]``.

        Returns:
            Features of shape ``[B, out_ch, H, W]``.
        """
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, with a residual connection.

    Written with matmul + softmax (forward-mode AD and ONNX friendly). Heads of 32
    channels when the channel count allows, otherwise one head.

    Args:
        channels: number of channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.num_heads = channels // 32 if channels % 32 == 0 else 1
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Apply attention.

        Args:
            x: features, shape ``[B, C, H, W]``.

        Returns:
            Features of shape ``[B, C, H, W]``.
        """
        b, c, hgt, wid = x.shape
        h = self.qkv(self.norm(x).flatten(2))  # [B, 3C, N]
        q, k, v = h.reshape(b * self.num_heads, 3 * c // self.num_heads, -1).chunk(3, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(c // self.num_heads))
        weights = torch.softmax(torch.matmul((q * scale).transpose(1, 2), k * scale), dim=-1)
        a = torch.matmul(v, weights.transpose(1, 2))  # [B*heads, C/heads, N]
        out = self.proj(a.reshape(b, c, -1))
        return x + out.reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ``[B, C, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x`` of shape ``[B, C, H, W]``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then 3x3 convolution: ``[B, C, H, W] -> [B, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` of shape ``[B, C, H, W]``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """ResBlock followed by an optional attention block."""

    def __init__(self, res: ResBlock, attn: bool, channels: int) -> None:
        super().__init__()
        self.res = res
        self.attn: nn.Module = AttentionBlock(channels) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNetBackbone(nn.Module):
    """U-Net ``f(x, t_1, ..., t_n)`` approximating ``b_t(x)`` or ``v_{s,t}(x)`` on images.

    Encoder: per level ``i`` (multiplier ``channel_mult[i]``) ``num_res_blocks``
    ResBlocks (+ attention if ``i in attention_levels``), then a stride-2 conv
    except at the last level. Middle: ResBlock, attention, ResBlock. Decoder: per
    level ``num_res_blocks + 1`` ResBlocks on ``concat(h, skip)``, then nearest
    upsampling + conv except at level 0. Output: GroupNorm, SiLU, zero-initialised
    3x3 conv (so the initial output is 0). Time embedding dimension
    ``4 * channels``.

    Args:
        cfg: backbone configuration; uses ``data_shape`` ``(C, H, W)``,
            ``time_inputs``, ``fourier_features``, ``channels``, ``channel_mult``,
            ``num_res_blocks``, ``attention_levels``, ``dropout``.
        num_classes: number of classes of ``y`` (0: unconditional). The class
            embedding (and the guidance embedding) is added to the time embedding,
            see :class:`~anystep.core.networks.embeddings.ConditionEmbedding`; it starts
            at zero so unconditional weights load into it unchanged.
        guidance_input: take a guidance scale ``w`` (needs ``num_classes > 0``).

    Raises:
        ConfigError: if a configuration value is out of range or ``H``, ``W`` are
            not divisible by ``2 ** (len(channel_mult) - 1)``.
    """

    def __init__(self, cfg: BackboneConfig, num_classes: int = 0, guidance_input: bool = False) -> None:
        super().__init__()
        if len(cfg.data_shape) != 3:
            raise ConfigError(f"UNetBackbone needs data_shape (C, H, W), got {cfg.data_shape}")
        in_ch, height, width = cfg.data_shape
        n_levels = len(cfg.channel_mult)
        if n_levels < 1 or any(m < 1 for m in cfg.channel_mult):
            raise ConfigError(
                f"backbone.channel_mult must be a non-empty list of positive ints, got {cfg.channel_mult}"
            )
        if cfg.channels < 1:
            raise ConfigError(f"backbone.channels must be >= 1, got {cfg.channels}")
        if cfg.num_res_blocks < 1:
            raise ConfigError(f"backbone.num_res_blocks must be >= 1, got {cfg.num_res_blocks}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"backbone.dropout must be in [0, 1), got {cfg.dropout}")
        bad = [a for a in cfg.attention_levels if not 0 <= a < n_levels]
        if bad:
            raise ConfigError(
                f"backbone.attention_levels {bad} out of range: levels are 0..{n_levels - 1} "
                f"(indices into channel_mult={cfg.channel_mult})"
            )
        factor = 2 ** (n_levels - 1)
        if height % factor or width % factor:
            raise ConfigError(
                f"U-Net with {n_levels} levels (channel_mult={cfg.channel_mult}) needs H and W "
                f"divisible by {factor}, got H={height}, W={width}; pad the images or use a "
                "shorter channel_mult"
            )
        self.data_shape = tuple(cfg.data_shape)
        self.time_inputs = cfg.time_inputs
        ch = cfg.channels
        emb_dim = 4 * ch
        self.time_embed = MultiTimeEmbedding(cfg.time_inputs, cfg.fourier_features, emb_dim)
        self.num_classes = int(num_classes)
        self.guidance_input = bool(guidance_input)
        self.cond = build_condition_embedding(cfg, self.num_classes, self.guidance_input, emb_dim)
        attn_levels = set(cfg.attention_levels)

        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chs = [ch]
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                blocks.append(
                    _Level(ResBlock(cur, out, emb_dim, cfg.dropout), level in attn_levels, out)
                )
                cur = out
                skip_chs.append(cur)
            self.down.append(blocks)
            if level != n_levels - 1:
                self.downsample.append(Downsample(cur))
                skip_chs.append(cur)
            else:
                self.downsample.append(nn.Identity())

        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout)
        self.mid_attn = AttentionBlock(cur)
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                out = ch * mult
                res = ResBlock(cur + skip_chs.pop(), out, emb_dim, cfg.dropout)
                blocks.append(_Level(res, level in attn_levels, out))
                cur = out
            self.up.append(blocks)
            self.upsample.append(Upsample(cur) if level != 0 else nn.Identity())

        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, in_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x: Tensor, *times: Tensor, y: Tensor | None = None, w: Tensor | None = None
    ) -> Tensor:
        """Evaluate the network.

        Args:
            x: images, shape ``[B, C, H, W]`` equal to ``[B, *data_shape]``.
            *times: ``(t,)`` for a velocity model or ``(s, t)`` for a flow map,
                each of shape ``[B]``.
            y: conditional networks only: class labels ``[B]`` in ``0..num_classes``
                (``num_classes`` = null class ∅); None means ∅.
            w: networks with ``guidance_input`` only: guidance scales ``[B]``.

        Returns:
            Output of shape ``[B, C, H, W]``.

        Raises:
            ValueError: wrong number of times, wrong shapes or conditioning.
        """
        ts = prepare_times(x, times, self.data_shape, self.time_inputs, "UNetBackbone")
        y_, w_ = prepare_condition(x, y, w, self.num_classes, self.guidance_input, "UNetBackbone")
        emb = self.time_embed(ts)
        if self.cond is not None:
            emb = emb + self.cond(y_, w_).to(emb.dtype)
        h = self.conv_in(x)
        skips = [h]
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))
