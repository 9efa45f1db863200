"""The four measurements of the GPU check (:mod:`anystep.benchmarks.gpu_check`).

Each section takes the check's :class:`~anystep.benchmarks.gpu_check.Settings` and a
time allowance in seconds and returns a JSON-serialisable dict; see the check's
docstring for what each measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anystep.benchmarks.gpu_check import Settings

__all__ = [
    "build_engines",
    "interleaved",
    "make_timer",
    "onnx_section",
    "serve_section",
    "step_section",
    "synthetic_images",
    "train_section",
]


def _log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _median(xs: Sequence[float]) -> float | None:
    import numpy as np

    return float(np.median(xs)) if len(xs) else None


def _pct(xs: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(xs, q)) if len(xs) else None


def _free(s: Settings) -> None:
    """Return cached GPU memory between runs (a run's leftovers must not limit the next)."""
    import gc

    gc.collect()
    if s.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


def make_timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """``timer(fn) -> seconds`` of one call: CUDA events on a GPU, ``perf_counter`` on CPU."""
    import torch

    if str(device).startswith("cuda"):

        def cuda_timer(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_timer

    def cpu_timer(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cpu_timer


def interleaved(fns: dict[str, Callable[[], Any]], timer: Callable, *, rounds: int, calls: int,
                budget_s: float, seed: int = 0) -> dict[str, list[float]]:
    """Per-call seconds of each method over ``rounds`` rounds in a fresh random order.

    Rounds stop early (at least 2) when ``budget_s`` is spent. Warm-up is the caller's.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    t_end = time.perf_counter() + budget_s
    for r in range(rounds):
        if r >= 2 and time.perf_counter() > t_end:
            break
        for j in rng.permutation(len(keys)):
            k = keys[int(j)]
            out[k].extend(timer(fns[k]) for _ in range(calls))
    return out


# --------------------------------------------------------------------------------------
# 1. training
# --------------------------------------------------------------------------------------


def synthetic_images(path: Path, n: int = 512, size: int = 32, seed: int = 0) -> Path:
    """``n`` random RGB blob images ``[n, 3, size, size]`` uint8 in an ``.npz`` (key ``x``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.2, 0.8, (n, 2, 1, 1))
    blob = np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / 0.02)[:, None]
    img = blob * rng.uniform(0, 1, (n, 3, 1, 1)) + 0.1 * rng.uniform(0, 1, (n, 3, size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=(img.clip(0, 1) * 255).astype(np.uint8))
    return path


def _train_config(objective: str, data: Path, s: Settings, steps: int, precision: str, teacher: str | None):
    from anystep.training.config import TrainConfig
    from anystep.training.presets_images import cifar10_preset

    d = cifar10_preset(objective).to_dict()
    d["model"].pop("dataset", None)
    d["model"].pop("base", None)
    if s.train_channels is not None:
        d["model"]["backbone"]["channels"] = int(s.train_channels)
    d.update(dataset=f"npz:{data}", dataset_kwargs={}, max_steps=int(steps), batch_size=s.train_batch,
             log_every=min(s.log_every, steps), ckpt_every=0, eval_every=-1, device=s.device,
             precision=precision, teacher=teacher)
    return TrainConfig.from_dict(d)


def train_section(s: Settings, work: Path, seconds: float) -> dict[str, Any]:
    """Train the Table-4 teacher and LMD map; images/s per (objective, precision, layout)."""
    import torch

    from anystep.training.accel import AccelOptions
    from anystep.training.trainer import Trainer, read_log

    data = synthetic_images(work / "cifar-synthetic.npz", n=max(64, 2 * s.train_batch))
    rows: list[dict[str, Any]] = []
    dirs: dict[str, str] = {}
    per_step: dict[str, float] = {}
    t_end = time.perf_counter() + seconds
    for i, (objective, precision, channels_last) in enumerate(s.train_runs):
        left = t_end - time.perf_counter()
        todo = len(s.train_runs) - i
        est = per_step.get(objective) or (3.0 * per_step["velocity"] if "velocity" in per_step else None)
        steps = s.train_steps if est is None else int(min(s.train_steps, max(s.min_train_steps, left / todo / est)))
        teacher = dirs.get("velocity") if objective == "lmd" else None
        if objective == "lmd" and teacher is None:
            rows.append({"objective": objective, "precision": precision, "skipped": "no teacher trained"})
            continue
        name = f"{objective}-{precision}{'-cl' if channels_last else ''}"
        cfg = _train_config(objective, data, s, steps, precision, teacher)
        if s.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _log(f"train {name}: {steps} steps at batch {s.train_batch}")
        t0 = time.perf_counter()
        try:
            res = Trainer(cfg, work / name, progress=False, eval_fn=None,
                          accel=AccelOptions(channels_last=channels_last)).fit()
        except Exception as e:  # e.g. out of memory: record it, run the others
            if s.strict:
                raise
            rows.append({"objective": objective, "precision": precision, "channels_last": channels_last,
                         "steps": steps, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            _free(s)
            continue
        wall = time.perf_counter() - t0
        rates = [r["samples_per_s"] for r in read_log(work / name) if "samples_per_s" in r]
        per_step.setdefault(objective, wall / max(1, steps))
        dirs.setdefault(objective, str(work / name))
        rows.append({
            "objective": objective, "precision": precision, "channels_last": channels_last, "steps": steps,
            "batch": s.train_batch, "images_per_s": _median(rates[1:] or rates), "wall_s": wall,
            "final_loss": res.final_loss,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if s.device.startswith("cuda") else None,
        })
        _free(s)
    params = None
    if "velocity" in dirs:
        from anystep.core.modeldir import load_model_dir

        params = sum(p.numel() for p in load_model_dir(dirs["velocity"]).model.parameters())
    return {"runs": rows, "teacher_params": params, "data": "synthetic blobs, npz uint8", "_model_dirs": dirs}


# --------------------------------------------------------------------------------------
# 2. one step per engine
# --------------------------------------------------------------------------------------


def fresh_flowmap(s: Settings, work: Path) -> Path:
    """A randomly initialised CIFAR-size flow map (when the train section did not run)."""
    from anystep.core.flowmap import build_model
    from anystep.core.modeldir import save_model_dir
    from anystep.training.presets_images import cifar10_preset

    cfg = cifar10_preset("lmd").model
    if s.train_channels is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, channels=s.train_channels))
    return save_model_dir(work / "cifar-random", build_model(cfg), cfg)


def build_engines(model_dir: Path, s: Settings, keys: Sequence[str], max_batch: int) -> dict[str, Any]:
    """The engines compared in the step section, each with its own copy of the model."""
    from anystep.core.modeldir import load_model_dir
    from anystep.server.engine_cudagraph import CudaGraphEngine
    from anystep.server.engines import TorchEngine

    shape = tuple(load_model_dir(model_dir).config.data_shape)
    out: dict[str, Any] = {}
    for key in keys:
        model = load_model_dir(model_dir).model
        if key == "eager":
            out[key] = TorchEngine(model, shape, device=s.device, threads=None)
        elif key == "compile":
            out[key] = TorchEngine(model, shape, device=s.device, compile=True, threads=None)
        elif key == "cudagraph":
            out[key] = CudaGraphEngine(model, shape, device=s.device, max_batch=max_batch)
    return out


def step_section(s: Settings, models: dict[str, Path], seconds: float, keys: Sequence[str]) -> dict[str, Any]:
    """Median per-call latency of one flow-map step per (model, batch, engine in ``keys``).

    A ``compile`` engine compiles on its first call at each new shape (minutes for a
    large U-Net): a batch size is skipped, and said so, when less than
    ``s.compile_guard_s`` of the allowance is left.
    """
    import numpy as np

    timer = make_timer(s.device)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    t_end = time.perf_counter() + seconds
    for mi, (mname, mdir) in enumerate(models.items()):
        if "compile" in keys and t_end - time.perf_counter() < s.compile_guard_s:
            skipped.append(f"{mname}: budget left for compilation")
            continue
        try:
            t0 = time.perf_counter()
            engines = build_engines(mdir, s, keys, max(s.batches))
            build_s = time.perf_counter() - t0
            shape = next(iter(engines.values())).data_shape
            for bi, b in enumerate(s.batches):
                if "compile" in keys and t_end - time.perf_counter() < s.compile_guard_s:
                    skipped.append(f"{mname} batch {b}: budget left for compilation")
                    continue
                rng = np.random.default_rng(b)
                x = rng.standard_normal((b, *shape)).astype(np.float32)
                s_ = np.zeros(b, np.float32)
                t_ = np.ones(b, np.float32)
                fns = {k: (lambda e=e, x=x, s_=s_, t_=t_: e.step(x, s_, t_)) for k, e in engines.items()}
                first = {}
                for k, fn in fns.items():  # warm-up; the first call of torch.compile compiles
                    w0 = time.perf_counter()
                    fn()
                    first[k] = time.perf_counter() - w0
                    fn()
                outs = {k: fn() for k, fn in fns.items()}
                slots = (len(models) - mi) * len(s.batches) - bi
                res = interleaved(fns, timer, rounds=s.rounds, calls=s.calls_per_round,
                                  budget_s=max(0.5, (t_end - time.perf_counter()) / slots))
                for k, secs in res.items():
                    err = float(np.max(np.abs(outs[k] - outs["eager"]))) if "eager" in outs else None
                    rows.append({"model": mname, "batch": b, "engine": k, "median_ms": 1e3 * _median(secs),
                                 "p10_ms": 1e3 * _pct(secs, 10), "p90_ms": 1e3 * _pct(secs, 90),
                                 "calls": len(secs), "first_call_s": first[k], "max_abs_vs_eager": err,
                                 "build_s": build_s})
            _log(f"step {mname}: {len(s.batches)} batch sizes x {list(engines)}")
            del engines
        except Exception as e:  # record it, time the other model
            if s.strict:
                raise
            skipped.append(f"{mname}: {type(e).__name__}: {str(e)[:300]}")
        _free(s)
    return {"rows": rows, "skipped_items": skipped,
            "timer": "CUDA events" if s.device.startswith("cuda") else "perf_counter",
            "call": "engine.step(numpy x, s, t) -> numpy (host<->device copies included)"}


# --------------------------------------------------------------------------------------
# 3. serving
# --------------------------------------------------------------------------------------


def serve_section(s: Settings, flowmaps: dict[str, Path], teachers: dict[str, Path], seconds: float) -> dict[str, Any]:
    """p50 of ``POST /generate`` per (model, steps, n), and dopri5 on the teachers."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "pydantic") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{', '.join(missing)} not importable: carry the wheelhouse (make gpu-wheelhouse)"}
    import httpx

    from anystep.server import engines as engines_mod
    from anystep.server.testing import ServerProcess

    choices = getattr(engines_mod, "ENGINE_CHOICES", engines_mod.ENGINES)

    engine = "cudagraph" if s.device.startswith("cuda") else "torch"
    note = None
    if engine not in choices:
        engine, note = "torch", "cudagraph is not registered in server/engines.py: served with torch eager"
    models = {**{k: str(v) for k, v in flowmaps.items()}, **{f"{k}-teacher": str(v) for k, v in teachers.items()}}
    args = ["--engine", engine, "--device", s.device, "--max-batch", str(max(s.serve_max_batch, max(s.serve_n))), "--threads", "0"]
    rows: list[dict[str, Any]] = []
    t_end = time.perf_counter() + seconds
    cases = [(m, "flowmap", k, n) for m in flowmaps for k in s.serve_steps for n in s.serve_n]
    cases += [(f"{m}-teacher", "dopri5", None, n) for m in teachers for n in s.serve_n]
    with ServerProcess(models, args=args, ready_timeout=180.0) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        for i, (model, method, steps, n) in enumerate(cases):
            body: dict[str, Any] = {"model": model, "n": n, "seed": 0, "format": "npy"}
            body.update({"steps": steps} if method == "flowmap" else {"solver": "dopri5"})
            want = s.serve_requests if method == "flowmap" else s.dopri5_requests
            lat, nfe = [], None
            for j in range(want + 2):  # two warm-up requests
                if j > 2 and time.perf_counter() > t_end - (len(cases) - i) * 0.5:
                    break
                r0 = time.perf_counter()
                r = c.post("/generate", json=body)
                dt = time.perf_counter() - r0
                if r.status_code != 200:
                    break
                nfe = int(r.headers.get("X-Anystep-NFE", "0"))
                if j >= 2:
                    lat.append(dt)
            if r.status_code != 200:  # record it and go on: one refused case must not hide the others
                if s.strict:
                    raise RuntimeError(f"/generate {body} -> {r.status_code}: {r.text[:300]}")
                rows.append({"model": model, "method": method, "steps": steps, "n": n,
                             "error": f"HTTP {r.status_code}: {r.text[:300]}"})
                continue
            rows.append({"model": model, "method": method, "steps": steps, "n": n, "nfe": nfe,
                         "requests": len(lat), "p50_ms": 1e3 * _median(lat), "p90_ms": 1e3 * _pct(lat, 90)})
    return {"engine": engine, "note": note, "rows": rows, "client": "one keep-alive httpx client, sequential"}


# --------------------------------------------------------------------------------------
# 4. ONNX parity
# --------------------------------------------------------------------------------------


def onnx_section(s: Settings, model_dirs: dict[str, Path], work: Path, seconds: float) -> dict[str, Any]:
    """Export each model (own CPU parity check) and compare CPU ONNX Runtime with the GPU model."""
    import torch

    from anystep.core.modeldir import load_model_dir
    from anystep.export.common import BatchRange
    from anystep.export.onnx_export import (
        OnnxOptions,
        check_step_parity,
        export_onnx,
        ort_session,
        session_runner,
    )

    rows = []
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, mdir in model_dirs.items():
            t0 = time.perf_counter()
            opts = OnnxOptions(batch=BatchRange(min=1, opt=max(s.onnx_batches), max=max(s.onnx_batches)))
            res = export_onnx(mdir, work / "onnx" / name, opts, overwrite=True)
            loaded = load_model_dir(mdir)
            model = loaded.model.to(s.device).eval()

            def on_device(*args: torch.Tensor, model=model) -> torch.Tensor:
                return model(*(a.to(s.device) for a in args)).cpu()

            tol = check_step_parity(on_device, session_runner(ort_session(res.artifact, ["CPUExecutionProvider"])),
                                    loaded.config.kind, tuple(loaded.config.data_shape), s.onnx_batches,
                                    atol=opts.atol, rtol=opts.rtol, reference=f"torch {s.device}")
            m = res.manifest
            rows.append({"model": name, "kind": loaded.config.kind, "exporter": getattr(m, "exporter", None),
                         "max_abs_err": tol.max_abs_err, "max_rel_err": tol.max_rel_err, "atol": tol.atol,
                         "rtol": tol.rtol, "batches": list(s.onnx_batches), "passed": True,
                         "seconds": time.perf_counter() - t0})
            if time.perf_counter() - t0 > seconds:
                break
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"rows": rows, "ort": "CPUExecutionProvider", "tf32": False}


