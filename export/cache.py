"""One cache of ONNX exports, keyed by the model directory's content and the export options.

``anystep serve --engine onnx`` exports a model directory without an export beside it
once (a single-step graph), and the latency benchmark times single-step and fused K-step
graphs of the same directories: both ask :func:`cached_onnx_export`, which exports with
:func:`anystep.export.onnx_export.export_onnx` (validated against torch, with its
manifest; the folder appears atomically) into ``<root>/onnx/<key>`` and returns the
folder on every later call. The key is the directory's
:func:`~anystep.core.modeldir.model_dir_sha256` plus a hash of the options, so editing
the weights or asking for another graph never returns a stale export.

Imports nothing heavy (torch and onnx only when an export has to be made).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import MANIFEST_NAME

__all__ = ["ONNX_NAME", "cached_onnx_export", "default_cache_dir", "export_cache_key", "is_complete_export"]

log = logging.getLogger("anystep.export")

ONNX_NAME = "model.onnx"


def default_cache_dir() -> Path:
    """Where on-the-fly exports go: ``$ANYSTEP_CACHE_DIR`` or ``~/.cache/anystep``."""
    return Path(os.environ.get("ANYSTEP_CACHE_DIR") or Path.home() / ".cache" / "anystep")


def export_cache_key(model_dir: str | os.PathLike, opts: Any = None) -> str:
    """``<sha256 of the model directory>[:24]``, plus ``-<sha256 of repr(opts)>[:8]`` unless the
    options are the defaults (``None`` and ``OnnxOptions()`` share one entry)."""
    from anystep.core.modeldir import model_dir_sha256

    key = model_dir_sha256(model_dir)[:24]
    if opts is not None:
        from .onnx_export import OnnxOptions

        if opts != OnnxOptions():
            key += "-" + hashlib.sha256(repr(opts).encode()).hexdigest()[:8]
    return key


def is_complete_export(folder: Path) -> bool:
    """Whether ``folder`` holds a finished export (the graph and its manifest)."""
    return (folder / ONNX_NAME).is_file() and (folder / MANIFEST_NAME).is_file()


def cached_onnx_export(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, opts: Any = None,
                       *, log_fn: Callable[[str], None] | None = None) -> Path:
    """The ONNX export of ``model_dir`` with ``opts``, exported on the first call only.

    Args:
        model_dir: a model directory (``config.json`` + ``model.safetensors``).
        cache_dir: cache root (default :func:`default_cache_dir`); exports go to ``<root>/onnx/<key>``
            (:func:`export_cache_key`).
        opts: :class:`~anystep.export.onnx_export.OnnxOptions` (None: a single-step fp32 graph).
        log_fn: progress lines (default: the ``anystep.export`` logger at INFO).

    Returns:
        The folder holding ``model.onnx`` and ``anystep-export.json``.

    Raises:
        ModelDirError, ExportError: bad input; ParityError: the graph disagrees with torch
        (nothing is cached then); ImportError: the ``export`` extra is missing.
    """
    import time

    say = log_fn or log.info
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "onnx" / export_cache_key(model_dir, opts)
    if is_complete_export(folder):
        return folder
    from .onnx_export import export_onnx

    t0 = time.perf_counter()
    say(f"exporting {model_dir} to ONNX once (cached in {folder}; later calls reuse it)")
    export_onnx(model_dir, folder, opts, overwrite=True)  # staged beside the folder, renamed into place
    say(f"exported {Path(model_dir).name} in {time.perf_counter() - t0:.0f} s")
    return folder
