"""The closed-loop load generator of the serving benchmarks (one harness, one client).

:mod:`anystep.benchmarks.load`, :mod:`~anystep.benchmarks.load_ray`,
:mod:`~anystep.benchmarks.load_triton` and :mod:`~anystep.benchmarks.load_nfe` all
drive servers with these pieces, so their figures are measured the same way:

* :class:`LoopbackClient`: a minimal HTTP/1.1 keep-alive client on asyncio streams,
  127.0.0.1 only (little CPU next to the server on a small machine);
* :func:`closed_loop`: ``c`` connections, each sending its next request when the
  previous one is answered, bounded by a request count and a time limit; what one
  request is (one ``POST /generate``, or a client-side loop of K Triton calls) is a
  coroutine passed in; :func:`run_phase` is it for ``anystep serve``;
* :func:`summarize_phase`: p50 / p95 / p99 latency, requests/s, samples/s,
  evaluations/s and errors of a phase;
* :func:`parse_prometheus` / :func:`histogram_delta` / :func:`scrape`: ``/metrics``
  deltas over a phase (engine batch sizes, busy time).

In-process timing (medians of interleaved calls) is :mod:`anystep.benchmarks.timing`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anystep.benchmarks.timing import percentile
from anystep.errors import AnystepError

__all__ = [
    "LOOPBACK",
    "EmptyResponse",
    "LoadBenchError",
    "LoopbackClient",
    "PhaseResult",
    "RequestRecord",
    "RequestSpec",
    "closed_loop",
    "generate_body",
    "histogram_delta",
    "make_requests",
    "parse_prometheus",
    "run_phase",
    "scrape",
    "server_timing",
    "summarize_phase",
]

LOOPBACK = "127.0.0.1"


class LoadBenchError(AnystepError):
    """Invalid load-benchmark options; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# loopback HTTP client
# --------------------------------------------------------------------------------------

class LoopbackClient:
    """A minimal HTTP/1.1 keep-alive client for ``127.0.0.1`` only (one connection).

    Sends a request and reads the status line, the headers and a ``Content-Length``
    (or chunked) body. Reconnects once when the server closed an idle connection.

    Args:
        port: TCP port on 127.0.0.1.
        timeout_s: per-request timeout.
    """

    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        if not (0 < int(port) < 65536):
            raise LoadBenchError(f"port must lie in 1..65535, got {port}")
        self.host = LOOPBACK
        self.port = int(port)
        self.timeout_s = float(timeout_s)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        w, self._reader, self._writer = self._writer, None, None
        if w is not None:
            w.close()
            try:
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def request(self, method: str, path: str, body: bytes | None = None,
                      content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns ``(status, headers (lower-case names), body)``.

        Args:
            method: ``GET`` or ``POST``.
            path: request target, e.g. ``/generate``.
            body: request body (sent with ``Content-Length``).
            content_type: its media type.
            headers: extra request headers (e.g. Triton's ``Inference-Header-Content-Length``).
        """
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        raw = head.encode() + b"\r\n" + (body or b"")
        for attempt in (0, 1):
            if self._writer is None:
                await self._connect()
            try:
                return await asyncio.wait_for(self._exchange(raw), self.timeout_s)
            except (ConnectionError, asyncio.IncompleteReadError, EmptyResponse):
                await self.close()
                if attempt == 1:
                    raise
            except BaseException:
                await self.close()
                raise
        raise ConnectionError("unreachable")  # pragma: no cover

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(raw)
        await self._writer.drain()
        line = await self._reader.readline()
        if not line:
            raise EmptyResponse("the server closed the connection")
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"malformed status line {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            h = await self._reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            data = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self._reader.readline()
                    break
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            data = b"".join(chunks)
        else:
            data = await self._reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, data


class EmptyResponse(ConnectionError):
    """The server closed a kept-alive connection before answering (retried once)."""



# --------------------------------------------------------------------------------------
# Prometheus text
# --------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text exposition into ``{(name, sorted labels): value}``.

    Comment lines and malformed lines are skipped.
    """
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def _select(samples: dict, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def histogram_delta(before: dict, after: dict, name: str, **labels: str) -> dict[str, Any]:
    """Per-bucket counts of a Prometheus histogram between two scrapes.

    Args:
        before, after: outputs of :func:`parse_prometheus`.
        name: histogram name without suffix, e.g. ``"anystep_engine_batch_size"``.
        labels: label filter, e.g. ``model="checkerboard"``.

    Returns:
        ``{"buckets": [{"le": upper bound, "count": observations in (previous le, le]}],
        "count": observations, "sum": their sum, "mean": sum / count (None if 0)}``.
    """
    def cum(samples: dict) -> dict[float, float]:
        out: dict[float, float] = {}
        for lab, v in _select(samples, name + "_bucket", **labels).items():
            le = dict(lab).get("le")
            if le is not None:
                out[math.inf if le == "+Inf" else float(le)] = out.get(math.inf if le == "+Inf" else float(le), 0) + v
        return out

    def total(suffix: str, samples: dict) -> float:
        return float(sum(_select(samples, name + suffix, **labels).values()))

    b, a = cum(before), cum(after)
    les = sorted(set(a) | set(b))
    buckets, prev = [], 0.0
    for le in les:
        c = a.get(le, 0.0) - b.get(le, 0.0)
        buckets.append({"le": le, "count": round(c - prev)})
        prev = c
    count = total("_count", after) - total("_count", before)
    s = total("_sum", after) - total("_sum", before)
    return {"buckets": buckets, "count": round(count), "sum": s, "mean": (s / count) if count > 0 else None}


# --------------------------------------------------------------------------------------
# load phases
# --------------------------------------------------------------------------------------


@dataclass
class RequestSpec:
    """One request of a phase: ``steps`` and ``seed`` (``n`` is shared)."""

    steps: int
    seed: int


def make_requests(count: int, steps_mix: Sequence[int], seed: int) -> list[RequestSpec]:
    """``count`` requests with ``steps`` drawn uniformly from ``steps_mix`` (``numpy`` RNG ``seed``)."""
    rng = np.random.default_rng(seed)
    mix = np.asarray(list(steps_mix), dtype=np.int64)
    ks = rng.choice(mix, size=int(count))
    return [RequestSpec(steps=int(k), seed=int(seed) * 1_000_003 + i) for i, k in enumerate(ks)]


@dataclass
class RequestRecord:
    """What one request returned.

    Attributes:
        steps: steps asked for.
        status: HTTP status (0 for a client-side failure such as a timeout).
        latency_s: client-side wall time.
        server_ms: the server's ``{"total", "queue", "compute"}`` (from X-Anystep-* headers).
        error: exception name for status 0.
    """

    steps: int
    status: int
    latency_s: float
    server_ms: dict[str, float] | None = None
    error: str | None = None


@dataclass
class PhaseResult:
    """Outcome of one closed-loop phase.

    Attributes:
        concurrency: workers (connections).
        wall_s: from the first request sent to the last answer.
        records: every request sent.
        stopped_by_time: the time limit stopped the phase before all requests went out.
    """

    concurrency: int
    wall_s: float
    records: list[RequestRecord]
    stopped_by_time: bool = False




def server_timing(headers: dict[str, str]) -> dict[str, float] | None:
    """The server's ``{"total", "queue", "compute"}`` ms from ``X-Anystep-*`` headers, or None."""
    try:
        return {"total": float(headers["x-anystep-time-ms"]), "queue": float(headers["x-anystep-queue-ms"]),
                "compute": float(headers["x-anystep-compute-ms"])}
    except (KeyError, ValueError):
        return None


def generate_body(model: str, steps: int | None, n: int, seed: int, fmt_: str, **extra: Any) -> bytes:
    """The JSON body of ``POST /generate`` (``steps=None`` is left out, e.g. for ``solver="dopri5"``).

    ``extra``: more fields, e.g. ``solver="dopri5", rtol=1e-5``.
    """
    body = {"model": model, "steps": steps, "n": n, "seed": seed, "format": fmt_, **extra}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


OneRequest = Callable[["LoopbackClient", int], Awaitable[RequestRecord]]
"""``send(client, i)``: request ``i`` of a phase over a worker's connection, as a record."""


async def closed_loop(port: int, count: int, send: OneRequest, *, concurrency: int, time_limit_s: float = 30.0,
                      timeout_s: float = 60.0, steps: Sequence[int] | None = None) -> PhaseResult:
    """Requests ``0 .. count-1`` over ``concurrency`` keep-alive connections (closed loop).

    Each worker sends its next request when the previous one is answered; no request
    is sent after ``time_limit_s`` (those in flight finish). A request that raises a
    network error (or times out after ``timeout_s``) is recorded with status 0.

    Args:
        port: TCP port on 127.0.0.1.
        count: requests in the phase.
        send: ``await send(client, i)`` performs request ``i`` and returns its record
            (its ``latency_s`` is replaced by the wall time measured here).
        concurrency: workers (connections).
        time_limit_s: wall-time bound of the phase.
        timeout_s: per-HTTP-exchange timeout of the client.
        steps: ``steps[i]`` of request ``i`` (recorded on client-side failures).

    Returns:
        :class:`PhaseResult` with one record per request sent.
    """
    if concurrency < 1:
        raise LoadBenchError("concurrency must be >= 1")
    next_i = 0
    records: list[RequestRecord] = []
    stopped = False
    t_start = time.perf_counter()
    deadline = t_start + time_limit_s

    async def worker() -> None:
        nonlocal next_i, stopped
        client = LoopbackClient(port, timeout_s=timeout_s)
        try:
            while next_i < count:
                if time.perf_counter() >= deadline:
                    stopped = True
                    return
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    rec = await send(client, i)
                    rec.latency_s = time.perf_counter() - t0
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    rec = RequestRecord(steps=steps[i] if steps is not None else 0, status=0,
                                        latency_s=time.perf_counter() - t0, error=type(e).__name__)
                records.append(rec)
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return PhaseResult(concurrency=concurrency, wall_s=time.perf_counter() - t_start, records=records,
                       stopped_by_time=stopped)


async def run_phase(port: int, model: str, requests: Sequence[RequestSpec], *, concurrency: int, n: int = 1,
                    time_limit_s: float = 30.0, fmt_: str = "json", timeout_s: float = 60.0,
                    empty: bool = False) -> PhaseResult:
    """``POST /generate`` of ``requests`` against ``anystep serve`` in a :func:`closed_loop`.

    ``empty=True`` sends ``GET /healthz`` instead (the same number of requests): the HTTP
    ceiling, what the server answers when no model work is done.

    Returns:
        :class:`PhaseResult` with one record per request sent.
    """
    bodies = [generate_body(model, r.steps, n, r.seed, fmt_) for r in requests]

    async def send(client: LoopbackClient, i: int) -> RequestRecord:
        k = requests[i].steps
        if empty:
            status, _, _ = await client.request("GET", "/healthz")
            return RequestRecord(steps=k, status=status, latency_s=0.0)
        status, headers, _ = await client.request("POST", "/generate", bodies[i])
        return RequestRecord(steps=k, status=status, latency_s=0.0,
                             server_ms=server_timing(headers) if status == 200 else None)

    return await closed_loop(port, len(bodies), send, concurrency=concurrency, time_limit_s=time_limit_s,
                             timeout_s=timeout_s, steps=[r.steps for r in requests])


def summarize_phase(ph: PhaseResult, n: int) -> dict[str, Any]:
    """Latency percentiles, throughput and errors of a phase (``n`` samples per request)."""
    ok = [r for r in ph.records if r.status == 200]
    errors: dict[str, int] = {}
    for r in ph.records:
        if r.status != 200:
            key = str(r.status) if r.status else (r.error or "client error")
            errors[key] = errors.get(key, 0) + 1
    out: dict[str, Any] = {
        "concurrency": ph.concurrency,
        "sent": len(ph.records),
        "ok": len(ok),
        "errors": errors,
        "error_count": sum(errors.values()),
        "wall_s": ph.wall_s,
        "stopped_by_time": ph.stopped_by_time,
        "requests_per_s": len(ok) / ph.wall_s if ph.wall_s > 0 else None,
        "evals_per_s": sum(r.steps * n for r in ok) / ph.wall_s if ph.wall_s > 0 else None,
        "samples_per_s": len(ok) * n / ph.wall_s if ph.wall_s > 0 else None,
    }
    if ok:
        ms = np.array([r.latency_s for r in ok]) * 1000.0
        out.update(p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95), p99_ms=percentile(ms, 99),
                   mean_ms=float(ms.mean()))
        per_steps = {}
        for k in sorted({r.steps for r in ok}):
            v = np.array([r.latency_s for r in ok if r.steps == k]) * 1000.0
            per_steps[k] = {"n": int(v.size), "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
        out["per_steps"] = per_steps
        st = [r.server_ms for r in ok if r.server_ms]
        if st:
            out["server_ms_p50"] = {k: percentile([s[k] for s in st], 50) for k in ("total", "queue", "compute")}
    return out


async def scrape(port: int, path: str = "/metrics") -> dict:
    """GET a Prometheus endpoint on 127.0.0.1 and parse it (:func:`parse_prometheus`)."""
    c = LoopbackClient(port)
    try:
        status, _, body = await c.request("GET", path)
    finally:
        await c.close()
    if status != 200:
        raise LoadBenchError(f"{path} answered {status}")
    return parse_prometheus(body.decode("utf-8", "replace"))
