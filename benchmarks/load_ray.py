"""Serving under load on Ray Serve: throughput per replica count, side by side in one run.

Deploys the digits flow map with ``anystep serve --ray``'s code path
(:func:`anystep.server.ray_serve.deploy`) on a local Ray cluster, on 127.0.0.1 only, and
alternates the replica count between rounds (``1, 2, 1, 2, ...``; Ray adds or removes a
replica without touching the others), so slow drifts of a shared machine's load hit
every row alike::

    python -m anystep.benchmarks.load_ray            # 3 rounds per replica count
    python -m anystep.benchmarks.load_ray --quick    # 1 round, fewer requests

Each round is a closed-loop phase of :func:`anystep.benchmarks.loadgen.run_phase` (the same
keep-alive loopback client as the single-process load benchmark): ``concurrency``
connections, ``n`` samples per request, ``steps`` drawn from the mix. A row per replica
count reports the median over its rounds of requests/s and evaluations/s
(``sum n x steps / wall``), p50/p99 latency and failed requests; per replica (scraped
from each replica's own ``/metrics``): the share of requests it answered and its mean
engine batch (step-level batching at work in every replica). A plain ``anystep serve``
(no Ray) row measured in the same run shows what the Ray proxy costs.
Goal (issue 17): 2 replicas >= 1.6x one replica's throughput, zero failed requests.
Results: ``benchmarks/results/load_ray.{json,md}``.
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
    int_list,
    load_average,
    machine_info,
    markdown_table,
    portable_path,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.load_probe import bare_engine_parallel
from anystep.benchmarks.loadgen import (  # the shared closed-loop harness
    LoadBenchError,
    histogram_delta,
    make_requests,
    parse_prometheus,
    run_phase,
    summarize_phase,
)

MODULE = "anystep.benchmarks.load_ray"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.6
CLIENT_TIMEOUT_S = 300.0  # a closed loop of 64 n=64 requests on one core answers in tens of s


@dataclass
class RaySettings:
    """Everything that determines a run (written to the results JSON).

    Attributes:
        model: flow-map model name under ``models_dir``.
        models_dir: folder of model directories.
        replica_counts: replica counts compared (the first is the baseline).
        rounds: measured rounds per replica count (alternating).
        threads: engine intra-op threads per replica (and Ray CPUs per replica).
        concurrency: closed-loop connections.
        n: samples per request.
        steps_mix: the ``steps`` values requests draw from.
        requests: requests per round.
        warmup_requests: unrecorded requests before each round.
        time_limit_s: wall-time bound per round.
        format: response format.
        plain: also measure a plain ``anystep serve`` (no Ray) in the same run.
        bare: before each round of ``c`` replicas, measure ``c`` bare engines running in
            parallel processes (:func:`bare_engine_parallel`): the machine's own scaling.
        seed: seed of the request mix.
        quick: smoke run.
    """

    model: str = "digits"
    models_dir: Path = REPO_ROOT / "models"
    replica_counts: tuple[int, ...] = (1, 2)
    rounds: int = 3
    threads: int = 1
    concurrency: int = 64
    n: int = 64
    steps_mix: tuple[int, ...] = (1, 2, 4, 8)
    requests: int = 192
    warmup_requests: int = 64
    time_limit_s: float = 60.0
    format: str = "json"
    plain: bool = True
    bare: bool = True
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.replica_counts or min(self.replica_counts) < 1:
            raise LoadBenchError("--replicas needs counts >= 1, e.g. 1,2")
        if self.rounds < 1 or self.requests < 1 or self.concurrency < 1 or not (1 <= self.n <= 256):
            raise LoadBenchError("rounds, requests, concurrency must be >= 1 and n in 1..256")
        if self.format not in ("json", "npy"):
            raise LoadBenchError("--format must be json or npy")


QUICK = {"rounds": 1, "requests": 96, "warmup_requests": 32, "plain": False}



def _server_config(settings: RaySettings) -> Any:
    from anystep.server.app import ServerConfig
    from anystep.server.engines import EngineOptions
    from anystep.server.registry import Limits, ModelSpec

    return ServerConfig(
        models=[ModelSpec(settings.model, Path(settings.models_dir) / settings.model)],
        engine="torch",
        engine_options=EngineOptions(threads=settings.threads),
        limits=Limits(max_n=max(256, settings.n), max_compute=max(65536, settings.n * max(settings.steps_mix))),
        max_queue=max(64, 2 * settings.concurrency),
        request_timeout_s=CLIENT_TIMEOUT_S,
        drain_timeout_s=30.0,
    )


async def _scrape_replicas(url: str, count: int, tries: int = 60) -> dict[str, dict]:
    """``{replica id: parsed /metrics}`` for ``count`` distinct replicas (the proxy picks one per GET)."""
    import httpx

    out: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as c:
        for _ in range(tries):
            r = await c.get("/metrics")
            rep = r.headers.get("x-anystep-replica", "-")
            out.setdefault(rep, parse_prometheus(r.text))
            if len(out) >= count:
                break
    return out


def _answered(samples: dict, model: str) -> float:
    return sum(
        v
        for (name, lab), v in samples.items()
        if name == "anystep_requests_total"
        and dict(lab).get("model") == model
        and dict(lab).get("route") == "/generate"
    )


async def _round(port: int, url: str, settings: RaySettings, replicas: int | None, k: int) -> dict[str, Any]:
    warm = make_requests(settings.warmup_requests, settings.steps_mix, settings.seed + 999 + k)
    await run_phase(
        port,
        settings.model,
        warm,
        concurrency=settings.concurrency,
        n=settings.n,
        time_limit_s=settings.time_limit_s,
        fmt_=settings.format,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    before = await _scrape_replicas(url, replicas or 1)
    reqs = make_requests(settings.requests, settings.steps_mix, settings.seed + k)
    ph = await run_phase(
        port,
        settings.model,
        reqs,
        concurrency=settings.concurrency,
        n=settings.n,
        time_limit_s=settings.time_limit_s,
        fmt_=settings.format,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    after = await _scrape_replicas(url, replicas or 1)
    summ = summarize_phase(ph, settings.n)
    per: dict[str, Any] = {}
    for rep in sorted(set(before) | set(after)):
        b, a = before.get(rep, {}), after.get(rep, {})
        batch = histogram_delta(b, a, "anystep_engine_batch_size", model=settings.model)
        per[rep] = {
            "answered": _answered(a, settings.model) - _answered(b, settings.model),
            "mean_batch": batch["mean"],
            "engine_calls": batch["count"],
        }
    summ["replicas"] = per
    summ["load_average"] = load_average()
    return summ


def _row(label: str, replicas: int | None, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        vals = [r[key] for r in rounds if r.get(key) is not None]
        return float(np.median(vals)) if vals else None

    shares = []
    for r in rounds:
        tot = sum(p["answered"] for p in r["replicas"].values()) or 1.0
        shares.append(sorted((p["answered"] / tot for p in r["replicas"].values()), reverse=True))
    batches = [p["mean_batch"] for r in rounds for p in r["replicas"].values() if p["mean_batch"]]
    return {
        "label": label,
        "replicas": replicas,
        "rounds": len(rounds),
        "requests_per_s": med("requests_per_s"),
        "evals_per_s": med("evals_per_s"),
        "requests_per_s_each": [r["requests_per_s"] for r in rounds],
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "sent": sum(r["sent"] for r in rounds),
        "failed": sum(r["error_count"] for r in rounds),
        "errors": [r["errors"] for r in rounds if r["errors"]],
        "replica_shares": shares,
        "mean_batch": float(np.median(batches)) if batches else None,
        "bare_evals_per_s": med("bare_evals_per_s"),
        "bare_evals_per_s_each": [r.get("bare_evals_per_s") for r in rounds],
        "phases": rounds,
    }


def run(
    settings: RaySettings, *, out_dir: Path, command: str, log: Callable[[str], None] = print, write: bool = True
) -> dict[str, Any]:
    """Measure every replica count (alternating rounds) and the plain server; write the report."""
    from anystep.server.ray_serve import RayOptions, deploy, import_serve
    from anystep.server.testing import ServerProcess, free_port

    _, serve = import_serve()
    model_dir = Path(settings.models_dir) / settings.model
    if not (model_dir / "config.json").is_file():
        raise LoadBenchError(f"no model directory {model_dir}; pass --models-dir or bundle it")
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    config = _server_config(settings)
    rows: list[dict[str, Any]] = []
    if settings.plain:
        args = [
            "--engine",
            "torch",
            "--threads",
            str(settings.threads),
            "--max-queue",
            str(config.max_queue),
            "--max-n",
            str(config.limits.max_n),
            "--max-compute",
            str(config.limits.max_compute),
            "--log-level",
            "warning",
            "--request-timeout",
            str(CLIENT_TIMEOUT_S),
        ]
        log("[plain] anystep serve (no Ray), one process")
        with ServerProcess(models={settings.model: model_dir}, args=args, ready_timeout=300.0) as srv:
            plain = [asyncio.run(_round(srv.port, srv.url, settings, None, k)) for k in range(settings.rounds)]
        rows.append(_row("anystep serve (no Ray)", None, plain))
        log(f"[plain] {fmt(rows[-1]['requests_per_s'])} req/s")
    port = free_port()
    counts = list(settings.replica_counts)
    log(f"[ray] local cluster, proxy on 127.0.0.1:{port}; replicas {counts} x {settings.rounds} rounds")
    opts = RayOptions(replicas=counts[0], num_cpus=float(settings.threads))
    dep = deploy(config, opts, "127.0.0.1", port, log_level="warning")
    by_count: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    try:
        from anystep.server.ray_serve import application

        k = 0
        for rnd in range(settings.rounds):
            for c in counts:
                if c != opts.replicas:
                    t_scale = time.perf_counter()
                    opts = RayOptions(replicas=c, num_cpus=float(settings.threads))
                    serve.run(application(config, opts), name=opts.app_name, route_prefix="/")
                    log(f"[ray] scaled to {c} replica(s) in {time.perf_counter() - t_scale:.1f} s")
                bare = bare_engine_parallel(model_dir, c, settings.threads) if settings.bare else None
                summ = asyncio.run(_round(port, dep.url, settings, c, 100 + k))
                summ["bare_evals_per_s"] = bare
                k += 1
                by_count[c].append(summ)
                log(
                    f"[ray] round {rnd + 1}, {c} replica(s): {summ['ok']}/{summ['sent']} ok, "
                    f"{fmt(summ['requests_per_s'])} req/s, p50 {fmt(summ.get('p50_ms'))} ms, "
                    f"load {summ['load_average']}"
                )
    finally:
        dep.stop()
    for c in counts:
        rows.append(_row(f"Ray Serve, {c} replica(s)", c, by_count[c]))
    goals = evaluate_goals(rows, counts[0])
    machine = machine_info()
    data = {
        "benchmark": "load_ray",
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "machine": machine,
        "machine_description": machine.describe(),
        "load_average": load_average(),
        "versions": versions(("torch", "numpy", "ray", "fastapi", "uvicorn")),
        "settings": {**asdict(settings), "models_dir": portable_path(settings.models_dir, REPO_ROOT)},
        "rows": rows,
        "goals": goals,
    }
    if write:
        md = out_dir / "load_ray.md"
        paths = write_results(out_dir, "load_ray", data, render_markdown(data, existing_notes(md)))
        log(f"[done] {paths.json}, {paths.markdown}")
    return data


def evaluate_goals(rows: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """Ratios to the ``first`` replica count's row (set on every row), and issue 17's goal.

    The goal compares 2 replicas with 1: the ratio of the rows' median requests/s, and
    per round (rounds alternate, so round ``i`` of each count ran back to back) the
    paired ratios, whose median is reported beside it; met when the median ratio is
    >= :data:`GOAL_RATIO` and no request failed in either row.
    """
    base = next(r for r in rows if r["replicas"] == first)
    goals: list[dict[str, Any]] = []
    for r in rows:
        a, b = r["requests_per_s"], base["requests_per_s"]
        r["ratio_vs_first"] = a / b if a and b else None
        ba, bb = r.get("bare_evals_per_s"), base.get("bare_evals_per_s")
        r["bare_ratio_vs_first"] = ba / bb if ba and bb else None
        if r["replicas"] == 2 and first == 1:
            paired = [x / y for x, y in zip(r["requests_per_s_each"], base["requests_per_s_each"]) if x and y]
            failed = r["failed"] + base["failed"]
            goals.append({
                "goal": f"2 replicas >= {GOAL_RATIO:g}x one replica's throughput, zero failed requests",
                "ratio": r["ratio_vs_first"], "paired_ratios": paired,
                "paired_ratio_median": float(np.median(paired)) if paired else None,
                "bare_engine_ratio": r.get("bare_ratio_vs_first"),
                "one_replica_requests_per_s": b, "two_replicas_requests_per_s": a, "failed": failed,
                "met": bool(r["ratio_vs_first"] and r["ratio_vs_first"] >= GOAL_RATIO and failed == 0),
            })  # fmt: skip
    return goals


def render_markdown(data: dict[str, Any], notes: str | None = None) -> str:
    """The report: settings, one row per replica count, the goal."""
    from anystep.benchmarks.common import NOTES_BEGIN, NOTES_END

    s = data["settings"]
    lines = [
        "# Serving under load on Ray Serve (replicas of the step-level-batching server)",
        "",
        f"- Command: `{data['command']}`",
        f"- Machine: {data['machine_description']}; load average at the end {data['load_average']}",
        f"- Versions: {data['versions']}",
        (
            f"- Workload: model `{s['model']}`, {s['concurrency']} concurrent keep-alive connections (closed loop), "
            f"n={s['n']} samples per request, steps drawn from {list(s['steps_mix'])}, {s['requests']} requests "
            f"per round after {s['warmup_requests']} warm-up requests, format {s['format']}; engine torch with "
            f"{s['threads']} thread(s) per replica; replica counts alternate round by round "
            f"({s['rounds']} round(s) each), medians over rounds."
        ),
        "",
    ]
    for g in data["goals"]:
        lines.append(
            f"- Goal: {g['goal']}: **{'met' if g['met'] else 'missed'}** — "
            f"{fmt(g['two_replicas_requests_per_s'])} vs {fmt(g['one_replica_requests_per_s'])} req/s "
            f"= {fmt(g['ratio'])}x (ratio of medians; per round: "
            f"{', '.join(fmt(v) for v in g['paired_ratios'])}), {g['failed']} failed; "
            f"the machine's own scaling meanwhile (bare engines in 2 vs 1 processes, no HTTP): "
            f"{fmt(g.get('bare_engine_ratio'))}x"
        )
    lines.append("")
    rows = []
    for r in data["rows"]:
        shares = " / ".join("/".join(f"{100 * v:.0f}%" for v in sh) for sh in r["replica_shares"])
        rows.append(
            [
                r["label"],
                r["rounds"],
                r["requests_per_s"],
                r["evals_per_s"],
                r["ratio_vs_first"],
                r["p50_ms"],
                r["p99_ms"],
                f"{r['failed']}/{r['sent']}",
                r["mean_batch"],
                shares if r["replicas"] else "-",
                ", ".join(fmt(v) for v in r["requests_per_s_each"]),
                r.get("bare_evals_per_s"),
                r.get("bare_ratio_vs_first"),
            ]
        )
    lines.append(
        markdown_table(
            [
                "server",
                "rounds",
                "req/s",
                "evals/s",
                "vs 1 replica",
                "p50 ms",
                "p99 ms",
                "failed",
                "mean engine batch",
                "requests per replica",
                "req/s per round",
                "bare engines evals/s",
                "bare vs 1 process",
            ],
            rows,
        )
    )
    lines += [
        "",
        (
            "*bare engines*: right before each round of c replicas, c processes each calling the same "
            "torch engine (1 thread, batch 256) at once for 6 s, no HTTP and no Ray: what the machine "
            "itself gave c parallel engines at that moment (on a shared machine, the ceiling of the "
            "replica ratio)."
        ),
        "",
        "Per-round load averages: "
        + "; ".join(
            f"{r['label']}: {[p['load_average'][0] if p['load_average'] else None for p in r['phases']]}"
            for r in data["rows"]
        ),
        "",
    ]
    lines += [NOTES_BEGIN, notes.strip() if notes else "", NOTES_END, ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.load_ray``."""
    d = RaySettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Throughput of anystep on Ray Serve per replica count (local "
        "cluster, 127.0.0.1); writes load_ray.{json,md}.",
    )
    p.add_argument("--quick", action="store_true", help="one round per replica count, fewer requests, no plain row")
    p.add_argument("--model", default=None, help=f"flow-map model name (default {d.model})")
    p.add_argument(
        "--models-dir", type=Path, default=None, help="folder of model directories (default <repo>/models)"
    )
    p.add_argument("--replicas", type=int_list, default=None, help="replica counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=None, help=f"rounds per replica count (default {d.rounds})")
    p.add_argument("--threads", type=int, default=None, help="engine threads per replica (default 1)")
    p.add_argument("--concurrency", type=int, default=None, help=f"connections (default {d.concurrency})")
    p.add_argument("-n", "--n", type=int, default=None, help=f"samples per request (default {d.n})")
    p.add_argument("--requests", type=int, default=None, help=f"requests per round (default {d.requests})")
    p.add_argument("--format", choices=("json", "npy"), default=None, help="response format (default json)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain anystep serve row")
    p.add_argument("--no-bare", action="store_true", help="skip the parallel bare-engine ceiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    return p


def settings_from_args(args: argparse.Namespace) -> RaySettings:
    """Resolve ``--quick`` and explicit options into :class:`RaySettings`."""
    kw: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name, key in (
        ("model", "model"),
        ("models_dir", "models_dir"),
        ("replicas", "replica_counts"),
        ("rounds", "rounds"),
        ("threads", "threads"),
        ("concurrency", "concurrency"),
        ("n", "n"),
        ("requests", "requests"),
        ("format", "format"),
    ):
        if getattr(args, name) is not None:
            kw[key] = getattr(args, name)
    if args.no_plain:
        kw["plain"] = False
    if args.no_bare:
        kw["bare"] = False
    return RaySettings(quick=bool(args.quick), seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load_ray``); returns the exit status."""
    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   settings_errors=(LoadBenchError,))

if __name__ == "__main__":
    sys.exit(main())
