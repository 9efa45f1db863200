"""Checkerboard benchmark: copy the best one-step map and the teacher into ``models/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import MethodSpec

__all__ = ["bundle_models"]


def bundle_models(bundle_dir: Path, best: MethodSpec, work_dir: Path, command: str,
                  scores: dict[str, Any], teacher_scores: dict[str, Any]) -> dict[str, str]:
    """Copy the best one-step map and the teacher to ``bundle_dir/checkerboard[-teacher]``.

    The weights are re-saved unchanged; ``config.json``'s provenance gains the benchmark
    record (method, preset, command, scores) and the teacher path is rewritten to the
    bundled teacher (the run directory's absolute path is kept as ``trained_teacher``).

    Returns:
        ``{"checkerboard": path, "checkerboard-teacher": path}``.
    """
    from anystep.core.config import ModelConfig
    from anystep.core.modeldir import load_model_dir, model_dir_sha256, save_model_dir

    out: dict[str, str] = {}
    for name, key, extra in (
        ("checkerboard-teacher", "si", {"role": "teacher velocity of models/checkerboard (ODE baseline)",
                                        "benchmark_scores": teacher_scores}),
        ("checkerboard", best.key, {"role": "best one-step checkerboard flow map of the benchmark",
                                    "method": best.key, "method_label": best.label,
                                    "benchmark_scores": scores}),
    ):
        src = work_dir / key
        lm = load_model_dir(src)
        prov = dict(lm.config.provenance)
        prov.update(extra)
        prov["benchmark"] = "anystep.benchmarks.checkerboard (results: benchmarks/results/checkerboard.md)"
        prov["benchmark_command"] = command
        prov["source_run_sha256"] = model_dir_sha256(src)
        if prov.get("teacher"):
            prov["trained_teacher"] = prov["teacher"]
            prov["teacher"] = "models/checkerboard-teacher" if key != "pfmm" else prov["teacher"]
        cfg = ModelConfig.from_dict({**lm.config.to_dict(), "provenance": json.loads(json.dumps(prov))})
        dest = bundle_dir / name
        save_model_dir(dest, lm.model, cfg)
        out[name] = str(dest)
    return out

