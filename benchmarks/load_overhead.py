"""Serving overhead (issue 16's goals): what a request costs beyond HTTP and its engine calls.

``python -m anystep.benchmarks.load --overhead`` starts ``anystep serve`` (ONNX Runtime
engine, one thread, batching on) with the checkerboard map and its velocity teacher,
and measures, interleaved in one closed loop on one keep-alive connection:

* **empty round trip**: ``GET /healthz`` (the HTTP floor of this client and server);
* **bare engine**: ``K`` calls of the same engine on ``n`` rows in this process;
* **served**: ``POST /generate`` with ``steps=K, n``.

``overhead = served - empty - bare`` (medians) for ``K = 1, 2, 4, 8, 16`` at ``n = 1`` and
``K = 1`` at ``n = 256``: the per-request overhead at ``n = 1``, the per-sample overhead
``(overhead(256) - overhead(1)) / 255``, and the per-step overhead (least-squares slope of
overhead over K). Then two closed-loop phases: 64 one-sample ``steps=1`` clients against
64 clients of the empty route (fraction of the HTTP ceiling), and the p50 of ``steps=1``
requests to the map with and without a dopri5 solve of the teacher (rtol 1e-5) running;
both alternate their two sides in blocks, so that a change of load on the machine lands on both.
Last, 64 clients of ``n = 64`` requests answered as JSON and as ``.npy`` (alternating blocks):
whether the binary answer is the cheaper one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.timing import percentile

STEPS = (1, 2, 4, 8, 16)


def _body(model: str, **kw: Any) -> bytes:
    return json.dumps({"model": model, **kw}).encode()


async def probe(client: Any, engine: Any, model: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved medians of empty / bare / served for each ``(K, n)`` case."""
    cases = [(k, 1) for k in STEPS] + [(1, 256)]
    rng = np.random.default_rng(0)
    xs = {n: rng.standard_normal((n, *engine.data_shape)).astype(np.float32) for n in (1, 256)}
    times = {n: (np.zeros(n, np.float32), np.ones(n, np.float32)) for n in (1, 256)}
    samples: dict[str, list[float]] = {"empty": []}
    for k, n in cases:
        samples[f"bare K={k} n={n}"] = []
        samples[f"served K={k} n={n}"] = []
    server_ms: dict[str, list[float]] = {f"K={k} n={n}": [] for k, n in cases}

    async def served(k: int, n: int, seed: int) -> None:
        t0 = time.perf_counter()
        status, headers, _ = await client.request("POST", "/generate", _body(model, steps=k, n=n, seed=seed))
        dt = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"/generate steps={k} n={n} answered {status}")
        samples[f"served K={k} n={n}"].append(dt)
        server_ms[f"K={k} n={n}"].append(
            float(headers.get("x-anystep-time-ms", "nan")) - float(headers.get("x-anystep-compute-ms", "nan"))
        )

    def bare(k: int, n: int) -> None:
        x = xs[n]
        s, t = times[n]
        t0 = time.perf_counter()
        for _ in range(k):
            x = engine.step(x, s, t)
        samples[f"bare K={k} n={n}"].append(time.perf_counter() - t0)

    for i in range(3):  # warm-up
        await client.request("GET", "/healthz")
        for k, n in cases:
            bare(k, n)
            await served(k, n, i)
    for values in (*samples.values(), *server_ms.values()):
        values.clear()
    for r in range(rounds):
        t0 = time.perf_counter()
        await client.request("GET", "/healthz")
        samples["empty"].append(time.perf_counter() - t0)
        for k, n in cases:
            bare(k, n)
            await served(k, n, 1000 + r)
        if r % max(1, rounds // 4) == 0:
            log(f"  overhead probe round {r + 1}/{rounds}")
    med = {k: 1000.0 * percentile(v, 50) for k, v in samples.items()}
    rows = []
    for k, n in cases:
        ov = med[f"served K={k} n={n}"] - med["empty"] - med[f"bare K={k} n={n}"]
        rows.append({"steps": k, "n": n, "served_ms": med[f"served K={k} n={n}"], "bare_ms": med[f"bare K={k} n={n}"],
                     "empty_ms": med["empty"], "overhead_ms": ov,
                     "server_side_overhead_ms": percentile(server_ms[f"K={k} n={n}"], 50)})
    by = {(r["steps"], r["n"]): r for r in rows}
    ks = np.array(STEPS, dtype=np.float64)
    ovs = np.array([by[(k, 1)]["overhead_ms"] for k in STEPS])
    slope = float(np.polyfit(ks, ovs, 1)[0])
    srv = np.array([by[(k, 1)]["server_side_overhead_ms"] for k in STEPS])
    return {
        "server_side_n1_ms": by[(1, 1)]["server_side_overhead_ms"],
        "server_side_per_step_us": 1000.0 * float(np.polyfit(ks, srv, 1)[0]),
        "server_side_per_sample_us": 1000.0
        * (by[(1, 256)]["server_side_overhead_ms"] - by[(1, 1)]["server_side_overhead_ms"]) / 255.0,
        "rows": rows,
        "n1_overhead_ms": by[(1, 1)]["overhead_ms"],
        "per_sample_us": 1000.0 * (by[(1, 256)]["overhead_ms"] - by[(1, 1)]["overhead_ms"]) / 255.0,
        "per_step_us": 1000.0 * slope,
        "rounds": rounds,
    }


async def closed_loop(port: int, body: bytes | None, concurrency: int, count: int, client_cls: Any) -> dict[str, Any]:
    """``count`` requests over ``concurrency`` connections (``body`` None: ``GET /healthz``)."""
    lat: list[float] = []
    errors = 0
    left = [count]

    async def worker() -> None:
        nonlocal errors
        c = client_cls(port)
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                if body is None:
                    status, _, _ = await c.request("GET", "/healthz")
                else:
                    status, _, _ = await c.request("POST", "/generate", body)
                lat.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests_per_s": len(lat) / wall, "p50_ms": 1000 * percentile(lat, 50), "errors": errors, "requests": len(lat)}


async def ceiling(port: int, body: bytes, concurrency: int, count: int, client_cls: Any,
                  blocks: int = 3) -> dict[str, Any]:
    """Closed loops of ``POST /generate`` (``body``) and of the empty route, ``count`` requests each,
    alternating in ``blocks`` blocks; requests per second over all blocks of a kind."""
    per = max(1, count // blocks)
    parts: dict[str, list[dict[str, Any]]] = {"served": [], "empty": []}
    for _ in range(blocks):
        parts["served"].append(await closed_loop(port, body, concurrency, per, client_cls))
        parts["empty"].append(await closed_loop(port, None, concurrency, per, client_cls))
    out: dict[str, Any] = {}
    for kind, runs in parts.items():
        n = sum(r["requests"] for r in runs)
        wall = sum(r["requests"] / r["requests_per_s"] for r in runs)
        out[kind] = {"requests_per_s": n / wall, "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
                     "errors": sum(r["errors"] for r in runs), "requests": n, "blocks": blocks}
    out["fraction"] = out["served"]["requests_per_s"] / out["empty"]["requests_per_s"]
    return out


async def answer_formats(port: int, model: str, n: int, concurrency: int, count: int, client_cls: Any,
                         blocks: int = 4) -> dict[str, Any]:
    """Closed loops of ``steps=1`` requests of ``n`` samples answered as JSON and as ``.npy``, alternating
    in ``blocks`` blocks of ``count / blocks`` requests each: samples per second of each format."""
    per = max(concurrency, count // blocks)
    parts: dict[str, list[dict[str, Any]]] = {"json": [], "npy": []}
    for _ in range(blocks):
        for fmt_, runs in parts.items():
            runs.append(await closed_loop(port, _body(model, steps=1, n=n, seed=0, format=fmt_), concurrency, per,
                                          client_cls))
    out: dict[str, Any] = {"n": n, "concurrency": concurrency, "blocks": blocks}
    for fmt_, runs in parts.items():
        reqs = sum(r["requests"] for r in runs)
        wall = sum(r["requests"] / r["requests_per_s"] for r in runs)
        out[fmt_] = {"samples_per_s": n * reqs / wall, "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
                     "errors": sum(r["errors"] for r in runs), "requests": reqs}
    out["npy_over_json"] = out["npy"]["samples_per_s"] / out["json"]["samples_per_s"]
    return out


def encode_costs(shapes: dict[str, tuple[int, ...]], rounds: int = 20) -> dict[str, dict[str, float]]:
    """Microseconds the server spends turning a ``/generate`` answer of each shape into bytes: the JSON
    body (:func:`anystep.server.routes.json_response`) against ``.npy`` (:func:`~anystep.server.routes.npy_bytes`),
    interleaved medians in this process."""
    from anystep.benchmarks.timing import interleaved_timing
    from anystep.server.routes import json_response, npy_bytes

    rng = np.random.default_rng(0)
    fns: dict[str, Callable[[], Any]] = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape).astype(np.float32)
        body = {"model": "m", "kind": "flowmap", "steps": 1, "nfe": 1, "seed": 0, "n": shape[0], "shape": list(shape),
                "samples": x, "solver": None, "grid": np.array([0.0, 1.0]), "timing_ms": {"total": 1.0},
                "chosen_by_budget": False}
        fns[f"{name} json"] = lambda body=body: json_response(body)
        fns[f"{name} npy"] = lambda x=x: npy_bytes(x)
    res = interleaved_timing(fns, rounds=rounds, warmup=3, block_s=0.01)
    return {name: {fmt_: 1e6 * percentile(res.seconds[f"{name} {fmt_}"], 50) for fmt_ in ("json", "npy")}
            for name in shapes}


async def dopri5_interference(port: int, model: str, teacher: str, count: int, client_cls: Any,
                              blocks: int = 5) -> dict[str, Any]:
    """p50 of sequential ``steps=1`` requests to ``model``, alone and with dopri5 solves of ``teacher`` running.

    ``count`` requests of each kind, in ``blocks`` alternating blocks (alone, with solves, alone, ...)
    so that a load change on the machine lands in both medians.
    """
    quick = _body(model, steps=1, n=1, seed=0)
    solve = _body(teacher, solver="dopri5", rtol=1e-5, n=64, seed=0)
    c = client_cls(port)
    solving = asyncio.Event()  # set: the background client keeps a solve in flight
    idle = asyncio.Event()  # set: no solve in flight
    idle.set()
    stop = False
    solves = [0]

    async def seq(k: int, out: list[float]) -> None:
        for _ in range(k):
            t0 = time.perf_counter()
            status, _, _ = await c.request("POST", "/generate", quick)
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"steps=1 request answered {status}")

    async def background() -> None:
        bc = client_cls(port)
        try:
            while True:
                await solving.wait()
                if stop:
                    return
                idle.clear()
                try:
                    status, _, _ = await bc.request("POST", "/generate", solve)
                finally:
                    idle.set()
                if status != 200:
                    raise RuntimeError(f"dopri5 request answered {status}")
                solves[0] += 1
        finally:
            await bc.close()

    bg = asyncio.create_task(background())
    alone: list[float] = []
    during: list[float] = []
    per = max(1, count // blocks)
    try:
        for _ in range(blocks):
            solving.clear()
            await idle.wait()  # the last solve has finished
            await seq(per, alone)
            solving.set()
            await asyncio.sleep(0.05)  # a solve is in flight
            await seq(per, during)
    finally:
        stop = True
        solving.set()
        await bg
        await c.close()
    a, d = 1000 * percentile(alone, 50), 1000 * percentile(during, 50)
    return {"alone_p50_ms": a, "with_dopri5_p50_ms": d, "increase": d / a - 1.0, "dopri5_solves": solves[0],
            "requests": len(alone), "blocks": blocks}


def _met(value: float, bound: float) -> bool | None:
    """``value <= bound``; None (inconclusive) for a negative difference of medians (noise above the effect)."""
    return None if value < 0 else bool(value <= bound)


def run_overhead(models_dir: Path, work_dir: Path, *, rounds: int = 200, engine_name: str = "onnx",
                 log: Callable[[str], None] = print, concurrency: int = 64, closed_requests: int = 3000) -> dict[str, Any]:
    """The whole overhead experiment (see the module docstring); returns its results."""
    from anystep.benchmarks.load import LoadSettings, LoopbackClient, build_bare_engine
    from anystep.server.testing import ServerProcess

    model, teacher = "checkerboard", "checkerboard-teacher"
    settings = LoadSettings(models=(model,), models_dir=models_dir, engine=engine_name)
    engine = build_bare_engine(models_dir / model, settings, work_dir / "serve-cache")
    engine.warmup([1, 256])
    args = ["--engine", engine_name, "--threads", "1", "--max-queue", "256",
            "--cache-dir", str(work_dir / "serve-cache")]
    srv = ServerProcess(models={model: models_dir / model, teacher: models_dir / teacher}, args=args,
                        log_path=work_dir / "overhead-serve.log", ready_timeout=600.0)
    out: dict[str, Any] = {"engine": engine.describe(), "model": model, "load_at_start": os.getloadavg()[0]}
    with srv:
        async def go() -> None:
            client = LoopbackClient(srv.port)
            try:
                log("[overhead] interleaved probe: empty round trip, bare engine, served")
                out["probe"] = await probe(client, engine, model, rounds, log)
            finally:
                await client.close()
            log(f"[overhead] closed loop at concurrency {concurrency}: steps=1 n=1 vs the empty route")
            out["ceiling"] = await ceiling(srv.port, _body(model, steps=1, n=1, seed=0), concurrency, closed_requests,
                                           LoopbackClient)
            log("[overhead] steps=1 p50 with and without a dopri5 solve of the teacher in flight")
            out["dopri5"] = await dopri5_interference(srv.port, model, teacher, max(50, rounds // 2), LoopbackClient)
            log(f"[overhead] closed loop at concurrency {concurrency}: n=64 answers as JSON vs .npy")
            out["formats"] = await answer_formats(srv.port, model, 64, concurrency, max(256, closed_requests // 3),
                                                  LoopbackClient)
            out["formats"]["encode_us"] = encode_costs({"checkerboard n=64 [64, 2]": (64, 2),
                                                        "digits n=64 [64, 1, 8, 8]": (64, 1, 8, 8)})

        asyncio.run(go())
    out["load_at_end"] = os.getloadavg()[0]
    engine.close()
    p = out["probe"]
    out["goals"] = [
        {"goal": "/generate overhead at n=1 <= 0.3 ms", "value_ms": p["n1_overhead_ms"], "met": _met(p["n1_overhead_ms"], 0.3)},
        {"goal": "per-sample overhead at n=256 <= 2 us", "value_us": p["per_sample_us"], "met": _met(p["per_sample_us"], 2.0)},
        {"goal": "per-step overhead (K=1..16) <= 50 us", "value_us": p["per_step_us"], "met": _met(p["per_step_us"], 50.0)},
        {"goal": "64 one-sample clients >= 60% of the empty-route ceiling", "value": out["ceiling"]["fraction"],
         "met": out["ceiling"]["fraction"] >= 0.6},
        {"goal": "a dopri5 solve in flight adds <= 10% to steps=1 p50 (another model)",
         "value": out["dopri5"]["increase"], "met": out["dopri5"]["increase"] <= 0.10},
    ]
    return out


def render_overhead(data: dict[str, Any], notes: str | None = None) -> str:
    """Markdown of an overhead run (``notes``: the hand-written block a regenerated report keeps)."""
    p = data["probe"]
    lines = [
        "# Serving overhead (issue 16 goals)",
        "",
        f"Command: `{data.get('command', '')}`  ",
        f"Machine: {data.get('machine_description', '')}  ",
        *([(f"Load average (1 min) at start / end: {data['load_at_start']:.2f} / {data['load_at_end']:.2f} "
           "(2 cores; other work shares them)  ")] if "load_at_end" in data else []),
        (f"Engine: {data['engine'].get('engine')} ({', '.join(data['engine'].get('providers', []) or [])}), "
        f"model `{data['model']}`, {p['rounds']} interleaved rounds, medians."),
        "",
        ("`overhead = served - empty - bare` (the issue's definition, client side); `server-side` is the server's own "
        "`X-Anystep-Time-Ms - X-Anystep-Compute-Ms` (handler, scheduler and hand-offs, no HTTP). A negative overhead "
        "means the noise of this machine exceeded the effect (goal then inconclusive)."),
        "",
        "| steps | n | served ms | empty round trip ms | bare engine ms | overhead ms | server-side ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in p["rows"]:
        lines.append(f"| {r['steps']} | {r['n']} | {r['served_ms']:.3f} | {r['empty_ms']:.3f} | {r['bare_ms']:.3f} | "
                     f"{r['overhead_ms']:.3f} | {r['server_side_overhead_ms']:.3f} |")
    c, d = data["ceiling"], data["dopri5"]
    lines += [
        "",
        (f"Concurrency 64, steps=1, n=1: {c['served']['requests_per_s']:.0f} req/s against "
        f"{c['empty']['requests_per_s']:.0f} req/s for the empty route ({c['fraction']:.0%}).  "),
        (f"steps=1 p50 alone {d['alone_p50_ms']:.3f} ms, with dopri5 solves of the teacher in flight "
        f"{d['with_dopri5_p50_ms']:.3f} ms ({d['increase']:+.0%}, {d['dopri5_solves']} solves)."),
        *([(f"Answer formats, closed loop at concurrency {f['concurrency']}, steps=1, n={f['n']}, alternating blocks: "
            f"JSON {f['json']['samples_per_s']:.3g} samples/s (p50 {f['json']['p50_ms']:.1f} ms), .npy "
            f"{f['npy']['samples_per_s']:.3g} samples/s (p50 {f['npy']['p50_ms']:.1f} ms): npy / JSON = "
            f"{f['npy_over_json']:.2f}.  ")] if (f := data.get("formats")) else []),
        *([("Encoding one answer in the server (in-process medians): " + "; ".join(
            f"{name}: JSON {v['json']:.1f} us, .npy {v['npy']:.1f} us" for name, v in enc.items()) + ".  ")]
          if (enc := (data.get("formats") or {}).get("encode_us")) else []),
        "",
        "| goal | measured | met |",
        "|---|---:|:-:|",
    ]
    for g in data["goals"]:
        v = next(v for k, v in g.items() if k.startswith("value"))
        unit = " ms" if "value_ms" in g else " us" if "value_us" in g else ""
        met = "inconclusive" if g["met"] is None else "yes" if g["met"] else "no"
        lines.append(f"| {g['goal']} | {v:.3f}{unit} | {met} |")
    lines += [
        "",
        ("Reading these numbers: on a shared 2-core machine a process that sleeps while it waits (the client "
        "during a request, a thread woken by another) waits for a CPU when it wakes; that wake-up latency lands "
        "in the client-side columns and grows with how long the client slept, so the client-side per-step and "
        "per-sample figures are upper bounds here. The server-side column (the server's own clock) excludes it. "
        "See the load average above."),
    ]
    if notes is not None:
        from anystep.benchmarks.common import NOTES_BEGIN, NOTES_END

        lines += ["", "## Notes", "", NOTES_BEGIN, notes, NOTES_END]
    return "\n".join(lines) + "\n"

