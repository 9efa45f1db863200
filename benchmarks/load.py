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
    fmt,
    int_list,
    load_average,
    machine_info,
    name_list,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.load_probe import build_bare_engine, latency_probe, raw_throughput
from anystep.benchmarks.load_profile import (  # noqa: F401 - re-exported
    PROFILE_CATEGORIES,
    PySpy,
    categorize_stacks,
    profile_sequential,
    py_spy_path,
)
from anystep.benchmarks.load_report import render_markdown
from anystep.benchmarks.loadgen import (  # noqa: F401 - re-exported (load_ray, load_overhead, tests)
    LOOPBACK,
    EmptyResponse,
    LoadBenchError,
    LoopbackClient,
    PhaseResult,
    RequestRecord,
    RequestSpec,
    generate_body,
    histogram_delta,
    make_requests,
    parse_prometheus,
    run_phase,
    scrape,
    server_timing,
    summarize_phase,
)
from anystep.server.registry import models_dir as bundled_models_dir

__all__ = [
    "QUICK",
    "LoadBenchError",
    "LoadSettings",
    "LoopbackClient",
    "PhaseResult",
    "RequestRecord",
    "RequestSpec",
    "build_bare_engine",
    "build_parser",
    "categorize_stacks",
    "histogram_delta",
    "main",
    "make_requests",
    "parse_prometheus",
    "render_markdown",
    "run",
    "run_phase",
    "summarize_phase",
]

MODULE = "anystep.benchmarks.load"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_LATENCY_RATIO = 2.0
GOAL_THROUGHPUT_RATIO = 0.7


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
            out["profiles"]["sequential steps=1, n=1"] = await profile_sequential(
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
                before = await scrape(srv.port)
                ph = await run_phase(srv.port, model, reqs, concurrency=c, n=n,
                                     time_limit_s=settings.time_limit_s, fmt_=settings.format)
                after = await scrape(srv.port)
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


# command line
# --------------------------------------------------------------------------------------


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
    p.add_argument("--nfe-ratio", action="store_true",
                   help="issue 16's digits goal instead: served flow map (n=64, K=1,2,4,8) against served dopri5 "
                        "(rtol 1e-5) of digits-teacher, latency ratio vs the NFE-ratio limit; the same as "
                        "python -m anystep.benchmarks.load_nfe (--quick, --models-dir, --out pass through); "
                        "writes load_nfe.{json,md}")
    p.add_argument("--quick", action="store_true", help="about a minute: checkerboard only, fewer requests")
    p.add_argument("--models", type=name_list, default=None, help="flow-map model names (default checkerboard,digits)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--engine", default=None, choices=("torch", "onnx"), help="server engine (default torch)")
    p.add_argument("--concurrency", type=int_list, default=None, help="default 1,8,64")
    p.add_argument("--steps-mix", type=int_list, default=None, help="steps values drawn uniformly (default 1,2,4,8)")
    p.add_argument("-n", "--n", type=int_list, default=None,
                   help=f"samples per request, comma list: each runs every concurrency (default {d.n_values})")
    p.add_argument("--requests", type=int, default=None,
                   help=f"requests per phase, all concurrencies (default {d.requests})")
    p.add_argument("--time-limit", type=float, default=None, help=f"seconds per phase (default {d.time_limit_s:g})")
    p.add_argument("--probe-pairs", type=int, default=None, help=f"latency-probe pairs (default {d.probe_pairs})")
    p.add_argument("--batching", type=name_list, default=None, help="on, off or on,off (default)")
    p.add_argument("--threads", type=int, default=None, help="engine intra-op threads (default 1)")
    p.add_argument("--format", default=None, choices=("json", "npy"), help="response format (default json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-profile", action="store_true", help="do not sample the server with py-spy")
    p.add_argument("--profile", action="store_true", help="sample the server with py-spy even with --quick")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
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
    kw["models_dir"] = args.models_dir if args.models_dir is not None else bundled_models_dir()
    if args.no_profile:
        kw["profile"] = False
    elif args.profile:
        kw["profile"] = True
    return LoadSettings(quick=bool(args.quick), seed=args.seed, **kw)


def _other_modes(args: argparse.Namespace, settings: LoadSettings, out: Path, work: Path, command: str) -> int | None:
    """``--nfe-ratio`` (forwarded to :mod:`~anystep.benchmarks.load_nfe`) and ``--overhead``; None: the load run."""
    if args.nfe_ratio:
        from anystep.benchmarks import load_nfe

        fwd = ["--quick"] if args.quick else []
        for flag, val in (("--models-dir", args.models_dir), ("--out", args.out), ("--work-dir", args.work_dir),
                          ("--threads", args.threads)):
            if val is not None:
                fwd += [flag, str(val)]
        if args.engine is not None:
            fwd += ["--engine", args.engine]
        return load_nfe.main(fwd)
    if args.overhead:
        from anystep.benchmarks.load_overhead import render_overhead, run_overhead

        t0 = time.perf_counter()
        data = run_overhead(Path(settings.models_dir), work, rounds=40 if settings.quick else 200,
                            engine_name=args.engine or "onnx", log=lambda m: print(m, flush=True),
                            closed_requests=600 if settings.quick else 3000)
        machine = machine_info()
        data.update(benchmark="load_overhead", machine=machine, machine_description=machine.describe(),
                    command=command, load_average=load_average(), duration_s=time.perf_counter() - t0,
                    versions=versions(("torch", "numpy", "onnxruntime", "fastapi", "uvicorn", "starlette")))
        paths = write_results(out, "load_overhead", data, render_overhead(data, existing_notes(out / "load_overhead.md")))
        print(f"[done] {paths.json}, {paths.markdown}")
        return 0
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load``); returns the exit status."""
    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   work_dir=REPO_ROOT / "runs" / "load", settings_errors=(LoadBenchError,), dispatch=_other_modes)

if __name__ == "__main__":
    sys.exit(main())
