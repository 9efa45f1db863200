"""Couplings ``(x0, x1) ~ rho(x0, x1)`` for the stochastic interpolant (Definition 3.9).

The marginals must be rho_0 and rho_1. ``independent`` draws them independently;
``paired`` keeps data-dependent pairs (e.g. image-to-image); ``minibatch_ot`` re-pairs
an independent batch by the exact optimal assignment under squared distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class CoupledBatch:
    """A coupled batch.

    Attributes:
        x0: ``[B, *shape]`` base samples.
        x1: ``[B, *shape]`` data samples, row i coupled with ``x0[i]``.
    """

    x0: Tensor
    x1: Tensor


def independent(x0: Tensor, x1: Tensor) -> CoupledBatch:
    """Independent coupling ``rho_0 x rho_1``: rows are paired as drawn."""
    _check(x0, x1)
    return CoupledBatch(x0, x1)


def paired(x0: Tensor, x1: Tensor) -> CoupledBatch:
    """Data-dependent coupling: ``x0[i]`` and ``x1[i]`` were drawn together (e.g. degraded/clean)."""
    _check(x0, x1)
    return CoupledBatch(x0, x1)


def minibatch_ot(x0: Tensor, x1: Tensor) -> CoupledBatch:
    """Minibatch optimal-transport coupling: permute ``x0`` to minimise ``sum |x0 - x1|^2``.

    Uses the exact assignment (Hungarian algorithm, O(B^3)); the marginals are preserved
    because only the pairing changes.
    """
    from scipy.optimize import linear_sum_assignment

    _check(x0, x1)
    cost = torch.cdist(x0.reshape(len(x0), -1).double(), x1.reshape(len(x1), -1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = np.empty_like(cols)
    perm[cols] = rows
    return CoupledBatch(x0[torch.as_tensor(perm, device=x0.device)], x1)


COUPLINGS = {"independent": independent, "paired": paired, "minibatch_ot": minibatch_ot}


def _check(x0: Tensor, x1: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"coupling needs x0 and x1 of one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
