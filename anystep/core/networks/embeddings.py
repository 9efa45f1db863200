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

from anystep.core.config import BackboneConfig

__all__ = [
    "FLOWMAP_LABEL_GAIN",
    "GUIDANCE_EMBED_SCALE",
    "ConditionEmbedding",
    "FourierFeatures",
    "FourierTimeEmbedding",
    "MultiTimeEmbedding",
    "prepare_condition",
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


# --------------------------------------------------------------------------------------
# conditioning: class label y and guidance scale w
# --------------------------------------------------------------------------------------

# The guidance scale is embedded as phi(w / GUIDANCE_EMBED_SCALE): Fourier features have
# period 2, so scales in [0, 2 * GUIDANCE_EMBED_SCALE) never alias.
GUIDANCE_EMBED_SCALE = 8.0

# Gain of the class table of flow-map backbones (``e(y) = gain * table[y]``). A flow map is
# usually warm-started from an unconditional map with the table at zero; Adam moves every
# entry by about ``lr`` per step, so with gain 1 the class signal stays ~0.05 for hundreds
# of steps while the shared weights are already pulled towards class-dependent targets
# (distillation of a guided teacher), which damages the map. The gain makes the class
# signal reach O(1) within ~100 steps (digits-cond-lmd, lr 3e-4: with gain 1 the map was
# still class-blind at step 200; with gain 30 it was class-blind at step 100 and at 99%
# one-step accuracy at step 400; not an ablation, one run each). Velocity backbones keep gain 1.
FLOWMAP_LABEL_GAIN = 30.0


def _is_tracing() -> bool:
    """True inside torch.export / torch.compile / jit tracing (no value-dependent checks there)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and (
        getattr(compiler, "is_exporting", lambda: False)() or compiler.is_compiling()
    ):
        return True
    return bool(torch.jit.is_tracing())


def prepare_condition(
    x: Tensor,
    y: Tensor | None,
    w: Tensor | None,
    num_classes: int,
    guidance_input: bool,
    where: str,
) -> tuple[Tensor | None, Tensor | None]:
    """Check the conditioning inputs of a backbone and return them in canonical form.

    Args:
        x: the batch, shape ``[B, ...]`` (gives ``B``, dtype and device).
        y: class labels ``[B]`` (integers in ``0..num_classes``, where ``num_classes`` is the
            null class ``∅`` of classifier-free guidance), or None for the null class.
        w: guidance scales ``[B]`` (floating point), required iff ``guidance_input``.
        num_classes: number of real classes the network was built for (0: unconditional).
        guidance_input: whether the network takes ``w``.
        where: name of the calling module, used in error messages.

    Returns:
        ``(y, w)``: ``y`` as int64 ``[B]`` (None for an unconditional network), ``w`` in
        ``x``'s dtype ``[B]`` (None when the network takes no ``w``).

    Raises:
        ValueError: conditioning passed to a network that takes none, wrong shapes,
            non-integer or out-of-range labels, or a missing ``w``.
    """
    b = x.shape[0]
    if num_classes == 0 and y is not None:
        raise ValueError(
            f"{where} is unconditional (num_classes=0) but got class labels y; "
            "drop y or use a model trained with num_classes > 0"
        )
    if not guidance_input and w is not None:
        raise ValueError(
            f"{where} takes no guidance scale (guidance_input=False) but got w; drop w"
        )
    y_out = None
    if num_classes > 0:
        if y is None:
            y_out = torch.full((b,), num_classes, dtype=torch.int64, device=x.device)
        else:
            if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != b:
                raise ValueError(
                    f"{where}: y must be a tensor of shape [B]=[{b}] (one label per sample), got "
                    f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
                )
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
            y_out = y.to(torch.int64)
            if not _is_tracing() and b > 0 and bool(((y_out < 0) | (y_out > num_classes)).any()):
                raise ValueError(
                    f"{where}: class labels must be in 0..{num_classes - 1} (or {num_classes} for the "
                    f"null class), got min {int(y_out.min())}, max {int(y_out.max())}"
                )
    w_out = None
    if guidance_input:
        if w is None:
            raise ValueError(
                f"{where} takes a guidance scale: pass w of shape [B] (w = 1 is the plain "
                "conditional model, w = 0 the unconditional one)"
            )
        if not isinstance(w, Tensor) or w.dim() != 1 or w.shape[0] != b:
            raise ValueError(
                f"{where}: w must be a tensor of shape [B]=[{b}] (one guidance scale per sample), got "
                f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}"
            )
        w_out = w.to(x.dtype)
    return y_out, w_out


class ConditionEmbedding(nn.Module):
    """Embedding ``e(y) [+ e_w(w)]`` of a class label and a guidance scale.

    ``e(y)`` is a table of ``num_classes + 1`` rows (the last is the null class ``∅``);
    ``e_w(w)`` is a :class:`FourierTimeEmbedding` of ``w / GUIDANCE_EMBED_SCALE``. Both
    start at exactly zero (zero table, zero last layer), so a conditional network built
    from an unconditional one's weights computes the same function until training moves
    them; gradients reach both from the first step. The backbones add the result to their
    time embedding.

    Args:
        num_classes: number of real classes (>= 1).
        guidance_input: also embed a guidance scale ``w``.
        num_frequencies: ``K`` of the Fourier features of ``w``.
        embed_dim: output dimension (the backbone's time-embedding dimension).
        label_gain: ``e(y) = label_gain * table[y]`` (see :data:`FLOWMAP_LABEL_GAIN`).
    """

    def __init__(
        self,
        num_classes: int,
        guidance_input: bool,
        num_frequencies: int,
        embed_dim: int,
        label_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"ConditionEmbedding needs num_classes >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.label_gain = float(label_gain)
        self.label = nn.Embedding(self.num_classes + 1, embed_dim)
        nn.init.zeros_(self.label.weight)
        self.guidance: FourierTimeEmbedding | None = None
        if guidance_input:
            self.guidance = FourierTimeEmbedding(num_frequencies, embed_dim)
            last = self.guidance.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, y: Tensor, w: Tensor | None) -> Tensor:
        """Embed labels ``y [B]`` (int64) and scales ``w [B]`` (or None) -> ``[B, embed_dim]``."""
        e = self.label(y) if self.label_gain == 1.0 else self.label_gain * self.label(y)
        if self.guidance is not None and w is not None:
            e = e + self.guidance(w / GUIDANCE_EMBED_SCALE).to(e.dtype)
        return e


def build_condition_embedding(
    cfg: BackboneConfig, num_classes: int, guidance_input: bool, dim: int
) -> ConditionEmbedding | None:
    """The backbones' conditioning embedding, or None for an unconditional network.

    Args:
        cfg: the backbone config (``fourier_features``, ``time_inputs``).
        num_classes: K real classes (0: unconditional); one more row is the null class.
        guidance_input: whether the guidance scale ``w`` is an input (needs ``num_classes >= 1``).
        dim: width of the time embedding the condition is added to.
    """
    from anystep.core.config import ConfigError

    if guidance_input and num_classes < 1:
        raise ConfigError("a guidance input w needs a class-conditional network (num_classes >= 1)")
    if num_classes <= 0:
        return None
    return ConditionEmbedding(
        num_classes,
        guidance_input,
        cfg.fourier_features,
        dim,
        label_gain=FLOWMAP_LABEL_GAIN if cfg.time_inputs == 2 else 1.0,
    )
