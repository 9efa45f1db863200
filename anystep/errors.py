"""Exception types that mean "the user's input is wrong" (CLI exit code 2, HTTP 4xx)."""

from __future__ import annotations


class AnystepError(ValueError):
    """Base class for errors whose message tells the user how to fix their input."""


def _collect() -> tuple[type[BaseException], ...]:
    from anystep.core.config import ConfigError
    from anystep.core.modeldir import ModelDirError
    from anystep.core.grid import GridError

    errs: list[type[BaseException]] = [AnystepError, ConfigError, ModelDirError, GridError, FileNotFoundError]
    try:
        from anystep.core.data import DataError

        errs.append(DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)



USER_ERRORS: tuple[type[BaseException], ...]


def __getattr__(name: str):
    if name == "USER_ERRORS":
        return _collect()
    raise AttributeError(name)
