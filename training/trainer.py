"""The training loop: ``Trainer(config, out_dir).fit()``.

``Trainer(config, out_dir).fit()`` trains the model a :class:`TrainConfig` describes and
leaves ``out_dir`` as a model directory (``config.json`` + ``model.safetensors`` with the
EMA weights, loadable with :func:`anystep.core.modeldir.load_model_dir`) plus
``train_config.json``, ``train_log.jsonl`` and ``checkpoint/`` (the layout:
:mod:`anystep.training.rundir`).

Reproducibility. All randomness comes from ``torch.Generator`` objects seeded from
``config.seed`` by :func:`derive_seed` (:mod:`anystep.training.streams`): model
initialisation, the data stream, one time stream per micro-batch and the global torch
generator (dropout). Their states are checkpointed, so a run resumed with ``resume=True``
continues exactly: its later losses and final weights equal those of an uninterrupted run
(same seed, same number of processes).

One optimisation step with global batch ``B``, ``W`` processes and ``m`` micro-batches:
draw this rank's ``m`` chunks (:meth:`anystep.training.streams.RunStreams.draw`);
back-propagate each chunk's loss ``/ m``; average gradients over ranks
(:mod:`anystep.training.ddp`); clip; step; update the EMA (:mod:`anystep.training.ema`).

Progressive PFMM (Sec. 3.4 after Lemma 3.12): the rounds are planned by
:mod:`anystep.training.rounds`; after each round the student's EMA weights become the
frozen teacher of the next round.

This module also re-exports the run-directory names (:data:`LOG_NAME`,
:data:`TRAIN_CONFIG_NAME`, :func:`read_log`), :func:`derive_seed` and the evaluation hook
(:data:`EvalFn`, :func:`default_eval_fn`), so ``from anystep.training.trainer import ...``
keeps working for all of them.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anystep.core.config import ConfigError
from anystep.errors import AnystepError
from anystep.training import ddp
from anystep.training.base import Batch, Objective
from anystep.training.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
)
from anystep.training.config import TrainConfig, learning_rate, validate_config
from anystep.training.ema import EMA
from anystep.training.evaluation import EvalFn, default_eval_fn, run_eval
from anystep.training.progress import TrainProgress
from anystep.training.resume import (
    objective_state,
    restore_objective,
    restore_run,
    save_run_checkpoint,
)
from anystep.training.rounds import (
    TRAINER_HPARAMS,
    Round,
    objective_hparams,
    plan_rounds,
    round_at,
)
from anystep.training.rundir import (
    LOG_NAME,
    RESUME_MUTABLE,
    TRAIN_CONFIG_NAME,
    check_run_dir,
    read_log,
    truncate_log,
    write_model_dir,
)
from anystep.training.streams import RunStreams, chunk_ids, derive_seed

__all__ = [
    "LOG_NAME",
    "RESUME_MUTABLE",
    "TRAINER_HPARAMS",
    "TRAIN_CONFIG_NAME",
    "EvalFn",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "default_eval_fn",
    "derive_seed",
    "objective_state",
    "read_log",
]


class TrainingError(AnystepError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        out_dir: the run directory (a model directory once ``completed``).
        steps: optimisation steps done (including those before a resume).
        final_loss: loss of the last step (mean over the global batch), None if no step ran.
        completed: True when ``max_steps`` was reached and the model directory written.
        log_path: the JSONL log.
        checkpoint_dir: the latest checkpoint.
        eval: metrics of the last evaluation (empty if none ran).
        resumed_from: step of the checkpoint the run resumed from, or None.
        wall_time_s: seconds spent in this call.
    """

    out_dir: Path
    steps: int
    final_loss: float | None
    completed: bool
    log_path: Path
    checkpoint_dir: Path | None
    eval: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    wall_time_s: float = 0.0


_DEFAULT = object()


# ------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------


class Trainer:
    """Train the model of a :class:`TrainConfig` into ``out_dir``.

    Args:
        config: the training configuration (validated here, before anything runs).
        out_dir: run directory; must not already hold a run unless ``resume``.
        resume: continue from ``out_dir/checkpoint`` (the config must equal the saved
            ``train_config.json`` except for ``max_steps``, logging/checkpoint/eval
            frequencies and the device).
        eval_fn: evaluation hook ``fn(ema_model, step) -> dict``; default
            :func:`default_eval_fn`; None disables evaluation.
        progress: show a tqdm progress bar (loss, lr, steps/s, samples/s) on rank 0.
        accel: execution options (``channels_last``, ``torch.compile``; see
            :mod:`anystep.training.accel`); default none. Mixed precision is
            ``config.precision`` (bf16/fp16 autocast; JVPs stay float32).
        dist: process-group info; default :func:`anystep.training.ddp.current`.

    Raises:
        ConfigError: any invalid setting (one line, before training starts).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        eval_fn: EvalFn | None | object = _DEFAULT,
        progress: bool = True,
        accel: Any = None,
        dist: ddp.DistInfo | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        self.dist = dist if dist is not None else ddp.current()
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self.progress = bool(progress)
        check_cfg = config.replace(objective_hparams=objective_hparams(config))
        validated = validate_config(check_cfg)
        self.config = config if validated.config.init_from == config.init_from else config.replace(
            init_from=validated.config.init_from
        )
        self.objective_cls = validated.objective_cls
        self.data_shape = validated.data_shape
        W, m = self.dist.world_size, self.config.micro_batches
        if self.config.batch_size % (W * m) != 0:
            raise ConfigError(
                f"batch_size={self.config.batch_size} must be divisible by world_size x micro_batches = {W} x {m}"
            )
        self.rounds = self._plan_rounds()
        self.device = ddp.resolve_device(self.config.device, self.dist)
        self._eval_fn_arg = eval_fn
        from anystep.training.accel import AccelOptions, MixedPrecision

        self.accel = accel if accel is not None else AccelOptions()
        if not isinstance(self.accel, AccelOptions):
            raise ConfigError(f"accel must be an AccelOptions, got {type(self.accel).__name__}")
        self._amp = MixedPrecision(self.config.precision, self.device)
        from anystep.training.accel import check_options

        check_options(self.accel, self.data_shape)  # before anything is written

    # -- helpers -------------------------------------------------------------------------
    def _plan_rounds(self) -> list[Round]:
        return plan_rounds(self.config, self.objective_cls)

    def _round_at(self, step: int) -> Round:
        return round_at(self.rounds, step)

    def _build_objective(self, rnd: Round) -> Objective:
        from anystep.core.interpolants import build_interpolant

        return self.objective_cls(build_interpolant(self.config.model.interpolant), **rnd.hparams)

    def _chunk_ids(self) -> list[int]:
        return chunk_ids(self.dist.rank, self.config.micro_batches)

    def _setup_data(self) -> None:
        """Build the data sets and seed the data stream and the per-chunk time streams."""
        cfg = self.config
        self._streams = RunStreams(cfg, self.data_shape, self.dist, self.device)
        self._dataset = self._streams.dataset
        k = cfg.model.num_classes
        if k and self._dataset.num_classes != k:
            raise TrainingError(
                f"model.num_classes={k} but data set {cfg.dataset!r} has "
                f"{self._dataset.num_classes or 'no'} class labels; set model.num_classes to match"
            )

    def _draw_batches(self) -> list[Batch]:
        """This rank's micro-batches for the next step (advances the data stream)."""
        return self._streams.draw()

    def _collective_device(self) -> torch.device:
        return ddp.collective_device(self.device, self.dist)

    def _autocast(self):
        """bf16/fp16 autocast around the loss (JVPs inside switch it off: float32)."""
        return self._amp.autocast()

    def _frozen_copy(self, module: nn.Module) -> nn.Module:
        t = copy.deepcopy(module).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    def _build_model(self) -> nn.Module:
        """The student: initialised from ``derive_seed(seed, "init")``, then warm-started."""
        from anystep.core.flowmap import build_model
        from anystep.core.modeldir import load_model_dir

        cfg = self.config
        # initialisation isolated from the global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = build_model(cfg.model)
        if cfg.init_from is not None:
            init = load_model_dir(cfg.init_from).model
            if init.kind == "velocity" and model.kind == "flowmap":  # teacher init: v_st = b_s
                from anystep.core.warmstart import flowmap_from_velocity

                flowmap_from_velocity(model, init)
            elif cfg.model.num_classes and not getattr(init.backbone, "num_classes", 0):
                from anystep.core.flowmap import load_state_allowing_new_conditioning

                load_state_allowing_new_conditioning(model, init.state_dict())  # new embeddings start at 0
            else:
                model.load_state_dict(init.state_dict())
        return model

    # -- fit -----------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> TrainResult:
        """Train until ``max_steps`` (or stop early after step ``until``, as if interrupted).

        Args:
            until: stop after this many completed steps, writing a checkpoint but not the
                model directory (used to test resuming); None trains to ``max_steps``.

        Returns:
            :class:`TrainResult`.

        Raises:
            TrainingError: the loss became non-finite.
            CheckpointError: resuming from a missing/incompatible checkpoint.
        """
        from anystep.core.modeldir import load_model_dir
        from anystep.training import accel as accel_mod

        t_call = time.perf_counter()
        cfg = self.config
        info = self.dist
        main = info.is_main
        self._resume_from_start = check_run_dir(self.out_dir, cfg, self.resume)
        ddp.barrier(info)
        self.out_dir.mkdir(parents=True, exist_ok=True)

        self._setup_data()
        model = self._build_model()
        accel_mod.configure_backends(self.accel, self.device)
        model.to(self.device).train()
        accel_mod.prepare_model(model, self.accel, self.data_shape, compile=False, student=True)
        batch_channels_last = accel_mod.uses_channels_last(model, self.accel, student=True)
        ddp.broadcast_module(model, info)
        params = [p for p in model.parameters() if p.requires_grad]

        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        ema = EMA(model, cfg.ema_decay)
        accel_mod.compile_model(model, self.accel)  # after the EMA copy: the average stays eager

        # the global generator only drives dropout; seeded per rank, checkpointed
        W = info.world_size
        torch.manual_seed(derive_seed(cfg.seed, "torch", info.rank))

        teacher_orig: nn.Module | None = None
        if cfg.teacher is not None:
            teacher_orig = load_model_dir(cfg.teacher, device=self.device).model
            accel_mod.prepare_model(teacher_orig, self.accel, self.data_shape)
        teacher = teacher_orig

        step = 0
        resumed_from = None
        elapsed_before = 0.0
        last_loss: float | None = None
        resumed_round: int | None = None
        ck: Checkpoint | None = None
        if self.resume and not self._resume_from_start:
            ck = load_checkpoint(self.out_dir, clean=main)
            st = ck.state
            layout = (("world_size", W), ("micro_batches", cfg.micro_batches), ("ddp_batch", cfg.ddp_batch))
            restore_run(ck, model=model, ema=ema, optimizer=optimizer, params=params, amp=self._amp,
                        streams=self._streams, layout=layout)
            step = int(st["step"])
            resumed_from = step
            elapsed_before = float(st.get("elapsed_s", 0.0))
            last_loss = st.get("last_loss")
            resumed_round = int(st.get("round", 0))
            if not 0 <= resumed_round < len(self.rounds):
                raise CheckpointError(f"checkpoint round {resumed_round} does not exist in this run's schedule")
            if ck.teacher is not None:
                teacher = self._frozen_copy(model)
                teacher.load_state_dict(ck.teacher)
            if main:
                truncate_log(self.out_dir, step)
                cfg.save(self.out_dir / TRAIN_CONFIG_NAME)
        elif main:
            cfg.save(self.out_dir / TRAIN_CONFIG_NAME)
        ddp.barrier(info)

        rnd = self.rounds[resumed_round] if resumed_round is not None else self._round_at(step)
        objective = self._build_objective(rnd)
        if ck is not None:  # (not on a resume from step 0)
            restore_objective(objective, ck)
        replaced_teacher = teacher is not teacher_orig

        eval_fn: EvalFn | None
        if self._eval_fn_arg is _DEFAULT:
            eval_fn = default_eval_fn(cfg, self.device) if main else None
        else:
            eval_fn = self._eval_fn_arg if main else None  # type: ignore[assignment]
        last_eval: dict[str, float] = {}

        stop = cfg.max_steps if until is None else min(int(until), cfg.max_steps)
        log_path = self.out_dir / LOG_NAME if main else None
        report = TrainProgress(cfg, self.data_shape, step=step, stop=stop, log_path=log_path,
                               show_bar=main and self.progress, elapsed_before=elapsed_before)
        m = cfg.micro_batches
        chunks = self._chunk_ids()
        obj_gens = self._streams.objective_gens
        metric_sums: dict[str, float] = {}

        def checkpoint(at: int) -> None:
            rng = self._streams.gathered_states(self._collective_device())
            if main:
                save_run_checkpoint(
                    self.out_dir, model=model, ema=ema, optimizer=optimizer, rng=rng, objective=objective,
                    teacher=teacher if replaced_teacher else None,
                    state={
                        "step": at,
                        "round": rnd.index,
                        "world_size": W,
                        "micro_batches": m,
                        "ddp_batch": cfg.ddp_batch,
                        "ema_updates": ema.num_updates,
                        "last_loss": last_loss,
                        "seed": cfg.seed,
                        "elapsed_s": report.elapsed(),
                        "amp": self._amp.state_dict(),
                    },
                )
            ddp.barrier(info)

        # Ctrl-C (single process): finish the current step, write a checkpoint at that clean
        # step boundary (so --resume is exact), then raise KeyboardInterrupt. A second Ctrl-C
        # interrupts immediately. With several processes the periodic checkpoints serve.
        interrupted = []
        old_handler = None
        if not info.distributed and threading.current_thread() is threading.main_thread():

            def _on_sigint(signum, frame):
                if interrupted:
                    raise KeyboardInterrupt
                interrupted.append(signum)

            old_handler = signal.signal(signal.SIGINT, _on_sigint)

        try:
            while step < stop:
                new_rnd = self._round_at(step)
                if new_rnd.index != rnd.index:
                    # progressive PFMM: the student (EMA weights) becomes the teacher
                    teacher = self._frozen_copy(ema.module)
                    replaced_teacher = True
                    rnd = new_rnd
                    objective = self._build_objective(rnd)
                lr = learning_rate(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                metric_sums = {}
                batches = [accel_mod.prepare_batch(b, batch_channels_last) for b in self._draw_batches()]
                loss_sum = torch.zeros((), dtype=torch.float32)
                for c, batch in zip(chunks, batches):
                    with self._autocast():
                        out = objective.loss(model, batch, obj_gens[c], teacher=teacher, step=step)
                    self._amp.backward(out.loss / m)
                    loss_sum += out.loss.detach().float().cpu() / m
                    for k, v in out.metrics.items():
                        metric_sums[k] = metric_sums.get(k, 0.0) + float(v) / m
                loss_all = ddp.all_reduce_mean(loss_sum.to(self._collective_device()), info).cpu()
                if not torch.isfinite(loss_all):
                    raise TrainingError(
                        f"the loss became {float(loss_all)} at step {step + 1}; lower lr (now {lr:g}), "
                        "set grad_clip, or check the data and teacher"
                    )
                ddp.all_reduce_gradients(params, info)
                grad_norm = None
                if cfg.grad_clip:
                    self._amp.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                self._amp.step(optimizer)
                ema.update(model)
                step += 1
                last_loss = float(loss_all)

                report.stepped(step, stop, last_loss, lr)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    keys = sorted(metric_sums)
                    vals = torch.tensor([metric_sums[k] for k in keys], dtype=torch.float64)
                    if keys:
                        vals = ddp.all_reduce_mean(vals.to(self._collective_device()), info).cpu()
                    report.log(step, last_loss, dict(zip(keys, vals.tolist())), lr, grad_norm,
                               rnd.index if len(self.rounds) > 1 else None)
                if eval_fn is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    last_eval = run_eval(eval_fn, ema.module, step, log_path)
                if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0 and step < stop:
                    checkpoint(step)
                if interrupted and step < stop:
                    checkpoint(step)
                    raise KeyboardInterrupt(f"interrupted after step {step}; checkpoint written, resume with --resume")
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            report.close()

        completed = step >= cfg.max_steps
        if completed and eval_fn is not None and cfg.eval_every >= 0:
            last_eval = run_eval(eval_fn, ema.module, step, log_path)
        if resumed_from is None or step > resumed_from:
            checkpoint(step)
        if completed and main:
            write_model_dir(
                self.out_dir, ema.module, cfg, step=step, last_loss=last_loss, last_eval=last_eval,
                world_size=W, rounds=self.rounds, build_objective=self._build_objective,
                units=self._dataset.units.to_dict(),
            )
        ddp.barrier(info)
        return TrainResult(
            out_dir=self.out_dir,
            steps=step,
            final_loss=last_loss,
            completed=completed,
            log_path=self.out_dir / LOG_NAME,
            checkpoint_dir=find_checkpoint(self.out_dir) if main else self.out_dir / CHECKPOINT_DIR,
            eval=last_eval,
            resumed_from=resumed_from,
            wall_time_s=time.perf_counter() - t_call,
        )
