"""Data-parallel training over several processes (``torchrun``) without the DDP wrapper.

Launch: ``torchrun --nproc_per_node=2 -m anystep.training.cli PRESET --out DIR`` (or
``torchrun --nproc_per_node=2 $(which anystep) train PRESET --out DIR``). The process
group uses ``gloo`` on CPU and ``nccl`` on CUDA.

Why gradients are all-reduced by hand instead of wrapping the model in
``torch.nn.parallel.DistributedDataParallel``: several objectives differentiate the
model with ``torch.func.jvp`` (forward-mode AD for ``d/dt X_{s,t}`` and ``nabla X . b``)
and call it several times per loss (``X_{s,t}(X_{t,s}(I_t))``, teacher compositions,
diagonal and off-diagonal terms). DDP's reducer relies on forward hooks and on every
parameter's gradient hook firing exactly once per backward in a predictable order;
functional transforms bypass or duplicate those hooks, which leads to hangs ("expected
to mark a variable ready only once") or silently missing reductions. Averaging the
``.grad`` tensors with one ``all_reduce`` after ``backward`` is independent of how the loss
was computed, so it works for every objective; the cost is that communication does
not overlap with the backward pass, which does not matter for these model sizes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "all_gather_tensor",
    "all_reduce_gradients",
    "all_reduce_mean",
    "barrier",
    "broadcast_module",
    "collective_device",
    "current",
    "init_from_env",
    "resolve_device",
    "shutdown",
]


@dataclass
class DistInfo:
    """Where this process stands in a (possibly trivial) process group.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects the CUDA device).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that logs and writes files)."""
        return self.rank == 0


def current() -> DistInfo:
    """The process group this process belongs to (a single-process DistInfo if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            backend=str(dist.get_backend()),
        )
    return DistInfo()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """The device a rank trains on: ``"auto"`` is CUDA when available; ``"cuda"`` is rank-local.

    Raises:
        ConfigError: CUDA asked for but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            from anystep.core.config import ConfigError

            raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu")
        if name == "cuda" and info.distributed:
            name = f"cuda:{info.local_rank}"
    return torch.device(name)


def collective_device(device: torch.device, info: DistInfo) -> torch.device:
    """Where tensors for collectives live: ``device`` with ``nccl``, else the CPU."""
    return device if info.backend == "nccl" else torch.device("cpu")


def init_from_env(device: str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Does nothing (returns a single-process DistInfo) when ``WORLD_SIZE`` is unset or 1,
    or when a group is already initialised.

    Args:
        device: the training device; ``cuda*`` selects ``nccl``, anything else ``gloo``.
        timeout_s: collective timeout.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    """Leave the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.distributed:
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank."""
    if not info.distributed:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


@torch.no_grad()
def all_reduce_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` over ranks in place: ``g <- (sum_r g_r) / world_size``.

    Parameters without a gradient on this rank contribute zeros (and get one), so every
    rank issues the same collectives. Gradients are packed into one flat buffer per
    dtype to make a single ``all_reduce`` call.
    """
    if not info.distributed:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for ps in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(info.world_size)
        offset = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


@torch.no_grad()
def all_reduce_mean(values: Tensor, info: DistInfo) -> Tensor:
    """Mean of a tensor over ranks (returns a new tensor; identity when not distributed)."""
    if not info.distributed:
        return values.clone()
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


@torch.no_grad()
def all_gather_tensor(value: Tensor, info: DistInfo) -> list[Tensor]:
    """Every rank's copy of ``value`` (same shape on all ranks), indexed by rank."""
    if not info.distributed:
        return [value.clone()]
    out = [torch.empty_like(value) for _ in range(info.world_size)]
    dist.all_gather(out, value.contiguous())
    return out
