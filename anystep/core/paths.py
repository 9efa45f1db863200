"""Paths as they are recorded in model directories and results: never a path of the machine.

A model's ``config.json`` (its teacher, its warm start) and a benchmark's results name other
directories; written as absolute paths they would tie the file to one machine. They are
recorded relative to the working directory (the repository, for every command the README
shows), with the SHA-256 of the directory beside them where it identifies a model.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["recorded_path"]


def recorded_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as a file records it: relative to ``root`` (default: the working directory).

    Args:
        path: a file or directory, absolute or relative to the working directory.
        root: the directory paths are recorded against (None: the working directory).

    Returns:
        The POSIX path relative to ``root`` when ``path`` lies inside it; otherwise, for an
        absolute path, its last two components (``runs/lmd``), and a relative path as given.
    """
    p = Path(path)
    base = Path(root if root is not None else Path.cwd()).resolve()
    try:
        return p.resolve().relative_to(base).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix() if p.is_absolute() else p.as_posix()
