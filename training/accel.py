"""Accelerator options of the trainer: mixed precision, ``channels_last``, ``torch.compile``.

Execution, not optimisation: these options change how a step runs, not what it
computes (up to float rounding), so they are trainer arguments (``Trainer(...,
accel=AccelOptions(...))``, ``anystep train --channels-last --compile default``) and not
fields of :class:`~anystep.training.config.TrainConfig`; a run may be resumed with
other settings. ``precision`` is the exception: fp16 needs loss scaling, which changes
the update, so it is ``TrainConfig.precision`` and its scaler state is checkpointed.

Where precision is reduced (``precision = "bf16"`` or ``"fp16"``). The trainer runs
``objective.loss`` under ``torch.autocast`` (:meth:`MixedPrecision.autocast`), so every
backbone forward that is not differentiated in forward mode runs in bf16/fp16: the
velocity objective's ``b_t`` (eq. 3.14), teacher velocities ``b_t`` of LMD/EMD
(eqs. 3.7, 3.9), FMM's plain map evaluations (eq. 3.15). Every JVP stays float32:
:func:`anystep.training.distill.jvp_times` disables autocast around
``torch.func.jvp`` and upcasts half-precision inputs (``_full_precision``), so the
Lagrangian/Eulerian derivatives ``∂_t X_{s,t}`` and ``∂_s X_{s,t} + ∇X_{s,t}·b_s`` and
the student forward inside them are computed in float32. Autocast keeps reductions,
softmax and GroupNorm statistics in float32 and the ansatz ``x + (t - s) v_st`` is
promoted to float32 (``x`` is float32), so the map's boundary condition ``X_{s,s} = id``
holds exactly. fp16 adds dynamic loss scaling (``torch.amp.GradScaler``): steps whose
gradients overflow are skipped and the scale is lowered; bf16 needs none.

``channels_last`` stores image batches and convolution weights as NHWC (faster
tensor-core convolutions on NVIDIA GPUs); checkpoints and model directories are
written contiguous (the same bytes as without it). It applies to the models that are
only evaluated or back-propagated: a velocity model in training and every teacher. A
flow-map student stays contiguous, because its objectives differentiate it with
``torch.func.jvp`` and torch's forward-mode rule of GroupNorm rejects channels-last
tensors ("view size is not compatible", torch 2.11-2.13); :func:`uses_channels_last`
is that rule. ``compile`` compiles the
*backbone* in place (``nn.Module.compile``), so parameter names, checkpoints and the
parameterisation wrapper are unchanged and ``torch.func.jvp`` differentiates through
the compiled backbone. Data are drawn on the CPU from the seeded generators (exact
resume on any device) and moved to the training device once per step.

Throughput: :func:`samples_per_second` is what the progress bar (``img/s`` for image
data) and ``train_log.jsonl`` (``samples_per_s``) report.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from anystep.core.config import ConfigError

__all__ = [
    "COMPILE_MODES",
    "PRECISION_DTYPES",
    "AccelOptions",
    "MixedPrecision",
    "check_options",
    "compile_model",
    "configure_backends",
    "prepare_batch",
    "prepare_model",
    "samples_per_second",
    "uses_channels_last",
]

PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype of each ``TrainConfig.precision`` (None: no autocast)."""

COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes offered for training (CUDA-graph modes are not: backward + JVP)."""


@dataclass(frozen=True)
class AccelOptions:
    """How the trainer executes a step (see the module docstring).

    Attributes:
        channels_last: NHWC image batches and weights (image models only).
        compile: ``"off"`` or a ``torch.compile`` mode from :data:`COMPILE_MODES`.
        compile_backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only
            traces, for tests).
        cudnn_benchmark: let cuDNN time its convolution algorithms (CUDA, fixed shapes).
    """

    channels_last: bool = False
    compile: str = "off"
    compile_backend: str = "inductor"
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile={self.compile!r}: use one of {list(COMPILE_MODES)}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ConfigError("compile_backend must be a torch.compile backend name, e.g. 'inductor'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (for logs and benchmark records)."""
        return dataclasses.asdict(self)


def _is_image(data_shape: tuple[int, ...]) -> bool:
    return len(data_shape) == 3


def uses_channels_last(model: nn.Module, options: AccelOptions, *, student: bool) -> bool:
    """Whether ``model`` is stored channels-last: asked for, and not a flow-map student.

    A flow-map student is differentiated in forward mode (``torch.func.jvp``), which
    torch's GroupNorm does not support on channels-last tensors; teachers and velocity
    models are not.
    """
    return bool(options.channels_last) and not (student and getattr(model, "kind", None) == "flowmap")


def check_options(options: AccelOptions, data_shape: tuple[int, ...]) -> None:
    """Reject options that cannot apply to this data (before training starts).

    Raises:
        ConfigError: ``channels_last`` on non-image data.
    """
    if options.channels_last and not _is_image(tuple(data_shape)):
        raise ConfigError(
            f"channels_last needs image data [C, H, W]; this model has samples of shape {list(data_shape)}: "
            "drop --channels-last"
        )


def prepare_model(
    model: nn.Module,
    options: AccelOptions,
    data_shape: tuple[int, ...],
    *,
    compile: bool = True,
    student: bool = False,
) -> nn.Module:
    """Apply ``channels_last`` and (if ``compile``) ``torch.compile`` to ``model`` in place.

    Args:
        model: a flow map or velocity model (``model.backbone`` is compiled).
        options: the accelerator options.
        data_shape: shape of one sample; ``channels_last`` needs ``[C, H, W]`` data.
        compile: False skips compilation (e.g. before the EMA copy is taken).
        student: the model being trained (see :func:`uses_channels_last`).

    Returns:
        The same module.

    Raises:
        ConfigError: ``channels_last`` on non-image data.
    """
    if options.channels_last:
        check_options(options, data_shape)
        if uses_channels_last(model, options, student=student):
            model.to(memory_format=torch.channels_last)
    if compile:
        compile_model(model, options)
    return model


def compile_model(model: nn.Module, options: AccelOptions) -> nn.Module:
    """``torch.compile`` ``model.backbone`` in place (a no-op for ``compile="off"``).

    In place (``nn.Module.compile``), so ``state_dict`` keys do not change and the
    parameterisation wrapper and ``torch.func.jvp`` see the same module.
    """
    if options.compile == "off":
        return model
    target = getattr(model, "backbone", model)
    kwargs: dict[str, Any] = {"backend": options.compile_backend, "dynamic": False}
    if options.compile != "default":
        kwargs["mode"] = options.compile
    target.compile(**kwargs)
    return model


def configure_backends(options: AccelOptions, device: torch.device) -> None:
    """Process-wide backend switches for ``device`` (cuDNN autotuning on CUDA)."""
    if device.type == "cuda" and options.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def prepare_batch(batch: Any, channels_last: bool) -> Any:
    """The batch with its image tensors (``[B, C, H, W]``) in ``channels_last`` when asked."""
    if not channels_last or not dataclasses.is_dataclass(batch):
        return batch
    changes = {
        f.name: v.contiguous(memory_format=torch.channels_last)
        for f in dataclasses.fields(batch)
        if isinstance(v := getattr(batch, f.name), Tensor) and v.dim() == 4
    }
    return dataclasses.replace(batch, **changes) if changes else batch


def samples_per_second(samples: int, seconds: float) -> float:
    """Throughput ``samples / seconds`` (images/s for image data), 0 for an empty interval."""
    return float(samples) / seconds if seconds > 0 else 0.0


class MixedPrecision:
    """Autocast context and, for fp16, dynamic loss scaling.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``TrainConfig.precision``).
        device: the training device.

    Use: ``with mp.autocast(): loss = ...``; ``mp.backward(loss)``; ``mp.unscale_(opt)``
    before gradient clipping; ``mp.step(opt)`` instead of ``opt.step()``.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISION_DTYPES:
            raise ConfigError(f"precision={precision!r}: use one of {list(PRECISION_DTYPES)}")
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = PRECISION_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self._unscaled = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to bf16/fp16 (a no-op for fp32); JVPs inside switch it off themselves."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, on the scaled loss for fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (fp16), so clipping sees true norms."""
        if self.scaler is not None and not self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step; for fp16 skipped when a gradient overflowed. Returns True if taken."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled = False
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, Any] | None:
        """JSON-serialisable scaler state (None without loss scaling)."""
        if self.scaler is None:
            return None
        return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (ignored without loss scaling)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
