"""The Markdown report of :mod:`anystep.benchmarks.load_triton` (it only formats a result dict)."""

from __future__ import annotations

from typing import Any

from anystep.benchmarks.common import NOTES_BEGIN, NOTES_END, fmt, markdown_table

__all__ = ["render_markdown"]



def _labels(fmt_: str) -> dict[str, str]:
    return {"anystep": f"anystep serve ({fmt_} answers, step-level batching)",
            "anystep-json": "anystep serve (json answers, step-level batching)",
            "triton": "Triton (pytriton, dynamic batching; client loops over the steps)"}


def _servers(cell: dict[str, Any]) -> list[str]:
    return [k for k in ("anystep", "anystep-json", "triton") if k in cell]


def _goal_line(g: dict[str, Any]) -> str:
    mark = "met" if g["met"] else "**missed**"
    if g["metric"] == "p50_ms":
        detail = (f"p50 anystep {fmt(g['anystep'])} ms vs Triton {fmt(g['triton'])} ms "
                  f"(Triton / anystep = {g['ratio']:.2f}x)")
    else:
        detail = (f"anystep {fmt(g['anystep'])} samples/s vs Triton {fmt(g['triton'])} samples/s "
                  f"(anystep / Triton = {g['ratio']:.2f}x)")
    return f"- {g['goal']}: {mark}. {detail}"


def render_markdown(data: dict[str, Any], notes: str | None = None) -> str:
    """The report: settings, goals with both absolute figures, one table row per (n, c, server)."""
    s = data["settings"]
    v = data["versions"]
    labels = _labels(s.get("format", "json"))
    lines = [
        "# anystep against Triton Inference Server (the same exported map, the same closed loop)",
        "",
        f"- Command: `{data['command']}` (checkout {data.get('git_revision')})",
        f"- Machine: {data['machine_description']}",
        (f"- Load average (1/5/15 min) at the start {data.get('load_average_start')}, at the end "
         f"{data.get('load_average')} (a shared CPU: both servers, the load generator and other jobs compete)."),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- Started {data['started_at']}, took {data['duration_s']:.0f} s.",
        (f"- Model `{s['model']}` (`{s['models_dir']}/{s['model']}`), one exported single-step ONNX graph per server, "
         f"ONNX Runtime on the CPU with {s['threads']} intra-op thread(s) in both; anystep engine(s) "
         f"{data.get('anystep_engine')}. Batch limit {s['max_batch']} rows in both (anystep `--max-batch`, Triton "
         f"`max_batch_size`); Triton's dynamic batcher waits up to {s['max_queue_delay_us']} µs."),
        (f"- Requests: n in {list(s['n_values'])} samples, steps drawn uniformly from {list(s['steps_mix'])} (the "
         f"same list for both servers), closed loop at concurrency {list(s['concurrency'])}, at most "
         f"{s['requests']} requests and {s['time_limit_s']:g} s per phase, {s['rounds']} round(s) with the "
         "servers alternating (pooled below). anystep: one `POST /generate` per request, answered as "
         f"{s.get('format', 'json')} (`format`; npy is binary like Triton's tensors"
         + ("; the same server answering JSON is a third row" if s.get("json_row") and s.get("format") != "json"
            else "") + "). Triton: "
         "the client draws the request's base samples (the server's seeded noise) and sends K `infer` calls "
         "(KServe v2, binary tensors, built and parsed by tritonclient) on the same keep-alive client."),
        ("- Same map: one request of 4 samples per step count answered by both, max |anystep - Triton| per K: "
         + ", ".join(f"K={k}: {fmt(d)}" for k, d in data["parity_max_abs_diff"].items()) + "."),
        "",
        "## Goals (issue 16)",
        "",
    ]
    lines += [_goal_line(g) for g in data["goals"]] or ["- (no cell at concurrency 1 or 64 measured)"]
    lines += ["", "## Results", "",
              ("Latency is client side (first byte sent to last byte of the answer, all K calls for Triton). "
               "Samples/s = answered requests x n / wall time of the pooled phases; per round in the last column. "
               "Rows per engine call: anystep from `anystep_engine_batch_size`, Triton from "
               "`nv_inference_count / nv_inference_exec_count` (its model executions). Server CPU: CPU seconds "
               "of the server's process tree over its phases / their wall time (anystep: the one uvicorn process; "
               "Triton: the pytriton worker, tritonserver and its Python-backend stub), from /proc; run-queue wait: the "
               "time its threads were runnable but waiting for a CPU (/proc/*/task/*/schedstat) / wall time, large "
               "when the shared machine, not the server, is the limit; client CPU: the load generator's own process. "
               "Served/raw: "
               "rows served per second (samples/s x mean steps) over the bare engine's rows/s in the benchmark "
               "process at batch min(c x n, max batch): "
               + ", ".join(f"batch {b}: {fmt(r['rows_per_s'])} rows/s ({fmt(r['ms_per_call'])} ms per call)"
                           for b, r in (data.get("raw") or {}).items()) + "."), ""]
    body = []
    for cell in data["cells"]:
        for server in _servers(cell):
            p = cell[server]
            body.append([cell["n"], cell["concurrency"], labels[server], f"{p['ok']}/{p['sent']}", p.get("p50_ms"),
                         p.get("p95_ms"), p.get("p99_ms"), p.get("samples_per_s"), p.get("requests_per_s"),
                         p.get("rows_per_engine_call"), p.get("served_raw_ratio"), p.get("server_cores"),
                         p.get("server_runqueue_cores"), p.get("client_cores"),
                         p["error_count"],
                         ", ".join(fmt(x) for x in p.get("samples_per_s_each") or [])])
    lines += [markdown_table(["n", "concurrency", "server", "ok/sent", "p50 ms", "p95 ms", "p99 ms", "samples/s",
                              "req/s", "rows per engine call", "served/raw", "server CPU (cores)", "run-queue wait (cores)", "client CPU (cores)",
                              "errors",
                              "samples/s per round"], body), ""]
    ks = sorted({int(k) for cell in data["cells"] for srv in ("anystep", "triton")
                 for k in (cell[srv].get("per_steps") or {})})
    if ks:
        lines += ["Latency by steps (p50 ms, anystep / Triton):", ""]
        rows = []
        for cell in data["cells"]:
            ps = {srv: {int(k): val for k, val in (cell[srv].get("per_steps") or {}).items()}
                  for srv in ("anystep", "triton")}
            rows.append([cell["n"], cell["concurrency"]] + [
                f"{fmt(ps['anystep'].get(k, {}).get('p50_ms'))} / {fmt(ps['triton'].get(k, {}).get('p50_ms'))}"
                for k in ks])
        lines += [markdown_table(["n", "concurrency"] + [f"steps={k}" for k in ks], rows), ""]
    errs = {f"n={c['n']}, c={c['concurrency']}, {srv}": c[srv]["errors"] for c in data["cells"]
            for srv in _servers(c) if c[srv]["errors"]}
    if errs:
        lines += [f"Errors: {errs}", ""]
    lines += ["## Notes", "", NOTES_BEGIN, notes if notes is not None else "(none yet)", NOTES_END, ""]
    return "\n".join(lines)
