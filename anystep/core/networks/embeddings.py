"""Time embeddings shared by the backbones, and input validation for them.

A velocity model ``b_t(x)`` takes one time, a flow map ``X_{s,t}(x)`` two
(paper, Sec. 3 and Sec. 4: "both s and t are embedded identically to t in the
original architecture; the result is concatenated and treated like t").

Times live in ``[0, 1]`` (``t = 0`` base, ``t = 1`` data). Every op here is
differentiable in forward mode (``torch.func.jvp``) and exportable with a dynamic
batch dimension: no in-place ops, no Python control flow on tensor values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "FourierFeatures",
    "FourierTimeEmbedding",
    "MultiTimeEmbedding",
    "prepare_times",
]


def prepare_times(
    x: Tensor,
    times: Sequence[Tensor],
    data_shape: tuple[int, ...],
    time_inputs: int,
    where: str,
) -> list[Tensor]:
    """Check a backbone's inputs and return the times cast to ``x``'s dtype.

    Args:
        x: batch of samples, shape ``[B, *data_shape]``.
        times: exactly ``time_inputs`` tensors, each of shape ``[B]``
            (``(t,)`` for a velocity model, ``(s, t)`` for a flow map).
        data_shape: shape of one sample the network was built for.
        time_inputs: number of time inputs the network was built for (1 or 2).
        where: name of the calling module, used in error messages.

    Returns:
        The times as a list of ``[B]`` tensors with ``x``'s dtype.

    Raises:
        ValueError: if the number of times or any shape is wrong.
    """
    if len(times) != time_inputs:
        kind = "velocity model: forward(x, t)" if time_inputs == 1 else "flow map: forward(x, s, t)"
        raise ValueError(
            f"{where} was built with time_inputs={time_inputs} ({kind}) but got "
            f"{len(times)} time tensor(s); pass exactly {time_inputs}"
        )
    if x.dim() != len(data_shape) + 1 or tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(
            f"{where} expects x of shape [B, {', '.join(map(str, data_shape))}] "
            f"(batch + data_shape={tuple(data_shape)}), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{where} expects a floating-point x, got dtype {x.dtype}")
    out = []
    for i, t in enumerate(times):
        if not isinstance(t, Tensor):
            raise ValueError(  # noqa: TRY004 (the interface promises ValueError for bad inputs)
                f"{where}: time input {i} must be a torch.Tensor of shape [B], "
                f"got {type(t).__name__}; use torch.full((B,), value)"
            )
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: time input {i} must have shape [B]=[{x.shape[0]}] "
                f"(one time per sample), got {tuple(t.shape)}; use t.expand(B) or "
                "torch.full((B,), value)"
            )
        out.append(t.to(x.dtype))
    return out


class FourierFeatures(nn.Module):
    """Deterministic Fourier features of a scalar time.

    ``phi(t) = [t, sin(pi k t), cos(pi k t)]`` for ``k = 1..K``. The frequencies are
    half-integer multiples of ``2 pi`` so that the features have period 2, not 1:
    ``t = 0`` (base) and ``t = 1`` (data) get different features even without the
    raw ``t`` channel. No learned parameters; the frequencies are a fixed buffer.

    Args:
        num_frequencies: ``K``, number of frequencies (>= 1).
    """

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        if int(num_frequencies) < 1:
            raise ValueError(
                f"num_frequencies must be >= 1, got {num_frequencies}; "
                "set backbone.fourier_features to a positive integer (default 16)"
            )
        self.num_frequencies = int(num_frequencies)
        freqs = math.pi * torch.arange(1, self.num_frequencies + 1, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)

    @property
    def out_features(self) -> int:
        """Feature dimension ``2 K + 1``."""
        return 2 * self.num_frequencies + 1

    def forward(self, t: Tensor) -> Tensor:
        """Embed times.

        Args:
            t: times, shape ``[B]``.

        Returns:
            Features of shape ``[B, 2 K + 1]``.
        """
        angles = t[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


class FourierTimeEmbedding(nn.Module):
    """Learned time embedding: Fourier features followed by a 2-layer MLP.

    ``e(t) = W_2 SiLU(W_1 phi(t) + c_1) + c_2`` (the OpenAI U-Net's ``time_embed``
    with the sinusoidal embedding replaced by :class:`FourierFeatures`).

    Args:
        num_frequencies: ``K`` of the Fourier features.
        embed_dim: output dimension.
        hidden_dim: hidden dimension of the MLP (default ``embed_dim``).
    """

    def __init__(self, num_frequencies: int, embed_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        hidden_dim = embed_dim if hidden_dim is None else hidden_dim
        self.features = FourierFeatures(num_frequencies)
        self.mlp = nn.Sequential(
            nn.Linear(self.features.out_features, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, embed_dim),
        )
        self.embed_dim = embed_dim

    def forward(self, t: Tensor) -> Tensor:
        """Embed times.

        Args:
            t: times, shape ``[B]``.

        Returns:
            Embedding of shape ``[B, embed_dim]``.
        """
        return self.mlp(self.features(t))


class MultiTimeEmbedding(nn.Module):
    """Embedding of one time ``t`` or two times ``(s, t)`` into a single vector.

    Each time gets its own :class:`FourierTimeEmbedding` (same architecture,
    separate weights, i.e. "embedded identically to t"); for two times the gap
    ``t - s`` gets one more, as an extra feature. The embeddings are concatenated
    and mapped by ``SiLU -> Linear`` to ``embed_dim`` ("concatenated and treated
    like t"). With one time the output is the single embedding unchanged.

    Args:
        num_times: 1 (velocity ``b_t``) or 2 (flow map ``X_{s,t}``).
        num_frequencies: ``K`` of each Fourier embedding.
        embed_dim: output dimension.
        include_gap: for two times, also embed ``t - s``.
    """

    def __init__(
        self,
        num_times: int,
        num_frequencies: int,
        embed_dim: int,
        include_gap: bool = True,
    ) -> None:
        super().__init__()
        if num_times not in (1, 2):
            raise ValueError(f"num_times must be 1 or 2, got {num_times}")
        self.num_times = num_times
        self.include_gap = bool(include_gap) and num_times == 2
        n_embed = num_times + int(self.include_gap)
        self.embeds = nn.ModuleList(
            FourierTimeEmbedding(num_frequencies, embed_dim) for _ in range(n_embed)
        )
        self.combine: nn.Module
        if n_embed == 1:
            self.combine = nn.Identity()
        else:
            self.combine = nn.Sequential(nn.SiLU(), nn.Linear(n_embed * embed_dim, embed_dim))
        self.embed_dim = embed_dim

    def forward(self, times: Sequence[Tensor]) -> Tensor:
        """Embed the times.

        Args:
            times: ``num_times`` tensors of shape ``[B]``: ``(t,)`` or ``(s, t)``.

        Returns:
            Embedding of shape ``[B, embed_dim]``.
        """
        inputs = list(times)
        if self.include_gap:
            inputs.append(inputs[1] - inputs[0])
        parts = [emb(t) for emb, t in zip(self.embeds, inputs)]
        if len(parts) == 1:
            return parts[0]
        return self.combine(torch.cat(parts, dim=1))
