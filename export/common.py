"""Shared pieces of the export package: errors, batch ranges, atomic output folders, versions.

Every exporter writes into a temporary sibling folder and renames it into place only
after the artifact has been validated, so a failed export (bad input, a parity check
above tolerance, a crash) never leaves a half-written artifact behind.

Time convention of every exported graph: ``t = 0`` base (noise), ``t = 1`` data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from anystep.errors import AnystepError

TIME_CONVENTION = "t=0 base, t=1 data"
MANIFEST_NAME = "anystep-export.json"
ONNX_NAME = "model.onnx"
PLAN_NAME = "model.plan"
DEFAULT_OPSET = 18
MIN_OPSET = 17


class ExportError(AnystepError):
    """The export request is invalid (bad option, bad model directory, bad output path).

    The message says how to fix it; the CLI prints it on one line and exits with code 2.
    """


class DeviceUnavailableError(ExportError):
    """The requested format needs hardware or a package this machine lacks (e.g. TensorRT)."""


class ParityError(RuntimeError):
    """An exported graph disagrees with its reference above the stated tolerance.

    Not a user-input error: the CLI reports it on one line and exits with code 1.
    """


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an artifact must serve: one TensorRT optimization profile, Triton's max batch.

    Attributes:
        min: smallest batch (>= 1).
        opt: the batch the engine is tuned for; also the example batch of the export.
        max: largest batch (Triton's ``max_batch_size``).
    """

    min: int = 1
    opt: int = 16
    max: int = 256

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ExportError(f"--{name}-batch must be an integer >= 1, got {v!r}")
        if self.min > self.max:
            raise ExportError(
                f"batch range is empty: --min-batch {self.min} > --max-batch {self.max}; "
                "give min <= opt <= max"
            )
        if not self.min <= self.opt <= self.max:
            raise ExportError(
                f"batch range [{self.min}, {self.max}] does not contain the example batch "
                f"--opt-batch {self.opt}; give min <= opt <= max"
            )

    def contains(self, b: int) -> bool:
        """True when ``min <= b <= max``."""
        return self.min <= b <= self.max

    def check_sizes(self, defaults: tuple[int, ...] = (1, 3, 64)) -> list[int]:
        """Batch sizes a parity check runs: ``defaults`` inside the range, plus min, opt and max.

        Returns:
            Sorted distinct sizes, each inside ``[min, max]``.
        """
        sizes = {b for b in defaults if self.contains(b)} | {self.min, self.opt, self.max}
        return sorted(sizes)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of the packages an artifact depends on (those importable here).

    Returns:
        ``{"anystep": ..., "python": ..., "torch": ..., "onnx": ..., "onnxruntime": ...}``
        plus ``extra``.
    """
    from importlib import metadata

    out: dict[str, str] = {"python": platform.python_version()}
    for dist in ("anystep", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if "onnxruntime" not in out:
        try:
            out["onnxruntime"] = metadata.version("onnxruntime-gpu")
        except metadata.PackageNotFoundError:
            pass
    out.update(extra or {})
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def check_output_path(final: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty folder (or a file) unless ``overwrite``."""
    if final.exists() or final.is_symlink():
        if final.is_file() or final.is_symlink():
            raise ExportError(f"--out {final} is a file; give a folder path")
        if not overwrite and not _is_empty_dir(final):
            raise ExportError(
                f"--out {final} already exists and is not empty; pass --overwrite to replace it"
            )


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there."""
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        if backup is not None:
            os.replace(backup, final)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final: Path, overwrite: bool = False, commit: bool = True) -> Iterator[Path]:
    """A temporary folder beside ``final`` that becomes ``final`` only if the block succeeds.

    Args:
        final: where the finished folder goes.
        overwrite: allow replacing an existing non-empty ``final``.
        commit: rename into place on success (False: the caller moves the content itself).

    Yields:
        The temporary folder (removed on any exception, with any parent folders created here).
    """
    final = Path(final).absolute()
    check_output_path(final, overwrite)
    created: list[Path] = []
    parent = final.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder for --out {final}: {e}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if commit:
            replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        if not commit:
            shutil.rmtree(tmp, ignore_errors=True)
