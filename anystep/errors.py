"""Exception types that mean "the user's input is wrong" (CLI exit code 2, HTTP 4xx).

This module imports nothing heavy: ``anystep generate`` (HTTP only) must start without
torch. :func:`user_errors` therefore collects only the error classes of modules that are
already imported (an exception of a module that was never imported cannot have been
raised), while the attribute ``USER_ERRORS`` imports them all (for callers that run torch
code anyway).
"""

from __future__ import annotations

import sys


class AnystepError(ValueError):
    """Base class for errors whose message tells the user how to fix their input."""


def one_line(e: object, limit: int | None = None) -> str:
    """``str(e)`` with every run of whitespace (newlines included) collapsed to one space.

    Wraps the message of a lower-level error into one of ours without breaking the
    one-line contract of user errors (CLI: exit 2 with one line).

    Args:
        e: an exception (or any object; its ``str`` is used).
        limit: keep only the first ``limit`` characters of the squeezed text (a plain cut,
            no ellipsis), so that a long wrapped message (e.g. torch's list of every
            mismatched tensor) cannot flood the line; None keeps it whole.

    Returns:
        The text on one line, at most ``limit`` characters long.
    """
    text = " ".join(str(e).split())
    return text if limit is None else text[:limit]


# (module, class name) of every user-input error outside this module
_USER_ERROR_CLASSES = (
    ("anystep.core.config", "ConfigError"),
    ("anystep.core.modeldir", "ModelDirError"),
    ("anystep.core.samplers", "GridError"),
    ("anystep.core.data", "DataError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """User-input error classes of the modules imported so far (imports nothing)."""
    errs: list[type[BaseException]] = [AnystepError, FileNotFoundError]
    for module, name in _USER_ERROR_CLASSES:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type):
            errs.append(cls)
    return tuple(errs)


def _collect() -> tuple[type[BaseException], ...]:
    import importlib

    for module, _ in _USER_ERROR_CLASSES:
        try:
            importlib.import_module(module)
        except ImportError:  # pragma: no cover - a module of an extra that is not installed
            pass
    return user_errors()


USER_ERRORS: tuple[type[BaseException], ...]


def __getattr__(name: str):
    if name == "USER_ERRORS":
        return _collect()
    raise AttributeError(name)
