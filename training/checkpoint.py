"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is the folder ``DIR/checkpoint/`` holding

* ``model.safetensors``: the trained weights;
* ``ema.safetensors``: the weight EMA used for sampling;
* ``optimizer.safetensors`` + ``optimizer.json``: the optimiser state flattened into
  tensors named ``state.<param index>.<key>`` plus JSON for ``param_groups`` and
  non-tensor per-parameter values (:func:`flatten_optimizer_state`);
* ``rng.safetensors``: ``torch.Generator`` states as ``uint8`` tensors;
* ``teacher.safetensors`` (optional): a teacher replaced during training (progressive PFMM);
* ``objective.safetensors`` (optional): tensors of an objective's learned state, e.g. the
  EMA target network of consistency distillation (the JSON rest is in ``state.json``);
* ``state.json``: step, round and other scalars.

Writes are atomic: everything is written into a temporary sibling folder that is then
renamed into place (the previous checkpoint is renamed aside first and deleted last;
:func:`find_checkpoint` recovers it if a crash happened between the two renames).
Nothing here ever calls ``torch.load`` or unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anystep.errors import AnystepError

__all__ = [
    "CHECKPOINT_DIR",
    "Checkpoint",
    "CheckpointError",
    "atomic_write_text",
    "check_optimizer_matches",
    "check_tensors_match",
    "clean_stale_temps",
    "discard_run",
    "find_checkpoint",
    "flatten_optimizer_state",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_optimizer_state",
]

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CheckpointError(AnystepError):
    """A checkpoint is missing, unreadable or does not match the run being resumed."""


@dataclass
class Checkpoint:
    """A checkpoint's content.

    Attributes:
        model: trained weights ``{name: tensor}``.
        ema: EMA weights ``{name: tensor}``.
        optimizer: an optimiser ``state_dict`` ready for ``load_state_dict``.
        rng: generator states ``{name: uint8 tensor}``.
        state: scalars (``step``, ``round``, ``world_size``, ...).
        teacher: weights of a teacher that replaced the original one, or None.
        path: the folder it was read from.
        objective_tensors: tensors of the objective's state (``objective.safetensors``), or None.
    """

    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    state: dict[str, Any]
    teacher: dict[str, Tensor] | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    objective_tensors: dict[str, Tensor] | None = None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# ------------------------------------------------------------------------------------
# optimiser state <-> tensors + JSON
# ------------------------------------------------------------------------------------


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-serialisable structure.

    Args:
        state_dict: ``{"state": {param_index: {key: value}}, "param_groups": [...]}``.

    Returns:
        ``(tensors, meta)``: tensors named ``state.<index>.<key>``; ``meta`` holds
        ``param_groups`` (tuples marked so they come back as tuples), non-tensor state
        values under ``scalars`` and the list of tensor keys under ``tensor_keys``.
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    tensor_keys: dict[str, list[str]] = {}
    for idx, entry in state_dict.get("state", {}).items():
        for key, value in entry.items():
            if "." in str(key):
                raise CheckpointError(f"optimizer state key {key!r} contains '.'; cannot flatten it")
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
                tensor_keys.setdefault(str(idx), []).append(key)
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(value)
    groups = []
    for g in state_dict.get("param_groups", []):
        out = {}
        tuples = []
        for k, v in g.items():
            if isinstance(v, tuple):
                tuples.append(k)
            out[k] = _jsonable(v)
        out["__tuples__"] = tuples
        groups.append(out)
    meta = {"param_groups": groups, "scalars": scalars, "tensor_keys": tensor_keys}
    json.dumps(meta)  # fail early on anything not JSON-serialisable
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for idx, keys in meta.get("tensor_keys", {}).items():
        for key in keys:
            name = f"state.{idx}.{key}"
            if name not in tensors:
                raise CheckpointError(f"optimizer.safetensors lacks tensor {name!r}; the checkpoint is damaged")
            state.setdefault(int(idx), {})[key] = tensors[name]
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta.get("param_groups", []):
        g = dict(g)
        for k in g.pop("__tuples__", []):
            g[k] = tuple(g[k])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise CheckpointError(f"cannot store optimizer value of type {type(v).__name__} as JSON")


# ------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def save_checkpoint(
    out_dir: str | os.PathLike,
    *,
    model: dict[str, Tensor],
    ema: dict[str, Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, Tensor],
    state: dict[str, Any],
    teacher: dict[str, Tensor] | None = None,
    objective_tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint/`` atomically (temporary folder + rename).

    Args:
        out_dir: the run directory.
        model: model ``state_dict``.
        ema: EMA ``state_dict``.
        optimizer: ``optimizer.state_dict()`` (flattened here, no pickle).
        rng: generator states as ``uint8`` tensors.
        state: JSON scalars (must include ``step``).
        teacher: optional replaced-teacher weights.
        objective_tensors: optional tensors of the objective's state.

    Returns:
        The checkpoint folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / CHECKPOINT_DIR
    for stale in out.glob(f".{CHECKPOINT_DIR}.tmp-*"):  # left by a write that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_DIR}.tmp-", dir=out))
    try:
        _save_tensors(tmp / "model.safetensors", model)
        _save_tensors(tmp / "ema.safetensors", ema)
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer)
        _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta, indent=1) + "\n")
        _save_tensors(tmp / "rng.safetensors", {k: v.to(torch.uint8) for k, v in rng.items()})
        if teacher is not None:
            _save_tensors(tmp / "teacher.safetensors", teacher)
        if objective_tensors:
            _save_tensors(tmp / "objective.safetensors", objective_tensors)
        full_state = {"format_version": FORMAT_VERSION, **state}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = out / f".{CHECKPOINT_DIR}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def clean_stale_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary folders/files a killed write left in a run directory.

    ``save_checkpoint`` writes into ``.checkpoint.tmp-*`` and :func:`atomic_write_text`
    into ``.<name>.tmp-*``; a process killed mid-write leaves them behind. Only one
    process writes a run directory, so any that exist when a write or a resume starts are
    stale.

    Returns:
        The paths removed.
    """
    out = Path(out_dir)
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    for p in out.glob(".*.tmp-*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


RUN_FILES = ("checkpoint", ".checkpoint.old", "train_log.jsonl", "train_config.json", "config.json",
             "model.safetensors", ".model.tmp")


def discard_run(out_dir: str | os.PathLike) -> list[str]:
    """Delete what a training run wrote into ``out_dir`` (``anystep train --restart``).

    Only the files a run writes (:data:`RUN_FILES` and stale temporaries) are removed;
    anything else in the folder is kept.

    Returns:
        The names removed.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    removed = [p.name for p in clean_stale_temps(out)]
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(name)
        elif p.exists() or p.is_symlink():
            p.unlink()
            removed.append(name)
    return removed


def _check_state(state: Any, path: Path) -> dict[str, Any]:
    """Validate ``state.json``: one-line :class:`CheckpointError` naming the bad entry."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(state).__name__}; the checkpoint is damaged")

    def count(key: str, lo: int, required: bool = True) -> None:
        if key not in state:
            if required:
                raise CheckpointError(f"{path} lacks {key!r}; the checkpoint is damaged")
            return
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise CheckpointError(f"{path}: {key}={v!r} must be an integer >= {lo}; the checkpoint is damaged")

    count("step", 0)
    for key in ("round", "ema_updates", "seed"):
        count(key, 0, required=False)
    for key in ("world_size", "micro_batches"):
        count(key, 1, required=False)
    for key in ("elapsed_s", "last_loss"):
        v = state.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{path}: {key}={v!r} must be a number; the checkpoint is damaged")
    return state


def _check_optimizer_meta(meta: Any, path: Path) -> dict[str, Any]:
    """Validate ``optimizer.json`` (the structure :func:`flatten_optimizer_state` writes)."""
    bad = f"{path} is not an optimizer state written by anystep"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{bad} (a JSON object is expected, got {type(meta).__name__}); the checkpoint is damaged")
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise CheckpointError(f"{bad} (no param_groups with params); the checkpoint is damaged")
    for key in ("scalars", "tensor_keys"):
        if not isinstance(meta.get(key, {}), dict):
            raise CheckpointError(f"{bad} ({key} must be an object); the checkpoint is damaged")
    for idx, keys in meta.get("tensor_keys", {}).items():
        if not str(idx).isascii() or not str(idx).isdigit() or not isinstance(keys, list):
            raise CheckpointError(f"{bad} (tensor_keys[{idx!r}]); the checkpoint is damaged")
    for idx, vals in meta.get("scalars", {}).items():
        if not str(idx).isascii() or not str(idx).isdigit() or not isinstance(vals, dict):
            raise CheckpointError(f"{bad} (scalars[{idx!r}]); the checkpoint is damaged")
    return meta


def check_tensors_match(tensors: dict[str, Tensor], expected: dict[str, Tensor], path: Path) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``tensors`` has ``expected``'s names and shapes.

    Args:
        tensors: what a checkpoint file holds.
        expected: ``module.state_dict()`` of the model being resumed.
        path: the file, named in the message.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match this run's model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "it belongs to another architecture: resume with the run's own config or restart with --restart"
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(tensors[k].shape)} but this run's model has {tuple(v.shape)} "
                "(another width/depth?); resume with the run's own config or restart with --restart"
            )
        if not bool(torch.isfinite(tensors[k]).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN/Inf; the checkpoint is damaged, restart with --restart")


def check_optimizer_matches(optimizer: dict[str, Any], params: list[Tensor], path: Path) -> None:
    """One-line :class:`CheckpointError` unless an optimiser state fits ``params``.

    Args:
        optimizer: ``{"state": {index: {key: value}}, "param_groups": [...]}`` as read.
        params: the parameters of the optimiser being resumed, in order.
        path: the file, named in the message.
    """
    n_saved = sum(len(g.get("params", [])) for g in optimizer.get("param_groups", []))
    if n_saved != len(params):
        raise CheckpointError(
            f"{path} holds the state of {n_saved} parameters but this run's model has {len(params)}; "
            "resume with the run's own config or restart with --restart"
        )
    for idx, entry in optimizer.get("state", {}).items():
        if not 0 <= int(idx) < len(params):
            raise CheckpointError(f"{path}: state of parameter {idx} does not exist in this run's model")
        for key, v in entry.items():
            if isinstance(v, Tensor) and v.ndim > 0 and tuple(v.shape) != tuple(params[int(idx)].shape):
                raise CheckpointError(
                    f"{path}: {key} of parameter {idx} has shape {tuple(v.shape)} but the parameter has "
                    f"{tuple(params[int(idx)].shape)}; resume with the run's own config or restart with --restart"
                )


def find_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder of a run, recovering one left aside by a crash; None if absent."""
    out = Path(out_dir)
    final = out / CHECKPOINT_DIR
    old = out / f".{CHECKPOINT_DIR}.old"
    if final.is_dir() and (final / "state.json").is_file():
        return final
    if old.is_dir() and (old / "state.json").is_file():
        # a crash between the two renames of save_checkpoint: put the old one back
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(old, final)
        except FileNotFoundError:  # another process recovered it first
            pass
        return final if (final / "state.json").is_file() else None
    return None


def load_checkpoint(out_dir: str | os.PathLike, *, clean: bool = True) -> Checkpoint:
    """Read ``out_dir/checkpoint/`` (safetensors + JSON only).

    Args:
        out_dir: the run directory.
        clean: remove stale temp entries first. Under DDP only the main rank may (another
            rank's clean would delete the main rank's in-progress temp files).

    Raises:
        CheckpointError: no checkpoint, or a damaged one.
    """
    path = find_checkpoint(out_dir)
    if path is None:
        raise CheckpointError(f"{out_dir} has no checkpoint to resume from; start a new run without --resume")
    if clean:
        clean_stale_temps(out_dir)
    state = _check_state(_load_json(path / "state.json"), path / "state.json")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state.get('format_version')!r}; this anystep reads {FORMAT_VERSION}"
        )
    opt_meta = _check_optimizer_meta(_load_json(path / "optimizer.json"), path / "optimizer.json")
    optimizer = unflatten_optimizer_state(_load_tensors(path / "optimizer.safetensors"), opt_meta)
    teacher_path = path / "teacher.safetensors"
    objective_path = path / "objective.safetensors"
    return Checkpoint(
        model=_load_tensors(path / "model.safetensors"),
        ema=_load_tensors(path / "ema.safetensors"),
        optimizer=optimizer,
        rng=_load_tensors(path / "rng.safetensors"),
        state=state,
        teacher=_load_tensors(teacher_path) if teacher_path.exists() else None,
        path=path,
        objective_tensors=_load_tensors(objective_path) if objective_path.exists() else None,
    )
