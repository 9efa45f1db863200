"""Goals and the Markdown report of the GPU check (:mod:`anystep.benchmarks.gpu_check`)."""

from __future__ import annotations

from typing import Any

from anystep.benchmarks.common import fmt, markdown_table

__all__ = ["evaluate_goals", "render_markdown"]


def _step(data: dict[str, Any], model: str, batch: int, engine: str) -> float | None:
    for r in data["sections"].get("step", {}).get("rows", []):
        if (r["model"], r["batch"], r["engine"]) == (model, batch, engine):
            return r["median_ms"]
    return None


def _served(data: dict[str, Any], model: str, steps: int, n: int) -> float | None:
    for r in data["sections"].get("serve", {}).get("rows", []):
        if (r["model"], r["method"], r["steps"], r["n"]) == (model, "flowmap", steps, n):
            return r.get("p50_ms")
    return None


def evaluate_goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured value (None: not measured in this run)."""
    b1 = min(data["settings"]["batches"])
    eager, graph = _step(data, "digits", b1, "eager"), _step(data, "digits", b1, "cudagraph")
    speedup = eager / graph if eager and graph else None
    served = _served(data, "digits", 1, 1)
    serve_engine = data["sections"].get("serve", {}).get("engine")
    ratio = served / graph if served and graph else None
    lmd = [r for r in data["sections"].get("train", {}).get("runs", []) if r.get("objective") == "lmd"]
    rates = [r["images_per_s"] for r in lmd if r.get("images_per_s")]
    goals = [
        {"goal": f"CUDA-graph engine >= 3x torch eager per step, digits U-Net, batch {b1}",
         "value": speedup, "target": 3.0, "met": None if speedup is None else speedup >= 3.0,
         "detail": f"eager {fmt(eager)} ms, cudagraph {fmt(graph)} ms"},
        {"goal": "served steps=1, n=1 p50 within 1.5x the bare engine call (digits)",
         "value": ratio, "target": 1.5, "met": None if ratio is None else ratio <= 1.5,
         "detail": f"served {fmt(served)} ms ({serve_engine} engine), bare cudagraph call {fmt(graph)} ms"},
        {"goal": "CIFAR-10 Table-4 LMD training throughput recorded",
         "value": max(rates) if rates else None, "target": None, "met": bool(rates) if lmd else None,
         "detail": ", ".join(f"{r['precision']}: {fmt(r.get('images_per_s'))} img/s" for r in lmd)},
    ]
    if data.get("dry_run"):
        for g in goals:
            g["detail"] += " (dry run on CPU: not a GPU number)"
    return goals


def _errors(data: dict[str, Any]) -> list[str]:
    out = []
    for name, sec in data["sections"].items():
        if "error" in sec:
            out += [f"### {name} failed", "", f"`{sec['error']}`", "", "```", sec.get("traceback", ""), "```", ""]
        elif "skipped" in sec:
            out += [f"### {name} skipped", "", sec["skipped"], ""]
    return out


def _step_table(section: dict[str, Any], title: str) -> list[str]:
    rows = section.get("rows") or []
    if not rows and not section.get("skipped_items"):
        return []
    eager = {(r["model"], r["batch"]): r["median_ms"] for r in rows if r["engine"] == "eager"}
    out = [title, ""]
    if rows:
        out += [markdown_table(
            ["model", "batch", "engine", "median ms", "p10 ms", "p90 ms", "x eager", "calls", "first call s",
             "max abs diff vs eager"],
            [[r["model"], r["batch"], r["engine"], r["median_ms"], r["p10_ms"], r["p90_ms"],
              (eager.get((r["model"], r["batch"])) or 0) / r["median_ms"] if r["median_ms"] else None, r["calls"],
              r["first_call_s"], r["max_abs_vs_eager"]] for r in rows]), ""]
    out += [f"- not run: {item}" for item in section.get("skipped_items", [])]
    return out + [""] if section.get("skipped_items") else out


def render_markdown(data: dict[str, Any]) -> str:
    """The report: machine, command, one table per section, goals, errors."""
    m, s, sec = data["machine"], data["settings"], data["sections"]
    lines = ["# GPU check", ""]
    if data.get("dry_run"):
        lines += ["**DRY RUN on the CPU with tiny models: these are not GPU numbers.**", ""]
    gpu = m.get("gpu") or "no GPU"
    lines += [
        (f"Machine: {gpu}; {m['cpu_model']}, {m['cores']} cores; Python {m['python_version']}, "
         f"torch {m['torch_version']} (CUDA {data['versions'].get('cuda')})."),
        f"Command: `{data['command']}`", "",
        (f"torch {data.get('torch_support', {}).get('torch')} inside pyproject's supported range "
         f"{data.get('torch_support', {}).get('range')}: {data.get('torch_support', {}).get('inside')}."), "",
        ("Times are medians; per-step latency is one `engine.step` (numpy in and out, host-device copies "
         f"included) timed with {sec.get('step', {}).get('timer', 'CUDA events')}, engines interleaved in a "
         "random order per round. TF32 as torch's defaults "
         f"(cuDNN {data['tf32']['cudnn']}, matmul {data['tf32']['matmul']}) except in the ONNX parity section."), "",
    ]
    lines += ["## Goals", "", markdown_table(
        ["goal", "value", "target", "met", "detail"],
        [[g["goal"], g["value"], g["target"], {None: "not measured", True: "yes", False: "no"}[g["met"]], g["detail"]]
         for g in data.get("goals", [])]), ""]
    if sec.get("train", {}).get("runs"):
        t = sec["train"]
        lines += ["## 1. Training, CIFAR-10 Table-4 U-Net on synthetic 32x32 images", "",
                  (f"Teacher parameters: {fmt(t.get('teacher_params'))}; batch {s['train_batch']}; "
                   "images/s is the median over log intervals after the first."), "",
                  markdown_table(["objective", "precision", "channels_last", "steps", "images/s", "wall s",
                                  "final loss", "peak GiB"],
                                 [[r["objective"], r["precision"], r.get("channels_last"), r.get("steps"),
                                   r.get("images_per_s"), r.get("wall_s"), r.get("final_loss"), r.get("peak_mem_gib")]
                                  for r in t["runs"]]), ""]
        lines += [f"- {r['objective']} {r['precision']}: {r.get('error') or r.get('skipped')}" for r in t["runs"]
                  if r.get("error") or r.get("skipped")]
    lines += _step_table(sec.get("step", {}), "## 2. One flow-map step per engine")
    if sec.get("serve", {}).get("rows"):
        sv = sec["serve"]
        lines += ["## 3. Serving `POST /generate`", "",
                  f"Engine `{sv['engine']}` on {s['device']}; {sv['client']}." + (f" {sv['note']}" if sv.get("note") else ""),
                  "", markdown_table(["model", "method", "steps", "n", "nfe", "requests", "p50 ms", "p90 ms (or error)"],
                                     [[r["model"], r["method"], r["steps"], r["n"], r.get("nfe"), r.get("requests"),
                                       r.get("p50_ms"), r.get("error") or r.get("p90_ms")] for r in sv["rows"]]), ""]
    if sec.get("onnx", {}).get("rows"):
        lines += ["## 4. ONNX parity: CPU ONNX Runtime vs the model on the GPU (TF32 off)", "", markdown_table(
            ["model", "kind", "exporter", "max abs err", "max rel err", "atol", "rtol", "passed"],
            [[r["model"], r["kind"], r["exporter"], r["max_abs_err"], r["max_rel_err"], r["atol"], r["rtol"],
              r["passed"]] for r in sec["onnx"]["rows"]]), ""]
    lines += _step_table(sec.get("compile", {}),
                         "## 5. torch.compile beside eager and CUDA graphs (run last: it compiles)")
    lines += _errors(data)
    lines += ["Section wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in data.get("seconds", {}).items()), ""]
    return "\n".join(lines)
