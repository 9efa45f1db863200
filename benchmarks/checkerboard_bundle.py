"""Checkerboard benchmark: copy the best one-step map and the teacher into ``models/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import MethodSpec

__all__ = ["bundle_model", "bundle_models", "bundled_map", "bundled_one_step_kl", "rel_path"]


def rel_path(path: str | Path | None, root: Path | None = None) -> str | None:
    """``path`` as :func:`anystep.core.paths.recorded_path` records it (None stays None): relative to
    ``root`` (default: the working directory) when inside it, else its last two components."""
    from anystep.core.paths import recorded_path

    return None if path is None else recorded_path(path, root)


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


BENCHMARK = "anystep.benchmarks.checkerboard (results: benchmarks/results/checkerboard.md)"
TEACHER_BUNDLE = "models/checkerboard-teacher"


def bundle_model(src: Path, dest: Path, extra: dict[str, Any], command: str, *, benchmark: str = BENCHMARK,
                 bundled_teacher: str | None = TEACHER_BUNDLE) -> str:
    """Re-save the model directory ``src`` as ``dest`` with the bundle's provenance.

    The weights are copied unchanged; ``config.json``'s provenance gains ``extra`` (role,
    scores, ...), ``benchmark``, ``command``, ``source_run`` (relative) and its sha256. When
    the model was trained against a teacher, the teacher path is rewritten to
    ``bundled_teacher`` (the run's, relative, is kept as ``trained_teacher``; None keeps it);
    every other path is made relative. The trained ``time_region`` is kept.

    Returns:
        ``dest`` relative to the working directory.
    """
    from anystep.core.config import ModelConfig
    from anystep.core.modeldir import load_model_dir, model_dir_sha256, save_model_dir

    lm = load_model_dir(src)
    prov = dict(lm.config.provenance)
    prov.update(extra)
    prov["benchmark"] = benchmark
    prov["benchmark_command"] = command
    prov["source_run"] = rel_path(src)
    prov["source_run_sha256"] = model_dir_sha256(src)
    if prov.get("teacher"):
        prov["trained_teacher"] = prov["teacher"]
        if bundled_teacher is not None:
            prov["teacher"] = bundled_teacher
    prov = _relative_provenance(prov, src.parent)
    cfg = ModelConfig.from_dict({**lm.config.to_dict(), "provenance": json.loads(json.dumps(prov))})
    save_model_dir(dest, lm.model, cfg)
    return rel_path(dest) or str(dest)


def bundled_one_step_kl(model_dir: Path, teacher_sha256: str | None) -> float | None:
    """The one-step KL recorded in a bundled map's provenance, when it was trained against the
    teacher of sha256 ``teacher_sha256`` (so it was scored against the same teacher); else None."""
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        return None
    prov = json.loads(cfg.read_text()).get("provenance", {})
    kl = prov.get("benchmark_scores", {}).get("K=1", {}).get("kl")
    if kl is None or teacher_sha256 is None or prov.get("teacher_sha256") != teacher_sha256:
        return None
    return float(kl)


def bundled_map(dest: Path, candidate: Path) -> dict[str, Any]:
    """What the bundle ``dest`` (``models/checkerboard``) holds after :func:`bundle_models` offered it ``candidate``.

    Returns:
        ``{"method", "method_label", "from", "kept"}`` from ``dest``'s provenance: its method key
        and label, the benchmark that bundled it, and ``kept`` -- True when ``dest`` holds
        another run's weights than ``candidate``'s (a better map was already there).
    """
    from anystep.core.modeldir import load_model_dir, model_dir_sha256

    prov = load_model_dir(dest).config.provenance
    return {"method": prov.get("method"), "method_label": prov.get("method_label"), "from": prov.get("benchmark"),
            "kept": prov.get("source_run_sha256") != model_dir_sha256(candidate)}


def bundle_models(bundle_dir: Path, best: MethodSpec, work_dir: Path, command: str,
                  scores: dict[str, Any], teacher_scores: dict[str, Any], *, log=print) -> dict[str, str]:
    """Copy the best one-step map and the teacher to ``bundle_dir/checkerboard[-teacher]``.

    See :func:`bundle_model`. The map keeps the trained ``time_region`` of its run
    (``"both"``: ``/encode`` may use it). A map already in ``bundle_dir/checkerboard`` that
    was trained against the same teacher and records a lower one-step KL (e.g. the lever
    map of :mod:`~anystep.benchmarks.checkerboard_bundle_train`) is kept, and ``log`` says so.

    Returns:
        ``{"checkerboard": path, "checkerboard-teacher": path}`` (as given, relative).
    """
    from anystep.core.modeldir import load_model_dir

    out: dict[str, str] = {}
    out["checkerboard-teacher"] = bundle_model(
        work_dir / "si", bundle_dir / "checkerboard-teacher",
        {"role": "teacher velocity of models/checkerboard (ODE baseline)", "benchmark_scores": teacher_scores},
        command, bundled_teacher=None)
    dest = bundle_dir / "checkerboard"
    teacher_sha = load_model_dir(work_dir / best.key).config.provenance.get("teacher_sha256")
    kept = bundled_one_step_kl(dest, teacher_sha)
    new_kl = scores.get("K=1", {}).get("kl")
    if kept is not None and new_kl is not None and kept < new_kl:
        log(f"[bundle] kept {rel_path(dest)}: its one-step KL {kept:.4f} (same teacher) beats {best.key}'s "
            f"{new_kl:.4f}")
        out["checkerboard"] = rel_path(dest) or str(dest)
        return out
    out["checkerboard"] = bundle_model(
        work_dir / best.key, dest,
        {"role": "best one-step checkerboard flow map of the benchmark (trained on both time directions)",
         "method": best.key, "method_label": best.label, "benchmark_scores": scores},
        command, bundled_teacher=None if best.key == "pfmm" else TEACHER_BUNDLE)
    return out
