"""HTTP client of an anystep server: ``Client``, ``AsyncClient`` (httpx + numpy + pillow; no torch)."""

from .api import (
    AnystepClientError,
    AnystepConnectionError,
    AnystepHTTPError,
    AsyncClient,
    Client,
    EncodeResult,
    GenerateResult,
)

__all__ = [
    "AnystepClientError",
    "AnystepConnectionError",
    "AnystepHTTPError",
    "AsyncClient",
    "Client",
    "EncodeResult",
    "GenerateResult",
]
