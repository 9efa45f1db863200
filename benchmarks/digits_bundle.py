"""Bundling the digits benchmark's models into ``models/digits`` and ``models/digits-teacher``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from anystep.benchmarks.digits_classifier import REPO_ROOT
from anystep.benchmarks.digits_methods import MODELS_DIR

__all__ = ["bundle_models"]


def bundle_models(runs: Path, flowmap_method: str, models_dir: Path = MODELS_DIR) -> dict[str, str]:
    """Copy the teacher and one flow map into ``models/digits-teacher`` and ``models/digits``.

    Only ``config.json`` and ``model.safetensors`` are copied; run-local absolute paths in
    the provenance are replaced by the bundled names (the sha256 records stay).

    Returns:
        ``{"digits": ..., "digits-teacher": ...}`` paths.
    """
    out: dict[str, str] = {}
    for src_name, dst_name in ((flowmap_method, "digits"), ("teacher", "digits-teacher")):
        src = runs / src_name
        dst = models_dir / dst_name
        tmp = models_dir / f".{dst_name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shutil.copy2(src / "model.safetensors", tmp / "model.safetensors")
        cfg = json.loads((src / "config.json").read_text())
        prov = cfg.get("provenance", {})
        for key in ("teacher", "init_from"):
            if prov.get(key):
                prov[key] = f"benchmark run '{Path(prov[key]).name}'"
        prov["bundled_from"] = f"anystep.benchmarks.digits method '{src_name}'"
        tc = prov.get("train_config", {})
        for key in ("teacher", "init_from"):
            if tc.get(key):
                tc[key] = f"runs/digits/{Path(tc[key]).name}"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        try:
            out[dst_name] = str(dst.relative_to(REPO_ROOT))
        except ValueError:
            out[dst_name] = str(dst)
    return out
