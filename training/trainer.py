"""The training loop: data, optimiser, EMA, logging, evaluation, checkpoints, resume.

``Trainer(config, out_dir).fit()`` trains the model a :class:`TrainConfig` describes and
leaves ``out_dir`` as a model directory (``config.json`` + ``model.safetensors`` with the
EMA weights, loadable with :func:`anystep.core.modeldir.load_model_dir`) plus

* ``train_config.json``: the (resolved) training config;
* ``train_log.jsonl``: one JSON object per log step (``step``, ``loss``, the objective's
  metrics, ``lr``, ``time``, ``steps_per_s``) and per evaluation (``"eval": {...}``);
* ``checkpoint/``: the latest checkpoint (:mod:`anystep.training.checkpoint`).

Reproducibility. All randomness comes from ``torch.Generator`` objects seeded from
``config.seed`` by :func:`derive_seed`: model initialisation, the data stream (``x0``,
``x1``, ``z``), one time stream per micro-batch (the objective draws ``(s, t)`` from it)
and the global torch generator (dropout). Their states are checkpointed, so a run
resumed with ``resume=True`` continues exactly: its later losses and final weights equal
those of an uninterrupted run (same seed, same number of processes).

One optimisation step with global batch ``B``, ``W`` processes and ``m`` micro-batches:
draw ``B / W`` samples per rank (``ddp_batch="shard"``, rank-seeded streams) or the full
``B`` on every rank and keep slice ``rank`` (``ddp_batch="split"``); couple them
(:mod:`anystep.core.couplings`); split into ``m`` chunks; back-propagate each chunk's loss
``/ m``; average gradients over ranks (:mod:`anystep.training.ddp`); clip; step; update
the EMA. Chunk ``c = rank * m + j`` always uses time stream ``c``, so ``W`` processes with
``ddp_batch="split"`` perform the same update as one process with ``micro_batches = W``.

Progressive PFMM (Sec. 3.4 after Lemma 3.12): with objective ``pfmm`` and the trainer-level
hyper-parameter ``M`` smaller than ``steps`` (= K), training runs the rounds of
:func:`anystep.training.fmm.progressive_schedule`; round ``r`` uses ``steps=M,
window=N_r`` and the rounds share ``max_steps`` equally; after each round the student's
EMA weights become the frozen teacher of the next round.

Time convention: ``t = 0`` base, ``t = 1`` data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anystep.core.config import ConfigError, ModelConfig
from anystep.errors import AnystepError
from anystep.training import ddp
from anystep.training.base import Batch, Objective
from anystep.training.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    atomic_write_text,
    check_optimizer_matches,
    check_tensors_match,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from anystep.training.config import TrainConfig, learning_rate, trained_time_region, validate_config
from anystep.training.ema import EMA

__all__ = [
    "LOG_NAME",
    "TRAIN_CONFIG_NAME",
    "EvalFn",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "default_eval_fn",
    "derive_seed",
    "read_log",
]

LOG_NAME = "train_log.jsonl"
TRAIN_CONFIG_NAME = "train_config.json"
# Trainer-level objective hyper-parameters (removed before the objective is built).
TRAINER_HPARAMS = {"pfmm": ("M",)}
# Fields that may change when a run is resumed (they do not change the optimisation).
RESUME_MUTABLE = ("max_steps", "log_every", "ckpt_every", "eval_every", "eval_samples", "device")

EvalFn = Callable[[nn.Module, int], dict[str, float]]
"""An evaluation hook: ``fn(ema_model, step) -> {metric: value}`` (model in eval mode)."""


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


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed derived from ``seed`` and tags (stable across processes and runs)."""
    text = "/".join([str(int(seed))] + [str(t) for t in tags])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Parsed lines of ``out_dir/train_log.jsonl`` (an unreadable trailing line is skipped)."""
    p = Path(out_dir) / LOG_NAME
    rows = []
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def objective_state(objective: Any) -> tuple[dict[str, Any] | None, dict[str, Tensor] | None]:
    """State of an objective with learned parts (``state_dict()``), else ``(None, None)``.

    Returns:
        ``(json_state, tensors)``: the ``"tensors"`` entry of the state (``{name: Tensor}``,
        e.g. consistency distillation's EMA target network) is split off for
        ``objective.safetensors``; the rest is JSON for ``state.json``.
    """
    if not hasattr(objective, "state_dict"):
        return None, None
    state = dict(objective.state_dict())
    tensors = state.pop("tensors", None)
    return state, ({k: v.detach().cpu().contiguous() for k, v in tensors.items()} if tensors else None)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _resolve_device(name: str, info: ddp.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu")
        if name == "cuda" and info.distributed:
            name = f"cuda:{info.local_rank}"
    return torch.device(name)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        anystep_version = version("anystep")
    except PackageNotFoundError:  # pragma: no cover - not installed as a distribution
        anystep_version = "unknown"
    return {"anystep_version": anystep_version, "torch_version": torch.__version__}


# ------------------------------------------------------------------------------------
# default evaluation
# ------------------------------------------------------------------------------------


def default_eval_fn(config: TrainConfig, device: torch.device | str = "cpu") -> EvalFn | None:
    """The evaluation used when none is given: 2D KL divergences (paper Table 3).

    For 2D data: flow maps report ``kl_1step``, ``kl_2step``, ``kl_4step`` (``X_{0,1}``
    iterated on the uniform grid); velocity models report ``kl_heun16`` (Heun, 16 steps,
    32 NFE, a cheap solver). The target is the exact checkerboard density or, for other
    2D sets, ``eval_samples`` data samples. Noise and targets come from a generator seeded
    by ``derive_seed(seed, "eval")``, so training randomness is untouched. Other data:
    None (no default evaluation).
    """
    if tuple(config.model.data_shape) != (2,):
        return None
    from anystep.core import data as data_mod

    try:
        from anystep.core.metrics import kl_divergence_2d
    except ImportError:  # pragma: no cover - metrics not available
        return None
    from anystep.core.samplers import sample_flowmap, sample_ode

    n = int(config.eval_samples)
    g = _generator(derive_seed(config.seed, "eval"))
    x0 = data_mod.base_sample(config.base, (2,), n, g)
    density = None
    target = None
    if config.dataset == "checkerboard":
        density = data_mod.checkerboard_density
    else:
        target = data_mod.get_dataset(config.dataset, **config.dataset_kwargs).sample(n, g).numpy()
    dev = torch.device(device)

    def kl(samples: Tensor) -> float:
        pts = samples.detach().float().cpu().numpy()
        return float(kl_divergence_2d(target, pts, target_density=density))

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        x = x0.to(dev)
        with torch.no_grad():
            if getattr(model, "kind", None) == "flowmap":
                return {f"kl_{k}step": kl(sample_flowmap(model, x, steps=k).x) for k in (1, 2, 4)}
            return {"kl_heun16": kl(sample_ode(model, x, solver="heun", steps=16).x)}

    return evaluate


_DEFAULT = object()


# ------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------


@dataclass
class _Round:
    index: int
    start: int
    end: int
    hparams: dict[str, Any]


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
        trainer_keys = TRAINER_HPARAMS.get(config.objective, ())
        self._trainer_hparams = {k: config.objective_hparams[k] for k in trainer_keys if k in config.objective_hparams}
        check_cfg = config.replace(
            objective_hparams={k: v for k, v in config.objective_hparams.items() if k not in trainer_keys}
        )
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
        self.device = _resolve_device(self.config.device, self.dist)
        self._eval_fn_arg = eval_fn
        from anystep.training.accel import AccelOptions, MixedPrecision

        self.accel = accel if accel is not None else AccelOptions()
        if not isinstance(self.accel, AccelOptions):
            raise ConfigError(f"accel must be an AccelOptions, got {type(self.accel).__name__}")
        self._amp = MixedPrecision(self.config.precision, self.device)
        from anystep.training.accel import check_options

        check_options(self.accel, self.data_shape)  # before anything is written

    # -- planning ----------------------------------------------------------------------
    def _plan_rounds(self) -> list[_Round]:
        cfg = self.config
        base_hp = {k: v for k, v in cfg.objective_hparams.items() if k not in TRAINER_HPARAMS.get(cfg.objective, ())}
        M = self._trainer_hparams.get("M")
        if cfg.objective == "pfmm" and M is not None:
            from anystep.training.fmm import progressive_schedule

            K = int(base_hp.get("steps", self.objective_cls.defaults.get("steps", 4)))  # type: ignore[attr-defined]
            if isinstance(M, bool) or not isinstance(M, int) or M < 2:
                raise ConfigError(f"pfmm: M={M!r} must be an integer >= 2 (teacher steps per progressive round)")
            if M < K:
                schedule = progressive_schedule(K, M)
                R = len(schedule)
                if cfg.max_steps < R:
                    raise ConfigError(f"max_steps={cfg.max_steps} is less than the {R} progressive PFMM rounds")
                bounds = [round(cfg.max_steps * r / R) for r in range(R + 1)]
                return [
                    _Round(r, bounds[r], bounds[r + 1], {**base_hp, "steps": M, "window": n})
                    for r, n in enumerate(schedule)
                ]
        return [_Round(0, 0, cfg.max_steps, base_hp)]

    def _round_at(self, step: int) -> _Round:
        for r in self.rounds:
            if step < r.end:
                return r
        return self.rounds[-1]

    # -- helpers -------------------------------------------------------------------------
    def _build_objective(self, rnd: _Round) -> Objective:
        from anystep.core.interpolants import build_interpolant

        return self.objective_cls(build_interpolant(self.config.model.interpolant), **rnd.hparams)

    def _chunk_ids(self) -> list[int]:
        m = self.config.micro_batches
        return [self.dist.rank * m + j for j in range(m)]

    def _setup_data(self) -> None:
        """Build the data sets and seed the data stream and the per-chunk time streams."""
        from anystep.core.data import get_dataset

        cfg = self.config
        self._dataset = get_dataset(cfg.dataset, **cfg.dataset_kwargs)
        self._base = "gaussian" if cfg.base.strip().lower() == "gaussian" else get_dataset(cfg.base)
        k = cfg.model.num_classes
        if k and self._dataset.num_classes != k:
            raise TrainingError(
                f"model.num_classes={k} but data set {cfg.dataset!r} has "
                f"{self._dataset.num_classes or 'no'} class labels; set model.num_classes to match"
            )
        data_rank = 0 if cfg.ddp_batch == "split" else self.dist.rank
        self._data_gen = _generator(derive_seed(cfg.seed, "data", data_rank))
        self._obj_gens = {c: _generator(derive_seed(cfg.seed, "objective", c)) for c in self._chunk_ids()}

    def _draw_batches(self) -> list[Batch]:
        """This rank's micro-batches for the next step (advances the data stream)."""
        from anystep.core import couplings
        from anystep.core.data import base_sample

        cfg = self.config
        W, m = self.dist.world_size, cfg.micro_batches
        split = cfg.ddp_batch == "split"
        n = cfg.batch_size if split else cfg.batch_size // W
        g = self._data_gen
        y = None
        if cfg.coupling == "paired" and hasattr(self._base, "sample_pair"):  # e.g. (degraded, clean) digits
            drawn = self._base.sample_pair(n, g)
            x0, x1, y = drawn.x0, drawn.x1, (drawn.y if cfg.model.num_classes else None)
        elif cfg.model.num_classes:  # class-conditional: labels ride along with x1
            drawn = self._dataset.sample_labelled(n, g)
            x1, y = drawn.x, drawn.y
        else:
            x1 = self._dataset.sample(n, g)
        if not (cfg.coupling == "paired" and hasattr(self._base, "sample_pair")):
            x0 = base_sample(self._base, self.data_shape, n, g)
        z = torch.randn((n, *self.data_shape), generator=g)
        pair = couplings.COUPLINGS[cfg.coupling](x0, x1)
        x0, x1 = pair.x0, pair.x1
        if split and W > 1:
            local = cfg.batch_size // W
            sl = slice(self.dist.rank * local, (self.dist.rank + 1) * local)
            x0, x1, z = x0[sl], x1[sl], z[sl]
            y = None if y is None else y[sl]
        size = x0.shape[0] // m
        dev = self.device
        return [
            Batch(
                x0=x0[j * size : (j + 1) * size].to(dev),
                x1=x1[j * size : (j + 1) * size].to(dev),
                z=z[j * size : (j + 1) * size].to(dev),
                y=None if y is None else y[j * size : (j + 1) * size].to(dev),
            )
            for j in range(m)
        ]

    def _rng_states(self) -> dict[str, Tensor]:
        """This rank's generator states."""
        out = {"data": self._data_gen.get_state(), "torch": torch.get_rng_state()}
        for j, c in enumerate(self._chunk_ids()):
            out[f"objective{j}"] = self._obj_gens[c].get_state()
        if self.device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def _gathered_rng(self) -> dict[str, Tensor]:
        local = self._rng_states()
        out: dict[str, Tensor] = {}
        for name in sorted(local):
            for r, t in enumerate(ddp.all_gather_tensor(local[name].to(self._collective_device()), self.dist)):
                out[f"rank{r}.{name}"] = t.cpu()
        return out

    def _collective_device(self) -> torch.device:
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    def _set_rng(self, rng: dict[str, Tensor]) -> None:
        r = self.dist.rank
        try:
            self._data_gen.set_state(rng[f"rank{r}.data"])
            torch.set_rng_state(rng[f"rank{r}.torch"])
            for j, c in enumerate(self._chunk_ids()):
                self._obj_gens[c].set_state(rng[f"rank{r}.objective{j}"])
            if self.device.type == "cuda" and f"rank{r}.cuda" in rng:
                torch.cuda.set_rng_state(rng[f"rank{r}.cuda"], self.device)
        except KeyError as e:
            raise CheckpointError(f"checkpoint rng.safetensors lacks {e}; the checkpoint is damaged") from None

    def _autocast(self):
        """bf16/fp16 autocast around the loss (JVPs inside switch it off: float32)."""
        return self._amp.autocast()

    def _frozen_copy(self, module: nn.Module) -> nn.Module:
        t = copy.deepcopy(module).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    # -- output directory ----------------------------------------------------------------
    def _prepare_out_dir(self) -> dict[str, Any] | None:
        """Check the run directory; return the checkpoint state when resuming."""
        out = self.out_dir
        self._resume_from_start = False
        if self.resume:
            if find_checkpoint(out) is None:
                if not (out / TRAIN_CONFIG_NAME).is_file() or (out / "config.json").exists():
                    raise CheckpointError(f"{out} has no checkpoint to resume from; run without --resume to start it")
                # killed after train_config.json, before the first checkpoint: nothing to
                # continue, so --resume starts the same run again at step 0
                self._resume_from_start = True
                (out / LOG_NAME).unlink(missing_ok=True)
            saved_path = out / TRAIN_CONFIG_NAME
            if not saved_path.is_file():
                raise CheckpointError(f"{out} has a checkpoint but no {TRAIN_CONFIG_NAME}; cannot check the config")
            saved = TrainConfig.load(saved_path).to_dict()
            now = self.config.to_dict()
            diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_MUTABLE and saved.get(k) != now.get(k))
            if diff:
                raise CheckpointError(
                    f"the config differs from the run in {out} in {diff}; resume with the same settings "
                    f"(only {list(RESUME_MUTABLE)} may change)"
                )
            return None
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a directory")
        taken = [n for n in (CHECKPOINT_DIR, LOG_NAME, TRAIN_CONFIG_NAME, "config.json") if (out / n).exists()]
        if taken:
            raise ConfigError(
                f"{out} already holds a training run ({', '.join(taken)}); pass --resume to continue it, "
                "--restart to discard it and start again, or choose another --out"
            )
        return None

    def _truncate_log(self, step: int) -> None:
        p = self.out_dir / LOG_NAME
        if not p.exists():
            return
        kept = [json.dumps(row) for row in read_log(self.out_dir) if int(row.get("step", 0)) <= step]
        atomic_write_text(p, "".join(line + "\n" for line in kept))

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
        from anystep.core.flowmap import build_model
        from anystep.core.modeldir import load_model_dir

        t_call = time.perf_counter()
        cfg = self.config
        info = self.dist
        main = info.is_main
        self._prepare_out_dir()
        ddp.barrier(info)
        self.out_dir.mkdir(parents=True, exist_ok=True)

        self._setup_data()

        # model (initialisation isolated from the global generator)
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
        from anystep.training import accel as accel_mod

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
        if self.resume and not self._resume_from_start:
            ck = load_checkpoint(self.out_dir, clean=main)
            st = ck.state
            for key, want in (("world_size", W), ("micro_batches", cfg.micro_batches), ("ddp_batch", cfg.ddp_batch)):
                if st.get(key) != want:
                    raise CheckpointError(
                        f"the checkpoint was written with {key}={st.get(key)!r} but this run has {want!r}; "
                        "resume with the same number of processes and micro-batches"
                    )
            check_tensors_match(ck.model, model.state_dict(), ck.path / "model.safetensors")
            check_tensors_match(ck.ema, ema.state_dict(), ck.path / "ema.safetensors")
            check_optimizer_matches(ck.optimizer, params, ck.path / "optimizer.json")
            try:
                model.load_state_dict(ck.model)
                ema.load_state_dict(ck.ema, st.get("ema_updates", 0))
                optimizer.load_state_dict(ck.optimizer)
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{ck.path} cannot be loaded into this run ({' '.join(str(e).split())[:200]}); "
                    "restart with --restart"
                ) from None
            self._amp.load_state_dict(st.get("amp"))
            self._set_rng(ck.rng)
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
                self._truncate_log(step)
                cfg.save(self.out_dir / TRAIN_CONFIG_NAME)
        elif main:
            cfg.save(self.out_dir / TRAIN_CONFIG_NAME)
        ddp.barrier(info)

        rnd = self.rounds[resumed_round] if resumed_round is not None else self._round_at(step)
        objective = self._build_objective(rnd)
        if resumed_from is not None and hasattr(objective, "load_state_dict"):  # (not on a resume from step 0)
            obj_state = dict(st.get("objective_state") or {})
            if ck.objective_tensors:
                obj_state["tensors"] = ck.objective_tensors
            objective.load_state_dict(obj_state)
        replaced_teacher = teacher is not teacher_orig

        eval_fn: EvalFn | None
        if self._eval_fn_arg is _DEFAULT:
            eval_fn = default_eval_fn(cfg, self.device) if main else None
        else:
            eval_fn = self._eval_fn_arg if main else None  # type: ignore[assignment]
        last_eval: dict[str, float] = {}

        stop = cfg.max_steps if until is None else min(int(until), cfg.max_steps)
        log_path = self.out_dir / LOG_NAME if main else None
        bar = None
        if main and self.progress and step < stop:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True, desc=cfg.objective)
        t0 = time.perf_counter()
        t_last, step_last = t0, step
        m = cfg.micro_batches
        chunk_ids = self._chunk_ids()
        metric_sums: dict[str, float] = {}

        def checkpoint(at: int) -> None:
            rng = self._gathered_rng()
            if main:
                obj_json, obj_tensors = objective_state(objective)
                save_checkpoint(
                    self.out_dir,
                    model=model.state_dict(),
                    ema=ema.state_dict(),
                    optimizer=optimizer.state_dict(),
                    rng=rng,
                    state={
                        "step": at,
                        "round": rnd.index,
                        "world_size": W,
                        "micro_batches": m,
                        "ddp_batch": cfg.ddp_batch,
                        "ema_updates": ema.num_updates,
                        "last_loss": last_loss,
                        "seed": cfg.seed,
                        "elapsed_s": elapsed_before + time.perf_counter() - t0,
                        "amp": self._amp.state_dict(),
                        # learned loss weights of the objective (e.g. AYF's adaptive u(s, t)), JSON
                        "objective_state": obj_json,
                    },
                    teacher=teacher.state_dict() if (replaced_teacher and teacher is not None) else None,
                    objective_tensors=obj_tensors,  # e.g. CD's EMA target network
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
                for c, batch in zip(chunk_ids, batches):
                    with self._autocast():
                        out = objective.loss(model, batch, self._obj_gens[c], teacher=teacher, step=step)
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

                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == stop:
                        rate = (bar.format_dict.get("rate") or 0.0) * cfg.batch_size  # smoothed steps/s
                        unit = "img/s" if len(self.data_shape) == 3 else "samples/s"
                        bar.set_postfix({"loss": f"{last_loss:.4g}", "lr": f"{lr:.2g}", unit: f"{rate:.4g}"}, refresh=False)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    keys = sorted(metric_sums)
                    vals = torch.tensor([metric_sums[k] for k in keys], dtype=torch.float64)
                    if keys:
                        vals = ddp.all_reduce_mean(vals.to(self._collective_device()), info).cpu()
                    now = time.perf_counter()
                    if main:
                        row: dict[str, Any] = {"step": step, "loss": last_loss}
                        for k, v in zip(keys, vals.tolist()):
                            if k != "loss":
                                row[k] = v
                        row.update(
                            lr=lr,
                            time=round(elapsed_before + now - t0, 4),
                            steps_per_s=round((step - step_last) / max(now - t_last, 1e-9), 3),
                            samples_per_s=round(
                                accel_mod.samples_per_second(cfg.batch_size * (step - step_last), now - t_last), 2
                            ),
                        )
                        if grad_norm is not None:
                            row["grad_norm"] = grad_norm
                        if len(self.rounds) > 1:
                            row["round"] = rnd.index
                        _append_jsonl(log_path, row)
                    t_last, step_last = now, step
                if eval_fn is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    last_eval = self._evaluate(eval_fn, ema, step, log_path)
                if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0 and step < stop:
                    checkpoint(step)
                if interrupted and step < stop:
                    checkpoint(step)
                    raise KeyboardInterrupt(f"interrupted after step {step}; checkpoint written, resume with --resume")
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if bar is not None:
                bar.close()

        completed = step >= cfg.max_steps
        if completed and eval_fn is not None and cfg.eval_every >= 0:
            last_eval = self._evaluate(eval_fn, ema, step, log_path)
        if resumed_from is None or step > resumed_from:
            checkpoint(step)
        if completed and main:
            self._write_model_dir(ema.module, step, last_loss, last_eval)
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

    def _evaluate(self, eval_fn: EvalFn, ema: EMA, step: int, log_path: Path | None) -> dict[str, float]:
        with torch.no_grad():
            result = {k: float(v) for k, v in eval_fn(ema.module, step).items()}
        if log_path is not None:
            _append_jsonl(log_path, {"step": step, "eval": result})
        return result

    def _write_model_dir(self, model: nn.Module, step: int, last_loss: float | None, last_eval: dict) -> None:
        """Write ``config.json`` + ``model.safetensors`` (EMA weights) into ``out_dir``."""
        from anystep.core.modeldir import (
            CONFIG_NAME,
            WEIGHTS_NAME,
            model_dir_sha256,
            save_model_dir,
        )

        cfg = self.config
        train_dict = cfg.to_dict()
        train_dict["model"].pop("provenance", None)
        provenance: dict[str, Any] = dict(cfg.model.provenance)
        provenance.update(
            {
                "preset": cfg.preset,
                "objective": cfg.objective,
                "objective_hparams": dict(cfg.objective_hparams),
                "steps": step,
                "final_loss": last_loss,
                "seed": cfg.seed,
                "dataset": cfg.dataset,
                "base": cfg.base,
                "world_size": self.dist.world_size,
                "teacher": None if cfg.teacher is None else str(Path(cfg.teacher).resolve()),
                "teacher_sha256": None if cfg.teacher is None else model_dir_sha256(cfg.teacher),
                "init_from": None if cfg.init_from is None else str(Path(cfg.init_from).resolve()),
                "init_from_sha256": None if cfg.init_from is None else model_dir_sha256(cfg.init_from),
                "eval": last_eval,
                "train_config": train_dict,
                "weights": "ema",
                **_versions(),
            }
        )
        if len(self.rounds) > 1:
            provenance["progressive_rounds"] = [
                {"round": r.index, "steps": [r.start, r.end], "objective_hparams": r.hparams} for r in self.rounds
            ]
        # the (s, t) region every round sampled decides whether X_{1,0} may be used
        regions = {trained_time_region(self._build_objective(r)) for r in self.rounds}
        time_region = "both" if regions == {"both"} else "forward"
        # the step counts the final objective trained (shortcut: dyadic; cd/ct/operator: 1; pd: N)
        final = self._build_objective(self.rounds[-1])
        steps_fn = getattr(final, "supported_steps", None) if cfg.model.kind == "flowmap" else None
        supported = None if steps_fn is None else steps_fn()
        model_cfg = ModelConfig.from_dict({
            **cfg.model.to_dict(), "provenance": provenance, "time_region": time_region,
            "supported_steps": None if supported is None else list(supported),
            # the data set's own units (e.g. npz uint8: levels 0..255), so serving needs no data set
            "units": self._dataset.units.to_dict(),
        })
        tmp = self.out_dir / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model_dir(tmp, model, model_cfg)
        try:
            # each file is replaced atomically; config.json last, so it never precedes its weights
            os.replace(tmp / WEIGHTS_NAME, self.out_dir / WEIGHTS_NAME)
            os.replace(tmp / CONFIG_NAME, self.out_dir / CONFIG_NAME)
            mask = os.umask(0)
            os.umask(mask)
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                os.chmod(self.out_dir / name, 0o666 & ~mask)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
