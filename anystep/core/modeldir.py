"""Model directories: ``config.json`` (a :class:`ModelConfig`) beside ``model.safetensors``.

No pickle anywhere: weights are safetensors, metadata is JSON. Writes are atomic
(written to a temporary sibling folder, then renamed into place), so a crash never
leaves a half-written model directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anystep.errors import AnystepError, one_line

from .config import ConfigError, ModelConfig
from .flowmap import build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = 16 << 20
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class ModelDirError(AnystepError):
    """A model directory is missing, malformed, or does not match its config."""


@dataclass
class LoadedModel:
    """A model loaded from a directory.

    Attributes:
        model: the FlowMap or VelocityModel, in eval mode.
        config: its configuration.
        path: the directory it came from.
    """

    model: nn.Module
    config: ModelConfig
    path: Path


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def save_model_dir(
    path: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and ``config`` to ``path`` atomically.

    Args:
        path: target directory (replaced if it exists).
        model: module whose ``state_dict`` matches ``build_model(config)``.
        config: the model's configuration (stored as ``config.json``).
        extra_files: optional ``{name: json-serialisable object}`` written as JSON beside.

    Returns:
        The directory path.
    """
    from safetensors.torch import save_file

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "kind": config.kind})
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        # mkdtemp creates 0700; a model directory is ordinary readable data
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        _atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_config(path: str | os.PathLike) -> ModelConfig:
    """Read and validate ``config.json`` of a model directory."""
    p = Path(path)
    if not p.exists():
        raise ModelDirError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ModelDirError(f"{p} is not a directory; a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg_path = p / CONFIG_NAME
    if not cfg_path.exists():
        raise ModelDirError(f"{p} has no {CONFIG_NAME}; is it a model directory written by anystep?")
    try:
        if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelDirError(f"{cfg_path} is over {MAX_CONFIG_BYTES} bytes; it is not an anystep config.json")
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ModelDirError(f"{cfg_path} is not valid JSON: {one_line(e)}") from None
    except OSError as e:
        raise ModelDirError(f"{cfg_path} cannot be read: {one_line(e)}") from None
    try:
        return ModelConfig.from_dict(data, strict=True)
    except (ConfigError, TypeError, ValueError) as e:
        raise ModelDirError(f"{cfg_path}: {one_line(e)}") from None


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory, validating config and weights.

    Checks, in this order, before any weight is trusted: ``config.json`` holds every
    required field with the right type and range (:func:`read_config`); the safetensors
    header of ``model.safetensors`` lists exactly the tensors ``config.json`` implies, with
    the same shapes and a floating dtype (compared against a model built on the ``meta``
    device, so an absurd size allocates nothing); every weight is finite. Nothing is
    unpickled.

    Raises:
        ModelDirError: one line naming the file and the missing key, bad value, shape
            mismatch or non-finite tensor.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    config = read_config(p)
    w_path = p / WEIGHTS_NAME
    if not w_path.exists():
        raise ModelDirError(f"{p} has no {WEIGHTS_NAME}")
    try:
        with torch.device("meta"):
            expected = {k: (tuple(v.shape), v.dtype) for k, v in build_model(config).state_dict().items()}
    except (ConfigError, ValueError, TypeError) as e:
        raise ModelDirError(f"{p / CONFIG_NAME}: {one_line(e)}") from None
    try:
        with safe_open(str(w_path), framework="pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelDirError(f"{w_path} is not a readable safetensors file: {one_line(e)}") from None
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ModelDirError(
            f"{w_path} does not match config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, (shape, _dtype) in expected.items():
        if header[k][0] != shape:
            raise ModelDirError(f"{w_path}: tensor {k} has shape {header[k][0]}, config.json implies {shape}")
        if header[k][1] not in _FLOAT_DTYPES:
            raise ModelDirError(f"{w_path}: tensor {k} has dtype {header[k][1]}; weights must be floating point")
    try:
        state = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelDirError(f"{w_path} is not a readable safetensors file: {one_line(e)}") from None
    for k, v in state.items():
        if not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise ModelDirError(
                f"{w_path}: tensor {k} holds {bad} non-finite value(s) (NaN/Inf); the weights are corrupt, "
                "retrain or restore the model"
            )
    model = build_model(config)
    model.load_state_dict(state)
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, config=config, path=p)


def model_dir_sha256(path: str | os.PathLike) -> str:
    """sha256 over ``config.json`` and ``model.safetensors`` (names and bytes), for provenance."""
    h = hashlib.sha256()
    p = Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        h.update(name.encode())
        with open(p / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
