"""Served flow map against served dopri5: does serving overhead eat the NFE advantage?

Issue 16's goal "digits n = 64 at >= 90% of the NFE-ratio limit against dopri5
(rtol 1e-5)": one ``anystep serve`` holds the flow map ``<model>`` and its teacher
``<model>-teacher``; ``POST /generate`` requests of ``n`` samples, one at a time, are
timed interleaved (:func:`anystep.benchmarks.timing.interleaved_timing`, the one timing
harness: random order per round, the garbage collector paused) for

* the teacher with ``solver=dopri5, rtol`` (NFE read from ``X-Anystep-NFE``), and
* the flow map at each ``steps = K`` (NFE = K).

The NFE-ratio limit of K is ``NFE_dopri5 / K``: what the flow map's speed-up would be
if every network evaluation cost the same and nothing else cost anything. The measured
ratio is ``p50(dopri5) / p50(flow map, K)`` (client side); the goal is met at K when
``measured / limit >= 0.9``. The server-reported engine time per evaluation of both
models is given beside it (the limit assumes equal per-evaluation cost)::

    python -m anystep.benchmarks.load_nfe            # digits, n=64, K=1,2,4,8
    python -m anystep.benchmarks.load_nfe --quick    # fewer rounds
    python -m anystep.benchmarks.load --nfe-ratio    # the same, from the load benchmark

Results: ``benchmarks/results/load_nfe.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.common import (
    OUT_HELP,
    existing_notes,
    fmt,
    git_revision,
    int_list,
    load_average,
    machine_info,
    markdown_table,
    notes_section,
    portable_path,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.loadgen import (
    LoadBenchError,
    LoopbackClient,
    generate_body,
    histogram_delta,
    scrape,
    server_timing,
)
from anystep.benchmarks.timing import interleaved_timing, percentile, summarize
from anystep.server.registry import models_dir as bundled_models_dir

MODULE = "anystep.benchmarks.load_nfe"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_FRACTION = 0.9


@dataclass
class NfeSettings:
    """Everything that determines a run (written to the results JSON).

    Attributes:
        model: flow-map name; ``<model>-teacher`` is its velocity teacher.
        models_dir: folder of model directories.
        n: samples per request.
        steps: flow-map step counts K compared.
        rtol: dopri5 tolerance (``atol = rtol``) of the teacher.
        engine: the server's ``--engine``.
        threads: engine intra-op threads.
        rounds: interleaved timing rounds.
        format: response format.
        seed: first seed (each request of a round uses the same seeds for every case).
        quick: smoke run.
    """

    model: str = "digits"
    models_dir: Path = REPO_ROOT / "models"
    n: int = 64
    steps: tuple[int, ...] = (1, 2, 4, 8)
    rtol: float = 1e-5
    engine: str = "onnx"
    threads: int = 1
    rounds: int = 12
    format: str = "json"
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        if not (1 <= self.n <= 256):
            raise LoadBenchError(f"-n must lie in 1..256, got {self.n}")
        if not self.steps or min(self.steps) < 1 or max(self.steps) > 64:
            raise LoadBenchError(f"--steps must be integers in 1..64, got {self.steps}")
        if not (0 < self.rtol < 1):
            raise LoadBenchError(f"--rtol must lie in (0, 1), got {self.rtol}")
        if self.engine not in ("torch", "onnx", "auto"):
            raise LoadBenchError(f"--engine must be torch, onnx or auto, got {self.engine!r}")
        if self.rounds < 1 or self.threads < 1:
            raise LoadBenchError("--rounds and --threads must be >= 1")
        if self.format not in ("json", "npy"):
            raise LoadBenchError("--format must be json or npy")


QUICK: dict[str, Any] = {"rounds": 3}


def _cases(settings: NfeSettings) -> dict[str, dict[str, Any]]:
    cases = {"dopri5": {"model": f"{settings.model}-teacher", "steps": None,
                        "extra": {"solver": "dopri5", "rtol": settings.rtol}}}
    for k in settings.steps:
        cases[f"flowmap-{k}"] = {"model": settings.model, "steps": k, "extra": {}}
    return cases


def measure(port: int, settings: NfeSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved sequential requests of every case; per case latency stats, NFE and engine time."""
    loop = asyncio.new_event_loop()
    client = LoopbackClient(port, timeout_s=600.0)
    cases = _cases(settings)
    seen: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    counter = {"i": 0}

    def call(key: str) -> Callable[[], int]:
        c = cases[key]

        def fn() -> int:
            counter["i"] += 1
            seed = settings.seed + settings.n * (counter["i"] % 1000)
            body = generate_body(c["model"], c["steps"], settings.n, seed, settings.format, **c["extra"])
            status, headers, text = loop.run_until_complete(client.request("POST", "/generate", body))
            if status != 200:
                raise LoadBenchError(f"{key}: /generate answered {status}: {text[:300]!r}")
            nfe = int(headers.get("x-anystep-nfe", "0"))
            st = server_timing(headers) or {}
            seen[key].append({"nfe": nfe, "compute_ms": st.get("compute", float("nan")),
                              "total_ms": st.get("total", float("nan"))})
            return nfe

        return fn

    try:
        res = interleaved_timing({k: call(k) for k in cases}, rounds=settings.rounds, warmup=2, block_s=0.02,
                                 max_calls_per_block=4, seed=settings.seed)
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    out: dict[str, Any] = {}
    for k in cases:
        recs = seen[k][2:]  # the warm-up calls are not timed
        nfe = float(np.median([r["nfe"] for r in recs]))
        comp = [r["compute_ms"] for r in recs if np.isfinite(r["compute_ms"])]
        out[k] = {"latency": summarize(res.seconds[k]), "nfe_median": nfe, "requests_sent": len(seen[k]),
                  "nfe_range": [min(r["nfe"] for r in recs), max(r["nfe"] for r in recs)],
                  "server_compute_ms_p50": percentile(comp, 50) if comp else None,
                  "server_compute_ms_per_nfe": (percentile(comp, 50) / nfe) if comp and nfe else None}
        log(f"[{k}] p50 {out[k]['latency'].median_ms:.2f} ms, NFE {nfe:g}, engine "
            f"{fmt(out[k]['server_compute_ms_p50'])} ms")
    return out


def bare_per_eval(dirs: dict[str, Path], settings: NfeSettings, cache_dir: Path) -> dict[str, Any]:
    """One network evaluation of each model on ``n`` rows through the server's engine, in this process.

    The flow map's ``step(x, s, t)`` and the teacher's ``velocity(x, t)`` timed interleaved
    (:func:`~anystep.benchmarks.timing.interleaved_timing`): whether the two networks cost
    the same per evaluation, which the NFE-ratio limit assumes. The teacher is also timed at
    every smaller padded batch size (the server pads a tick's rows to a power of two): what
    the ticks of a dopri5 request cost once some of its samples have finished
    (:func:`dopri5_composition`).
    """
    from anystep.benchmarks.load_probe import build_bare_engine
    from anystep.server.planner import bucket_size

    fm = build_bare_engine(dirs[settings.model], settings, cache_dir)
    te = build_bare_engine(dirs[f"{settings.model}-teacher"], settings, cache_dir, kinds=("velocity",))
    rng = np.random.default_rng(settings.seed)
    full = bucket_size(settings.n, 256)
    x = rng.standard_normal((full, *fm.data_shape)).astype(np.float32)
    s = np.zeros(full, np.float32)
    t = np.full(full, 0.5, np.float32)
    fns: dict[str, Callable[[], Any]] = {"flowmap step": lambda: fm.step(x[: settings.n], s[: settings.n], t[: settings.n]),
                                          "teacher velocity": lambda: te.velocity(x[: settings.n], t[: settings.n])}
    sizes = [b for b in (1 << i for i in range(9)) if b < full] + [full]
    for b in sizes:
        fns[f"teacher velocity B={b}"] = lambda b=b: te.velocity(x[:b], t[:b])
    res = interleaved_timing(fns, rounds=max(3, settings.rounds), warmup=3, block_s=0.1, seed=settings.seed)
    out = {k: summarize(v) for k, v in res.seconds.items()}
    fm.close()
    te.close()
    return {"flowmap_ms": out["flowmap step"].median_ms, "teacher_ms": out["teacher velocity"].median_ms,
            "flowmap": out["flowmap step"], "teacher": out["teacher velocity"],
            "teacher_ms_by_batch": {b: out[f"teacher velocity B={b}"].median_ms for b in sizes}}


def dopri5_composition(batch_hist: dict[str, Any], requests: int, teacher_ms_by_batch: dict[Any, float],
                       n: int) -> dict[str, Any] | None:
    """What the engine calls of the served dopri5 requests cost, in full-batch evaluations.

    dopri5 controls each sample's step on its own (:mod:`anystep.server.jobs`): samples that
    need fewer steps finish early, so the last ticks of a request run fewer rows (padded to
    smaller powers of two) and cost less than a full-batch call, while the request's NFE
    (``X-Anystep-NFE``) is its slowest sample's. The NFE-ratio limit counts every one of those
    NFE as a full evaluation; this counts them at their cost.

    Args:
        batch_hist: :func:`~anystep.benchmarks.loadgen.histogram_delta` of the teacher's
            ``anystep_engine_batch_size`` over the dopri5 requests (its buckets are the powers
            of two the server pads to).
        requests: dopri5 requests sent in that window.
        teacher_ms_by_batch: bare teacher call cost per padded batch size (ms).
        n: samples per request.

    Returns:
        ``{"calls_by_batch", "ticks_per_request", "mean_rows", "full_batch_evals_per_request"}``,
        or None without calls or without a cost for a batch size seen.
    """
    from anystep.server.planner import bucket_size

    costs = {int(b): float(v) for b, v in teacher_ms_by_batch.items()}
    full = bucket_size(n, 256)
    calls = {int(b["le"]): int(b["count"]) for b in batch_hist.get("buckets", [])
             if b["count"] and np.isfinite(b["le"])}
    if not calls or requests < 1 or full not in costs or any(b not in costs for b in calls):
        return None
    equiv = sum(c * costs[b] for b, c in calls.items()) / costs[full]
    return {"calls_by_batch": calls, "ticks_per_request": sum(calls.values()) / requests,
            "mean_rows": batch_hist.get("mean"), "full_batch_evals_per_request": equiv / requests}


def evaluate_goals(cases: dict[str, Any], settings: NfeSettings, bare: dict[str, Any] | None = None,
                   composition: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per K: NFE-ratio limit ``NFE_dopri5 / K``, measured ``p50 dopri5 / p50 flow map``, their fraction.

    With ``composition`` (:func:`dopri5_composition`) also the limit at the cost of dopri5's
    engine calls: ``full-batch evaluations per dopri5 request / K`` (what a flow map whose
    requests cost nothing but their K full-batch calls would reach).
    """
    ref = cases["dopri5"]
    goals = []
    for k in settings.steps:
        fm = cases[f"flowmap-{k}"]
        limit = ref["nfe_median"] / k
        measured = ref["latency"].median_ms / fm["latency"].median_ms
        goals.append({
            "goal": f"{settings.model} n={settings.n}: served flow map K={k} at >= {GOAL_FRACTION:.0%} of the "
                    f"NFE-ratio limit against served dopri5 (rtol {settings.rtol:g})",
            "steps": k, "dopri5_nfe": ref["nfe_median"], "nfe_ratio_limit": limit,
            "dopri5_p50_ms": ref["latency"].median_ms, "flowmap_p50_ms": fm["latency"].median_ms,
            "latency_ratio": measured, "fraction": measured / limit, "met": bool(measured / limit >= GOAL_FRACTION),
        })
        ce, cf = ref.get("server_compute_ms_p50"), fm.get("server_compute_ms_p50")
        if ce and cf:  # what the engine calls alone allow: the serving overhead's share apart from network cost
            goals[-1]["engine_time_ratio"] = ce / cf
            goals[-1]["fraction_of_engine_time_ratio"] = measured / (ce / cf)
        if bare:  # the limit corrected for the networks' per-evaluation costs (bare engine, in-process)
            cost = bare["teacher_ms"] / bare["flowmap_ms"]
            goals[-1]["bare_cost_ratio"] = cost
            goals[-1]["fraction_of_cost_adjusted_limit"] = measured / (limit * cost)
        if composition:
            comp_limit = composition["full_batch_evals_per_request"] / k
            goals[-1]["composition_limit"] = comp_limit
            goals[-1]["fraction_of_composition_limit"] = measured / comp_limit
    return goals


def run(settings: NfeSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Serve ``<model>`` and ``<model>-teacher``, time every case; write ``load_nfe.{json,md}``."""
    from anystep.server.testing import ServerProcess

    dirs = {m: Path(settings.models_dir) / m for m in (settings.model, f"{settings.model}-teacher")}
    for d in dirs.values():
        if not (d / "config.json").is_file():
            raise LoadBenchError(f"no model directory {d}; pass --models-dir/--model or bundle it first")
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    load_start = load_average()
    work_dir.mkdir(parents=True, exist_ok=True)
    args = ["--engine", settings.engine, "--threads", str(settings.threads), "--max-n", str(max(256, settings.n)),
            "--max-compute", str(max(65536, settings.n * 1024)), "--log-level", "warning",
            "--cache-dir", str(work_dir / "serve-cache"), "--request-timeout", "600"]
    log(f"[start] anystep serve --engine {settings.engine}: {', '.join(dirs)}")
    log("[bare] one evaluation of each network in this process (server engine, same threads)")
    bare = bare_per_eval(dirs, settings, work_dir / "serve-cache")
    log(f"[bare] flow map step {bare['flowmap_ms']:.2f} ms, teacher velocity {bare['teacher_ms']:.2f} ms")
    with ServerProcess(models=dirs, args=args, log_path=work_dir / "serve-nfe.log", ready_timeout=600.0) as srv:
        before = asyncio.run(scrape(srv.port))
        cases = measure(srv.port, settings, log)
        hist = histogram_delta(before, asyncio.run(scrape(srv.port)), "anystep_engine_batch_size",
                               model=f"{settings.model}-teacher")
        import httpx

        engines = {m["name"]: m.get("engine") for m in httpx.get(srv.url + "/v1/models", timeout=10).json()["models"]}
    machine = machine_info()
    data = {
        "benchmark": "load_nfe", "command": command, "git_revision": git_revision(REPO_ROOT), "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0, "machine": machine, "machine_description": machine.describe(),
        "load_average_start": load_start, "load_average": load_average(),
        "versions": versions(("torch", "numpy", "onnxruntime", "fastapi", "uvicorn")),
        "settings": {**asdict(settings), "models_dir": portable_path(settings.models_dir, REPO_ROOT)},
        "engines": engines, "bare": bare, "cases": cases,
    }
    comp = dopri5_composition(hist, cases["dopri5"]["requests_sent"], bare["teacher_ms_by_batch"], settings.n)
    data["dopri5_composition"] = comp
    data["goals"] = evaluate_goals(cases, settings, bare, comp)
    if comp:
        log(f"[dopri5] {comp['ticks_per_request']:.1f} ticks per request, mean {fmt(comp['mean_rows'])} rows: "
            f"{comp['full_batch_evals_per_request']:.1f} full-batch evaluations per request")
    if write:
        md = out_dir / "load_nfe.md"
        paths = write_results(out_dir, "load_nfe", data, render_markdown(data, existing_notes(md)))
        log(f"[done] {paths.json}, {paths.markdown}")
    return data


def render_markdown(data: dict[str, Any], notes: str | None = None) -> str:
    """The report: settings, the goal per K with both absolute figures, one row per case."""
    s = data["settings"]
    lines = [
        "# Served flow map against served dopri5 (the NFE-ratio limit)", "",
        f"- Command: `{data['command']}` (checkout {data.get('git_revision')})",
        f"- Machine: {data['machine_description']}",
        f"- Load average (1/5/15 min) at the start {data.get('load_average_start')}, at the end {data['load_average']}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v),
        f"- Started {data['started_at']}, took {data['duration_s']:.0f} s.",
        (f"- One `anystep serve --engine {s['engine']} --threads {s['threads']}` holding `{s['model']}` and "
         f"`{s['model']}-teacher` (engines {data.get('engines')}); `POST /generate` with n={s['n']}, format "
         f"{s['format']}, one request at a time, cases interleaved in a random order per round ({s['rounds']} "
         "rounds, several requests per block for fast cases); latency client side, p50 over the timed requests."),
        (f"- NFE-ratio limit at K = NFE of dopri5 (rtol {s['rtol']:g}, median over its requests, read from "
         "`X-Anystep-NFE`) / K. Measured ratio = p50 dopri5 / p50 flow map. Goal: measured / limit >= "
         f"{GOAL_FRACTION:.0%}."), "", "## Goals (issue 16)", "",
    ]
    for g in data["goals"]:
        lines.append(f"- {g['goal']}: {'met' if g['met'] else '**missed**'}. dopri5 p50 {fmt(g['dopri5_p50_ms'])} ms "
                     f"at {fmt(g['dopri5_nfe'])} NFE, flow map p50 {fmt(g['flowmap_p50_ms'])} ms at {g['steps']} "
                     f"NFE: measured {fmt(g['latency_ratio'])}x of a {fmt(g['nfe_ratio_limit'])}x limit = "
                     f"{g['fraction']:.0%}" + (
                         f" (the engine calls alone, server-reported: {fmt(g['engine_time_ratio'])}x, of which the "
                         f"served ratio keeps {g['fraction_of_engine_time_ratio']:.0%})"
                         if g.get("engine_time_ratio") else "") + (
                         f"; per evaluation the teacher costs {fmt(g['bare_cost_ratio'])}x the flow map (bare "
                         f"engines), so the cost-adjusted limit is {fmt(g['nfe_ratio_limit'] * g['bare_cost_ratio'])}x"
                         f", of which the served ratio keeps {g['fraction_of_cost_adjusted_limit']:.0%}"
                         if g.get("bare_cost_ratio") else "") + (
                         f"; at the cost of dopri5's engine calls (its samples finish at different steps, see below) "
                         f"the limit is {fmt(g['composition_limit'])}x, of which the served ratio keeps "
                         f"{g['fraction_of_composition_limit']:.0%}" if g.get("composition_limit") else ""))
    rows = [[k, c["latency"].n, c["latency"].median_ms, c["latency"].p95_ms, c["nfe_median"],
             f"{c['nfe_range'][0]}-{c['nfe_range'][1]}", c["server_compute_ms_p50"], c["server_compute_ms_per_nfe"],
             (c["latency"].median_ms - (c["server_compute_ms_p50"] or 0.0))]
            for k, c in data["cases"].items()]
    lines += ["", "## Cases", "",
              markdown_table(["case", "requests", "p50 ms", "p95 ms", "NFE (median)", "NFE range",
                              "engine ms (server, p50)", "engine ms per NFE", "p50 - engine ms"], rows), "",
              ("*engine ms per NFE*: the server-reported compute time over the NFE; the limit assumes the flow map "
               "and the teacher cost the same per evaluation, which this column checks."), ""]
    b = data.get("bare")
    if b:
        lines += [(f"Bare engines in the benchmark process (the server's engine type and threads, n={s['n']} rows, "
                   f"interleaved): flow map step p50 {fmt(b['flowmap_ms'])} ms, teacher velocity p50 "
                   f"{fmt(b['teacher_ms'])} ms per evaluation."), ""]
        by = b.get("teacher_ms_by_batch") or {}
        if by:
            lines += ["Teacher velocity per padded batch size (bare, ms per call): "
                      + ", ".join(f"B={k}: {fmt(v)}" for k, v in by.items()) + ".", ""]
    c = data.get("dopri5_composition")
    if c:
        calls = ", ".join(f"{k}: {v}" for k, v in c["calls_by_batch"].items())
        lines += ["## Batch composition of the dopri5 requests", "",
                  (f"Engine calls of the teacher by padded batch size over the run (`/metrics` "
                   f"`anystep_engine_batch_size`; size: calls): {calls}. Per request "
                   f"{fmt(c['ticks_per_request'])} ticks with {fmt(c['mean_rows'])} rows on average, costing "
                   f"**{fmt(c['full_batch_evals_per_request'])} full-batch evaluations** (each tick weighted by the "
                   "bare cost of its batch size over the full batch's). dopri5 steps every sample with its own step "
                   "size: samples that need fewer steps finish early and the last ticks run fewer rows, while "
                   "`X-Anystep-NFE` (the limit's numerator) is the slowest sample's. The limit at that cost, "
                   "full-batch evaluations / K, is what the flow map reaches if its requests cost nothing but its "
                   "K full-batch calls; the issue's limit NFE / K assumes every dopri5 evaluation is a full one."), ""]
    lines += notes_section(notes)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.load_nfe``."""
    d = NfeSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=("Served flow map (steps=K) against the served teacher's dopri5 at n samples per request: the "
                     "measured latency ratio against the NFE-ratio limit NFE_dopri5 / K (issue 16: >= 90%). "
                     "Starts anystep serve on 127.0.0.1; writes load_nfe.{json,md}."),
        epilog="Run measurements under `nice -n -5` on a shared machine and read the load average in the report.",
    )
    p.add_argument("--quick", action="store_true", help=f"fewer rounds ({QUICK})")
    p.add_argument("--model", default=None, help=f"flow-map name; <model>-teacher is the teacher (default {d.model})")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("-n", "--n", type=int, default=None, help=f"samples per request (default {d.n})")
    p.add_argument("--steps", type=int_list, default=None, help="flow-map K compared (default 1,2,4,8)")
    p.add_argument("--rtol", type=float, default=None, help=f"dopri5 tolerance (default {d.rtol:g})")
    p.add_argument("--engine", default=None, choices=("torch", "onnx", "auto"), help=f"default {d.engine}")
    p.add_argument("--threads", type=int, default=None, help="engine intra-op threads (default 1)")
    p.add_argument("--rounds", type=int, default=None, help=f"interleaved rounds (default {d.rounds})")
    p.add_argument("--format", default=None, choices=("json", "npy"), help="response format (default json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--work-dir", type=Path, default=None, help="server log and export cache (default runs/load)")
    return p


def settings_from_args(args: argparse.Namespace) -> NfeSettings:
    """Resolve ``--quick`` and explicit options into :class:`NfeSettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("model", "n", "steps", "rtol", "engine", "threads", "rounds", "format"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    kw["models_dir"] = args.models_dir if args.models_dir is not None else bundled_models_dir()
    return NfeSettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load_nfe``); returns the exit status."""
    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   work_dir=REPO_ROOT / "runs" / "load", settings_errors=(LoadBenchError,))

if __name__ == "__main__":
    sys.exit(main())
