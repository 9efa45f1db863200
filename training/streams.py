"""The seeded random streams of a training run and the batches drawn from them.

All randomness of a run comes from ``torch.Generator`` objects seeded from ``config.seed``
by :func:`derive_seed`: model initialisation, the data stream (``x0``, ``x1``, ``z``, labels),
one time stream per micro-batch (the objective draws ``(s, t)`` from it) and the global
torch generator (dropout). :class:`RunStreams` holds this rank's data sets and streams;
their states are checkpointed (:meth:`RunStreams.gathered_states`,
:meth:`RunStreams.load_states`), so a resumed run continues exactly.

One optimisation step with global batch ``B``, ``W`` processes and ``m`` micro-batches:
draw ``B / W`` samples per rank (``ddp_batch="shard"``, rank-seeded streams) or the full
``B`` on every rank and keep slice ``rank`` (``ddp_batch="split"``); couple them
(:mod:`anystep.core.couplings`); split into ``m`` chunks. Chunk ``c = rank * m + j``
always uses time stream ``c``, so ``W`` processes with ``ddp_batch="split"`` perform the
same update as one process with ``micro_batches = W``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from anystep.training import ddp
from anystep.training.base import Batch
from anystep.training.checkpoint import CheckpointError
from anystep.training.config import TrainConfig

__all__ = ["RunStreams", "chunk_ids", "derive_seed", "seeded_generator"]


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed derived from ``seed`` and tags (stable across processes and runs)."""
    text = "/".join([str(int(seed))] + [str(t) for t in tags])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def chunk_ids(rank: int, micro_batches: int) -> list[int]:
    """The global micro-batch (chunk) numbers ``rank * m + j`` of this rank's ``m`` chunks."""
    return [rank * micro_batches + j for j in range(micro_batches)]


class RunStreams:
    """This rank's data sets, data stream and per-chunk time streams.

    Args:
        config: the training config (data set, base, coupling, seed, batch layout).
        data_shape: the shape of one sample.
        dist: process-group info.
        device: where the batches go.

    Attributes:
        dataset: the training set (``x1``).
        base: ``"gaussian"`` or the base data set (``x0``).
        chunk_ids: this rank's chunk numbers (:func:`chunk_ids`).
        data_gen: the data stream (seeded by ``(seed, "data", rank)``; rank 0 on every
            rank with ``ddp_batch="split"``).
        objective_gens: ``{chunk: generator}``, the time stream of each chunk.
    """

    def __init__(self, config: TrainConfig, data_shape: tuple[int, ...], dist: ddp.DistInfo, device: torch.device):
        from anystep.core.data import get_dataset

        cfg = config
        self.config = cfg
        self.data_shape = tuple(data_shape)
        self.dist = dist
        self.device = device
        self.dataset = get_dataset(cfg.dataset, **cfg.dataset_kwargs)
        self.base = "gaussian" if cfg.base.strip().lower() == "gaussian" else get_dataset(cfg.base)
        self.chunk_ids = chunk_ids(dist.rank, cfg.micro_batches)
        data_rank = 0 if cfg.ddp_batch == "split" else dist.rank
        self.data_gen = seeded_generator(derive_seed(cfg.seed, "data", data_rank))
        self.objective_gens = {c: seeded_generator(derive_seed(cfg.seed, "objective", c)) for c in self.chunk_ids}

    def draw(self) -> list[Batch]:
        """This rank's micro-batches for the next step (advances the data stream)."""
        from anystep.core import couplings
        from anystep.core.data import base_sample

        cfg = self.config
        W, m = self.dist.world_size, cfg.micro_batches
        split = cfg.ddp_batch == "split"
        n = cfg.batch_size if split else cfg.batch_size // W
        g = self.data_gen
        y = None
        if cfg.coupling == "paired" and hasattr(self.base, "sample_pair"):  # e.g. (degraded, clean) digits
            drawn = self.base.sample_pair(n, g)
            x0, x1, y = drawn.x0, drawn.x1, (drawn.y if cfg.model.num_classes else None)
        elif cfg.model.num_classes:  # class-conditional: labels ride along with x1
            drawn = self.dataset.sample_labelled(n, g)
            x1, y = drawn.x, drawn.y
        else:
            x1 = self.dataset.sample(n, g)
        if not (cfg.coupling == "paired" and hasattr(self.base, "sample_pair")):
            x0 = base_sample(self.base, self.data_shape, n, g)
        z = torch.randn((n, *self.data_shape), generator=g)
        pair = couplings.COUPLINGS[cfg.coupling](x0, x1)
        x0, x1 = pair.x0, pair.x1
        if split and W > 1:
            local = cfg.batch_size // W
            sl = slice(self.dist.rank * local, (self.dist.rank + 1) * local)
            x0, x1, z = x0[sl], x1[sl], z[sl]
            y = None if y is None else y[sl]
        size = x0.shape[0] // m
        dev = self.device
        return [
            Batch(
                x0=x0[j * size : (j + 1) * size].to(dev),
                x1=x1[j * size : (j + 1) * size].to(dev),
                z=z[j * size : (j + 1) * size].to(dev),
                y=None if y is None else y[j * size : (j + 1) * size].to(dev),
            )
            for j in range(m)
        ]

    def local_states(self) -> dict[str, Tensor]:
        """This rank's generator states (data, global torch, time streams, CUDA)."""
        out = {"data": self.data_gen.get_state(), "torch": torch.get_rng_state()}
        for j, c in enumerate(self.chunk_ids):
            out[f"objective{j}"] = self.objective_gens[c].get_state()
        if self.device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def gathered_states(self, collective_device: torch.device) -> dict[str, Tensor]:
        """Every rank's generator states, ``{"rank{r}.{name}": state}`` (a collective call)."""
        local = self.local_states()
        out: dict[str, Tensor] = {}
        for name in sorted(local):
            for r, t in enumerate(ddp.all_gather_tensor(local[name].to(collective_device), self.dist)):
                out[f"rank{r}.{name}"] = t.cpu()
        return out

    def load_states(self, rng: dict[str, Tensor]) -> None:
        """Restore this rank's generator states from :meth:`gathered_states`' output.

        Raises:
            CheckpointError: a state is missing (the checkpoint is damaged).
        """
        r = self.dist.rank
        try:
            self.data_gen.set_state(rng[f"rank{r}.data"])
            torch.set_rng_state(rng[f"rank{r}.torch"])
            for j, c in enumerate(self.chunk_ids):
                self.objective_gens[c].set_state(rng[f"rank{r}.objective{j}"])
            if self.device.type == "cuda" and f"rank{r}.cuda" in rng:
                torch.cuda.set_rng_state(rng[f"rank{r}.cuda"], self.device)
        except KeyError as e:
            raise CheckpointError(f"checkpoint rng.safetensors lacks {e}; the checkpoint is damaged") from None
