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

from .config import ConfigError, ModelConfig
from .flowmap import build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelDirError(ValueError):
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
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{cfg_path} is not valid JSON: {e}") from None
    try:
        return ModelConfig.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ModelDirError(f"{cfg_path}: {e}") from None


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory, validating config and weights.

    Raises:
        ModelDirError: with a message naming the missing file, bad key or shape mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    config = read_config(p)
    w_path = p / WEIGHTS_NAME
    if not w_path.exists():
        raise ModelDirError(f"{p} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{w_path} is not a readable safetensors file: {e}") from None
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelDirError(
            f"{w_path} does not match config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelDirError(
                f"{w_path}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {tuple(v.shape)}"
            )
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
