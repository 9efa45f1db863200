"""Checkerboard benchmark: a cache of per-row evaluations, so that regenerating the results
after one more row was trained scores only that row.

A row's scores depend on its weights, the teacher's weights and the evaluation settings
(base points, sample sizes, KL grid, dopri5 tolerance, bound points); the cache key is the
sha256 of all of them plus :data:`CACHE_VERSION` (bump it when a metric changes). Entries
live in ``work_dir/eval_cache/`` (git-ignored with the run directories): ``KEY.npz`` holds
the samples, ``KEY.json`` the scores, written atomically (the JSON last, so a partial
entry is a miss).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.checkerboard_eval import StepMetrics
from anystep.benchmarks.checkerboard_methods import Settings

__all__ = ["CACHE_VERSION", "EvalCache", "metrics_from_json", "metrics_to_json"]

CACHE_VERSION = 1
_EVAL_FIELDS = ("seed", "n_samples", "w2_samples", "kl_bins", "kl_range", "rtol", "bound_samples")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EvalCache:
    """Per-row evaluation cache of one benchmark run.

    Args:
        root: cache folder (created on the first write).
        teacher_dir: the teacher's model directory (its weights are part of every key).
        settings: the evaluation settings (the fields in ``_EVAL_FIELDS`` are part of every key).
    """

    def __init__(self, root: Path, teacher_dir: Path, settings: Settings) -> None:
        self.root = Path(root)
        d = asdict(settings)
        self._base = json.dumps({"v": CACHE_VERSION, "teacher": _sha256(Path(teacher_dir) / "model.safetensors"),
                                 **{k: d[k] for k in _EVAL_FIELDS}}, sort_keys=True)
        self.hits: list[str] = []

    def key(self, kind: str, model_dir: Path | None = None) -> str:
        """Cache key of ``kind`` (``"teacher"`` or ``"row"``) for the weights in ``model_dir``."""
        weights = _sha256(Path(model_dir) / "model.safetensors") if model_dir is not None else ""
        return hashlib.sha256(f"{self._base}|{kind}|{weights}".encode()).hexdigest()[:24]

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, info)`` of entry ``key``, or None when absent or unreadable."""
        meta, arrs = self.root / f"{key}.json", self.root / f"{key}.npz"
        if not (meta.is_file() and arrs.is_file()):
            return None
        try:
            info = json.loads(meta.read_text())
            with np.load(arrs, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        self.hits.append(key)
        return arrays, info

    def save(self, key: str, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Write entry ``key`` atomically (samples first, scores last)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, self.root / f"{key}.npz")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.root / f"{key}.json")


def metrics_to_json(metrics: dict[int, StepMetrics]) -> dict[str, Any]:
    """``{K: StepMetrics}`` as JSON-able dicts (``inf`` is written as ``Infinity``, which json reads back)."""
    return {str(k): asdict(m) for k, m in metrics.items()}


def metrics_from_json(d: dict[str, Any]) -> dict[int, StepMetrics]:
    """Inverse of :func:`metrics_to_json`."""
    return {int(k): StepMetrics(**m) for k, m in d.items()}
