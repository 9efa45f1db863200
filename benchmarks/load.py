"""Serving under load: a bounded loopback load generator against ``anystep serve``.

For each flow-map model it starts ``anystep serve`` in a subprocess on a free port of
127.0.0.1 (never anything else), once with step-level batching
(:mod:`anystep.server.scheduler`) and once with ``--no-batching``, and measures::

    python -m anystep.benchmarks.load            # full run (a few minutes)
    python -m anystep.benchmarks.load --quick    # about a minute, a smoke run

1. **Latency probe**: ``POST /generate`` with ``steps=1, n=1`` one at a time,
   interleaved with a bare engine call (:mod:`anystep.server.engines`, the same
   engine type and thread count as the server, in this process) on one sample: the
   median served latency over the bare call's (goal: <= 2x). The server's own
   ``timing_ms`` (total / queue / compute) splits the served time into HTTP,
   request handling and engine compute.
2. **Load phases** at concurrency 1, 8, 64: a fixed list of requests (``n`` samples,
   ``steps`` drawn from {1, 2, 4, 8} with a fixed seed) sent by ``c`` keep-alive
   connections, each sending its next request when the previous one is answered
   (closed loop), bounded by a request count and a time limit. Reported: p50 / p95 /
   p99 latency (client side), throughput (requests/s and network evaluations/s,
   ``sum n x steps / wall``), errors by status, and the engine batch-size histogram
   and engine busy time read from ``/metrics`` (deltas over the phase).
3. **Raw batched engine throughput**: the bare engine on batches of ``c x n`` rows with
   random per-row ``(s, t)`` (what the scheduler builds), interleaved over batch sizes;
   the served evaluations/s of a phase over this is the *served/raw ratio*
   (goal at concurrency 64 with batching: >= 70%).

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams
(:class:`LoopbackClient`), so the load generator spends little CPU next to the
server on a small machine. Results: ``benchmarks/results/load.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.common import (
    NOTES_BEGIN,
    NOTES_END,
    command_line,
    existing_notes,
    fmt,
    load_average,
    machine_info,
    markdown_table,
    versions,
    write_results,
)
from anystep.benchmarks.timing import interleaved_timing, percentile, summarize
from anystep.errors import AnystepError

__all__ = [
    "QUICK",
    "LoadBenchError",
    "LoadSettings",
    "LoopbackClient",
    "PhaseResult",
    "build_parser",
    "histogram_delta",
    "main",
    "make_requests",
    "parse_prometheus",
    "run",
    "run_phase",
]

MODULE = "anystep.benchmarks.load"
REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
GOAL_LATENCY_RATIO = 2.0
GOAL_THROUGHPUT_RATIO = 0.7


class LoadBenchError(AnystepError):
    """Invalid load-benchmark options; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


@dataclass
class LoadSettings:
    """Everything that determines a load run (written to the results JSON).

    Attributes:
        models: flow-map model names served (``<models_dir>/<name>``), one at a time.
        models_dir: folder of model directories.
        engine: server engine (``torch`` or ``onnx``).
        concurrency: closed-loop concurrency levels.
        steps_mix: the ``steps`` values requests draw from (uniformly).
        n_values: samples per request; every concurrency runs once per value (``n = 1``
            exposes the per-request overhead, a larger ``n`` the batching of compute).
        requests: ``{concurrency: request count}`` bound of each phase.
        time_limit_s: wall-time bound of each phase (no new request after it).
        warmup_requests: unrecorded requests per phase before measuring (times concurrency).
        probe_pairs: (bare call, served request) pairs of the latency probe.
        raw_rounds: interleaved rounds of the raw engine measurement.
        threads: intra-op threads of the server's engine and of the bare engine.
        max_batch: the server's ``--max-batch``.
        batching_modes: ``("on", "off")`` or a subset.
        format: response format asked for (``json`` or ``npy``).
        seed: seed of the request mix.
        profile: sample the server with py-spy during a sequential probe and the busiest
            batching phase (skipped with the reason when py-spy is missing or not permitted).
        quick: smoke run.
    """

    models: tuple[str, ...] = ("checkerboard", "digits")
    models_dir: Path = REPO_ROOT / "models"
    engine: str = "torch"
    concurrency: tuple[int, ...] = (1, 8, 64)
    steps_mix: tuple[int, ...] = (1, 2, 4, 8)
    n_values: tuple[int, ...] = (1, 64)
    requests: dict[int, int] = field(default_factory=lambda: {1: 300, 8: 800, 64: 2000})
    time_limit_s: float = 30.0
    warmup_requests: int = 2
    probe_pairs: int = 200
    raw_rounds: int = 15
    threads: int = 1
    max_batch: int = 256
    batching_modes: tuple[str, ...] = ("on", "off")
    format: str = "json"
    seed: int = 0
    profile: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise LoadBenchError(msg)

        need(len(self.models) > 0, "--models needs at least one flow-map name, e.g. checkerboard")
        need(self.engine in ("torch", "onnx"), f"--engine must be torch or onnx, got {self.engine!r}")
        need(len(self.concurrency) > 0 and all(c >= 1 for c in self.concurrency),
             f"--concurrency must be integers >= 1, got {self.concurrency}")
        need(max(self.concurrency) <= 512, "--concurrency above 512 is not supported (one socket per worker)")
        need(len(self.steps_mix) > 0 and all(k >= 1 for k in self.steps_mix), "--steps-mix must be integers >= 1")
        need(len(self.n_values) > 0 and all(1 <= n <= 256 for n in self.n_values),
             f"-n values must lie in 1..256, got {self.n_values}")
        need(0 < self.time_limit_s <= 600, f"--time-limit must lie in (0, 600] seconds, got {self.time_limit_s}")
        need(all(self.requests.get(c, 0) >= 1 for c in self.concurrency),
             "every concurrency needs a request count >= 1")
        need(all(v <= 100_000 for v in self.requests.values()), "request counts are capped at 100,000 per phase")
        need(self.probe_pairs >= 1 and self.raw_rounds >= 1, "probe pairs and raw rounds must be >= 1")
        need(set(self.batching_modes) <= {"on", "off"} and len(self.batching_modes) > 0,
             "--batching must be on, off or on,off")
        need(self.format in ("json", "npy"), "--format must be json or npy")
        need(self.threads >= 1, "--threads must be >= 1")


QUICK: dict[str, Any] = {
    "models": ("checkerboard",),
    "requests": {1: 40, 8: 120, 64: 320},
    "time_limit_s": 10.0,
    "warmup_requests": 1,
    "probe_pairs": 40,
    "raw_rounds": 4,
    "n_values": (1, 16),
    "profile": False,
}
"""Overrides of ``--quick``."""


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
                      content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns ``(status, headers (lower-case names), body)``."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
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


def _server_timing(headers: dict[str, str]) -> dict[str, float] | None:
    try:
        return {"total": float(headers["x-anystep-time-ms"]), "queue": float(headers["x-anystep-queue-ms"]),
                "compute": float(headers["x-anystep-compute-ms"])}
    except (KeyError, ValueError):
        return None


def _body(model: str, steps: int, n: int, seed: int, fmt_: str) -> bytes:
    return json.dumps({"model": model, "steps": steps, "n": n, "seed": seed, "format": fmt_}).encode()


async def run_phase(port: int, model: str, requests: Sequence[RequestSpec], *, concurrency: int, n: int = 1,
                    time_limit_s: float = 30.0, fmt_: str = "json", timeout_s: float = 60.0,
                    empty: bool = False) -> PhaseResult:
    """Send ``requests`` over ``concurrency`` keep-alive connections (closed loop), bounded in time.

    Each worker sends its next request when the previous one is answered; no request
    is sent after ``time_limit_s`` (those in flight finish, up to ``timeout_s``).
    ``empty=True`` sends ``GET /healthz`` instead of ``POST /generate`` (the same number
    of requests): the HTTP ceiling, what the server answers when no model work is done.

    Returns:
        :class:`PhaseResult` with one record per request sent.
    """
    if concurrency < 1:
        raise LoadBenchError("concurrency must be >= 1")
    bodies = [(r.steps, _body(model, r.steps, n, r.seed, fmt_)) for r in requests]
    next_i = 0
    records: list[RequestRecord] = []
    stopped = False
    t_start = time.perf_counter()
    deadline = t_start + time_limit_s

    async def worker() -> None:
        nonlocal next_i, stopped
        client = LoopbackClient(port, timeout_s=timeout_s)
        try:
            while True:
                if next_i >= len(bodies):
                    return
                if time.perf_counter() >= deadline:
                    stopped = True
                    return
                steps, body = bodies[next_i]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    if empty:
                        status, headers, _ = await client.request("GET", "/healthz")
                    else:
                        status, headers, _ = await client.request("POST", "/generate", body)
                    rec = RequestRecord(steps=steps, status=status, latency_s=time.perf_counter() - t0,
                                        server_ms=_server_timing(headers) if status == 200 and not empty
                                        else None)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    rec = RequestRecord(steps=steps, status=0, latency_s=time.perf_counter() - t0,
                                        error=type(e).__name__)
                records.append(rec)
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return PhaseResult(concurrency=concurrency, wall_s=time.perf_counter() - t_start, records=records,
                       stopped_by_time=stopped)


def summarize_phase(ph: PhaseResult, n: int) -> dict[str, Any]:
    """Latency percentiles, throughput and errors of a phase."""
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


# --------------------------------------------------------------------------------------
# the bare engine
# --------------------------------------------------------------------------------------


def build_bare_engine(model_dir: Path, settings: LoadSettings, cache_dir: Path) -> Any:
    """The engine the server builds for ``model_dir`` (same type, threads), in this process."""
    from anystep.core.modeldir import read_config
    from anystep.server.engines import EngineOptions, build_engine

    cfg = read_config(model_dir)
    if cfg.kind != "flowmap":
        raise LoadBenchError(f"{model_dir} holds a {cfg.kind} model; the load benchmark serves flow maps")
    opts = EngineOptions(threads=settings.threads, cache_dir=cache_dir, max_batch=settings.max_batch,
                         onnx_providers=["CPUExecutionProvider"])
    return build_engine(settings.engine, model_dir.name, model_dir, cfg, opts)


def raw_throughput(engine: Any, batch_sizes: Sequence[int], rounds: int, seed: int = 0) -> dict[int, dict[str, Any]]:
    """Engine evaluations per second on batches of random rows with random per-row ``(s, t)``.

    Returns:
        ``{batch: {"latency": LatencyStats, "evals_per_s": batch / median}}``.
    """
    import torch

    torch.set_num_threads(max(1, getattr(engine, "threads", None) or 1))
    rng = np.random.default_rng(seed)
    fns = {}
    for b in batch_sizes:
        x = rng.standard_normal((b, *engine.data_shape)).astype(np.float32)
        s = rng.uniform(0.0, 0.9, b).astype(np.float32)
        t = np.minimum(1.0, s + rng.choice([1.0, 0.5, 0.25, 0.125], b)).astype(np.float32)
        fns[str(b)] = (lambda x=x, s=s, t=t: engine.step(x, s, t))
    res = interleaved_timing(fns, rounds=rounds, warmup=2, block_s=0.05, seed=seed)
    out = {}
    for b in batch_sizes:
        st = summarize(res.seconds[str(b)])
        out[b] = {"latency": st, "evals_per_s": b / (st.median_ms / 1000.0)}
    return out


async def latency_probe(port: int, model: str, engine: Any, pairs: int, fmt_: str) -> dict[str, Any]:
    """Served ``steps=1, n=1`` against a bare engine call on one sample, interleaved.

    Each round times, in a rotating order, one bare ``engine.step`` on one sample in
    this process, one ``POST /generate`` (steps=1, n=1) and one ``GET /healthz`` (the
    HTTP floor: uvicorn, the framework and this client, no handler work).

    Returns:
        ``{"served", "bare", "healthz": LatencyStats, "ratio_p50", "server_ms_p50": {...},
        "breakdown_ms": {...}}`` where the breakdown splits the served median into engine
        compute, queueing, the rest of the handler (validation, base noise, thread
        hand-offs, encoding) and HTTP (client-side time outside the handler).
    """
    x = np.random.default_rng(1).standard_normal((1, *engine.data_shape)).astype(np.float32)
    s, t = np.zeros(1, np.float32), np.ones(1, np.float32)
    client = LoopbackClient(port)
    served: list[float] = []
    bare: list[float] = []
    health: list[float] = []
    server: list[dict[str, float]] = []

    async def one(which: int, i: int) -> None:
        if which == 0:
            t0 = time.perf_counter()
            engine.step(x, s, t)
            bare.append(time.perf_counter() - t0)
        elif which == 1:
            t0 = time.perf_counter()
            status, headers, _ = await client.request("POST", "/generate", _body(model, 1, 1, 1000 + i, fmt_))
            dt = time.perf_counter() - t0
            if status != 200:
                raise LoadBenchError(f"latency probe: /generate answered {status}")
            served.append(dt)
            st = _server_timing(headers)
            if st:
                server.append(st)
        else:
            t0 = time.perf_counter()
            status, _, _ = await client.request("GET", "/healthz")
            if status != 200:
                raise LoadBenchError(f"latency probe: /healthz answered {status}")
            health.append(time.perf_counter() - t0)

    try:
        for i in range(3):  # warm-up
            engine.step(x, s, t)
            await client.request("POST", "/generate", _body(model, 1, 1, i, fmt_))
            await client.request("GET", "/healthz")
        for i in range(pairs):
            for j in range(3):
                await one((i + j) % 3, i)
    finally:
        await client.close()
    out: dict[str, Any] = {"served": summarize(served), "bare": summarize(bare), "healthz": summarize(health)}
    out["ratio_p50"] = out["served"].median_ms / out["bare"].median_ms
    if server:
        sm = {k: percentile([v[k] for v in server], 50) for k in ("total", "queue", "compute")}
        out["server_ms_p50"] = sm
        out["breakdown_ms"] = {
            "engine compute (server-reported)": sm["compute"],
            "queue (submit to first tick)": sm["queue"],
            "rest of the handler (validate, noise, thread hand-offs, encode)": max(
                0.0, sm["total"] - sm["compute"] - sm["queue"]),
            "HTTP: uvicorn, framework, client (served - server total)": max(
                0.0, out["served"].median_ms - sm["total"]),
        }
    return out


async def _scrape(port: int) -> dict:
    c = LoopbackClient(port)
    try:
        status, _, body = await c.request("GET", "/metrics")
    finally:
        await c.close()
    if status != 200:
        raise LoadBenchError(f"/metrics answered {status}")
    return parse_prometheus(body.decode("utf-8", "replace"))


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine call (torch / ONNX Runtime compute)", ("server/engines.py",)),
    ("scheduler (batch assembly, per-sample bookkeeping)", ("server/scheduler.py",)),
    ("base noise (registry.base_samples)", ("server/registry.py",)),
    ("metrics (prometheus_client)", ("server/metrics.py", "prometheus_client/")),
    ("request handler (parse, validate, encode response)", ("server/app.py", "server/schemas.py", "pydantic")),
    ("FastAPI / Starlette framework", ("fastapi/", "starlette/")),
    ("uvicorn HTTP protocol", ("uvicorn/", "h11/", "httptools")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)
"""Ordered rules assigning a sampled stack to the first category one of whose patterns it contains."""


def py_spy_path() -> str | None:
    """The ``py-spy`` executable (beside this Python, or on PATH), or None."""
    import shutil

    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.is_file() else shutil.which("py-spy")


def categorize_stacks(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Summarise py-spy ``--format raw`` (collapsed stacks) output.

    Args:
        collapsed: lines ``frame;frame;...;leaf count`` (root first).
        top: leaf functions kept.

    Returns:
        ``{"samples": total, "categories": {name: share}, "top_self": [{"frame", "share"}]}``;
        shares are fractions of the samples (py-spy samples only non-idle threads by default).
    """
    total = 0
    cats: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, cnt = line.rstrip().rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        c = int(cnt)
        total += c
        name = "other"
        for cat, pats in PROFILE_CATEGORIES:
            if any(p in stack for p in pats):
                name = cat
                break
        cats[name] = cats.get(name, 0) + c
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + c
    if total == 0:
        return {"samples": 0, "categories": {}, "top_self": []}
    return {
        "samples": total,
        "categories": {k: v / total for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_self": [{"frame": k, "share": v / total} for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]],
    }


class PySpy:
    """``py-spy record`` on a process while a block of work runs (collapsed stacks, 200 Hz)."""

    def __init__(self, pid: int, out_path: Path, max_seconds: float) -> None:
        self.pid, self.out_path, self.max_seconds = int(pid), out_path, max_seconds
        self.proc: Any = None
        self.error: str | None = None

    def start(self) -> None:
        import subprocess

        exe = py_spy_path()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return
        self.out_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw", "--nonblocking",
             "--duration", str(math.ceil(self.max_seconds)), "--output", str(self.out_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)  # let it attach
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            self.error = f"py-spy exited: {out.strip()[-300:]}"
            self.proc = None

    def stop(self) -> dict[str, Any] | None:
        import signal
        import subprocess

        if self.proc is None:
            return {"error": self.error} if self.error else None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            text = self.out_path.read_text(errors="replace")
        except OSError as e:
            return {"error": f"py-spy wrote no profile: {e}"}
        out = categorize_stacks(text)
        out["collapsed_stacks"] = str(self.out_path)
        return out


async def _profile_sequential(port: int, pid: int, model: str, seconds: float, fmt_: str,
                              out_path: Path) -> dict[str, Any] | None:
    """py-spy on the server while steps=1, n=1 requests go one at a time for ``seconds``."""
    spy = PySpy(pid, out_path, seconds + 5)
    await asyncio.to_thread(spy.start)
    if spy.proc is None:
        return spy.stop()
    client = LoopbackClient(port)
    sent = 0
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await client.request("POST", "/generate", _body(model, 1, 1, 5000 + sent, fmt_))
            sent += 1
    finally:
        await client.close()
    res = await asyncio.to_thread(spy.stop)
    if res is not None:
        res["requests"] = sent
    return res


async def _serve_and_load(model: str, model_dir: Path, settings: LoadSettings, batching: bool, engine: Any,
                          work_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from anystep.server.testing import ServerProcess

    max_c = max(settings.concurrency)
    mode = "batching" if batching else "no-batching"
    args = ["--engine", settings.engine, "--threads", str(settings.threads), "--max-batch", str(settings.max_batch),
            "--max-queue", str(max(64, 2 * max_c)), "--max-n", str(max(256, max(settings.n_values))),
            "--max-compute", str(max(65536, max(settings.n_values) * max(settings.steps_mix))),
            "--log-level", "warning", "--cache-dir", str(work_dir / "serve-cache")]
    if not batching:
        args.append("--no-batching")
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"serve-{model}-{mode}.log"
    log_path.unlink(missing_ok=True)
    srv = ServerProcess(models={model: model_dir}, args=args, log_path=log_path, ready_timeout=300.0)
    log(f"[{model}] starting anystep serve on 127.0.0.1 ({mode}, engine {settings.engine})")
    await asyncio.to_thread(srv.start)
    out: dict[str, Any] = {"batching": batching, "server_log": str(log_path), "phases": [], "profiles": {}}
    try:
        probe = await latency_probe(srv.port, model, engine, settings.probe_pairs, settings.format)
        out["probe"] = probe
        log(f"[{model}] probe: served p50 {probe['served'].median_ms:.3f} ms vs bare engine "
            f"{probe['bare'].median_ms:.3f} ms ({probe['ratio_p50']:.2f}x)")
        if settings.profile and batching:
            log(f"[{model}] py-spy: sequential steps=1, n=1 requests")
            out["profiles"]["sequential steps=1, n=1"] = await _profile_sequential(
                srv.port, srv.proc.pid, model, 4.0, settings.format, work_dir / f"pyspy-{model}-sequential.txt")
        if batching:
            out["http_ceiling"] = {}
            for c in settings.concurrency:
                reqs = make_requests(settings.requests[c], settings.steps_mix, settings.seed + c)
                ph = await run_phase(srv.port, model, reqs, concurrency=c, time_limit_s=settings.time_limit_s,
                                     empty=True)
                hs = summarize_phase(ph, 1)
                out["http_ceiling"][c] = {"requests_per_s": hs["requests_per_s"], "p50_ms": hs.get("p50_ms"),
                                          "ok": hs["ok"], "sent": hs["sent"]}
                log(f"[{model}] HTTP ceiling (GET /healthz) c={c}: {fmt(hs['requests_per_s'])} req/s")
        for n in settings.n_values:
            for c in settings.concurrency:
                warm = make_requests(settings.warmup_requests * c, settings.steps_mix, settings.seed + 999)
                await run_phase(srv.port, model, warm, concurrency=c, n=n, time_limit_s=settings.time_limit_s,
                                fmt_=settings.format)
                reqs = make_requests(settings.requests[c], settings.steps_mix, settings.seed + c)
                spy = None
                if settings.profile and batching and c == max_c:
                    spy = PySpy(srv.proc.pid, work_dir / f"pyspy-{model}-c{c}-n{n}.txt", settings.time_limit_s + 5)
                    await asyncio.to_thread(spy.start)
                before = await _scrape(srv.port)
                ph = await run_phase(srv.port, model, reqs, concurrency=c, n=n,
                                     time_limit_s=settings.time_limit_s, fmt_=settings.format)
                after = await _scrape(srv.port)
                if spy is not None:
                    out["profiles"][f"concurrency {c}, n={n}"] = await asyncio.to_thread(spy.stop)
                summ = summarize_phase(ph, n)
                summ["n"] = n
                summ["batch_size"] = histogram_delta(before, after, "anystep_engine_batch_size", model=model)
                eng = histogram_delta(before, after, "anystep_engine_call_seconds", model=model)
                summ["engine_calls"] = eng["count"]
                summ["engine_busy_s"] = eng["sum"]
                summ["engine_busy_fraction"] = eng["sum"] / ph.wall_s if ph.wall_s > 0 else None
                summ["engine_call_mean_ms"] = 1000.0 * eng["mean"] if eng["mean"] is not None else None
                out["phases"].append(summ)
                log(f"[{model}] {mode} n={n} c={c}: {summ['ok']}/{summ['sent']} ok in {ph.wall_s:.1f} s, "
                    f"p50 {fmt(summ.get('p50_ms'))} ms, p99 {fmt(summ.get('p99_ms'))} ms, "
                    f"{fmt(summ['requests_per_s'])} req/s, mean batch {fmt(summ['batch_size']['mean'])}")
    finally:
        rc = await asyncio.to_thread(srv.stop)
        out["server_exit_code"] = rc
    return out


def _raw_batch(c: int, n: int, settings: LoadSettings) -> int:
    return min(c * n, settings.max_batch)


def evaluate_goals(results: dict[str, Any], settings: LoadSettings) -> list[dict[str, Any]]:
    """The serving goals of the issue, per model (throughput: for each ``n`` measured)."""
    goals: list[dict[str, Any]] = []
    for model, res in results.items():
        on = res["runs"].get("on")
        if on is None:
            continue
        pr = on["probe"]
        goals.append({"goal": f"served steps=1,n=1 p50 within {GOAL_LATENCY_RATIO:g}x of a bare engine call ({model})",
                      "served_ms": pr["served"].median_ms, "bare_ms": pr["bare"].median_ms,
                      "ratio": pr["ratio_p50"], "met": bool(pr["ratio_p50"] <= GOAL_LATENCY_RATIO)})
        for p in on["phases"]:
            if p["concurrency"] != 64:
                continue
            ratio = p.get("served_raw_ratio")
            goals.append({"goal": f"micro-batched throughput at concurrency 64 >= {GOAL_THROUGHPUT_RATIO:.0%} of raw "
                                  f"batched engine throughput ({model}, n={p['n']} per request)",
                          "served_evals_per_s": p["evals_per_s"], "raw_evals_per_s": p.get("raw_evals_per_s"),
                          "raw_batch": p.get("raw_batch"), "mean_batch": p["batch_size"]["mean"],
                          "ratio": ratio, "met": bool(ratio is not None and ratio >= GOAL_THROUGHPUT_RATIO),
                          "served_ceiling_ratio": p.get("served_ceiling_ratio"),
                          "ceiling_raw_ratio": p.get("ceiling_raw_ratio")})
    return goals


def run(settings: LoadSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Run every model and batching mode; write ``load.{json,md}``.

    Returns:
        The result dict written to ``load.json``.
    """
    import torch

    torch.set_num_threads(settings.threads)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    machine = machine_info()
    results: dict[str, Any] = {}
    for model in settings.models:
        model_dir = Path(settings.models_dir) / model
        if not model_dir.is_dir():
            raise LoadBenchError(f"no model directory {model_dir}; bundle it first or pass --models-dir/--models")
        engine = build_bare_engine(model_dir, settings, work_dir / "serve-cache")
        engine.warmup([1, 8])
        batches = sorted({_raw_batch(c, n, settings) for c in settings.concurrency for n in settings.n_values})
        res: dict[str, Any] = {"model_dir": str(model_dir), "engine": engine.describe(), "runs": {}, "raw": {}}
        raw_samples: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}
        for mode in settings.batching_modes:
            log(f"[{model}] raw engine throughput at batch {batches}")
            for b, r in raw_throughput(engine, batches, settings.raw_rounds, seed=settings.seed).items():
                raw_samples[b].append(r)
            res["runs"][mode] = asyncio.run(_serve_and_load(model, model_dir, settings, mode == "on", engine,
                                                            work_dir, log))
        log(f"[{model}] raw engine throughput at batch {batches} (after)")
        for b, r in raw_throughput(engine, batches, settings.raw_rounds, seed=settings.seed + 1).items():
            raw_samples[b].append(r)
        for b, lst in raw_samples.items():
            eps = [r["evals_per_s"] for r in lst]
            res["raw"][b] = {"evals_per_s": float(np.median(eps)), "evals_per_s_each": eps,
                             "latency": lst[-1]["latency"]}
        for run_res in res["runs"].values():
            for p in run_res["phases"]:
                b = _raw_batch(p["concurrency"], p["n"], settings)
                raw = res["raw"][b]["evals_per_s"]
                p["raw_batch"] = b
                p["raw_evals_per_s"] = raw
                p["served_raw_ratio"] = (p["evals_per_s"] / raw) if p.get("evals_per_s") and raw else None
                ceil = (run_res.get("http_ceiling") or res["runs"].get("on", {}).get("http_ceiling") or {}).get(
                    p["concurrency"])
                if ceil and ceil.get("requests_per_s") and p.get("requests_per_s"):
                    mean_steps = p["evals_per_s"] / (p["n"] * p["requests_per_s"])
                    p["http_ceiling_requests_per_s"] = ceil["requests_per_s"]
                    p["served_ceiling_ratio"] = p["requests_per_s"] / ceil["requests_per_s"]
                    # the best served/raw any scheduler could reach if each request cost only the HTTP floor
                    p["ceiling_raw_ratio"] = min(1.0, ceil["requests_per_s"] * p["n"] * mean_steps / raw) if raw else None
        engine.close()
        results[model] = res
    goals = evaluate_goals(results, settings)
    data = {
        "benchmark": "load",
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "machine": machine,
        "machine_description": machine.describe(),
        "load_average": load_average(),
        "versions": versions(("torch", "numpy", "onnxruntime", "fastapi", "uvicorn", "starlette")),
        "settings": settings,
        "results": results,
        "goals": goals,
    }
    if write:
        md = out_dir / "load.md"
        paths = write_results(out_dir, "load", data, render_markdown(data, existing_notes(md)))
        log(f"[done] {paths.json}, {paths.markdown}")
    return data









def _hist_text(h: dict[str, Any]) -> str:
    parts, lo = [], 0
    for b in h["buckets"]:
        if b["count"]:
            le = b["le"]
            hi = "inf" if math.isinf(le) else int(le)
            parts.append(f"{lo + 1 if lo + 1 != hi else hi}{'' if lo + 1 == hi else f'-{hi}'}: {b['count']}")
        lo = int(b["le"]) if not math.isinf(b["le"]) else lo
    return ", ".join(parts) if parts else "-"


def render_markdown(data: dict[str, Any], notes: str | None = None) -> str:
    """The Markdown report of a result dict produced by :func:`run`."""
    s: LoadSettings = data["settings"]
    lines = [
        "# Serving under load",
        "",
        f"- Command: `{data['command']}`",
        f"- Machine: {data['machine_description']}",
        (f"- Load average at the end (1/5/15 min): {data.get('load_average')} (a shared CPU: the server, the load "
        "generator and other jobs compete for the same cores)."),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v),
        f"- Started {data['started_at']}, took {data['duration_s']:.0f} s.",
        (f"- Server: `anystep serve --engine {s.engine} --threads {s.threads} --max-batch {s.max_batch}` on "
        "127.0.0.1 (free port), with and without `--no-batching`. Requests: `POST /generate` with a JSON body, "
        f"n in {list(s.n_values)}, steps drawn uniformly from {list(s.steps_mix)}, format {s.format}; closed loop (each connection "
        f"sends its next request when answered), at most {dict(s.requests)} requests per phase and "
        f"{s.time_limit_s:g} s; {s.warmup_requests} x concurrency warm-up requests first (not recorded)."),
        ("- Latency is client side (send to last byte). Evals/s = sum of n x steps over answered requests / wall. "
        "Raw = the bare engine in the benchmark process on batches of concurrency x n rows with random per-row "
        "(s, t), median of runs before and after the server phases."),
        "",
    ]
    goals = data.get("goals") or []
    if goals:
        lines += ["## Goals", ""]
        for g in goals:
            mark = "met" if g["met"] else "**missed**"
            if "served_ms" in g:
                detail = (f"served p50 {fmt(g['served_ms'])} ms vs bare engine call {fmt(g['bare_ms'])} ms = "
                          f"{g['ratio']:.2f}x")
            else:
                detail = (f"{fmt(g['served_evals_per_s'])} evals/s served vs raw {fmt(g['raw_evals_per_s'])} evals/s "
                          f"at batch {g['raw_batch']} = {g['ratio']:.1%} (mean served batch {fmt(g['mean_batch'])})"
                          if g["ratio"] is not None else "no data")
                if g.get("ceiling_raw_ratio") is not None:
                    detail += (f"; HTTP ceiling: an empty GET /healthz at the same concurrency would allow at most "
                               f"{g['ceiling_raw_ratio']:.1%} of raw, and /generate ran at "
                               f"{g['served_ceiling_ratio']:.0%} of the empty route's request rate")
            lines.append(f"- {g['goal']}: {mark}. {detail}")
        lines.append("")
    for model, res in data["results"].items():
        lines += [f"## {model}", "", f"- Model: `{res['model_dir']}`; engine: {res['engine']}", ""]
        raw = res["raw"]
        lines += ["Raw batched engine throughput:", "",
                  markdown_table(["batch", "p50 ms / call", "p95 ms / call", "evals/s (median of runs)", "runs"],
                                 [[b, r["latency"].median_ms, r["latency"].p95_ms, r["evals_per_s"],
                                   ", ".join(fmt(v) for v in r["evals_per_s_each"])] for b, r in raw.items()]), ""]
        for mode, run_res in res["runs"].items():
            pr = run_res["probe"]
            sm = pr.get("server_ms_p50") or {}
            lines += [f"### Step-level batching {mode}", "",
                      (f"Latency probe (steps=1, n=1, one request at a time, {pr['served'].n} requests interleaved "
                      f"with bare calls): served p50 {fmt(pr['served'].median_ms)} ms (p95 "
                      f"{fmt(pr['served'].p95_ms)}), bare engine call p50 {fmt(pr['bare'].median_ms)} ms (p95 "
                      f"{fmt(pr['bare'].p95_ms)}): **{pr['ratio_p50']:.2f}x**. Server-reported p50: total "
                      f"{fmt(sm.get('total'))} ms, queue {fmt(sm.get('queue'))} ms, compute {fmt(sm.get('compute'))} ms; "
                      f"an empty `GET /healthz` round trip (the HTTP floor) p50 {fmt(pr['healthz'].median_ms)} ms."), ""]
            if run_res.get("http_ceiling"):
                lines += [("HTTP ceiling: the same closed loop sending an empty `GET /healthz` (no model work), "
                           "the most requests per second this server and client can exchange on this machine:"), "",
                          markdown_table(["concurrency", "req/s", "p50 ms", "ok/sent"],
                                         [[c, h["requests_per_s"], h.get("p50_ms"), f"{h['ok']}/{h['sent']}"]
                                          for c, h in run_res["http_ceiling"].items()]), ""]
            if pr.get("breakdown_ms"):
                lines += [markdown_table(["where the served median goes (p50 of each part)", "ms"],
                                         [[k, v] for k, v in pr["breakdown_ms"].items()]), ""]
            body = []
            for p in run_res["phases"]:
                body.append([p["n"], p["concurrency"], f"{p['ok']}/{p['sent']}", p.get("p50_ms"), p.get("p95_ms"),
                             p.get("p99_ms"), p["requests_per_s"], p["evals_per_s"], p.get("raw_evals_per_s"),
                             p.get("served_raw_ratio"), p.get("served_ceiling_ratio"), p["error_count"],
                             p["batch_size"]["mean"],
                             p.get("engine_call_mean_ms"), p.get("engine_busy_fraction"), p["wall_s"]])
            lines += [markdown_table(["n", "concurrency", "ok/sent", "p50 ms", "p95 ms", "p99 ms", "req/s",
                                      "evals/s", "raw evals/s", "served/raw", "req/s vs HTTP ceiling", "errors",
                                      "mean batch",
                                      "engine ms/call", "engine busy", "wall s"], body), ""]
            lines += ["Engine batch-size histogram (rows per engine call: calls), from `/metrics`:", ""]
            for p in run_res["phases"]:
                lines.append(f"- n={p['n']}, c={p['concurrency']}: {_hist_text(p['batch_size'])}")
            lines.append("")
            lines += ["Latency by steps (p50 / p95 ms):", ""]
            ks = sorted({k for p in run_res["phases"] for k in (p.get("per_steps") or {})})
            body = [[p["n"], p["concurrency"]] + [
                (f"{fmt(p['per_steps'][k]['p50_ms'])} / {fmt(p['per_steps'][k]['p95_ms'])}"
                 if k in (p.get("per_steps") or {}) else "-") for k in ks] for p in run_res["phases"]]
            lines += [markdown_table(["n", "concurrency"] + [f"steps={k}" for k in ks], body), ""]
            errs = {f"n={p['n']}, c={p['concurrency']}": p["errors"] for p in run_res["phases"] if p["errors"]}
            if errs:
                lines += [f"Errors: {errs}", ""]
            for what, prof in (run_res.get("profiles") or {}).items():
                if not prof:
                    continue
                if prof.get("error"):
                    lines += [f"py-spy ({what}): skipped, {prof['error']}", ""]
                    continue
                lines += [(f"Where the server's CPU time goes ({what}; py-spy, {prof['samples']} samples of "
                          "non-idle threads at 200 Hz, stacks assigned to the first matching layer):"), "",
                          markdown_table(["layer", "share of samples"],
                                         [[k, f"{v:.1%}"] for k, v in prof["categories"].items()]), "",
                          markdown_table(["top leaf frames (self time)", "share"],
                                         [[f"`{t['frame']}`", f"{t['share']:.1%}"] for t in prof["top_self"][:10]]),
                          ""]
    lines += ["## Notes", "", NOTES_BEGIN, notes if notes is not None else "(none yet)", NOTES_END, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"use comma-separated integers, e.g. 1,8,64; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be integers >= 1, got {text!r}")
    return vals


def _names(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    if not vals:
        raise argparse.ArgumentTypeError("give at least one name")
    return vals


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.load``."""
    d = LoadSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Load-test anystep serve on 127.0.0.1 (a server it starts itself) with and without step-level "
                    "batching; writes load.{json,md}.",
    )
    p.add_argument("--overhead", action="store_true",
                   help="issue 16's overhead goals instead: served - empty round trip - bare engine at K=1..16, "
                        "n=1/256; 64-client fraction of the ceiling; steps=1 p50 with a dopri5 solve in flight "
                        "(checkerboard + checkerboard-teacher, ONNX Runtime); writes load_overhead.{json,md}")
    p.add_argument("--quick", action="store_true", help="about a minute: checkerboard only, fewer requests")
    p.add_argument("--models", type=_names, default=None, help="flow-map model names (default checkerboard,digits)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--engine", default=None, choices=("torch", "onnx"), help="server engine (default torch)")
    p.add_argument("--concurrency", type=_ints, default=None, help="default 1,8,64")
    p.add_argument("--steps-mix", type=_ints, default=None, help="steps values drawn uniformly (default 1,2,4,8)")
    p.add_argument("-n", "--n", type=_ints, default=None,
                   help=f"samples per request, comma list: each runs every concurrency (default {d.n_values})")
    p.add_argument("--requests", type=int, default=None,
                   help=f"requests per phase, all concurrencies (default {d.requests})")
    p.add_argument("--time-limit", type=float, default=None, help=f"seconds per phase (default {d.time_limit_s:g})")
    p.add_argument("--probe-pairs", type=int, default=None, help=f"latency-probe pairs (default {d.probe_pairs})")
    p.add_argument("--batching", type=_names, default=None, help="on, off or on,off (default)")
    p.add_argument("--threads", type=int, default=None, help="engine intra-op threads (default 1)")
    p.add_argument("--format", default=None, choices=("json", "npy"), help="response format (default json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-profile", action="store_true", help="do not sample the server with py-spy")
    p.add_argument("--profile", action="store_true", help="sample the server with py-spy even with --quick")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--work-dir", type=Path, default=None, help="server logs and caches (default runs/load)")
    return p


def settings_from_args(args: argparse.Namespace) -> LoadSettings:
    """Resolve ``--quick`` and explicit options into :class:`LoadSettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name, key in (("models", "models"), ("engine", "engine"), ("concurrency", "concurrency"),
                      ("steps_mix", "steps_mix"), ("n", "n_values"), ("time_limit", "time_limit_s"),
                      ("probe_pairs", "probe_pairs"), ("batching", "batching_modes"), ("threads", "threads"),
                      ("format", "format")):
        v = getattr(args, name)
        if v is not None:
            kw[key] = v
    conc = kw.get("concurrency", LoadSettings().concurrency)
    base_req = kw.get("requests", LoadSettings().requests)
    if args.requests is not None:
        kw["requests"] = {c: int(args.requests) for c in conc}
    else:
        kw["requests"] = {c: int(base_req.get(c, max(base_req.values()))) for c in conc}
    if args.models_dir is not None:
        kw["models_dir"] = args.models_dir
    elif os.environ.get("ANYSTEP_MODELS_DIR"):
        kw["models_dir"] = Path(os.environ["ANYSTEP_MODELS_DIR"])
    if args.no_profile:
        kw["profile"] = False
    elif args.profile:
        kw["profile"] = True
    return LoadSettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except LoadBenchError as e:
        parser.error(str(e))
    out = args.out or REPO_ROOT / "benchmarks" / "results"
    work = args.work_dir or REPO_ROOT / "runs" / "load"
    from anystep.errors import USER_ERRORS

    if args.overhead:
        from anystep.benchmarks.load_overhead import render_overhead, run_overhead

        t0 = time.perf_counter()
        data = run_overhead(Path(settings.models_dir), work, rounds=40 if settings.quick else 200,
                            engine_name=args.engine or "onnx", log=lambda m: print(m, flush=True),
                            closed_requests=600 if settings.quick else 3000)
        machine = machine_info()
        data.update(benchmark="load_overhead", machine=machine, machine_description=machine.describe(),
                    command=command_line(sys.argv[1:] if argv is None else argv, module=MODULE),
                    load_average=load_average(), duration_s=time.perf_counter() - t0,
                    versions=versions(("torch", "numpy", "onnxruntime", "fastapi", "uvicorn", "starlette")))
        paths = write_results(out, "load_overhead", data, render_overhead(data))
        print(f"[done] {paths.json}, {paths.markdown}")
        return 0
    try:
        run(settings, out_dir=out, work_dir=work,
            command=command_line(sys.argv[1:] if argv is None else argv, module=MODULE),
            log=lambda m: print(m, flush=True))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
