"""Errors of the anystep client and the one-line messages built from server answers.

Every error of a client call is an :class:`AnystepClientError`: bad arguments
(:class:`AnystepInputError`, nothing is sent), an unreachable server
(:class:`AnystepConnectionError`), an error status (:class:`AnystepHTTPError`, carrying an
anystep server's ``error``, ``message`` and ``field``; another server's HTML page is
summarised in one line, never dumped) and an answer that is not an anystep one
(:class:`AnystepProtocolError`).
"""

from __future__ import annotations

import json

import httpx

__all__ = [
    "AnystepClientError",
    "AnystepConnectionError",
    "AnystepHTTPError",
    "AnystepInputError",
    "AnystepProtocolError",
    "check_url",
]


def _one_line(e: object, limit: int | None = None) -> str:
    """``str(e)`` with every run of whitespace collapsed to one space, cut to ``limit`` characters.

    The client's own copy of :func:`anystep.errors.one_line` (the client speaks HTTP only and
    imports nothing of the torch side), used for every message it builds from another text.

    Args:
        e: an exception, a server's message or any object (its ``str`` is used).
        limit: keep only the first ``limit`` characters (a plain cut); None keeps it whole.

    Returns:
        The text on one line, at most ``limit`` characters long.
    """
    text = " ".join(str(e).split())
    return text if limit is None else text[:limit]


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
    text = _one_line(text)
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
        message = _one_line(data["message"])
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


def _not_anystep(resp: httpx.Response, what: str, err: Exception) -> AnystepProtocolError:
    return AnystepProtocolError(
        f"{resp.request.url} answered {resp.status_code} with {what} that is not an anystep answer "
        f"({type(err).__name__}: {_one_line(err, 120)}); is it an anystep server?"
    )
