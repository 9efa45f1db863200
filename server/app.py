"""The FastAPI app: ``POST /generate?steps=K``, ``POST /encode``, models, health and metrics.

A request flows: HTTP -> validate (4xx here, never deeper) -> per-sample seeds ->
``x0`` -> the model's :class:`~anystep.server.scheduler.StepScheduler` (step-level
batching with every other live request) -> data units -> ``json`` | ``npy`` | ``png``.

Routes (the HTTP contract shared with the client and the playground page):

* ``POST /generate`` — query parameters or JSON body (body wins): ``model, steps, n,
  seed, grid, format, solver, rtol, latency_ms``;
* ``POST /encode`` — ``{"model", "x", "steps"}`` -> ``{"z", "steps", "nfe"}`` via ``X_{1,0}``;
* ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``/docs``, ``GET /``.

Security: with an API key, every route except ``/healthz``, ``/readyz`` and the playground
shell (``/``, ``/static/*``, no data) needs
``Authorization: Bearer <key>``. No input produces a 5xx: validation errors are
4xx JSON ``{"error", "message", "field"}``; only a bug reaches the last-resort 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from anystep.core.config import TimeRegionError, check_invertible

from .engines import EngineOptions
from .metrics import ServerMetrics
from .registry import Limits, ModelSpec, ServedModel, load_models
from .scheduler import (
    STAGES,
    Job,
    QueueFullError,
    SchedulerClosedError,
    SchedulerError,
    SolverFailedError,
    StepScheduler,
)
from .schemas import (
    ENCODE_FIELDS,
    FORMATS,
    GENERATE_FIELDS,
    LATENCY_MAX_MS,
    MAX_SEED,
    RTOL_RANGE,
    ApiError,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    GenerateParams,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
    _show,
    check_body_types,
    check_range,
    parse_json_body,
    parse_query,
    validate_grid,
)

log = logging.getLogger("anystep.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Health probes and the playground's static shell carry no data: a browser cannot send a
# bearer token when it opens a page, so the page loads and asks for the key itself.
EXEMPT_FROM_AUTH = frozenset({"/healthz", "/readyz", "/"})
EXEMPT_PREFIXES = ("/static/",)
KNOWN_ROUTES = frozenset(
    {
        "/generate",
        "/encode",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/docs",
        "/openapi.json",
    }
)


@dataclass
class ServerConfig:
    """Everything ``anystep serve`` configures.

    Attributes:
        models: what to serve (ignored when :func:`create_app` gets loaded models).
        engine: engine for every model (``torch``, ``onnx``, ``tensorrt``, ``triton``).
        engine_options: shared engine options.
        api_key: when set, bearer auth on every route but health.
        limits: per-request limits.
        max_batch: most rows in one engine call.
        max_queue: most unfinished requests per model before 429.
        batching: step-level batching across requests (False: one request at a time).
        request_timeout_s: a request waiting longer is dropped with 503.
        max_body_bytes: largest accepted request body.
        warmup: warm engines up (and measure their cost) at start.
        drain_timeout_s: at shutdown, how long in-flight requests may still run.
        static_dir: the playground's folder (``GET /`` serves its index.html).
    """

    models: list[ModelSpec] = field(default_factory=list)
    engine: str = "torch"
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


def error_response(err: ApiError) -> JSONResponse:
    """The JSON body ``{"error", "message", "field"}`` with the error's status and headers."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _sanitize(arr: np.ndarray) -> list[Any]:
    """Nested lists for JSON; non-finite values become null (JSON has no NaN)."""
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if finite.all():
        return arr.tolist()
    obj = arr.astype(object)
    obj[~finite] = None
    return obj.tolist()


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise ApiError(
                    413,
                    "body_too_large",
                    f"the request body exceeds {limit} bytes; send fewer samples",
                )
        except ValueError:
            raise ApiError(
                400, "bad_request", "the Content-Length header is not an integer"
            ) from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, "body_too_large", f"the request body exceeds {limit} bytes; send fewer samples"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_params(request: Request, allowed: tuple[str, ...], limit: int) -> dict[str, Any]:
    """Query parameters merged with the JSON body (body wins)."""
    query = parse_query(list(request.query_params.multi_items()), allowed)
    body = check_body_types(parse_json_body(await _read_body(request, limit)), allowed)
    return {**query, **body}


# --------------------------------------------------------------------------------------
# validation of generate / encode against a served model
# --------------------------------------------------------------------------------------


def _resolve_model(state: AppState, name: Any, want_kind: str | None = None) -> ServedModel:
    if name is None:
        for m in state.models.values():
            if want_kind is None or m.kind == want_kind:
                return m
        raise ApiError(
            422, "no_model", f"no served model is a {want_kind}; see GET /v1/models", "model"
        )
    if name not in state.models:
        raise ApiError(
            404,
            "unknown_model",
            f"unknown model {_show(name)}; served models: {', '.join(state.models)} (GET /v1/models)",
            "model",
        )
    return state.models[name]


def validate_generate(raw: dict[str, Any], state: AppState) -> tuple[GenerateParams, ServedModel]:
    """Turn merged parameters into :class:`GenerateParams`, or raise a 4xx :class:`ApiError`."""
    m = _resolve_model(state, raw.get("model"))
    lim = m.limits
    fmt = raw.get("format", "json")
    if fmt not in FORMATS:
        raise ApiError(
            422,
            "unknown_format",
            f"format {_show(fmt)} is not supported; use json, png or npy",
            "format",
        )
    if fmt == "png" and not _png_renderable(m):
        raise ApiError(
            422,
            "unsupported_format",
            f"png renders 2D points or images; {m.name} has samples of shape {list(m.data_shape)}: use json or npy",
            "format",
        )
    solver = raw.get("solver")
    if m.kind == "flowmap":
        if solver is not None:
            raise ApiError(
                422,
                "solver_not_applicable",
                f"{m.name} is a flow map: it takes steps, not a solver; drop solver or pick a velocity model",
                "solver",
            )
    else:
        solver = solver or "euler"
        if solver not in m.solvers:
            raise ApiError(
                422,
                "unknown_solver",
                f"solver {_show(solver)} is not available; use one of {', '.join(m.solvers)}",
                "solver",
            )
    rtol = raw.get("rtol")
    if rtol is not None:
        if solver != "dopri5":
            raise ApiError(
                422, "rtol_not_applicable", "rtol applies to solver=dopri5 only; drop it", "rtol"
            )
        if not (RTOL_RANGE[0] <= rtol <= RTOL_RANGE[1]):
            raise ApiError(
                422,
                "out_of_range",
                f"rtol={rtol:g} is out of range; use {RTOL_RANGE[0]:g}..{RTOL_RANGE[1]:g}",
                "rtol",
            )
    n = check_range("n", raw.get("n", 1), 1, lim.max_n)
    steps_given = "steps" in raw
    steps = check_range("steps", raw.get("steps", 1), 1, lim.max_steps)
    grid = raw.get("grid")
    latency_ms = raw.get("latency_ms")
    if grid is not None:
        if solver == "dopri5":
            raise ApiError(
                422,
                "grid_not_applicable",
                "dopri5 picks its own steps; drop grid or use euler/heun/rk4",
                "grid",
            )
        if latency_ms is not None:
            raise ApiError(
                422, "conflict", "give either grid or latency_ms, not both", "latency_ms"
            )
        grid = validate_grid(grid, lim.max_steps)
        steps = len(grid) - 1
    if latency_ms is not None:
        if solver == "dopri5":
            raise ApiError(
                422,
                "budget_not_applicable",
                "latency_ms needs a flow map or a fixed-step solver, not dopri5",
                "latency_ms",
            )
        if not (0 < latency_ms <= LATENCY_MAX_MS):
            raise ApiError(
                422,
                "out_of_range",
                f"latency_ms={latency_ms:g} is out of range; use 0 < latency_ms <= {LATENCY_MAX_MS:g}",
                "latency_ms",
            )
    seed_given = "seed" in raw
    seed = raw["seed"] if seed_given else random.randrange(0, 2**31)
    check_range("seed", seed, 0, MAX_SEED, "(sample i uses seed + i)")
    if solver == "dopri5":
        if n * 8 > lim.max_compute:
            raise ApiError(
                422,
                "over_budget",
                f"n={n} is too many samples for dopri5 under the compute budget",
                "n",
            )
    else:
        per_step = STAGES["flowmap" if solver is None else solver]
        # with a latency budget the server picks steps (>= 1) itself, within the compute budget
        k_min = 1 if latency_ms is not None else steps
        cost = n * k_min * per_step
        if cost > lim.max_compute:
            raise ApiError(
                422,
                "over_budget",
                f"n x nfe = {n} x {k_min * per_step} = {cost} exceeds the compute budget of {lim.max_compute} "
                "sample-evaluations per request; lower n or steps",
                "n",
            )
    params = GenerateParams(
        model=m.name,
        steps=steps,
        n=n,
        seed=int(seed),
        seed_given=seed_given,
        grid=grid,
        format=fmt,
        solver=solver,
        rtol=float(rtol) if rtol is not None else 1e-3,
        latency_ms=latency_ms,
        steps_given=steps_given,
    )
    return params, m


def _png_renderable(m: ServedModel) -> bool:
    shape = m.data_shape
    return shape == (2,) or (len(shape) == 3 and shape[0] in (1, 3))


def choose_steps(
    m: ServedModel, n: int, latency_ms: float, solver: str | None, cap: int | None
) -> int:
    """The most steps in ``{1, 2, 4, ..., cap}`` whose estimated compute fits ``latency_ms`` (at least 1).

    The estimate uses the scheduler's online cost model ``cost(B) ~ a + b B`` per engine call.
    """
    per_step = STAGES["flowmap" if solver is None else solver]
    limit = min(
        cap or m.limits.max_steps,
        m.limits.max_steps,
        max(1, m.limits.max_compute // (n * per_step)),
    )
    candidates, k = [], 1
    while k < limit:
        candidates.append(k)
        k *= 2
    candidates.append(limit)
    best = 1
    sched = m.scheduler
    for K in candidates:
        est_ms = 1000.0 * sched.cost.request_seconds(n, K * per_step, sched.max_batch)
        if est_ms <= latency_ms:
            best = K
    return best


def _uniform_grid(steps: int) -> list[float]:
    return np.linspace(0.0, 1.0, steps + 1, dtype=np.float64).tolist()


# --------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------


def _openapi_query_params(m_names: list[str], limits: Limits) -> list[dict[str, Any]]:
    def q(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": desc,
        }

    return [
        q(
            "model",
            {"type": "string", "example": m_names[0] if m_names else "checkerboard"},
            "Served model name.",
        ),
        q(
            "steps",
            {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
            "Number of steps K.",
        ),
        q("n", {"type": "integer", "minimum": 1, "maximum": limits.max_n}, "Number of samples."),
        q(
            "seed",
            {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            "Seed; sample i uses seed + i.",
        ),
        q(
            "grid",
            {"type": "string", "example": "0,0.5,1"},
            "Custom times, comma-separated; overrides steps.",
        ),
        q("format", {"type": "string", "enum": list(FORMATS)}, "Response format (default json)."),
        q(
            "solver",
            {"type": "string", "enum": ["euler", "heun", "rk4", "dopri5"]},
            "Velocity models only.",
        ),
        q("rtol", {"type": "number"}, "dopri5 tolerance."),
        q(
            "latency_ms",
            {"type": "number", "exclusiveMinimum": 0},
            "Latency budget in milliseconds.",
        ),
    ]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "Malformed JSON."),
        (401, "Missing or wrong bearer token (when the server has an API key)."),
        (404, "Unknown model."),
        (413, "Body too large."),
        (422, "Invalid parameter."),
        (429, "Queue full; retry after Retry-After seconds."),
        (503, "Not ready, shutting down, or timed out; retry after Retry-After seconds."),
    )
}


def create_app(
    config: ServerConfig | None = None, models: list[ServedModel] | None = None
) -> FastAPI:
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
            loaded = await asyncio.to_thread(
                load_models, config.models, config.engine, config.engine_options, config.limits
            )
            state.models = {m.name: m for m in loaded}
        for m in state.models.values():
            m.scheduler = StepScheduler(
                m.engine,
                max_batch=config.max_batch,
                max_queue=config.max_queue,
                batching=config.batching,
                on_tick=lambda rows, sec, jobs, _name=m.name: state.metrics.observe_tick(
                    _name, rows, sec
                ),
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
            await asyncio.gather(
                *(
                    m.scheduler.close(config.drain_timeout_s)
                    for m in state.models.values()
                    if m.scheduler
                )
            )
            for m in state.models.values():
                m.engine.close()

    async def _warm_all() -> None:
        try:
            for m in state.models.values():
                if config.warmup:
                    sizes = sorted({1, min(16, config.max_batch), min(64, config.max_batch)})
                    await m.scheduler.warmup(sizes)
                m.ready = True
            state.ready = True
            log.info("ready: %s", ", ".join(state.models))
        except Exception as e:  # a broken engine keeps /readyz at 503, saying why
            log.exception("warm-up failed")
            state.warm_error = f"{type(e).__name__}: {e}"

    app = FastAPI(
        title="anystep",
        version=_version(),
        description=(
            "Sampling with learned flow maps X_{s,t}: every request picks its own number of steps. "
            "Errors are JSON {error, message, field}."
        ),
        lifespan=lifespan,
    )
    app.state.anystep = state
    names = [m.name for m in (models or [])] or [s.name for s in config.models]

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
        msg = first.get("msg", "invalid request")
        return error_response(ApiError(422, "invalid_request", f"{fld or 'request'}: {msg}", fld))

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
        return JSONResponse(
            {
                "error": "internal",
                "message": "internal server error; this is a bug, please report it",
                "field": None,
            },
            status_code=500,
        )

    # ---- auth + request metrics ----------------------------------------------------
    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        route = (
            path
            if path in KNOWN_ROUTES
            else ("/static" if path.startswith("/static/") else "other")
        )
        request.scope["anystep.labels"] = ("-", None)
        if config.api_key and path not in EXEMPT_FROM_AUTH and not path.startswith(EXEMPT_PREFIXES):
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), config.api_key.encode()
            ):
                resp = error_response(
                    ApiError(
                        401,
                        "unauthorized",
                        "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                        None,
                        {"WWW-Authenticate": "Bearer"},
                    )
                )
                state.metrics.observe_request(route, "-", None, 401, None)
                return resp
        try:
            response = await call_next(request)
        except Exception:  # pragma: no cover - handlers above catch everything
            log.exception("unhandled error on %s", path)
            response = JSONResponse(
                {
                    "error": "internal",
                    "message": "internal server error; this is a bug, please report it",
                    "field": None,
                },
                status_code=500,
            )
        model, steps = request.scope.get("anystep.labels", ("-", None))
        state.metrics.observe_request(
            route, model, steps, response.status_code, time.perf_counter() - t0
        )
        return response

    # ---- routes ---------------------------------------------------------------------
    gen_openapi = {
        "parameters": _openapi_query_params(names, config.limits),
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
        },
    }

    @app.post(
        "/generate",
        summary="Draw n samples with K steps (or an ODE solver for velocity models)",
        response_model=None,
        openapi_extra=gen_openapi,
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
        t0 = time.perf_counter()
        raw = await _read_params(request, GENERATE_FIELDS, config.max_body_bytes)
        p, m = validate_generate(raw, state)
        request.scope["anystep.labels"] = (m.name, p.steps if p.solver != "dopri5" else "adaptive")
        _check_ready(state, m)
        chosen_by_budget = False
        if p.latency_ms is not None:
            p.steps = choose_steps(
                m, p.n, p.latency_ms, p.solver, p.steps if p.steps_given else None
            )
            chosen_by_budget = True
            request.scope["anystep.labels"] = (m.name, p.steps)
        seeds = [p.seed + i for i in range(p.n)]
        if p.n * int(np.prod(m.data_shape)) <= 4096:  # cheap: no thread hop
            x0 = m.base_samples(seeds)
        else:
            x0 = await asyncio.to_thread(m.base_samples, seeds)
        method = "flowmap" if m.kind == "flowmap" else p.solver
        grid = (
            p.grid
            if p.grid is not None
            else ([0.0, 1.0] if method == "dopri5" else _uniform_grid(p.steps))
        )
        job = Job(x=x0, grid=np.asarray(grid), method=method, rtol=p.rtol, tag=m.name)
        result = await _run_job(state, m, job)
        x_units = m.units.to_units(result.x)
        total_ms = 1000.0 * (time.perf_counter() - t0)
        timing = {
            "total": round(total_ms, 3),
            "queue": round(1000.0 * result.queue_s, 3),
            "compute": round(1000.0 * result.compute_s, 3),
        }
        steps = result.steps
        headers = {
            "X-Anystep-Model": m.name,
            "X-Anystep-Kind": m.kind,
            "X-Anystep-Steps": str(steps),
            "X-Anystep-NFE": str(result.nfe),
            "X-Anystep-Seed": str(p.seed),
            "X-Anystep-N": str(p.n),
            "X-Anystep-Shape": ",".join(str(d) for d in x_units.shape),
            "X-Anystep-Time-Ms": f"{timing['total']:.3f}",
            "X-Anystep-Queue-Ms": f"{timing['queue']:.3f}",
            "X-Anystep-Compute-Ms": f"{timing['compute']:.3f}",
            "X-Anystep-Chosen-By-Budget": "true" if chosen_by_budget else "false",
        }
        if p.solver:
            headers["X-Anystep-Solver"] = p.solver
        if p.format == "npy":
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(x_units, dtype=np.float32), allow_pickle=False)
            return Response(buf.getvalue(), media_type="application/x-npy", headers=headers)
        if p.format == "png":
            from anystep.core.render import samples_png

            png = await asyncio.to_thread(samples_png, result.x)
            return Response(png, media_type="image/png", headers=headers)
        body = {
            "model": m.name,
            "kind": m.kind,
            "steps": steps,
            "nfe": result.nfe,
            "seed": p.seed,
            "n": p.n,
            "shape": list(x_units.shape),
            "samples": _sanitize(x_units),
            "solver": p.solver,
            "grid": [float(g) for g in grid] if method != "dopri5" else None,
            "timing_ms": timing,
            "chosen_by_budget": chosen_by_budget,
        }
        return JSONResponse(body, headers=headers)

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
        t0 = time.perf_counter()
        body = parse_json_body(await _read_body(request, config.max_body_bytes))
        if request.query_params:
            raise ApiError(
                422,
                "unknown_field",
                'encode takes a JSON body only: {"model", "x", "steps"}',
                next(iter(request.query_params.keys()))[:100],
            )
        raw = check_body_types({k: v for k, v in body.items() if k != "x"}, ENCODE_FIELDS)
        if "x" not in body or body["x"] is None:
            raise ApiError(
                422, "missing_field", "x is required: samples [n, ...] in the data set's units", "x"
            )
        m = _resolve_model(state, raw.get("model"), want_kind="flowmap")
        if m.kind != "flowmap":
            raise ApiError(
                422,
                "not_invertible",
                f"{m.name} is a velocity model; encode needs a flow map (X_{{1,0}})",
                "model",
            )
        try:  # a forward-only map (s <= t) never fitted X_{1,0}: refuse, do not answer wrongly
            check_invertible(m.config, m.name)
        except TimeRegionError as e:
            raise ApiError(422, "not_invertible", str(e), "model") from None
        lim = m.limits
        steps = check_range("steps", raw.get("steps", 1), 1, lim.max_steps)
        grid = raw.get("grid")
        if grid is not None:
            grid = validate_grid(grid, lim.max_steps)
            steps = len(grid) - 1
        x_units = _parse_samples(body["x"], m)
        n = x_units.shape[0]
        check_range("n", n, 1, lim.max_n, "(rows of x)")
        if n * steps > lim.max_compute:
            raise ApiError(
                422,
                "over_budget",
                f"n x steps = {n * steps} exceeds the compute budget of {lim.max_compute}",
                "x",
            )
        request.scope["anystep.labels"] = (m.name, steps)
        _check_ready(state, m)
        try:
            x1 = m.units.from_units(x_units)
        except ValueError as e:
            raise ApiError(
                422, "invalid_samples", f"x cannot be converted to model units: {e}", "x"
            ) from None
        fwd = grid if grid is not None else _uniform_grid(steps)
        job = Job(x=x1, grid=np.asarray(fwd[::-1]), method="flowmap", tag=m.name)
        result = await _run_job(state, m, job)
        timing = {
            "total": round(1000.0 * (time.perf_counter() - t0), 3),
            "queue": round(1000.0 * result.queue_s, 3),
            "compute": round(1000.0 * result.compute_s, 3),
        }
        return JSONResponse(
            {
                "model": m.name,
                "z": _sanitize(result.x),
                "shape": list(result.x.shape),
                "steps": result.steps,
                "nfe": result.nfe,
                "timing_ms": timing,
            }
        )

    @app.get(
        "/v1/models",
        response_model=ModelsResponse,
        summary="Served models",
        responses={401: ERROR_RESPONSES[401]},
    )
    async def list_models() -> JSONResponse:
        return JSONResponse({"models": [m.info() for m in state.models.values()]})

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness (always 200)")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        summary="Readiness: engines loaded and warmed",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def readyz() -> JSONResponse:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "models": list(state.models)})
        if state.draining:
            reason = "shutting down"
        elif state.warm_error:
            reason = f"engine warm-up failed ({state.warm_error[:300]}); check the server log"
        else:
            reason = "engines are loading or warming up"
        return error_response(
            ApiError(503, "not_ready", f"not ready: {reason}; retry shortly", None, _retry_after(1))
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={401: ERROR_RESPONSES[401]},
    )
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


def _check_ready(state: AppState, m: ServedModel) -> None:
    if state.draining:
        raise ApiError(
            503,
            "shutting_down",
            "the server is shutting down; retry shortly",
            None,
            _retry_after(2),
        )
    if not m.ready or m.scheduler is None:
        raise ApiError(
            503, "not_ready", f"{m.name} is still warming up; retry shortly", None, _retry_after(1)
        )


async def _run_job(state: AppState, m: ServedModel, job: Job):
    sched: StepScheduler = m.scheduler
    try:
        fut = sched.submit(job)
    except QueueFullError as e:
        raise ApiError(429, "queue_full", str(e), None, _retry_after(e.retry_after)) from None
    except SchedulerClosedError as e:
        raise ApiError(503, "shutting_down", str(e), None, _retry_after(2)) from None
    state.metrics.set_queue(m.name, sched.queue_depth, sched.inflight)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout=state.config.request_timeout_s)
    except asyncio.TimeoutError:
        sched.cancel(job)
        raise ApiError(
            503,
            "timeout",
            f"the request did not finish within {state.config.request_timeout_s:g} s; the server is busy, retry later",
            None,
            _retry_after(sched.retry_after()),
        ) from None
    except asyncio.CancelledError:
        sched.cancel(job)  # client went away or the server is stopping
        raise
    except SolverFailedError as e:
        raise ApiError(422, "solver_failed", str(e), "rtol") from None
    except SchedulerClosedError as e:
        raise ApiError(503, "shutting_down", str(e), None, _retry_after(2)) from None
    except SchedulerError as e:
        raise ApiError(422, "invalid_request", str(e), None) from None
    finally:
        state.metrics.set_queue(m.name, sched.queue_depth, sched.inflight)


def _parse_samples(x: Any, m: ServedModel) -> np.ndarray:
    """Nested lists -> ``[n, *units_shape]`` float32, or a 4xx naming the expected shape."""
    want = list(m.units.units_shape)
    hint = f"[n, {', '.join(map(str, want))}]"
    if not isinstance(x, list):
        raise ApiError(
            422, "invalid_type", f"x must be a nested list of numbers of shape {hint}", "x"
        )
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError, RecursionError):
        raise ApiError(
            422, "invalid_samples", f"x must be a rectangular nested list of shape {hint}", "x"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise ApiError(
            422, "invalid_type", f"x must hold only numbers, as a nested list of shape {hint}", "x"
        )
    if list(arr.shape[1:]) != want or arr.ndim != len(want) + 1:
        raise ApiError(
            422, "invalid_shape", f"x has shape {list(arr.shape)}; {m.name} needs {hint}", "x"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ApiError(422, "invalid_samples", "x values must be finite float32 numbers", "x")
    return arr


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("anystep")
    except Exception:  # noqa: BLE001 - pragma: no cover - not installed
        return "0"
