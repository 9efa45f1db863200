"""HTTP client of an anystep server: ``Client``, ``AsyncClient`` (httpx + numpy + pillow; no torch).

The names are imported on first use, so ``anystep generate --help`` loads neither httpx
nor numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "AnystepClientError",
    "AnystepConnectionError",
    "AnystepHTTPError",
    "AnystepInputError",
    "AnystepProtocolError",
    "AsyncClient",
    "Client",
    "EncodeResult",
    "GenerateResult",
]

if TYPE_CHECKING:  # pragma: no cover
    from .api import (
        AnystepClientError,
        AnystepConnectionError,
        AnystepHTTPError,
        AnystepInputError,
        AnystepProtocolError,
        AsyncClient,
        Client,
        EncodeResult,
        GenerateResult,
    )


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'anystep.client' has no attribute {name!r}")
