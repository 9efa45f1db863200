"""Python client of an anystep server (HTTP only: httpx, numpy, pillow; never torch).

Example::

    from anystep.client import Client

    with Client("http://127.0.0.1:8000") as c:
        r = c.generate(model="digits", steps=1, n=16, seed=0)
        r.samples.shape      # (16, 8, 8), grey levels 0..16
        r.nfe, r.timing_ms   # 1, {"total": ..., "queue": ..., "compute": ...}

Requests that meet a full queue (429) or an unavailable server (503) are retried
with exponential backoff, honouring ``Retry-After``; every other error raises
:class:`AnystepHTTPError` carrying the server's ``error``, ``message`` and ``field``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from .errors import (
    AnystepClientError,
    AnystepConnectionError,
    AnystepHTTPError,
    AnystepInputError,
    AnystepProtocolError,
    _error_from,
    _one_line,
    _retry_after,
    check_url,
)
from .messages import (
    FORMATS,
    EncodeResult,
    GenerateResult,
    _encode_payload,
    _generate_payload,
    _json_of,
    _parse_encode,
    _parse_generate,
)

__all__ = [
    "FORMATS",
    "AnystepClientError",
    "AnystepConnectionError",
    "AnystepHTTPError",
    "AnystepInputError",
    "AnystepProtocolError",
    "AsyncClient",
    "Client",
    "EncodeResult",
    "GenerateResult",
    "check_url",
]

if TYPE_CHECKING:  # annotations only: the client needs no typing_extensions at run time
    from typing_extensions import Self

RETRY_STATUSES = (429, 503)
DEFAULT_URL = "http://127.0.0.1:8000"


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise AnystepInputError(f"retries={retries!r} must be an integer >= 0")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise AnystepInputError(f"timeout={timeout!r} must be a positive number of seconds")
        self.url = check_url(url)
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json, image/png, application/x-npy"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = self.backoff * (2**attempt)
        if retry_after is not None:
            base = max(base, retry_after)
        return min(self.max_backoff, base) * (1.0 + 0.1 * random.random())


class Client(_Base):
    """Synchronous client.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: bearer token, when the server requires one.
        timeout: seconds per HTTP request.
        retries: extra attempts on 429/503 and on connection errors.
        backoff: first backoff in seconds (doubles each retry; ``Retry-After`` wins when larger).
        max_backoff: cap of one backoff.
        transport: optional ``httpx`` transport (tests).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, headers=self._headers(), transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as e:
                last = e
                if attempt < self.retries:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise AnystepConnectionError(f"cannot reach {self.url}{path}: {e}") from None
            except httpx.TimeoutException:
                raise AnystepConnectionError(
                    f"{method} {self.url}{path} timed out after {self.timeout:g} s"
                ) from None
            except httpx.HTTPError as e:  # protocol errors, bad redirects, ...
                raise AnystepConnectionError(
                    f"{method} {self.url}{path} failed: {type(e).__name__}: {_one_line(e, 200)}"
                ) from None
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(self._delay(attempt, _retry_after(resp)))
                continue
            if resp.status_code >= 400:
                raise _error_from(resp)
            return resp
        raise AnystepConnectionError(f"cannot reach {self.url}{path}: {last}")  # pragma: no cover

    def generate(
        self,
        model: str | None = None,
        steps: int | None = 1,
        n: int = 1,
        seed: int | None = None,
        format: str = "npy",
        *,
        grid: Sequence[float] | None = None,
        solver: str | None = None,
        rtol: float | None = None,
        latency_ms: float | None = None,
        classes: int | Sequence[int] | None = None,
        guidance: float | Sequence[float] | None = None,
        source: Any = None,
    ) -> GenerateResult:
        """Draw ``n`` samples with ``steps`` steps (``POST /generate``).

        Args:
            model: served model (default: the server's first).
            steps: K; with ``latency_ms``, a cap on the steps the budget may choose
                (the default 1 means "no cap").
            n: number of samples.
            seed: sample i uses ``seed + i``; None lets the server pick (returned).
            format: ``npy`` (default), ``json`` or ``png``.
            grid: custom times ``0 = t_0 < ... < t_K = 1`` (overrides steps).
            solver: velocity models: ``euler``, ``heun``, ``rk4`` or ``dopri5``.
            rtol: dopri5 tolerance.
            latency_ms: latency budget; the server picks the most steps that fit.
            classes: class-conditional models: the class of every sample or one per sample
                (default: any class, drawn by the server from each sample's seed).
            guidance: class-conditional models: guidance scale w, or one per sample.
            source: translation models (e.g. ``digits-restore``): the source samples
                ``[n, *source_shape]`` in the base data set's units, mapped by ``X_{0,1}``
                (``n`` is their number); default: drawn by the server from the seed.

        Returns:
            GenerateResult (samples in the data set's units; image for png).
        """
        body = _generate_payload(
            model, steps, n, seed, format, grid, solver, rtol, latency_ms, classes, guidance, source
        )
        return _parse_generate(self._request("POST", "/generate", json=body), format)

    def encode(
        self,
        x: Any,
        model: str | None = None,
        steps: int | None = 1,
        *,
        grid: Sequence[float] | None = None,
    ) -> EncodeResult:
        """Map data ``x`` (``[n, ...]`` data units) to base points with ``X_{1,0}`` (``POST /encode``)."""
        return _parse_encode(
            self._request("POST", "/encode", json=_encode_payload(x, model, steps, grid))
        )

    def models(self) -> list[dict[str, Any]]:
        """The served models (``GET /v1/models``)."""
        return list(_json_of(self._request("GET", "/v1/models"), "models"))

    def health(self) -> dict[str, Any]:
        """Liveness (``GET /healthz``)."""
        return dict(_json_of(self._request("GET", "/healthz")))

    def ready(self) -> bool:
        """True when ``GET /readyz`` answers 200 (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the server is ready, or raise :class:`AnystepConnectionError`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(interval)
        raise AnystepConnectionError(f"{self.url} was not ready within {timeout:g} s")


class AsyncClient(_Base):
    """Asynchronous client (same methods as :class:`Client`, awaitable)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, headers=self._headers(), transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as e:
                last = e
                if attempt < self.retries:
                    await asyncio.sleep(self._delay(attempt, None))
                    continue
                raise AnystepConnectionError(f"cannot reach {self.url}{path}: {e}") from None
            except httpx.TimeoutException:
                raise AnystepConnectionError(
                    f"{method} {self.url}{path} timed out after {self.timeout:g} s"
                ) from None
            except httpx.HTTPError as e:  # protocol errors, bad redirects, ...
                raise AnystepConnectionError(
                    f"{method} {self.url}{path} failed: {type(e).__name__}: {_one_line(e, 200)}"
                ) from None
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, _retry_after(resp)))
                continue
            if resp.status_code >= 400:
                raise _error_from(resp)
            return resp
        raise AnystepConnectionError(f"cannot reach {self.url}{path}: {last}")  # pragma: no cover

    async def generate(
        self,
        model: str | None = None,
        steps: int | None = 1,
        n: int = 1,
        seed: int | None = None,
        format: str = "npy",
        *,
        grid: Sequence[float] | None = None,
        solver: str | None = None,
        rtol: float | None = None,
        latency_ms: float | None = None,
        classes: int | Sequence[int] | None = None,
        guidance: float | Sequence[float] | None = None,
        source: Any = None,
    ) -> GenerateResult:
        """See :meth:`Client.generate`."""
        body = _generate_payload(
            model, steps, n, seed, format, grid, solver, rtol, latency_ms, classes, guidance, source
        )
        return _parse_generate(await self._request("POST", "/generate", json=body), format)

    async def encode(
        self,
        x: Any,
        model: str | None = None,
        steps: int | None = 1,
        *,
        grid: Sequence[float] | None = None,
    ) -> EncodeResult:
        """See :meth:`Client.encode`."""
        return _parse_encode(
            await self._request("POST", "/encode", json=_encode_payload(x, model, steps, grid))
        )

    async def models(self) -> list[dict[str, Any]]:
        """See :meth:`Client.models`."""
        return list(_json_of(await self._request("GET", "/v1/models"), "models"))

    async def health(self) -> dict[str, Any]:
        """See :meth:`Client.health`."""
        return dict(_json_of(await self._request("GET", "/healthz")))

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False
