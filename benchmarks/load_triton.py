"""The peer a user would pick instead: the same exported map on Triton, side by side.

One run starts two servers on 127.0.0.1 and drives both with the same closed loop
(:func:`anystep.benchmarks.loadgen.closed_loop`, the same keep-alive client)::

    python -m anystep.benchmarks.load_triton            # a few minutes
    python -m anystep.benchmarks.load_triton --quick    # about a minute, a smoke run

* **anystep**: ``anystep serve --engine onnx`` (ONNX Runtime, the single-step graph
  exported from the model directory); one ``POST /generate`` per request, the server
  steps it and batches the steps of all requests in flight (step-level batching).
* **Triton**: the Triton Inference Server bundled with nvidia-pytriton (the build the
  tests start, :func:`anystep.export.triton_repo.serve_with_pytriton`, in its own
  interpreter ``.venv-triton`` made by ``make triton-venv``) serving the model
  repository that ``anystep export --format triton`` writes
  (:func:`~anystep.export.triton_repo.export_triton`: the same single-step ONNX graph,
  ``max_batch_size`` = ``--max-batch``, dynamic batching with ``--max-queue-delay-us``).
  Triton knows nothing of steps, so its client loops: it draws the base samples of the
  request's seeds (:func:`anystep.core.noise.base_noise_np`, the server's own noise),
  then sends K KServe-v2 ``infer`` calls (bodies built and parsed by ``tritonclient``),
  ``(x, s, t)`` on the uniform grid (:func:`anystep.core.grid.uniform_grid`); the
  dynamic batcher merges the calls of concurrent clients.

Both use ONNX Runtime on the CPU with ``--threads`` intra-op threads. Requests: ``n``
samples each, ``steps`` drawn uniformly from ``--steps-mix`` (the same list for both
servers), at each concurrency; the servers alternate phase by phase over ``--rounds``
rounds so drifts of a shared machine hit both alike. Before timing, one request per
step count is answered by both and compared (the same map: max |difference|).
Goals (issue 16): anystep ahead on p50 latency at concurrency 1 and on samples/s at
concurrency 64. Results: ``benchmarks/results/load_triton.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.common import (
    OUT_HELP,
    existing_notes,
    git_revision,
    int_list,
    load_average,
    machine_info,
    portable_path,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.load_triton_report import render_markdown
from anystep.benchmarks.loadgen import (
    LoadBenchError,
    LoopbackClient,
    PhaseResult,
    generate_body,
    histogram_delta,
    make_requests,
    run_phase,
    scrape,
    summarize_phase,
)
from anystep.benchmarks.timing import cpu_seconds, runqueue_seconds
from anystep.benchmarks.triton_peer import (
    TritonStepClient,
    ensure_triton_repo,
    triton_batches,
    triton_phase,
    triton_versions,
)
from anystep.server.registry import models_dir as bundled_models_dir

MODULE = "anystep.benchmarks.load_triton"
REPO_ROOT = Path(__file__).resolve().parents[1]


def servers_of(settings: TritonSettings) -> list[str]:
    """The rows of a cell: ``anystep`` (answers in ``settings.format``), ``triton``, and
    ``anystep-json`` (the same server answering JSON) when the primary format is binary and
    ``settings.json_row`` is set."""
    return ["anystep", "triton"] + (["anystep-json"] if settings.json_row and settings.format != "json" else [])


@dataclass
class TritonSettings:
    """Everything that determines a run (written to the results JSON).

    Attributes:
        model: flow-map model name (``<models_dir>/<model>``), unconditional.
        models_dir: folder of model directories.
        concurrency: closed-loop concurrency levels.
        n_values: samples per request.
        steps_mix: the ``steps`` values requests draw from (uniformly).
        requests: ``{concurrency: requests per phase}``.
        rounds: alternating rounds per (n, concurrency); phases of a cell are pooled.
        time_limit_s: wall-time bound of one phase.
        warmup_requests: unrecorded requests (times concurrency) before each cell.
        threads: ONNX Runtime intra-op threads of both servers.
        max_batch: anystep's ``--max-batch`` and Triton's ``max_batch_size``.
        max_queue_delay_us: Triton's dynamic-batcher delay.
        format: anystep's answer format (``npy``: binary, like Triton's tensors; or ``json``).
        json_row: also time anystep answering JSON (a third row per cell; goals use ``format``).
        seed: seed of the request mix.
        quick: smoke run.
    """

    model: str = "checkerboard"
    models_dir: Path = REPO_ROOT / "models"
    concurrency: tuple[int, ...] = (1, 64)
    n_values: tuple[int, ...] = (1, 64)
    steps_mix: tuple[int, ...] = (1, 2, 4, 8)
    requests: dict[int, int] = field(default_factory=lambda: {1: 150, 64: 1200})
    rounds: int = 3
    time_limit_s: float = 20.0
    warmup_requests: int = 2
    threads: int = 1
    max_batch: int = 256
    max_queue_delay_us: int = 100
    format: str = "npy"
    json_row: bool = True
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise LoadBenchError(msg)

        need(bool(self.model), "--model needs a flow-map name, e.g. checkerboard")
        need(len(self.concurrency) > 0 and all(1 <= c <= 512 for c in self.concurrency),
             f"--concurrency must be integers in 1..512, got {self.concurrency}")
        need(len(self.n_values) > 0 and all(1 <= n <= self.max_batch for n in self.n_values),
             f"-n values must lie in 1..--max-batch ({self.max_batch}), got {self.n_values}")
        need(len(self.steps_mix) > 0 and all(1 <= k <= 64 for k in self.steps_mix),
             f"--steps-mix must be integers in 1..64, got {self.steps_mix}")
        need(all(1 <= self.requests.get(c, 0) <= 100_000 for c in self.concurrency),
             "every concurrency needs a request count in 1..100,000")
        need(self.rounds >= 1 and self.warmup_requests >= 0, "--rounds must be >= 1")
        need(0 < self.time_limit_s <= 600, f"--time-limit must lie in (0, 600] s, got {self.time_limit_s}")
        need(self.threads >= 1 and 1 <= self.max_batch <= 4096, "--threads >= 1 and --max-batch in 1..4096")
        need(0 <= self.max_queue_delay_us <= 1_000_000, "--max-queue-delay-us must lie in 0..1,000,000")
        need(self.format in ("json", "npy"), f"--format must be npy or json, got {self.format!r}")


QUICK: dict[str, Any] = {"requests": {1: 30, 64: 192}, "rounds": 1, "time_limit_s": 10.0, "warmup_requests": 1,
                         "n_values": (1,)}
"""Overrides of ``--quick``."""


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


async def parity(anystep_port: int, triton_port: int, tc: TritonStepClient, model: str,
                 steps_mix: Sequence[int]) -> dict[str, Any]:
    """Both servers answer the same 4 seeds at every step count: max |difference| per K."""
    import json

    a, t = LoopbackClient(anystep_port), LoopbackClient(triton_port)
    out: dict[str, Any] = {}
    try:
        for k in sorted(set(steps_mix)):
            status, _, body = await a.request("POST", "/generate", generate_body(model, k, 4, 77, "json"))
            if status != 200:
                raise LoadBenchError(f"parity: anystep answered {status}: {body[:200]!r}")
            ya = np.asarray(json.loads(body)["samples"], dtype=np.float32)
            st, yt = await tc.sample(t, k, 4, 77)
            if st != 200 or yt is None:
                raise LoadBenchError(f"parity: Triton answered {st}")
            out[k] = float(np.max(np.abs(ya.reshape(yt.shape) - yt)))
    finally:
        await a.close()
        await t.close()
    return out


def _merge(phases: list[PhaseResult]) -> PhaseResult:
    return PhaseResult(concurrency=phases[0].concurrency, wall_s=sum(p.wall_s for p in phases),
                       records=[r for p in phases for r in p.records],
                       stopped_by_time=any(p.stopped_by_time for p in phases))


async def _cell(ports: dict[str, int], metrics_port: int, tc: TritonStepClient, settings: TritonSettings,
                n: int, c: int, log: Callable[[str], None], pids: dict[str, int] | None = None) -> dict[str, Any]:
    """All rounds of one (n, concurrency) cell, servers alternating; pooled per server."""
    model = settings.model
    lim = settings.time_limit_s
    servers = servers_of(settings)
    warm = make_requests(max(1, settings.warmup_requests * c), settings.steps_mix, settings.seed + 999)
    await run_phase(ports["anystep"], model, warm, concurrency=c, n=n, time_limit_s=lim, fmt_=settings.format)
    await triton_phase(ports["triton"], tc, warm, concurrency=c, n=n, time_limit_s=lim)
    phases: dict[str, list[PhaseResult]] = {s: [] for s in servers}
    per_round: dict[str, list[float | None]] = {s: [] for s in servers}
    batches: dict[str, list[float]] = {s: [] for s in servers}
    cpu: dict[str, list[float]] = {s: [] for s in servers}
    waited: dict[str, list[float]] = {s: [] for s in servers}
    client: dict[str, list[float]] = {s: [] for s in servers}
    for rnd in range(settings.rounds):
        reqs = make_requests(settings.requests[c], settings.steps_mix, settings.seed + 100 * rnd + c)
        for server in (servers if rnd % 2 == 0 else servers[::-1]):
            pid = (pids or {}).get("triton" if server == "triton" else "anystep")
            cpu0, rq0 = (cpu_seconds(pid), runqueue_seconds(pid)) if pid else (None, None)
            me0 = time.process_time()  # this process only: the load generator (clients)
            if server.startswith("anystep"):
                fmt_ = "json" if server == "anystep-json" else settings.format
                before = await scrape(ports["anystep"])
                ph = await run_phase(ports["anystep"], model, reqs, concurrency=c, n=n, time_limit_s=lim, fmt_=fmt_)
                h = histogram_delta(before, await scrape(ports["anystep"]), "anystep_engine_batch_size", model=model)
                rows, calls = h["sum"], h["count"]
            else:
                before = await scrape(metrics_port)
                ph = await triton_phase(ports["triton"], tc, reqs, concurrency=c, n=n, time_limit_s=lim)
                tb = triton_batches(before, await scrape(metrics_port), model)
                rows, calls = tb["rows"], tb["executions"]
            cpu1, rq1 = (cpu_seconds(pid), runqueue_seconds(pid)) if pid else (None, None)
            if cpu0 is not None and cpu1 is not None:
                cpu[server].append(cpu1 - cpu0)
            client[server].append(time.process_time() - me0)
            if rq0 is not None and rq1 is not None:
                waited[server].append(rq1 - rq0)
            s = summarize_phase(ph, n)
            phases[server].append(ph)
            per_round[server].append(s["samples_per_s"])
            if calls:
                batches[server].append(rows / calls)
            log(f"[n={n} c={c}] round {rnd + 1} {server}: {s['ok']}/{s['sent']} ok, p50 "
                f"{s.get('p50_ms', float('nan')):.2f} ms, {s['samples_per_s'] or 0:.0f} samples/s, "
                f"rows per engine call {rows / calls if calls else float('nan'):.1f}")
    out: dict[str, Any] = {"n": n, "concurrency": c}
    for server in servers:
        s = summarize_phase(_merge(phases[server]), n)
        s["samples_per_s_each"] = per_round[server]
        s["samples_per_s_median"] = float(np.median([v for v in per_round[server] if v is not None] or [np.nan]))
        s["rows_per_engine_call"] = float(np.mean(batches[server])) if batches[server] else None
        # cores the server's process tree kept busy over its phases (CPU seconds / wall seconds)
        s["server_cores"] = (sum(cpu[server]) / s["wall_s"]) if len(cpu[server]) == settings.rounds else None
        # threads of it that were runnable but waiting for a CPU (oversubscribed machine), in cores
        s["client_cores"] = sum(client[server]) / s["wall_s"]
        s["server_runqueue_cores"] = (sum(waited[server]) / s["wall_s"]) if len(waited[server]) == settings.rounds \
            else None
        out[server] = s
    return out


def raw_engine(model_dir: Path, settings: TritonSettings, work_dir: Path, cells: list[dict[str, Any]],
               log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """The bare ONNX Runtime engine in this process on each cell's batch (``min(c x n, max_batch)`` rows).

    Sets ``raw_rows_per_s`` and, per server, ``served_raw_ratio`` (rows served per second =
    samples/s x mean steps, over the raw rate) on every cell: how much of the engine's own
    throughput each server turns into answers.
    """
    from types import SimpleNamespace

    from anystep.benchmarks.load_probe import build_bare_engine, raw_throughput

    opts = SimpleNamespace(engine="onnx", threads=settings.threads, max_batch=settings.max_batch)  # as served
    eng = build_bare_engine(model_dir, opts, work_dir / "serve-cache")
    batches = sorted({min(c["concurrency"] * c["n"], settings.max_batch) for c in cells})
    log(f"[raw] the bare engine in this process at batch {batches}")
    raw = {b: {"rows_per_s": r["evals_per_s"], "ms_per_call": r["latency"].median_ms}
           for b, r in raw_throughput(eng, batches, rounds=max(3, 2 * settings.rounds), seed=settings.seed).items()}
    eng.close()
    for cell in cells:
        b = min(cell["concurrency"] * cell["n"], settings.max_batch)
        cell["raw_batch"], cell["raw_rows_per_s"] = b, raw[b]["rows_per_s"]
        for server in servers_of(settings):
            p = cell[server]
            rows_per_s = p["evals_per_s"]  # sum of n x steps over answered requests / wall
            p["served_raw_ratio"] = rows_per_s / raw[b]["rows_per_s"] if rows_per_s else None
    return raw


def evaluate_goals(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's peer goals: anystep's p50 below Triton's at c=1, its samples/s above at c=64 (per n)."""
    goals: list[dict[str, Any]] = []
    for cell in cells:
        a, t = cell["anystep"], cell["triton"]
        n, c = cell["n"], cell["concurrency"]
        if c == 1 and a.get("p50_ms") is not None and t.get("p50_ms") is not None:
            goals.append({"goal": f"anystep ahead of Triton on p50 latency at concurrency 1 (n={n}, mixed steps)",
                          "metric": "p50_ms", "anystep": a["p50_ms"], "triton": t["p50_ms"],
                          "ratio": t["p50_ms"] / a["p50_ms"],
                          "met": bool(a["p50_ms"] < t["p50_ms"] and a["error_count"] == 0)})
        if c == 64 and a.get("samples_per_s") and t.get("samples_per_s"):
            goals.append({"goal": f"anystep ahead of Triton on samples/s at concurrency 64 (n={n}, mixed steps)",
                          "metric": "samples_per_s", "anystep": a["samples_per_s"], "triton": t["samples_per_s"],
                          "ratio": a["samples_per_s"] / t["samples_per_s"],
                          "met": bool(a["samples_per_s"] > t["samples_per_s"] and a["error_count"] == 0)})
    return goals


def run(settings: TritonSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Export, start both servers, check parity, run every cell; write ``load_triton.{json,md}``."""
    from anystep.core.modeldir import read_config
    from anystep.export.triton_repo import serve_with_pytriton
    from anystep.server.testing import ServerProcess

    model_dir = Path(settings.models_dir) / settings.model
    if not (model_dir / "config.json").is_file():
        raise LoadBenchError(f"no model directory {model_dir}; pass --models-dir/--model or bundle it first")
    cfg = read_config(model_dir)
    if cfg.kind != "flowmap":
        raise LoadBenchError(f"{model_dir} holds a {cfg.kind} model; the Triton comparison serves a flow map")
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    load_start = load_average()
    work_dir.mkdir(parents=True, exist_ok=True)
    repo, manifest = ensure_triton_repo(model_dir, work_dir, settings.model, max_batch=settings.max_batch,
                                        max_queue_delay_us=settings.max_queue_delay_us, log=log)
    tc = TritonStepClient(settings.model, manifest, cfg.data_shape)
    max_c = max(settings.concurrency)
    args = ["--engine", "onnx", "--threads", str(settings.threads), "--max-batch", str(settings.max_batch),
            "--max-queue", str(max(64, 2 * max_c)), "--max-n", str(max(256, max(settings.n_values))),
            "--log-level", "warning", "--cache-dir", str(work_dir / "serve-cache")]
    log(f"[start] Triton (pytriton, {settings.threads} ORT thread(s)) and anystep serve --engine onnx")
    with serve_with_pytriton(repo, [settings.model], threads=settings.threads, startup_timeout_s=180,
                             log_path=work_dir / "triton.log") as tri, \
            ServerProcess(models={settings.model: model_dir}, args=args, log_path=work_dir / "serve.log",
                          ready_timeout=300.0) as srv:
        ports = {"anystep": srv.port, "triton": int(tri.http_url.rsplit(":", 1)[1])}
        metrics_port = int(tri.metrics_url.rsplit(":", 1)[1].split("/")[0])
        tri_versions = triton_versions(tri.python, ports["triton"])
        diffs = asyncio.run(parity(ports["anystep"], ports["triton"], tc, settings.model, settings.steps_mix))
        log(f"[parity] max |anystep - Triton| per K: {diffs}")
        pids = {"anystep": srv.proc.pid, "triton": tri.process.pid}
        cells = [asyncio.run(_cell(ports, metrics_port, tc, settings, n, c, log, pids))
                 for n in settings.n_values for c in settings.concurrency]
        engine_desc = None
        try:
            import httpx

            engine_desc = [m.get("engine") for m in httpx.get(srv.url + "/v1/models", timeout=10).json()["models"]]
        except Exception:  # noqa: BLE001 - descriptive only
            engine_desc = None
    raw = raw_engine(model_dir, settings, work_dir, cells, log)
    machine = machine_info()
    data = {
        "benchmark": "load_triton",
        "command": command,
        "git_revision": git_revision(REPO_ROOT),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "machine": machine,
        "machine_description": machine.describe(),
        "load_average_start": load_start,
        "load_average": load_average(),
        "versions": {**versions(("torch", "numpy", "onnxruntime", "tritonclient", "fastapi", "uvicorn")),
                     **tri_versions},
        "settings": {**settings.__dict__, "models_dir": portable_path(settings.models_dir, REPO_ROOT)},
        "anystep_engine": engine_desc,
        "parity_max_abs_diff": diffs,
        "raw": raw,
        "cells": cells,
        "goals": evaluate_goals(cells),
    }
    if write:
        md = out_dir / "load_triton.md"
        paths = write_results(out_dir, "load_triton", data, render_markdown(data, existing_notes(md)))
        log(f"[done] {paths.json}, {paths.markdown}")
    return data


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.load_triton``."""
    d = TritonSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=("anystep serve against Triton Inference Server (nvidia-pytriton, its dynamic batching) on the "
                     "same exported flow map, the same closed loop, side by side in one run; Triton's client loops "
                     "over the steps, anystep batches across them. Needs the Triton interpreter (make triton-venv "
                     "or $ANYSTEP_TRITON_PYTHON) and tritonclient. Writes load_triton.{json,md}."),
        epilog="Run measurements under `nice -n -5` on a shared machine and read the load average in the report.",
    )
    p.add_argument("--quick", action="store_true",
                   help="about a minute: n=1 only, one round, fewer requests (" +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--model", default=None, help=f"flow-map model name (default {d.model})")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--concurrency", type=int_list, default=None, help="closed-loop concurrency (default 1,64)")
    p.add_argument("-n", "--n", type=int_list, default=None, help="samples per request, comma list (default 1,64)")
    p.add_argument("--steps-mix", type=int_list, default=None, help="steps drawn uniformly per request (default 1,2,4,8)")
    p.add_argument("--requests", type=int, default=None, help=f"requests per phase (default {d.requests})")
    p.add_argument("--rounds", type=int, default=None, help=f"alternating rounds per cell (default {d.rounds})")
    p.add_argument("--time-limit", type=float, default=None, help=f"seconds per phase (default {d.time_limit_s:g})")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads of each server (default 1)")
    p.add_argument("--max-batch", type=int, default=None, help=f"largest engine batch of both (default {d.max_batch})")
    p.add_argument("--max-queue-delay-us", type=int, default=None,
                   help=f"Triton's dynamic-batcher delay (default {d.max_queue_delay_us})")
    p.add_argument("--format", default=None, choices=("npy", "json"),
                   help="anystep's answer format (default npy: binary, like Triton's tensors)")
    p.add_argument("--no-json-row", action="store_true", help="do not also time anystep answering JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="Triton repository, server logs, export cache (default runs/load_triton)")
    return p


def settings_from_args(args: argparse.Namespace) -> TritonSettings:
    """Resolve ``--quick`` and explicit options into :class:`TritonSettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name, key in (("model", "model"), ("concurrency", "concurrency"), ("n", "n_values"),
                      ("steps_mix", "steps_mix"), ("rounds", "rounds"), ("time_limit", "time_limit_s"),
                      ("threads", "threads"), ("max_batch", "max_batch"), ("max_queue_delay_us", "max_queue_delay_us"),
                      ("format", "format")):
        if getattr(args, name) is not None:
            kw[key] = getattr(args, name)
    conc = kw.get("concurrency", TritonSettings().concurrency)
    base = kw.get("requests", TritonSettings().requests)
    kw["requests"] = {c: int(args.requests) if args.requests is not None else int(base.get(c, max(base.values())))
                      for c in conc}
    if args.no_json_row:
        kw["json_row"] = False
    kw["models_dir"] = args.models_dir if args.models_dir is not None else bundled_models_dir()
    return TritonSettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load_triton``); returns the exit status."""
    from anystep.export.triton_repo import TritonUnavailableError

    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   work_dir=REPO_ROOT / "runs" / "load_triton", settings_errors=(LoadBenchError,),
                   error_prefixes={TritonUnavailableError: "Triton cannot start here: "})

if __name__ == "__main__":
    sys.exit(main())
