"""The Markdown report of :mod:`anystep.benchmarks.load` (it only formats a result dict)."""

from __future__ import annotations

import math
from typing import Any

from anystep.benchmarks.common import NOTES_BEGIN, NOTES_END, fmt, markdown_table

__all__ = ["render_markdown"]


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
    s = data["settings"]  # a LoadSettings
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
