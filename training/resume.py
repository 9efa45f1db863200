"""What a run's checkpoint holds beyond the files, and restoring a run from it exactly.

The trainer's checkpoint (:func:`anystep.training.checkpoint.save_checkpoint`) holds the
model, the EMA, the optimiser, every rank's generator states
(:meth:`anystep.training.streams.RunStreams.gathered_states`), a JSON state (``step``,
``round``, the batch layout ``world_size`` / ``micro_batches`` / ``ddp_batch``,
``ema_updates``, ``last_loss``, ``seed``, ``elapsed_s``, the loss scaler ``amp``, the
objective's learned JSON state), a teacher that replaced the original one (progressive
PFMM) and the objective's tensors (e.g. consistency distillation's EMA target network).
:func:`restore_run` and :func:`restore_objective` put all of it back, so a resumed run is
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anystep.errors import one_line
from anystep.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_optimizer_matches,
    check_tensors_match,
    save_checkpoint,
)
from anystep.training.ema import EMA

__all__ = ["objective_state", "restore_objective", "restore_run", "save_run_checkpoint"]


def objective_state(objective: Any) -> tuple[dict[str, Any] | None, dict[str, Tensor] | None]:
    """State of an objective with learned parts (``state_dict()``), else ``(None, None)``.

    Returns:
        ``(json_state, tensors)``: the ``"tensors"`` entry of the state (``{name: Tensor}``,
        e.g. consistency distillation's EMA target network) is split off for
        ``objective.safetensors``; the rest is JSON for ``state.json``.
    """
    if not hasattr(objective, "state_dict"):
        return None, None
    state = dict(objective.state_dict())
    tensors = state.pop("tensors", None)
    return state, ({k: v.detach().cpu().contiguous() for k, v in tensors.items()} if tensors else None)


def save_run_checkpoint(
    out_dir: Path,
    *,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, Tensor],
    objective: Any,
    teacher: nn.Module | None,
    state: dict[str, Any],
) -> None:
    """Checkpoint a run: :func:`save_checkpoint` with the objective's state added.

    Args:
        out_dir: the run directory.
        model: the trained module.
        ema: its EMA.
        optimizer: the optimiser.
        rng: every rank's generator states.
        objective: the current objective (its ``state_dict()``, if any, is saved).
        teacher: a teacher that replaced the original one (progressive PFMM), else None.
        state: the JSON scalars (``"objective_state"`` is appended).
    """
    obj_json, obj_tensors = objective_state(objective)
    save_checkpoint(
        out_dir,
        model=model.state_dict(),
        ema=ema.state_dict(),
        optimizer=optimizer.state_dict(),
        rng=rng,
        # learned loss weights of the objective (e.g. AYF's adaptive u(s, t)), JSON
        state={**state, "objective_state": obj_json},
        teacher=None if teacher is None else teacher.state_dict(),
        objective_tensors=obj_tensors,  # e.g. CD's EMA target network
    )


def restore_run(
    ck: Checkpoint,
    *,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    amp: Any,
    streams: Any,
    layout: Sequence[tuple[str, Any]],
) -> None:
    """Load a checkpoint into a freshly built run, after checking it fits.

    Args:
        ck: the checkpoint (:func:`anystep.training.checkpoint.load_checkpoint`).
        model: the model (weights replaced).
        ema: its EMA (weights and update count replaced).
        optimizer: the optimiser (state replaced).
        params: the optimised parameters (to check the optimiser state's shapes).
        amp: the :class:`anystep.training.accel.MixedPrecision` (loss-scaler state).
        streams: the :class:`anystep.training.streams.RunStreams` (generator states).
        layout: ``(key, value)`` pairs of this run's batch layout that must equal the
            checkpoint's (``world_size``, ``micro_batches``, ``ddp_batch``).

    Raises:
        CheckpointError: the checkpoint was written by another layout or model, or cannot
            be loaded; the message says how to resume or restart.
    """
    st = ck.state
    for key, want in layout:
        if st.get(key) != want:
            raise CheckpointError(
                f"the checkpoint was written with {key}={st.get(key)!r} but this run has {want!r}; "
                "resume with the same number of processes and micro-batches"
            )
    check_tensors_match(ck.model, model.state_dict(), ck.path / "model.safetensors")
    check_tensors_match(ck.ema, ema.state_dict(), ck.path / "ema.safetensors")
    check_optimizer_matches(ck.optimizer, params, ck.path / "optimizer.json")
    try:
        model.load_state_dict(ck.model)
        ema.load_state_dict(ck.ema, st.get("ema_updates", 0))
        optimizer.load_state_dict(ck.optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{ck.path} cannot be loaded into this run ({one_line(e, 200)}); "
            "restart with --restart"
        ) from None
    amp.load_state_dict(st.get("amp"))
    streams.load_states(ck.rng)


def restore_objective(objective: Any, ck: Checkpoint) -> None:
    """Give an objective with learned parts (``load_state_dict``) its checkpointed state."""
    if not hasattr(objective, "load_state_dict"):
        return
    obj_state = dict(ck.state.get("objective_state") or {})
    if ck.objective_tensors:
        obj_state["tensors"] = ck.objective_tensors
    objective.load_state_dict(obj_state)
