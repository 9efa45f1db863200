"""The bare engine beside the server: raw batched throughput and the served-vs-bare probe.

Used by :mod:`anystep.benchmarks.load` (and :mod:`~anystep.benchmarks.load_ray`,
:mod:`~anystep.benchmarks.load_overhead`): :func:`build_bare_engine` builds, in the
benchmark process, the engine ``anystep serve`` builds (same type, threads, batch
limit); :func:`raw_throughput` times it on scheduler-like batches with the one timing
harness (:func:`anystep.benchmarks.timing.interleaved_timing`); :func:`latency_probe`
interleaves one bare call, one served request and one empty round trip;
:func:`bare_engine_parallel` runs engines in parallel processes (the machine's own scaling).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.loadgen import LoadBenchError, LoopbackClient, generate_body, server_timing
from anystep.benchmarks.timing import calls_per_second, interleaved_timing, percentile, summarize

__all__ = ["bare_engine_parallel", "build_bare_engine", "latency_probe", "raw_throughput"]


def build_bare_engine(model_dir: Path, settings: Any, cache_dir: Path,
                      kinds: Sequence[str] = ("flowmap",)) -> Any:
    """The engine the server builds for ``model_dir`` (same type, threads), in this process.

    Args:
        model_dir: a model directory.
        settings: ``engine``, ``threads`` and (optional, default 256) ``max_batch``, e.g. a
            :class:`~anystep.benchmarks.load.LoadSettings`.
        cache_dir: where the ONNX engine's export is cached.
        kinds: model kinds accepted (the load benchmark serves flow maps).
    """
    from anystep.core.modeldir import read_config
    from anystep.server.engines import EngineOptions, build_engine

    cfg = read_config(model_dir)
    if cfg.kind not in kinds:
        raise LoadBenchError(f"{model_dir} holds a {cfg.kind} model; this benchmark takes {' or '.join(kinds)}")
    opts = EngineOptions(threads=settings.threads, cache_dir=cache_dir, max_batch=getattr(settings, "max_batch", 256),
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
            status, headers, _ = await client.request("POST", "/generate", generate_body(model, 1, 1, 1000 + i, fmt_))
            dt = time.perf_counter() - t0
            if status != 200:
                raise LoadBenchError(f"latency probe: /generate answered {status}")
            served.append(dt)
            st = server_timing(headers)
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
            await client.request("POST", "/generate", generate_body(model, 1, 1, i, fmt_))
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


def _engine_worker(model_dir: str, threads: int, batch: int, start: Any, seconds: float, out: Any) -> None:
    """One process of :func:`bare_engine_parallel`: engine calls on ``batch`` rows for ``seconds``."""
    from anystep.benchmarks.load import LoadSettings

    eng = build_bare_engine(Path(model_dir), LoadSettings(threads=threads), Path(model_dir))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *eng.data_shape)).astype(np.float32)
    s = rng.uniform(0.0, 0.9, batch).astype(np.float32)
    t = np.minimum(1.0, s + 0.25).astype(np.float32)
    eng.step(x, s, t)  # warm
    start.wait(timeout=300)  # every process loaded and warm: all start together
    out.put(batch * calls_per_second(lambda: eng.step(x, s, t), seconds, warmup=0))


def bare_engine_parallel(
    model_dir: Path, processes: int, threads: int, seconds: float = 6.0, batch: int = 256
) -> float:
    """Evaluations/s of ``processes`` bare engines running at once (the machine's own scaling).

    Each process builds the server's torch engine with ``threads`` threads and calls it on
    ``batch`` rows (the served batch) for ``seconds``, all starting together; returns the
    sum of their evaluations/s. No HTTP, no Ray: the ceiling a replica count can reach.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = ctx.Barrier(processes)
    procs = [ctx.Process(target=_engine_worker, args=(str(model_dir), threads, batch, start, seconds, q))
             for _ in range(processes)]  # fmt: skip
    for pr in procs:
        pr.start()
    rates = [q.get(timeout=300 + seconds) for _ in procs]
    for pr in procs:
        pr.join(timeout=30)
    return float(sum(rates))
