"""Checkerboard benchmark: training configs and run directories (reuse / resume / two at a time)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anystep.benchmarks.checkerboard_methods import BenchmarkError, MethodSpec, Settings
from anystep.benchmarks.common import fmt, load_average

__all__ = ["TrainRecord", "build_train_config", "train_one"]


def build_train_config(spec: MethodSpec, settings: Settings, work_dir: Path, *, width: int | None = None,
                       depth: int | None = None):
    """The :class:`~anystep.training.config.TrainConfig` of one method.

    Starts from the method's preset (paper architecture and objective settings) and
    overrides the budget shared by all methods: network size, steps, batch size, Adam
    with linear warm-up and cosine decay from ``lr`` to ``lr_min``, EMA, gradient clip,
    seed; no periodic evaluation (this benchmark evaluates at the end), a checkpoint
    every 1000 steps (so interrupted runs resume).

    Args:
        spec: the method.
        settings: the shared budget.
        work_dir: folder of the run directories (teachers are ``work_dir/<key>``).
        width, depth: override the network size (teacher-size comparison).

    Returns:
        The TrainConfig.
    """
    from anystep.training.config import apply_overrides
    from anystep.training.presets import get_preset

    cfg = get_preset(spec.preset)
    sets = [
        f"model.backbone.width={width or settings.width}",
        f"model.backbone.depth={depth or settings.depth}",
        f"max_steps={settings.steps}",
        f"batch_size={settings.batch_size}",
        f"lr={settings.lr}",
        "lr_schedule=cosine",
        f"lr_min={settings.lr_min}",
        "lr_decay_start=0",
        f"lr_warmup_steps={min(settings.lr_warmup_steps, settings.steps - 1)}",
        f"ema_decay={settings.ema_decay}",
        f"grad_clip={json.dumps(settings.grad_clip)}",
        f"seed={settings.seed}",
        "eval_every=-1",
        f"ckpt_every={min(1000, settings.steps)}",
        f"log_every={max(1, min(100, settings.steps // 10))}",
        "device=cpu",
    ]
    if spec.objective is not None:
        sets.append(f"objective={spec.objective}")
    for k, v in spec.hparams.items():
        sets.append(f"objective_hparams.{k}={json.dumps(v)}")
    sets += [f"{k}={json.dumps(v)}" for k, v in spec.config.items()]
    if not settings.quick:
        sets += [f"{k}={json.dumps(v)}" for k, v in spec.budget.items()]
    cfg = apply_overrides(cfg, sets)
    changes: dict[str, Any] = {}
    if spec.teacher is not None:
        changes["teacher"] = str(work_dir / spec.teacher)
    if spec.init_from is not None:
        changes["init_from"] = str(work_dir / spec.init_from)
    if spec.objective is not None:
        changes["preset"] = f"{spec.preset} (objective={spec.objective})"
    return cfg.replace(**changes) if changes else cfg


@dataclass
class TrainRecord:
    """How one model was trained.

    Attributes:
        key: method key (or ``si_WxD`` for the size comparison).
        run_dir: its run/model directory.
        objective: objective name.
        preset: preset name recorded in the model's provenance.
        steps: optimisation steps.
        seconds: training wall time (from the run's log when reused).
        ms_per_step: ``1000 * seconds / steps``.
        final_loss: last logged loss.
        reused: True when a finished run with the identical config was found.
        resumed_from: checkpoint step it resumed from, or None.
        load_avg: 1-minute load average when training ended (other processes share the CPU).
        params: number of parameters.
    """

    key: str
    run_dir: str
    objective: str
    preset: str | None
    steps: int
    seconds: float
    ms_per_step: float
    final_loss: float | None
    reused: bool
    resumed_from: int | None
    load_avg: float | None
    params: int




def _export_stage(run_dir: Path, cfg, until: int) -> None:
    """Write ``config.json`` + ``model.safetensors`` from the checkpoint's EMA weights.

    For a stage that stops at step ``until`` of a longer schedule (the trainer writes the
    model directory only at ``max_steps``). Files are moved in atomically, config last.
    """
    import os

    from safetensors.torch import load_file

    from anystep.core.config import ModelConfig
    from anystep.core.flowmap import build_model
    from anystep.core.modeldir import CONFIG_NAME, WEIGHTS_NAME, save_model_dir
    from anystep.training.checkpoint import find_checkpoint

    ck = find_checkpoint(run_dir)
    if ck is None:
        raise BenchmarkError(f"{run_dir}: no checkpoint to export the stage from")
    state = json.loads((ck / "state.json").read_text())
    model = build_model(cfg.model)
    model.load_state_dict(load_file(str(ck / "ema.safetensors")))
    train_dict = cfg.to_dict()
    train_dict["model"].pop("provenance", None)
    prov = {"preset": cfg.preset, "objective": cfg.objective, "objective_hparams": dict(cfg.objective_hparams),
            "steps": int(state["step"]), "stage_of_max_steps": int(cfg.max_steps), "final_loss": state.get("last_loss"),
            "seed": cfg.seed, "dataset": cfg.dataset, "base": cfg.base, "train_config": train_dict, "weights": "ema"}
    model_cfg = ModelConfig.from_dict({**cfg.model.to_dict(), "provenance": prov})
    tmp = run_dir / ".stage.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_dir(tmp, model, model_cfg)
    os.replace(tmp / WEIGHTS_NAME, run_dir / WEIGHTS_NAME)
    os.replace(tmp / CONFIG_NAME, run_dir / CONFIG_NAME)
    shutil.rmtree(tmp, ignore_errors=True)


def train_one(key: str, cfg, run_dir: Path, *, fresh: bool, progress: bool, log,
              until: int | None = None) -> TrainRecord:
    """Train (or reuse / resume) one run directory.

    Args:
        key: method key.
        cfg: its TrainConfig.
        run_dir: run directory.
        fresh: delete an existing run directory first.
        progress: tqdm progress bar.
        log: ``log(str)`` for one-line status messages.
        until: stop after this step of ``cfg.max_steps`` (a stage of a longer schedule) and
            export the checkpoint's EMA weights as the model directory; None trains to the end.

    Returns:
        :class:`TrainRecord`.

    Raises:
        BenchmarkError: the directory holds a run of another config (and not ``fresh``).
    """
    from anystep.core.modeldir import load_model_dir
    from anystep.training.checkpoint import find_checkpoint
    from anystep.training.config import TrainConfig
    from anystep.training.trainer import TRAIN_CONFIG_NAME, Trainer, read_log

    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    saved_cfg = run_dir / TRAIN_CONFIG_NAME
    reused = False
    resume = False
    if saved_cfg.is_file():
        same = TrainConfig.load(saved_cfg).to_dict() == cfg.to_dict()
        if not same:
            raise BenchmarkError(
                f"{run_dir} holds a run with a different config; pass --retrain {key} (or --fresh) to "
                "retrain it, or choose another --work-dir"
            )
        if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
            reused = True
        elif find_checkpoint(run_dir) is not None:
            resume = True
        else:
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise BenchmarkError(f"{run_dir} exists and is not a benchmark run; remove it or pass --fresh")

    resumed_from = None
    if reused:
        log(f"[{key}] reusing the finished run in {run_dir}")
    else:
        log(f"[{key}] training {cfg.objective} for {cfg.max_steps} steps -> {run_dir}"
            + (" (resuming)" if resume else ""))
        res = Trainer(cfg, run_dir, resume=resume, eval_fn=None, progress=progress).fit(until=until)
        resumed_from = res.resumed_from
        if until is not None and until < cfg.max_steps:
            _export_stage(run_dir, cfg, until)
    rows = [r for r in read_log(run_dir) if "loss" in r]
    seconds = float(rows[-1]["time"]) if rows else float("nan")
    final_loss = float(rows[-1]["loss"]) if rows else None
    model = load_model_dir(run_dir).model
    rec = TrainRecord(
        key=key,
        run_dir=str(run_dir),
        objective=cfg.objective,
        preset=cfg.preset,
        steps=int(until or cfg.max_steps),
        seconds=seconds,
        ms_per_step=1000.0 * seconds / max(1, until or cfg.max_steps),
        final_loss=final_loss,
        reused=reused,
        resumed_from=resumed_from,
        load_avg=(load_average() or [None])[0],
        params=int(sum(p.numel() for p in model.parameters())),
    )
    log(f"[{key}] done: {rec.seconds:.0f} s ({rec.ms_per_step:.1f} ms/step), final loss {fmt(final_loss)}")
    return rec



# --------------------------------------------------------------------------------------
# two at a time: one worker process per run, one thread each
# --------------------------------------------------------------------------------------

SETTINGS_NAME = "benchmark_settings.json"


def train_method(key: str, settings: Settings, work_dir: Path, *, fresh: bool = False, progress: bool = False,
                 log=print) -> TrainRecord:
    """Build the config of method ``key`` and train / reuse / resume ``work_dir/key``."""
    from anystep.benchmarks.checkerboard_methods import METHODS

    spec = METHODS[key]
    cfg = build_train_config(spec, settings, work_dir)
    return train_one(key, cfg, work_dir / key, fresh=fresh, progress=progress, log=log,
                     until=None if settings.quick else spec.until)


def _settings_to_json(settings: Settings) -> str:
    from dataclasses import asdict

    return json.dumps(asdict(settings))


def _settings_from_json(text: str) -> Settings:
    d = json.loads(text)
    d["kl_range"] = tuple(d["kl_range"])
    d["teacher_sizes"] = tuple(tuple(x) for x in d["teacher_sizes"])
    d["methods"] = tuple(d["methods"])
    return Settings(**d)


def train_parallel(keys: list[str], settings: Settings, work_dir: Path, *, jobs: int = 2,
                   fresh: set[str] | bool = False, log=print) -> tuple[dict[str, TrainRecord], dict[str, str]]:
    """Train the runs ``keys`` (in dependency order), ``jobs`` worker processes at a time.

    Each run is one ``python -m anystep.benchmarks.checkerboard_train`` process with one
    torch thread, ``nice``-d, its output in ``work_dir/<key>.log``; a run starts when its
    teacher and warm start are finished. Finished runs are reused, interrupted ones resumed
    (the worker does what :func:`train_one` does), so the whole call can be repeated.

    Returns:
        ``(records, failed)``: a :class:`TrainRecord` per finished run, and the error line
        of each run that failed (its dependents are skipped).
    """
    import os
    import subprocess
    import sys
    import time

    from anystep.benchmarks.checkerboard_methods import METHODS

    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / SETTINGS_NAME).write_text(_settings_to_json(settings))
    pending = list(keys)
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    records: dict[str, TrainRecord] = {}
    failed: dict[str, str] = {}
    external: set[str] = set()  # runs a worker of an earlier call is still training
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def alive(k: str) -> int | None:
        """Pid of a live worker already training ``k`` (e.g. left by an interrupted scheduler)."""
        pid_file = work_dir / f"{k}.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def deps(k: str) -> list[str]:
        sp = METHODS[k]
        return [d for d in (sp.teacher, sp.init_from) if d is not None and d in keys]

    while pending or running:
        external = {k for k in external if alive(k) is not None}
        for k in list(pending):
            bad = [d for d in deps(k) if d in failed]
            if bad:
                failed[k] = f"skipped: its teacher/warm start {bad[0]!r} failed"
                log(f"[{k}] {failed[k]}")
                pending.remove(k)
        for k in list(pending):
            if len(running) + len(external) >= jobs and k not in external:
                break
            if all(d in records for d in deps(k)):
                pid = alive(k)
                if pid is not None:  # wait for it (it holds a slot) instead of training the directory twice
                    if k not in external:
                        log(f"[{k}] a worker (pid {pid}) is already training it; waiting for it")
                    external.add(k)
                    continue
                external.discard(k)
                pending.remove(k)
                cmd = [sys.executable, "-m", "anystep.benchmarks.checkerboard_train", k, "--work-dir", str(work_dir)]
                if fresh is True or (not isinstance(fresh, bool) and k in fresh):
                    cmd.append("--fresh")
                if os.name == "posix":
                    cmd = ["nice", "-n", "10", *cmd]
                fh = open(work_dir / f"{k}.log", "a")  # noqa: SIM115 (closed when the process ends)
                log(f"[{k}] started (log: {work_dir / (k + '.log')})")
                running[k] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), fh)
        if not running and not external and pending:
            waiting = {k: deps(k) for k in pending}
            raise BenchmarkError(f"cannot schedule {waiting}: their dependencies are not in the run list")
        time.sleep(2.0)
        for k, (proc, fh) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            fh.close()
            del running[k]
            rec_path = work_dir / k / "benchmark_record.json"
            if rc == 0 and rec_path.is_file():
                records[k] = TrainRecord(**json.loads(rec_path.read_text()))
                log(f"[{k}] done: {records[k].seconds:.0f} s ({records[k].ms_per_step:.1f} ms/step)")
            else:
                tail = (work_dir / f"{k}.log").read_text().strip().splitlines()[-1:] or ["no output"]
                failed[k] = f"exit {rc}: {tail[0]}"
                log(f"[{k}] FAILED: {failed[k]}")
                if k == "si" or METHODS[k].kind == "velocity":
                    for p, f in running.values():
                        p.terminate()
                        f.close()
                    raise BenchmarkError(f"the teacher run {k!r} failed: {failed[k]}")
    return records, failed


def main(argv: list[str] | None = None) -> int:
    """Worker: ``python -m anystep.benchmarks.checkerboard_train KEY --work-dir DIR [--fresh]``.

    Reads the benchmark settings from ``DIR/benchmark_settings.json`` (written by
    :func:`train_parallel`), trains one run with one torch thread and writes its
    :class:`TrainRecord` to ``DIR/KEY/benchmark_record.json``.
    """
    import argparse
    from dataclasses import asdict

    import torch

    from anystep.benchmarks.checkerboard_methods import METHODS

    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.checkerboard_train",
                                description="Train one run of the checkerboard benchmark (worker of its scheduler).")
    p.add_argument("key", choices=sorted(METHODS))
    p.add_argument("--work-dir", required=True)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    work_dir = Path(args.work_dir)
    sfile = work_dir / SETTINGS_NAME
    if not sfile.is_file():
        print(f"error: {sfile} is missing; run the benchmark (python -m anystep.benchmarks.checkerboard)", flush=True)
        return 2
    import os

    torch.set_num_threads(1)
    settings = _settings_from_json(sfile.read_text())
    pid_file = work_dir / f"{args.key}.pid"
    pid_file.write_text(str(os.getpid()))
    try:
        rec = train_method(args.key, settings, work_dir, fresh=args.fresh, log=lambda m: print(m, flush=True))
        (work_dir / args.key / "benchmark_record.json").write_text(json.dumps(asdict(rec), indent=1))
    finally:
        pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
