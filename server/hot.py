"""The hot path: the front door of every HTTP request (auth, metrics, the sampling routes).

:class:`FrontDoor` sits outside FastAPI's own middleware stack (server errors, telemetry,
body limit, routing, dependency injection): ``POST /generate`` and ``POST /encode`` are
answered here directly by the same handlers the FastAPI routes document in ``/docs``
(:mod:`.routes`), and every other request goes on to FastAPI. Middleware added to the app
later (``app.add_middleware``, e.g. Ray's replica header) still wraps the front door:
:class:`AnystepApp` builds ``user middleware -> FrontDoor -> FastAPI's stack -> router``.

Per request this costs one auth check (when configured), one metrics update on a bound
counter, and a :class:`HotRequest` (a starlette ``Request`` whose query parameters of an
empty query string are one shared empty object).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams

from . import routes
from .schemas import ApiError

log = logging.getLogger("anystep.server")

# Health probes and the playground's static shell carry no data: a browser cannot send a
# bearer token when it opens a page, so the page loads and asks for the key itself.
EXEMPT_FROM_AUTH = frozenset({"/healthz", "/readyz", "/"})
EXEMPT_PREFIXES = ("/static/",)
KNOWN_ROUTES = frozenset(
    {"/generate", "/encode", "/v1/models", "/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json"}
)
INTERNAL = {"error": "internal", "message": "internal server error; this is a bug, please report it", "field": None}
_NO_QUERY = QueryParams()


def error_response(err: ApiError) -> JSONResponse:
    """The JSON body ``{"error", "message", "field"}`` with the error's status and headers."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class HotRequest(Request):
    """A starlette ``Request`` that skips parsing an empty query string (the common case)."""

    @property
    def query_params(self) -> QueryParams:
        if not self.scope.get("query_string"):
            return _NO_QUERY
        return super().query_params


class FrontDoor:
    """ASGI front door: bearer auth (when configured), per-request metrics, the sampling routes.

    Args:
        app: the inner ASGI app (FastAPI's middleware stack and router).
        state: the app's :class:`~.app.AppState`.
    """

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state
        key = state.config.api_key
        self._key = key.encode() if key else None
        self._hot = {("POST", "/generate"): routes.generate, ("POST", "/encode"): routes.encode}  # HOT_ROUTES

    def _authorized(self, scope: dict, path: str) -> bool:
        if self._key is None or path in EXEMPT_FROM_AUTH or path.startswith(EXEMPT_PREFIXES):
            return True
        auth = b""
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                auth = v
        scheme, _, token = auth.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key)

    async def _respond(self, handler: Any, scope: dict, receive: Any) -> Any:
        """The handler's response, its :class:`ApiError` as a JSON error, or the last-resort 500."""
        try:
            return await handler(HotRequest(scope, receive), self.state)
        except ApiError as e:
            return error_response(e)
        except Exception:  # last resort: a bug, not bad input
            log.exception("unhandled error on %s", scope.get("path"))
            return JSONResponse(INTERNAL, status_code=500)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else ("/static" if path.startswith("/static/") else "other")
        metrics = self.state.metrics
        if not self._authorized(scope, path):
            resp = error_response(
                ApiError(
                    401,
                    "unauthorized",
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                    None,
                    {"WWW-Authenticate": "Bearer"},
                )
            )
            metrics.observe_request(route, "-", None, 401, None)
            await resp(scope, receive, send)
            return
        scope["anystep.labels"] = ("-", None)
        status = [500]
        handler = self._hot.get((scope.get("method"), path))
        try:
            if handler is not None:  # the status is the response's own: no wrapper around send
                fg = self.state.foreground  # adaptive solves yield while sampling requests are in flight
                fg.enter()
                try:
                    response = await self._respond(handler, scope, receive)
                    status[0] = response.status_code
                    await response(scope, receive, send)
                finally:
                    fg.leave()
            else:

                async def send_wrapper(message: dict) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                await self.app(scope, receive, send_wrapper)
        finally:
            model, steps = scope.get("anystep.labels", ("-", None))
            metrics.observe_request(route, model, steps, status[0], time.perf_counter() - t0)


HOT_ROUTES = frozenset({("POST", "/generate"), ("POST", "/encode")})


class AnystepApp(FastAPI):
    """FastAPI whose middleware stack is ``user middleware -> FrontDoor -> FastAPI's own stack``.

    The sampling routes enter the stack directly: FastAPI's ``__call__`` asks its native
    telemetry whether OpenTelemetry is configured on every request (provider and environment
    lookups); they skip that, every other route keeps it. The front door needs the app's
    state: :func:`~.app.create_app` sets ``app.state.anystep`` before the first request.
    """

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (scope.get("method"), scope.get("path")) in HOT_ROUTES:
            if self.root_path:
                scope["root_path"] = self.root_path
            scope["app"] = self
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            await self.middleware_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> Any:
        user, self.user_middleware = self.user_middleware, []
        try:
            inner = super().build_middleware_stack()
        finally:
            self.user_middleware = user
        app: Any = FrontDoor(inner, self.state.anystep)
        for cls, args, kwargs in reversed(user):
            app = cls(app, *args, **kwargs)
        return app
