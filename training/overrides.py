"""``--set key=value`` overrides of a :class:`~anystep.training.config.TrainConfig`."""

from __future__ import annotations

import json
from typing import Any

from anystep.core.config import ConfigError
from anystep.training.train_config import TrainConfig

__all__ = ["apply_overrides"]

_FREE_DICTS = ("objective_hparams", "dataset_kwargs", "model.provenance")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` overrides (dotted keys, JSON values) and re-validate.

    Examples: ``model.backbone.width=64``, ``objective_hparams.K=4``,
    ``teacher=null``, ``betas=[0.9,0.99]``. A value that is not valid JSON is taken as
    a string (``dataset=moons``).

    Raises:
        ConfigError: malformed assignment or unknown key.
    """
    data = config.to_dict()
    data["model"] = {k: v for k, v in data["model"].items() if k not in ("dataset", "base")}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set model.backbone.width=64")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: empty key; e.g. --set lr=1e-3")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: i + 1])
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                if isinstance(node, dict) and prefix in _FREE_DICTS and part not in node:
                    node[part] = {}
                else:
                    raise ConfigError(f"--set {key}: {prefix!r} is not a section of the training config")
            node = node[part]
        last = parts[-1]
        parent = ".".join(parts[:-1])
        if last not in node and parent not in _FREE_DICTS:
            if parent == "model" and last in ("dataset", "base"):
                raise ConfigError(f"--set {key}: set the top-level {last!r} instead")
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"--set {key}: unknown key {last!r}; allowed here: {allowed}")
        node[last] = _parse_value(text)
    return TrainConfig.from_dict(data)
