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
import io
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

if TYPE_CHECKING:  # annotations only: the client needs no typing_extensions at run time
    from typing_extensions import Self

FORMATS = ("npy", "json", "png")
RETRY_STATUSES = (429, 503)
DEFAULT_URL = "http://127.0.0.1:8000"


class AnystepClientError(Exception):
    """Base class of client errors."""


class AnystepConnectionError(AnystepClientError):
    """The server could not be reached (after retries)."""


class AnystepInputError(AnystepClientError, ValueError):
    """An argument of a client call is invalid (nothing was sent); the message says how to fix it."""


class AnystepProtocolError(AnystepClientError):
    """The server's answer is not an anystep answer (another server on that URL?)."""


def check_url(url: str) -> str:
    """Normalise and validate a server URL; no scheme means ``http://``.

    Args:
        url: e.g. ``http://127.0.0.1:8000``, ``https://host/prefix`` or ``host:8000``.

    Returns:
        The URL without a trailing slash.

    Raises:
        AnystepInputError: another scheme (``ftp://``), no host, a bad port, spaces, etc.
    """
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url.strip():
        raise AnystepInputError("the server URL is empty; use e.g. http://127.0.0.1:8000")
    url = url.strip()
    if any(c.isspace() for c in url) or not url.isprintable():
        raise AnystepInputError(f"server URL {url!r} contains spaces or control characters")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError as e:
        raise AnystepInputError(f"server URL {url!r} is malformed ({e}); use e.g. http://127.0.0.1:8000") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise AnystepInputError(
            f"server URL {url!r} uses {parts.scheme}://; an anystep server speaks http:// or https://"
        )
    if not parts.hostname:
        raise AnystepInputError(f"server URL {url!r} has no host; use e.g. http://127.0.0.1:8000")
    if port == 0:
        raise AnystepInputError(f"server URL {url!r} has port 0; use the port the server listens on")
    if parts.query or parts.fragment:
        raise AnystepInputError(f"server URL {url!r} has a query or fragment; give only scheme://host:port[/prefix]")
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise AnystepInputError(f"server URL {url!r} is malformed ({e})") from None
    return url.rstrip("/")


def _summarise_body(resp: httpx.Response, limit: int = 200) -> str:
    """A one-line summary of a non-anystep error body (HTML title/heading or the text start)."""
    import html
    import re

    text = resp.text or ""
    ctype = resp.headers.get("content-type", "")
    if "html" in ctype or text.lstrip()[:1] == "<":
        m = re.search(r"<title[^>]*>(.*?)</title>", text, re.DOTALL | re.IGNORECASE) or re.search(
            r"<h1[^>]*>(.*?)</h1>", text, re.DOTALL | re.IGNORECASE
        )
        text = m.group(1) if m else re.sub(r"<[^>]+>", " ", text)
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or resp.reason_phrase or "no body"


class AnystepHTTPError(AnystepClientError):
    """The server answered with an error status.

    Attributes:
        status: HTTP status code.
        error: the server's short error code (e.g. ``"out_of_range"``).
        message: the server's explanation (what was wrong, how to fix it).
        field: the offending parameter, or None.
        retry_after: seconds from ``Retry-After``, when given.
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = int(status)
        self.error = error
        self.message = message
        self.field = field
        self.retry_after = retry_after
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {error}: {message}{where}")


@dataclass
class GenerateResult:
    """Answer of ``POST /generate``.

    Attributes:
        model: served model name.
        kind: ``"flowmap"`` or ``"velocity"``.
        steps: steps taken (K; accepted steps for dopri5).
        nfe: network evaluations per sample.
        seed: first seed (sample i used ``seed + i``).
        n: number of samples.
        format: ``npy``, ``json`` or ``png``.
        samples: ``[n, ...]`` float32 in the data set's own units (None for png).
        image: the PNG as a ``PIL.Image`` (png only).
        png: the PNG bytes (png only).
        solver: ODE solver (velocity models), else None.
        grid: times traversed (json only; None for dopri5).
        timing_ms: server-side ``{"total", "queue", "compute"}`` milliseconds.
        chosen_by_budget: True when ``latency_ms`` chose ``steps``.
    """

    model: str
    kind: str
    steps: int
    nfe: int
    seed: int
    n: int
    format: str
    samples: np.ndarray | None = None
    image: Any = None
    png: bytes | None = field(default=None, repr=False)
    solver: str | None = None
    grid: list[float] | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    chosen_by_budget: bool = False


@dataclass
class EncodeResult:
    """Answer of ``POST /encode``.

    Attributes:
        model: served model name.
        z: ``[n, *data_shape]`` float32 base-space points (model units).
        steps: steps of the reversed grid.
        nfe: network evaluations per sample.
        timing_ms: server-side timings.
    """

    model: str
    z: np.ndarray
    steps: int
    nfe: int
    timing_ms: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# shared request building / response parsing
# --------------------------------------------------------------------------------------


def _generate_payload(
    model: str | None,
    steps: int | None,
    n: int,
    seed: int | None,
    format: str,
    grid: Sequence[float] | None,
    solver: str | None,
    rtol: float | None,
    latency_ms: float | None,
) -> dict[str, Any]:
    if format not in FORMATS:
        raise AnystepInputError(f"format={format!r}: use one of {list(FORMATS)}")
    body: dict[str, Any] = {"n": n, "format": format}
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
        if steps is not None and steps != 1:  # an explicit cap on the steps the budget may pick
            body["steps"] = steps
    elif steps is not None:
        body["steps"] = steps
    for key, value in (("model", model), ("seed", seed), ("solver", solver), ("rtol", rtol)):
        if value is not None:
            body[key] = value
    if grid is not None:
        body["grid"] = [float(g) for g in grid]
        body.pop("steps", None)
    return body


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_from(resp: httpx.Response) -> AnystepHTTPError:
    data = None
    if "json" in resp.headers.get("content-type", ""):
        try:
            data = resp.json()
        except (json.JSONDecodeError, ValueError, UnicodeDecodeError):
            data = None
    if isinstance(data, dict) and "message" in data:  # an anystep error body
        fld = data.get("field")
        message = " ".join(str(data["message"]).split())
        return AnystepHTTPError(
            resp.status_code, str(data.get("error", "http_error")), message,
            None if fld is None else str(fld), _retry_after(resp),
        )
    # not an anystep error body: summarise (an HTML page is never dumped in full)
    summary = _summarise_body(resp)
    return AnystepHTTPError(
        resp.status_code, "http_error",
        f"{summary} (not an anystep error; is {resp.request.url.scheme}://{resp.request.url.netloc.decode()} an anystep server?)",
        None, _retry_after(resp),
    )


def _float_array(data: Any) -> np.ndarray:
    try:
        return np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):  # nulls stand for non-finite values

        def fix(v: Any) -> Any:
            if isinstance(v, list):
                return [fix(u) for u in v]
            return float("nan") if v is None else v

        return np.asarray(fix(data), dtype=np.float32)


def _not_anystep(resp: httpx.Response, what: str, err: Exception) -> AnystepProtocolError:
    return AnystepProtocolError(
        f"{resp.request.url} answered {resp.status_code} with {what} that is not an anystep answer "
        f"({type(err).__name__}: {' '.join(str(err).split())[:120]}); is it an anystep server?"
    )


def _parse_generate(resp: httpx.Response, fmt: str) -> GenerateResult:
    try:
        return _parse_generate_unchecked(resp, fmt)
    except AnystepClientError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _parse_generate_unchecked(resp: httpx.Response, fmt: str) -> GenerateResult:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        d = resp.json()
        return GenerateResult(
            model=d["model"],
            kind=d["kind"],
            steps=int(d["steps"]),
            nfe=int(d["nfe"]),
            seed=int(d["seed"]),
            n=int(d["n"]),
            format="json",
            samples=_float_array(d["samples"]).reshape(d.get("shape") or -1),
            solver=d.get("solver"),
            grid=d.get("grid"),
            timing_ms={k: float(v) for k, v in d.get("timing_ms", {}).items()},
            chosen_by_budget=bool(d.get("chosen_by_budget", False)),
        )
    h = resp.headers
    common: dict[str, Any] = dict(  # noqa: C408 - keyword form reads like the headers
        model=h.get("x-anystep-model", ""),
        kind=h.get("x-anystep-kind", ""),
        steps=int(h.get("x-anystep-steps", 0)),
        nfe=int(h.get("x-anystep-nfe", 0)),
        seed=int(h.get("x-anystep-seed", 0)),
        n=int(h.get("x-anystep-n", 0)),
        solver=h.get("x-anystep-solver") or None,
        timing_ms={
            k: float(h[f"x-anystep-{name}-ms"])
            for k, name in (("total", "time"), ("queue", "queue"), ("compute", "compute"))
            if f"x-anystep-{name}-ms" in h
        },
        chosen_by_budget=h.get("x-anystep-chosen-by-budget", "false") == "true",
    )
    if ctype.startswith("image/png"):
        from PIL import Image

        img = Image.open(io.BytesIO(resp.content))
        img.load()
        return GenerateResult(format="png", png=resp.content, image=img, **common)
    if "npy" in ctype or ctype.startswith("application/octet-stream"):
        arr = np.load(io.BytesIO(resp.content), allow_pickle=False)
        return GenerateResult(format="npy", samples=arr, **common)
    raise AnystepProtocolError(
        f"{resp.request.url} answered with content type {ctype!r} for format={fmt}; is it an anystep server?"
    )


def _parse_encode(resp: httpx.Response) -> EncodeResult:
    try:
        d = resp.json()
        return EncodeResult(
            model=d["model"],
            z=_float_array(d["z"]).reshape(d.get("shape") or -1),
            steps=int(d["steps"]),
            nfe=int(d["nfe"]),
            timing_ms={k: float(v) for k, v in d.get("timing_ms", {}).items()},
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _json_of(resp: httpx.Response, key: str | None = None) -> Any:
    try:
        d = resp.json()
        return d if key is None else d[key]
    except (KeyError, TypeError, ValueError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _encode_payload(
    x: Any, model: str | None, steps: int | None, grid: Sequence[float] | None
) -> dict[str, Any]:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise AnystepInputError(
            f"encode needs x as numbers of shape [n, *data_shape] (a list or array), got {type(x).__name__}: "
            f"{' '.join(str(e).split())[:120]}"
        ) from None
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise AnystepInputError(f"encode needs x of shape [n, *data_shape] with n >= 1, got shape {list(arr.shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AnystepInputError(
            f"encode needs finite data: x holds {int(bad.sum())} NaN/Inf value(s) (first at index {list(first)}); "
            "remove or replace them"
        )
    body: dict[str, Any] = {"x": arr.tolist()}
    if model is not None:
        body["model"] = model
    if grid is not None:
        body["grid"] = [float(g) for g in grid]
    elif steps is not None:
        body["steps"] = steps
    return body


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
                    f"{method} {self.url}{path} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
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

        Returns:
            GenerateResult (samples in the data set's units; image for png).
        """
        body = _generate_payload(model, steps, n, seed, format, grid, solver, rtol, latency_ms)
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
                    f"{method} {self.url}{path} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
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
    ) -> GenerateResult:
        """See :meth:`Client.generate`."""
        body = _generate_payload(model, steps, n, seed, format, grid, solver, rtol, latency_ms)
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
