"""The typed training configuration :class:`TrainConfig`: its fields, cheap checks and JSON form.

A ``TrainConfig`` is everything a training run depends on; it round-trips through
JSON (``to_dict`` / ``from_dict`` / ``save`` / ``load``) and rejects unknown keys with a
one-line :class:`~anystep.core.config.ConfigError`. Cheap checks (types, ranges,
names) run when the dataclass is built; the checks that read files or data sets live in
:mod:`anystep.training.validate`, ``--set`` overrides in :mod:`anystep.training.overrides`
and the learning-rate schedules in :mod:`anystep.training.lr_schedule` (all importable
from :mod:`anystep.training.config`).

Time convention: ``t = 0`` base rho_0, ``t = 1`` data rho_1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anystep.core.config import ConfigError, ModelConfig
from anystep.errors import one_line

__all__ = ["ConfigError", "TrainConfig"]

LR_SCHEDULES = ("constant", "step", "linear", "cosine")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
DDP_BATCH_MODES = ("shard", "split")
COUPLING_NAMES = ("independent", "paired", "minibatch_ot")


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        model: the model to train (kind, backbone, interpolant, ansatz). Its ``dataset``,
            ``base`` and ``data_shape`` fields are overwritten from this config's
            ``dataset`` / ``base`` (this config is authoritative).
        objective: registry name of the loss (``anystep.training.base.build_objective``).
        objective_hparams: keyword arguments of the objective (JSON values).
        dataset: data set name or spec for rho_1 (``anystep.core.data.get_dataset``).
        dataset_kwargs: keyword arguments for ``get_dataset``.
        base: ``"gaussian"`` or a data set name for rho_0.
        coupling: ``"independent"``, ``"paired"`` or ``"minibatch_ot"``.
        batch_size: global batch size per optimisation step (all ranks together).
        micro_batches: the batch is split into this many chunks per rank whose gradients
            are averaged (gradient accumulation); each chunk has its own time stream.
        max_steps: number of optimisation steps.
        lr: peak learning rate.
        lr_schedule: ``"constant"``, ``"step"`` (paper), ``"linear"`` or ``"cosine"``.
        lr_warmup_steps: linear warm-up length (0: none).
        lr_decay_start: step where ``linear``/``cosine``/``step`` decay starts.
        lr_decay_every: ``step`` schedule: decay period in steps (paper: 1000).
        lr_decay_rate: ``step`` schedule: factor per period (paper: 0.992).
        lr_min: final learning rate of ``linear``/``cosine``.
        optimizer: ``"adam"`` (paper) or ``"adamw"``.
        betas: Adam betas.
        weight_decay: L2 (adam) or decoupled (adamw) weight decay.
        grad_clip: max global gradient norm; ``None`` or 0 disables clipping.
        ema_decay: decay of the weight EMA used for sampling (0: EMA = weights).
        seed: seed of every random stream (model init, data, times, dropout).
        log_every: steps between JSONL log lines.
        ckpt_every: steps between checkpoints (0: only the final one).
        eval_every: steps between evaluations (0: only when training ends, if an
            evaluation applies; negative: never).
        eval_samples: number of samples drawn by the default evaluation.
        teacher: model directory of the frozen teacher (distillation objectives).
        init_from: model directory whose weights initialise the model (warm start);
            defaults to the teacher for ``pfmm``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast around the
            loss; objectives keep their JVPs in fp32; fp16 adds dynamic loss scaling,
            see :mod:`anystep.training.accel`).
        ddp_batch: with several processes: ``"shard"`` (each rank draws its own
            ``batch_size / world_size`` samples from a stream seeded by its rank) or
            ``"split"`` (every rank draws the same global batch and keeps its slice, so
            the global batch equals the single-process batch).
        preset: name of the preset this config came from (recorded in provenance).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: str = "velocity"
    objective_hparams: dict[str, Any] = field(default_factory=dict)
    dataset: str = "checkerboard"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    base: str = "gaussian"
    coupling: str = "independent"
    batch_size: int = 256
    micro_batches: int = 1
    max_steps: int = 50_000
    lr: float = 1e-4
    lr_schedule: str = "step"
    lr_warmup_steps: int = 0
    lr_decay_start: int = 0
    lr_decay_every: int = 1000
    lr_decay_rate: float = 0.992
    lr_min: float = 0.0
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0
    eval_samples: int = 20_000
    teacher: str | None = None
    init_from: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    ddp_batch: str = "shard"
    preset: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or a JSON object, got {type(self.model).__name__}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self._check()
        # this config is authoritative for the data the model is trained on (copy, so a
        # ModelConfig shared with other configs is never modified)
        self.model = dataclasses.replace(self.model, dataset=self.dataset, base=self.base)

    # -- checks ----------------------------------------------------------------------
    def _check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.objective, str) and bool(self.objective), "objective must be a non-empty name, e.g. 'velocity'")
        need(isinstance(self.objective_hparams, dict), "objective_hparams must be a JSON object, e.g. {\"K\": 4}")
        need(isinstance(self.dataset, str) and bool(self.dataset), "dataset must be a data set name, e.g. 'checkerboard'")
        need(isinstance(self.dataset_kwargs, dict), "dataset_kwargs must be a JSON object")
        need(isinstance(self.base, str) and bool(self.base), "base must be 'gaussian' or a data set name")
        need(self.coupling in COUPLING_NAMES, f"coupling={self.coupling!r}: use one of {list(COUPLING_NAMES)}")
        for name in ("batch_size", "micro_batches", "max_steps", "log_every"):
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in ("lr_warmup_steps", "lr_decay_start", "ckpt_every", "seed"):
            v = getattr(self, name)
            need(is_int(v) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        need(is_int(self.eval_every), f"eval_every must be an integer (0: at the end only, <0: never), got {self.eval_every!r}")
        need(is_int(self.eval_samples) and self.eval_samples >= 16, f"eval_samples must be an integer >= 16, got {self.eval_samples!r}")
        need(is_int(self.lr_decay_every) and self.lr_decay_every >= 1, f"lr_decay_every must be an integer >= 1, got {self.lr_decay_every!r}")
        need(
            self.batch_size % self.micro_batches == 0,
            f"batch_size={self.batch_size} must be divisible by micro_batches={self.micro_batches}",
        )
        need(is_num(self.lr) and self.lr > 0, f"lr must be a positive number (paper: 1e-4), got {self.lr!r}")
        need(is_num(self.lr_min) and 0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr], got {self.lr_min!r}")
        need(is_num(self.lr_decay_rate) and 0 < self.lr_decay_rate <= 1, f"lr_decay_rate must be in (0, 1] (paper: 0.992), got {self.lr_decay_rate!r}")
        need(self.lr_schedule in LR_SCHEDULES, f"lr_schedule={self.lr_schedule!r}: use one of {list(LR_SCHEDULES)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r}: use one of {list(OPTIMIZERS)}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {list(self.betas)}",
        )
        need(is_num(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(
            self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip >= 0),
            f"grad_clip must be null or a number >= 0 (0 disables it), got {self.grad_clip!r}",
        )
        need(is_num(self.ema_decay) and 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        need(self.teacher is None or isinstance(self.teacher, str), "teacher must be a model directory path or null")
        need(self.init_from is None or isinstance(self.init_from, str), "init_from must be a model directory path or null")
        need(
            isinstance(self.device, str)
            and (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")),
            f"device={self.device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'",
        )
        need(self.precision in PRECISIONS, f"precision={self.precision!r}: use one of {list(PRECISIONS)}")
        need(self.ddp_batch in DDP_BATCH_MODES, f"ddp_batch={self.ddp_batch!r}: use one of {list(DDP_BATCH_MODES)}")
        need(self.preset is None or isinstance(self.preset, str), "preset must be a name or null")
        try:
            json.dumps(self.objective_hparams)
            json.dumps(self.dataset_kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"objective_hparams and dataset_kwargs must hold JSON values: {e}") from None

    # -- JSON round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise a one-line :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown training config key(s) {unknown}; allowed: {names}")
        kwargs = dict(data)
        if "model" in kwargs:
            m = kwargs["model"]
            if isinstance(m, dict):
                m = dict(m)
                for key, top in (("dataset", "dataset"), ("base", "base")):
                    if key in m and top in kwargs and m[key] != kwargs[top]:
                        raise ConfigError(
                            f"model.{key}={m[key]!r} disagrees with {top}={kwargs[top]!r}; "
                            f"set only the top-level {top!r}"
                        )
                    if key in m and top not in kwargs:
                        kwargs[top] = m[key]
            try:
                kwargs["model"] = ModelConfig.from_dict(m)
            except TypeError as e:
                raise ConfigError(f"model: {one_line(e)}") from None
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(one_line(e)) from None

    def to_json(self) -> str:
        """Pretty JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON atomically (temp file + rename)."""
        from anystep.training.checkpoint import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON config file; a bad file raises a one-line :class:`ConfigError`."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"training config {p} does not exist (give a preset name or a JSON file)")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p} is not valid JSON: {one_line(e)}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed."""
        d = self.to_dict()
        d.update({k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in changes.items()})
        d["model"] = {k: v for k, v in d["model"].items() if k not in ("dataset", "base")}
        return TrainConfig.from_dict(d)
