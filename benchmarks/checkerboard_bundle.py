"""Checkerboard benchmark: copy the best one-step map and the teacher into ``models/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import MethodSpec

__all__ = ["bundle_models", "rel_path"]


def rel_path(path: str | Path | None, root: Path | None = None) -> str | None:
    """``path`` relative to ``root`` (default: the working directory) when it lies inside it.

    Paths outside ``root`` keep only their last two components (``runs/lmd``), so nothing
    machine-specific is written into a results file or a model's ``config.json``.
    """
    if path is None:
        return None
    p = Path(path)
    base = (root or Path.cwd()).resolve()
    try:
        return p.resolve().relative_to(base).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix() if p.is_absolute() else p.as_posix()


def _relative_provenance(prov: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Rewrite every path in a provenance record (teacher, init_from, nested configs) relative."""

    def fix(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(key, v) for v in value]
        if isinstance(value, str) and (key in ("teacher", "init_from", "trained_teacher", "trained_init_from")
                                       or value.startswith("/")):
            return rel_path(value)
        return value

    return {k: fix(k, v) for k, v in prov.items()}


def bundle_models(bundle_dir: Path, best: MethodSpec, work_dir: Path, command: str,
                  scores: dict[str, Any], teacher_scores: dict[str, Any]) -> dict[str, str]:
    """Copy the best one-step map and the teacher to ``bundle_dir/checkerboard[-teacher]``.

    The weights are re-saved unchanged; ``config.json``'s provenance gains the benchmark
    record (method, preset, command, scores, the map's round trip); the teacher path is
    rewritten to the bundled teacher (the run's, relative to the repository, is kept as
    ``trained_teacher``) and every other path is made relative, next to its sha256. The
    map keeps the trained ``time_region`` of its run (``"both"``: ``/encode`` may use it).

    Returns:
        ``{"checkerboard": path, "checkerboard-teacher": path}`` (as given, relative).
    """
    from anystep.core.config import ModelConfig
    from anystep.core.modeldir import load_model_dir, model_dir_sha256, save_model_dir

    out: dict[str, str] = {}
    for name, key, extra in (
        ("checkerboard-teacher", "si", {"role": "teacher velocity of models/checkerboard (ODE baseline)",
                                        "benchmark_scores": teacher_scores}),
        ("checkerboard", best.key, {"role": "best one-step checkerboard flow map of the benchmark (trained on both "
                                             "time directions)",
                                    "method": best.key, "method_label": best.label,
                                    "benchmark_scores": scores}),
    ):
        src = work_dir / key
        lm = load_model_dir(src)
        prov = dict(lm.config.provenance)
        prov.update(extra)
        prov["benchmark"] = "anystep.benchmarks.checkerboard (results: benchmarks/results/checkerboard.md)"
        prov["benchmark_command"] = command
        prov["source_run"] = rel_path(src)
        prov["source_run_sha256"] = model_dir_sha256(src)
        if prov.get("teacher"):
            prov["trained_teacher"] = prov["teacher"]
            if key != "pfmm":
                prov["teacher"] = "models/checkerboard-teacher"
        prov = _relative_provenance(prov, work_dir)
        cfg = ModelConfig.from_dict({**lm.config.to_dict(), "provenance": json.loads(json.dumps(prov))})
        dest = bundle_dir / name
        save_model_dir(dest, lm.model, cfg)
        out[name] = rel_path(dest) or str(dest)
    return out
