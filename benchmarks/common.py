"""Helpers shared by the benchmarks: machine description, result files, tables, figures.

Every benchmark writes ``benchmarks/results/<name>.json`` (all numbers, the machine,
the exact command) and ``benchmarks/results/<name>.md`` (human-readable tables), via
:func:`write_results`. Figures use matplotlib's non-interactive ``Agg`` backend
(:func:`pyplot`), so benchmarks run headless.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "NOTES_BEGIN",
    "NOTES_END",
    "MachineInfo",
    "ResultPaths",
    "Stopwatch",
    "command_line",
    "existing_notes",
    "float_list",
    "fmt",
    "git_revision",
    "int_list",
    "load_average",
    "machine_info",
    "markdown_table",
    "name_list",
    "notes_section",
    "portable_path",
    "pyplot",
    "run_cli",
    "versions",
    "write_results",
]

NOTES_BEGIN = "<!-- investigation-notes:begin (kept when the file is regenerated) -->"
NOTES_END = "<!-- investigation-notes:end -->"
"""Markers of the hand-written notes block that a regenerated report keeps."""


# --------------------------------------------------------------------------------------
# machine and command
# --------------------------------------------------------------------------------------


@dataclass
class MachineInfo:
    """What the numbers were measured on.

    Attributes:
        cpu_model: CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere).
        cores: logical CPUs visible to this process (``os.sched_getaffinity`` where available).
        torch_threads: ``torch.get_num_threads()`` at the time of the call.
        torch_version: ``torch.__version__``.
        python_version: ``platform.python_version()``.
        platform: ``platform.platform()``.
        gpu: name of CUDA device 0, or None (all benchmarks here run on the CPU).
    """

    cpu_model: str
    cores: int
    torch_threads: int
    torch_version: str
    python_version: str
    platform: str
    gpu: str | None = None

    def describe(self) -> str:
        """One line, e.g. ``"AMD EPYC, 2 cores (torch 2.13.0+cpu, 2 threads), Linux-..."``."""
        dev = f", GPU {self.gpu}" if self.gpu else ", no GPU"
        return (
            f"{self.cpu_model}, {self.cores} cores (torch {self.torch_version}, "
            f"{self.torch_threads} threads{dev}), Python {self.python_version}, {self.platform}"
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> MachineInfo:
    """Describe this machine (CPU model, cores, torch version and threads).

    Returns:
        A :class:`MachineInfo`; ``describe()`` gives the one-line form for reports.
    """
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return MachineInfo(
        cpu_model=_cpu_model(),
        cores=int(cores),
        torch_threads=int(torch.get_num_threads()),
        torch_version=str(torch.__version__),
        python_version=platform.python_version(),
        platform=platform.platform(),
        gpu=gpu,
    )


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (rounded), or None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - platform without load average
        return None


def versions(modules: Sequence[str] = ("torch", "numpy")) -> dict[str, str | None]:
    """``{"python": ..., module: version or None}`` for the packages a report depends on."""
    import importlib.util

    out: dict[str, str | None] = {"python": platform.python_version()}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__ if importlib.util.find_spec(mod) else None
        except (ImportError, AttributeError, ValueError):  # not installed / broken install
            out[mod] = None
    return out


def existing_notes(md_path: str | os.PathLike) -> str | None:
    """The hand-written notes between :data:`NOTES_BEGIN` and :data:`NOTES_END` of a report.

    Returns:
        The notes without surrounding blank lines, or None when the file or block is missing.
    """
    try:
        text = Path(md_path).read_text(encoding="utf-8")
    except OSError:
        return None
    if NOTES_BEGIN in text and NOTES_END in text:
        return text[text.index(NOTES_BEGIN) + len(NOTES_BEGIN): text.index(NOTES_END)].strip("\n")
    return None


def notes_section(notes: str | None, placeholder: str = "(none yet)") -> list[str]:
    """The report's ``## Notes`` lines: the hand-written block that regenerating the report keeps
    (:func:`existing_notes` reads it back); ``placeholder`` when there are none yet."""
    return ["## Notes", "", NOTES_BEGIN, notes if notes is not None else placeholder, NOTES_END, ""]


def command_line(argv: Sequence[str] | None = None, module: str | None = None) -> str:
    """The command that reproduces this run, shell-quoted.

    Args:
        argv: arguments after the program name (default ``sys.argv[1:]``).
        module: when given, the command is written ``python -m <module> ...`` (how the
            benchmarks are meant to be run) instead of the raw ``sys.argv[0]``.

    Returns:
        E.g. ``"python -m anystep.benchmarks.checkerboard --quick"``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    head = ["python", "-m", module] if module else [sys.argv[0]]
    return " ".join(shlex.quote(a) for a in head + args)


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Named wall-clock sections (seconds), for the timing table of a benchmark.

    Example::

        sw = Stopwatch()
        with sw("train lmd"):
            ...
        sw.seconds["train lmd"]
    """

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total(self) -> float:
        """Sum of all sections."""
        return float(sum(self.seconds.values()))


# --------------------------------------------------------------------------------------
# result files
# --------------------------------------------------------------------------------------


@dataclass
class ResultPaths:
    """Where :func:`write_results` put the files.

    Attributes:
        json: path of the JSON file.
        markdown: path of the Markdown file.
    """

    json: Path
    markdown: Path


REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the benchmarks run in; result files name paths relative to it."""
_HOME = str(Path.home())


def portable_text(text: str) -> str:
    """``text`` with this machine's checkout and home folders replaced by ``.`` and ``~``."""
    root = str(REPO_ROOT)
    return text.replace(root + os.sep, "").replace(root, ".").replace(_HOME + os.sep, "~/")


def _jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, numpy scalars/arrays and non-finite floats for JSON
    (paths and path-like strings are made relative to the checkout: nothing machine-specific)."""
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return portable_text(str(obj))
    if isinstance(obj, str):
        return portable_text(obj) if os.sep in obj else obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy scalars / arrays, torch tensors
        return _jsonable(obj.tolist())
    return obj


def write_results(
    out_dir: str | os.PathLike,
    name: str,
    data: dict[str, Any],
    markdown: str,
) -> ResultPaths:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` atomically.

    Args:
        out_dir: results folder (created if missing), e.g. ``benchmarks/results``.
        name: file stem, e.g. ``"checkerboard"``.
        data: JSON-serialisable results (dataclasses, numpy values and paths are
            converted; NaN/inf become ``null``).
        markdown: the Markdown report.

    Returns:
        :class:`ResultPaths` of the two files.

    Raises:
        ValueError: if ``name`` is empty or contains a path separator.
    """
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"result name must be a plain file stem like 'checkerboard', got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ResultPaths(json=out / f"{name}.json", markdown=out / f"{name}.md")
    for path, text in (
        (paths.json, json.dumps(_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n"),
        (paths.markdown, portable_text(markdown if markdown.endswith("\n") else markdown + "\n")),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats with ``digits`` significant digits, None as ``-``.

    Args:
        value: number, string or None.
        digits: significant digits for floats.

    Returns:
        The cell text.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value == 0.0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 10 ** (-digits):
            return f"{value:.{max(digits - 1, 0)}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        headers: column titles.
        rows: one sequence of cells per row (same length as ``headers``); cells go
            through :func:`fmt`.
        digits: significant digits for float cells.

    Returns:
        The table text (no trailing newline).

    Raises:
        ValueError: if a row has the wrong number of cells.
    """
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: row {i} has {len(row)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(fmt(c, digits) for c in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def pyplot():
    """``matplotlib.pyplot`` with the headless ``Agg`` backend selected.

    Raises:
        ImportError: with the install hint when matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the benchmark figures need matplotlib: pip install 'anystep[train]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------
# command-line values (argparse ``type=`` of every benchmark's comma lists)
# --------------------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    """``"1,8,64"`` -> ``(1, 8, 64)``; integers >= 1 (argparse type: errors exit 2 with one line)."""
    import argparse

    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated integers, e.g. 1,8,64; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be integers >= 1, got {text!r}")
    return vals


def float_list(text: str) -> tuple[float, ...]:
    """``"1e-3,1e-5"`` -> ``(0.001, 1e-05)`` (argparse type)."""
    import argparse

    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated numbers, e.g. 1e-3,1e-5; got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one value")
    return vals


def name_list(text: str) -> tuple[str, ...]:
    """``"checkerboard,digits"`` -> ``("checkerboard", "digits")`` (argparse type)."""
    import argparse

    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    if not vals:
        raise argparse.ArgumentTypeError("give at least one name")
    return vals


def portable_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (the checkout) when inside it, else its last two components:
    no machine paths in results (:func:`anystep.core.paths.recorded_path`)."""
    from anystep.core.paths import recorded_path

    return recorded_path(path, root)


def git_revision(root: str | os.PathLike) -> str | None:
    """``git describe --always --dirty`` of the checkout at ``root`` (what was measured), or None."""
    import subprocess

    try:
        r = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                           text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def results_dir(name: str, quick: bool = False) -> Path:
    """Where benchmark ``name`` writes its results when ``--out`` is not given.

    A full run writes the committed ``benchmarks/results``; a ``--quick`` smoke run writes
    ``runs/<name>-quick/results`` instead, so that it never overwrites the committed figures.
    """
    return REPO_ROOT / "runs" / f"{name}-quick" / "results" if quick else REPO_ROOT / "benchmarks" / "results"


OUT_HELP = "results folder (default benchmarks/results; with --quick runs/<benchmark>-quick/results)"
"""The ``--out`` help of every benchmark whose default is :func:`results_dir`."""


def run_cli(argv: Sequence[str] | None, *, parser: Any, settings_from_args: Any, run: Any, module: str,
            work_dir: Path | None = None, settings_errors: tuple[type[BaseException], ...] = (),
            error_prefixes: dict[type[BaseException], str] | None = None, dispatch: Any = None) -> int:
    """The entry point of a benchmark: parse -> settings -> run, bad input to exit status 2.

    ``settings_from_args(args)`` builds the settings; one of ``settings_errors`` there is a usage
    error (argparse prints the usage and exits 2). Then ``run(settings, out_dir=..., command=...,
    log=...)`` (and ``work_dir=`` when ``work_dir`` is given) with ``--out`` / ``--work-dir``
    when the parser has them (no ``--out``: :func:`results_dir`, a ``--quick`` run under ``runs/``).
    A user error (:data:`anystep.errors.USER_ERRORS`, or a type of
    ``error_prefixes`` printed after its prefix) is one ``error: ...`` line on stderr and exit 2.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
        parser: the benchmark's argparse parser.
        settings_from_args: ``Namespace -> settings``.
        run: the benchmark's ``run``.
        module: ``python -m`` name, for the command line recorded in the results.
        work_dir: default ``--work-dir`` (None: ``run`` takes no work folder).
        settings_errors: exception types of ``settings_from_args`` that are usage errors.
        error_prefixes: ``{exception type: message prefix}`` for user errors outside ``USER_ERRORS``.
        dispatch: ``(args, settings, out_dir, work_dir, command) -> int | None``: a mode of
            the benchmark other than ``run`` (its exit status), or None to go on to ``run``.

    Returns:
        The exit status: 0, or 2 after a user error.
    """
    from anystep.errors import USER_ERRORS

    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except settings_errors as e:
        parser.error(str(e))
    out_dir = getattr(args, "out", None) or results_dir(module.rsplit(".", 1)[-1], bool(getattr(args, "quick", False)))
    work = (getattr(args, "work_dir", None) or work_dir) if work_dir is not None else None
    command = command_line(sys.argv[1:] if argv is None else argv, module=module)
    prefixes = tuple((error_prefixes or {}).items())
    catch = tuple(t for t, _ in prefixes) + tuple(USER_ERRORS)
    try:
        if dispatch is not None:
            code = dispatch(args, settings, out_dir, work, command)
            if code is not None:
                return int(code)
        kw: dict[str, Any] = {"work_dir": work} if work is not None else {}
        run(settings, out_dir=out_dir, command=command, log=lambda m: print(m, flush=True), **kw)
    except catch as e:
        prefix = next((p for t, p in prefixes if isinstance(e, t)), "")
        print(f"error: {prefix}{e}", file=sys.stderr)
        return 2
    return 0
