"""The FastAPI app: ``POST /generate?steps=K``, ``POST /encode``, models, health and metrics.

Routes (the HTTP contract shared with the client and the playground page):

* ``POST /generate`` — query parameters or JSON body (body wins): ``model, steps, n,
  seed, grid, format, solver, rtol, max_nfe, latency_ms`` (:mod:`.routes`);
* ``POST /encode`` — ``{"model", "x", "steps"}`` (or a ``.npy`` body) -> ``{"z", "steps", "nfe"}`` via ``X_{1,0}``;
* ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``/docs``, ``GET /``.

Security: with an API key, every route except ``/healthz``, ``/readyz`` and the playground
shell (``/``, ``/static/*``, no data) needs ``Authorization: Bearer <key>``. No input
produces a 5xx: validation errors are 4xx JSON ``{"error", "message", "field"}``; only a
bug reaches the last-resort 500. Auth, request metrics and the sampling routes are one plain
ASGI front door outside FastAPI's own middleware stack (:mod:`.hot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from anystep.core.noise import base_noise_rows_np

from . import routes
from .engines import EngineOptions
from .hot import INTERNAL, AnystepApp, error_response
from .metrics import ServerMetrics
from .registry import Limits, ModelSpec, ServedModel, load_models
from .scheduler import Foreground, StepScheduler
from .schemas import (
    ApiError,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
)
from .watchdog import Watchdog

log = logging.getLogger("anystep.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class ServerConfig:
    """Everything ``anystep serve`` configures.

    Attributes:
        models: what to serve (ignored when :func:`create_app` gets loaded models).
        engine: engine for every model (``auto``, ``torch``, ``onnx``, ``tensorrt``, ``triton``).
        engine_options: shared engine options.
        api_key: when set, bearer auth on every route but health.
        limits: per-request limits.
        max_batch: most rows in one engine call.
        max_queue: most unfinished requests per model before 429.
        batching: step-level batching across requests (False: one request at a time).
        request_timeout_s: a request running longer is stopped with 503.
        max_body_bytes: largest accepted request body.
        warmup: warm engines up (and measure their cost) at start.
        drain_timeout_s: at shutdown, how long in-flight requests may still run.
        static_dir: the playground's folder (``GET /`` serves its index.html).
        pad_batches: pad engine calls to fixed batch buckets (bounded kernel caches;
            a sample's result does not depend on how many others share its tick).
        executor: where each model's ticks run: ``thread``, ``loop`` (the event loop, no
            hand-offs) or ``auto`` (the loop for flow maps whose full-batch engine call is under 2 ms).
        adaptive_yield: adaptive (dopri5) solves yield to fixed-step requests in flight
            (:class:`~.pacing.Foreground`); False: they tick back to back.
    """

    models: list[ModelSpec] = field(default_factory=list)
    engine: str = "auto"
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 256
    max_queue: int = 64
    batching: bool = True
    request_timeout_s: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    warmup: bool = True
    drain_timeout_s: float = 30.0
    static_dir: Path | None = STATIC_DIR
    pad_batches: bool = True
    executor: str = "auto"
    adaptive_yield: bool = True


@dataclass
class AppState:
    """Mutable state of one app."""

    config: ServerConfig
    metrics: ServerMetrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    warm_task: asyncio.Task | None = None
    warm_error: str | None = None
    foreground: Foreground = field(default_factory=Foreground)
    watchdog: Watchdog = field(default_factory=Watchdog)

    def check_ready(self, m: ServedModel) -> None:
        """503 with ``Retry-After`` while shutting down or while ``m`` warms up."""
        if self.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry shortly", None, routes.retry_after(2))
        if not m.ready or m.scheduler is None:
            raise ApiError(503, "not_ready", f"{m.name} is still warming up; retry shortly", None, routes.retry_after(1))


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "Malformed JSON or .npy body."),
        (401, "Missing or wrong bearer token (when the server has an API key)."),
        (404, "Unknown model."),
        (413, "Body too large."),
        (422, "Invalid or conflicting parameter, over the compute budget, or a non-finite result."),
        (429, "Queue full; retry after Retry-After seconds."),
        (503, "Not ready, shutting down, or timed out; retry after Retry-After seconds."),
    )
}


def _openapi_query_params() -> list[dict[str, Any]]:
    """Query parameters of ``/generate``: the request model's fields, as documented in it."""
    out = []
    for name, prop in GenerateRequest.model_json_schema()["properties"].items():
        if name == "source":  # translation sources come in the body (JSON or .npy), never the query
            continue
        schema = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
        out.append({"name": name, "in": "query", "required": False, "schema": schema, "description": prop.get("description", "")})
    return out


def create_app(config: ServerConfig | None = None, models: list[ServedModel] | None = None) -> FastAPI:
    """Build the app.

    Args:
        config: server configuration (default: ``ServerConfig()``).
        models: already loaded models; when None they are loaded from ``config.models``
            at startup.

    Returns:
        The FastAPI app; its state is ``app.state.anystep`` (:class:`AppState`).
    """
    config = config or ServerConfig()
    state = AppState(config=config, metrics=ServerMetrics())
    if models is not None:
        state.models = {m.name: m for m in models}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not state.models:
            loaded = await asyncio.to_thread(load_models, config.models, config.engine, config.engine_options, config.limits)
            state.models = {m.name: m for m in loaded}
        for m in state.models.values():
            m.scheduler = StepScheduler(
                m.engine,
                max_batch=config.max_batch,
                max_queue=config.max_queue,
                batching=config.batching,
                pad=config.pad_batches,
                executor=config.executor,
                draw_base=_gaussian_rows(m.data_shape) if m.base == "gaussian" else None,
                foreground=state.foreground if config.adaptive_yield else None,
                on_tick=state.metrics.tick_observer(m.name),
            )
            await m.scheduler.start()
        state.warm_task = asyncio.get_running_loop().create_task(_warm_all())
        try:
            yield
        finally:
            state.draining = True
            state.ready = False
            if state.warm_task is not None and not state.warm_task.done():
                state.warm_task.cancel()
            await asyncio.gather(*(m.scheduler.close(config.drain_timeout_s) for m in state.models.values() if m.scheduler))
            for m in state.models.values():
                m.engine.close()
            gc.unfreeze()  # what warm-up froze may be collected again

    async def _warm_all() -> None:
        try:
            for m in state.models.values():
                if config.warmup:
                    await m.scheduler.warmup()
                    mode = await m.scheduler.choose_executor()
                    log.info(
                        "%s: full-batch engine call ~%.2f ms: ticks on the %s",
                        m.name,
                        1000 * m.scheduler.cost.call_seconds(config.max_batch),
                        "event loop" if mode == "loop" else "tick thread",
                    )
                m.ready = True
            state.ready = True
            # everything loaded so far (models, engines, frameworks) lives as long as the server: keep it out of
            # the cyclic GC's generations, so its collections scan what requests allocate (not the whole heap)
            gc.freeze()
            log.info(
                "ready: %s",
                ", ".join(f"{m.name} ({m.kind}, engine {m.engine.name}, max_n {m.max_n})" for m in state.models.values()),
            )
        except Exception as e:  # a broken engine keeps /readyz at 503, saying why
            log.exception("warm-up failed")
            state.warm_error = f"{type(e).__name__}: {e}"

    app = AnystepApp(
        title="anystep",
        version=_version(),
        description=(
            "Sampling with learned flow maps X_{s,t}: every request picks its own number of steps. "
            "Errors are JSON {error, message, field}."
        ),
        lifespan=lifespan,
    )
    app.state.anystep = state  # the front door (.hot) reads it when the first request builds the stack

    # ---- errors ---------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        fld = loc[0] if loc else None
        return error_response(ApiError(422, "invalid_request", f"{fld or 'request'}: {first.get('msg', 'invalid')}", fld))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = {
            404: f"no route {request.url.path}; see /docs for the API",
            405: f"{request.method} is not allowed on {request.url.path}; see /docs",
        }.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, code, msg, None, dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # last resort: a bug, not bad input
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(INTERNAL, status_code=500)

    # ---- routes ---------------------------------------------------------------------
    @app.post(
        "/generate",
        summary="Draw n samples with K steps (or an ODE solver for velocity models)",
        response_model=None,
        openapi_extra={
            "parameters": _openapi_query_params(),
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            },
        },
        responses={
            200: {
                "model": GenerateResponse,
                "description": "Samples: JSON, a PNG image, or a .npy array (binary formats carry X-Anystep-* headers).",
                "content": {"image/png": {}, "application/x-npy": {}},
            },
            **ERROR_RESPONSES,
        },
    )
    async def generate(request: Request) -> Response:
        return await routes.generate(request, state)

    @app.post(
        "/encode",
        summary="Map data to base samples with the inverse flow map X_{1,0}",
        response_model=EncodeResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EncodeRequest.model_json_schema()}},
            }
        },
        responses=ERROR_RESPONSES,
    )
    async def encode(request: Request) -> Response:
        return await routes.encode(request, state)

    @app.get("/v1/models", response_model=ModelsResponse, summary="Served models", responses={401: ERROR_RESPONSES[401]})
    async def list_models() -> JSONResponse:
        return JSONResponse({"models": [m.info() for m in state.models.values()]})

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness (always 200)")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Readiness: engines loaded and warmed", responses={503: ERROR_RESPONSES[503]})
    async def readyz() -> JSONResponse:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "models": list(state.models)})
        if state.draining:
            reason = "shutting down"
        elif state.warm_error:
            reason = f"engine warm-up failed ({state.warm_error[:300]}); check the server log"
        else:
            reason = "engines are loading or warming up"
        return error_response(ApiError(503, "not_ready", f"not ready: {reason}; retry shortly", None, routes.retry_after(1)))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={401: ERROR_RESPONSES[401]})
    async def metrics() -> Response:
        for m in state.models.values():
            if m.scheduler is not None:
                state.metrics.set_queue(m.name, m.scheduler.queue_depth, m.scheduler.inflight)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = (config.static_dir / "index.html") if config.static_dir else None
        if page is not None and page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(
            "<!doctype html><title>anystep</title><h1>anystep</h1>"
            "<p>The playground page is not installed. See <a href='/docs'>/docs</a> for the API.</p>"
        )

    if config.static_dir is not None and config.static_dir.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=str(config.static_dir)), name="static")

    return app


def _gaussian_rows(shape: tuple[int, ...]) -> Any:
    """``seeds -> [m, *shape]`` Gaussian base samples (:func:`anystep.core.noise.base_noise_rows_np`)."""
    return functools.partial(base_noise_rows_np, shape=tuple(shape))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("anystep")
    except Exception:  # noqa: BLE001 - pragma: no cover - not installed
        return "0"
