"""The sampling routes: ``POST /generate`` and ``POST /encode``.

A request flows: HTTP -> parameters (query merged with a JSON body) -> validation
(:mod:`.validation`, 4xx there, never deeper) -> base samples of seeds ``seed + i``
(vectorised) -> a :class:`~.jobs.Job` on the model's scheduler (step-level batching
with every other live request) -> data units -> ``json`` | ``npy`` | ``png``.

While a job runs the handler watches its deadline and its client: a request that
times out (503) or whose client disconnects is cancelled and takes part in no further
engine tick.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import time
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .jobs import Job, JobResult, NonFiniteError, SchedulerError, SeededBase, SolverFailedError
from .registry import ServedModel
from .scheduler import QueueFullError, SchedulerClosedError, StepScheduler
from .schemas import (
    ENCODE_FIELDS,
    GENERATE_FIELDS,
    GENERATE_QUERY_FIELDS,
    ApiError,
    drop_nulls,
    parse_json_body,
    parse_query,
)
from .validation import GenerateParams, parse_npy, sampling_spec, validate_encode, validate_generate
from .watchdog import Watchdog

NPY_TYPES = ("application/x-npy", "application/octet-stream")
_ORJSON = orjson.OPT_SERIALIZE_NUMPY


class BytesResponse(Response):
    """A 200 response of ready bytes: the headers encoded once, without starlette's header merging.

    Args:
        body: the bytes.
        media_type: the ``Content-Type``.
        headers: further headers (names sent lower-case).
        raw_headers: further headers already encoded, ``(lower-case name, value)`` bytes (after ``headers``).
    """

    def __init__(
        self,
        body: bytes,
        media_type: str,
        headers: dict[str, str] | None = None,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        raw = [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode("latin-1"))]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if raw_headers:
            raw += raw_headers
        self.raw_headers = raw


def json_response(
    body: dict[str, Any], headers: dict[str, str] | None = None, raw_headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    """A JSON response encoded by orjson: numpy arrays directly, float32 in its shortest form
    (about 20x faster than ``json.dumps`` of nested lists for 256 2D samples)."""
    return BytesResponse(orjson.dumps(body, option=_ORJSON), "application/json", headers, raw_headers)


@functools.lru_cache(maxsize=256)
def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npy_bytes(x: np.ndarray) -> bytes:
    """``x`` as a ``.npy`` file (float32, C order): byte for byte what ``np.save`` writes, with the
    header built once per shape (``np.save`` formats it in Python on every call: ~30 us)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _npy_header(tuple(int(d) for d in x.shape), x.dtype.str) + x.tobytes()


def retry_after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header of at least one second."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def query_items(request: Request) -> list[tuple[str, str]]:
    """The query string's ``(name, value)`` pairs: ``request.query_params.multi_items()`` (``parse_qsl`` of the
    latin-1 text, blank values kept), split directly when it holds no ``%`` or ``+`` escape (then
    ``parse_qsl`` only splits: no ``QueryParams`` per request)."""
    qs = request.scope.get("query_string")
    if not qs:
        return []
    if b"%" in qs or b"+" in qs:
        return request.query_params.multi_items()
    out = []
    for part in qs.decode("latin-1").split("&"):
        if part:  # parse_qsl skips empty fields; a name without "=" has the value ""
            name, _, value = part.partition("=")
            out.append((name, value))
    return out


def _headers(request: Request) -> tuple[bytes | None, str]:
    """``(Content-Length, media type of Content-Type)`` from the raw ASGI headers, in one pass (no
    starlette ``Headers`` object per request)."""
    length = ctype = None
    for k, v in request.scope.get("headers", ()):
        if k == b"content-length" and length is None:  # the first of repeated headers, as starlette reads them
            length = v
        elif k == b"content-type" and ctype is None:
            ctype = v
    return length, (ctype or b"").split(b";")[0].strip().lower().decode("latin-1")


async def read_body(request: Request, limit: int) -> tuple[bytes, str]:
    """The request body and its media type, or a 413 beyond ``limit`` bytes (checked while receiving).

    Reads the ASGI ``http.request`` messages directly (what starlette's ``Request.stream`` does, without
    its async generator); a client gone mid-body raises starlette's ``ClientDisconnect`` as it would.
    """
    length, ctype = _headers(request)
    if length is not None:
        if not length.isascii() or not length.strip().isdigit():
            raise ApiError(400, "bad_request", "the Content-Length header is not an integer")
        if int(length) > limit:
            raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes; send fewer samples")
    chunks, size = [], 0
    while True:
        message = await request.receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes; send fewer samples")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), ctype


def choose_steps(m: ServedModel, p: GenerateParams) -> int:
    """The most steps in ``{1, 2, 4, ..., cap}`` (or the model's ``supported_steps``) whose compute fits ``latency_ms``.

    The estimate uses the scheduler's online cost model ``cost(B) ~ a + b B`` per engine call.
    """
    per_step = p.spec.stages
    limit = min(p.steps_cap or m.limits.max_steps, m.limits.max_steps, max(1, m.limits.max_compute // (p.n * per_step)))
    candidates, k = [], 1
    while k < limit:
        candidates.append(k)
        k *= 2
    candidates.append(limit)
    supported = getattr(m.config, "supported_steps", None)
    if supported is not None:  # a model trained for some K only (issue 14): choose among those
        candidates = [K for K in supported if K <= limit] or [min(supported)]
    best = candidates[0]
    sched = m.scheduler
    for K in candidates:
        if 1000.0 * sched.cost.request_seconds(p.n, K * per_step, sched.max_batch) <= p.latency_ms:
            best = K
    return best


async def run_job(request: Request, m: ServedModel, job: Job, timeout_s: float, watchdog: Watchdog) -> JobResult:
    """Submit ``job`` to the model's scheduler and wait for it, mapping scheduler errors to HTTP.

    ``watchdog`` (the app's) stops the job when it runs past ``timeout_s`` (503) or its
    client goes away (499): one shared timer, no per-request timer or task.
    """
    sched: StepScheduler = m.scheduler
    try:
        fut = sched.submit(job)
    except QueueFullError as e:
        raise ApiError(429, "queue_full", str(e), None, retry_after(e.retry_after)) from None
    except SchedulerClosedError as e:
        raise ApiError(503, "shutting_down", str(e), None, retry_after(2)) from None
    watch = watchdog.watch(fut, timeout_s, request.is_disconnected, lambda: sched.cancel(job))
    try:
        return await fut
    except asyncio.CancelledError:
        if watch.why == "timeout":
            raise ApiError(
                503,
                "timeout",
                f"the request did not finish within {timeout_s:g} s and was stopped; the server is busy or the "
                "request is large: retry later, or lower n, steps or max_nfe",
                None,
                retry_after(sched.retry_after()),
            ) from None
        if watch.why == "client":
            raise ApiError(499, "client_closed", "the client closed the connection; the request was stopped") from None
        sched.cancel(job)  # the server is stopping
        raise
    except SolverFailedError as e:
        raise ApiError(422, "solver_failed", str(e), "max_nfe") from None
    except NonFiniteError as e:
        raise ApiError(
            422,
            "non_finite_output",
            f"{e}; the input is outside what the model handles (smaller values, other steps), "
            "or the model directory is broken",
            "x" if job.grid[0] > job.grid[-1] else None,
        ) from None
    except SchedulerClosedError as e:
        raise ApiError(503, "shutting_down", str(e), None, retry_after(2)) from None
    except SchedulerError as e:
        raise ApiError(422, "invalid_request", str(e), None) from None
    finally:
        watchdog.unwatch(watch)


@functools.lru_cache(maxsize=256)
def _model_headers(name: str, kind: str) -> tuple[tuple[bytes, bytes], ...]:
    """``X-Anystep-Model`` and ``X-Anystep-Kind`` of a model's answers, encoded once."""
    return (b"x-anystep-model", name.encode("latin-1")), (b"x-anystep-kind", kind.encode("latin-1"))


def _timing(t0: float, r: JobResult) -> dict[str, float]:
    return {
        "total": round(1000.0 * (time.perf_counter() - t0), 3),
        "queue": round(1000.0 * r.queue_s, 3),
        "compute": round(1000.0 * r.compute_s, 3),
    }


async def generate(request: Request, state: Any) -> Response:
    """``POST /generate``: draw ``n`` samples with ``K`` steps (or an ODE solver).

    A translation model (data-set base) maps the ``source`` samples of the JSON body, or of a
    binary ``.npy`` body (parameters in the query), as ``/encode`` takes ``x``; without them it
    draws its sources from the base by seed.
    """
    t0 = time.perf_counter()
    config = state.config
    raw, ctype = await read_body(request, config.max_body_bytes)
    query = parse_query(query_items(request), GENERATE_QUERY_FIELDS)
    if ctype in NPY_TYPES:
        body, source = {}, parse_npy(raw)
    else:
        body = parse_json_body(raw)
        source = body.pop("source", None)
    p = validate_generate({**query, **drop_nulls(body, GENERATE_FIELDS)}, state.models, source=source)
    m = p.model
    adaptive = p.spec.adaptive
    request.scope["anystep.labels"] = (m.name, "adaptive" if adaptive else p.spec.steps)
    state.check_ready(m)
    chosen = p.latency_ms is not None
    if chosen:
        p.spec = sampling_spec(m, p.n, steps=choose_steps(m, p), solver=p.solver)
        request.scope["anystep.labels"] = (m.name, p.spec.steps)
    if p.x0 is not None:  # a translation model's own sources
        x0 = p.x0
    elif m.base == "gaussian":  # drawn at the job's first tick, in one call with every job starting then
        x0 = SeededBase(p.seed, p.n, m.data_shape)
    else:
        x0 = m.base_samples(p.seed, p.n)
    spec = p.spec
    cond = p.cond
    job_cond = {}
    if cond is not None and cond.y is not None:  # class-conditional: y (and w) ride along per sample
        job_cond["y"] = cond.y.numpy()
        if cond.w is not None and (m.config.guidance_input or cond.guided_teacher):
            job_cond["w"] = cond.w.numpy()
    job = Job(
        x=x0, grid=spec.grid, method=spec.method, rtol=spec.rtol or 0.0, max_nfe=spec.max_nfe or spec.nfe, tag=m.name,
        cond=job_cond,
    )
    result = await run_job(request, m, job, config.request_timeout_s, state.watchdog)
    nfe = result.nfe * (cond.nfe_per_call if cond is not None else 1)
    x_units = m.units.to_units(result.x)
    timing = _timing(t0, result)
    headers = [  # X-Anystep-* as raw ASGI headers (lower-case names, as BytesResponse sends them)
        *_model_headers(m.name, m.kind),
        (b"x-anystep-steps", str(result.steps).encode()),
        (b"x-anystep-nfe", str(nfe).encode()),
        (b"x-anystep-seed", str(p.seed).encode()),
        (b"x-anystep-n", str(p.n).encode()),
        (b"x-anystep-shape", ",".join([str(d) for d in x_units.shape]).encode()),
        (b"x-anystep-time-ms", f"{timing['total']:.3f}".encode()),
        (b"x-anystep-queue-ms", f"{timing['queue']:.3f}".encode()),
        (b"x-anystep-compute-ms", f"{timing['compute']:.3f}".encode()),
        (b"x-anystep-chosen-by-budget", b"true" if chosen else b"false"),
    ]
    if p.solver:
        headers.append((b"x-anystep-solver", p.solver.encode("latin-1")))
    if p.format == "npy":
        return BytesResponse(npy_bytes(x_units), "application/x-npy", raw_headers=headers)
    if p.format == "png":
        from anystep.core.render import samples_png

        png = await asyncio.to_thread(samples_png, result.x)
        return BytesResponse(png, "image/png", raw_headers=headers)
    body_out = {
        "model": m.name,
        "kind": m.kind,
        "steps": result.steps,
        "nfe": nfe,
        "seed": p.seed,
        "n": p.n,
        "shape": list(x_units.shape),
        "samples": np.ascontiguousarray(x_units, dtype=np.float32),
        "solver": p.solver,
        "grid": None if adaptive else spec.grid,
        "timing_ms": timing,
        "chosen_by_budget": chosen,
    }
    if m.translation:  # what was mapped: the client's sources, or those drawn from the seed
        body_out["source"] = np.ascontiguousarray(m.source_units.to_units(x0), dtype=np.float32)
    if job_cond:
        body_out["class"] = job_cond["y"].tolist()
        body_out["guidance"] = cond.w.tolist() if cond.w is not None else None
    return json_response(body_out, raw_headers=headers)


async def encode(request: Request, state: Any) -> Response:
    """``POST /encode``: data -> base samples with the inverse map ``X_{1,0}`` (JSON or ``.npy`` body)."""
    t0 = time.perf_counter()
    config = state.config
    raw, ctype = await read_body(request, config.max_body_bytes)
    if ctype in NPY_TYPES:
        params = parse_query(query_items(request), tuple(f for f in ENCODE_FIELDS if f != "x"))
        x = parse_npy(raw)
    else:
        body = parse_json_body(raw)
        if request.query_params:
            raise ApiError(
                422,
                "unknown_field",
                'encode takes a JSON body {"model", "x", "steps"} (or a .npy body with the parameters in the query)',
                next(iter(request.query_params.keys()))[:100],
            )
        x = body.pop("x", None)
        params = drop_nulls(body, ENCODE_FIELDS)
    p = validate_encode(params, x, state.models)
    m = p.model
    request.scope["anystep.labels"] = (m.name, p.spec.steps)
    state.check_ready(m)
    job = Job(x=p.x1, grid=p.spec.grid[::-1].copy(), method="flowmap", tag=m.name)
    result = await run_job(request, m, job, config.request_timeout_s, state.watchdog)
    return json_response(
        {
            "model": m.name,
            "z": np.ascontiguousarray(result.x, dtype=np.float32),
            "shape": list(result.x.shape),
            "steps": result.steps,
            "nfe": result.nfe,
            "timing_ms": _timing(t0, result),
        }
    )
