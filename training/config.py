"""The typed training configuration :class:`TrainConfig` and its validation.

A ``TrainConfig`` is everything a training run depends on; it round-trips through
JSON (``to_dict`` / ``from_dict`` / ``save`` / ``load``) and rejects unknown keys with a
one-line :class:`~anystep.core.config.ConfigError`. Cheap checks (types, ranges,
names) run when the dataclass is built; :func:`validate_config` runs the checks
that read files or data sets (objective known, teacher present and of the right
kind, data shapes agree) BEFORE any training starts.

Time convention: ``t = 0`` base rho_0, ``t = 1`` data rho_1.

Learning-rate schedules (:func:`learning_rate`, ``step`` counts completed updates):

* ``"constant"``: ``lr``.
* ``"step"`` (the paper's, Table 4: "LR decay (every 1k epochs) 0.992"; with an
  infinite stream of samples we read "epoch" as "optimisation step"):
  ``lr * lr_decay_rate ** floor(max(0, step - lr_decay_start) / lr_decay_every)``.
* ``"linear"``: ``lr`` until ``lr_decay_start``, then linear down to ``lr_min`` at
  ``max_steps``.
* ``"cosine"``: ``lr`` until ``lr_decay_start``, then half a cosine down to ``lr_min``
  at ``max_steps``.

All schedules are multiplied by a linear warm-up ``(step + 1) / lr_warmup_steps``
during the first ``lr_warmup_steps`` steps (0 disables it). The schedule is a pure
function of the step, so resuming needs no scheduler state.
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

__all__ = [
    "ConfigError",
    "TrainConfig",
    "ValidatedConfig",
    "apply_overrides",
    "learning_rate",
    "trained_time_region",
    "validate_config",
]

LR_SCHEDULES = ("constant", "step", "linear", "cosine")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
DDP_BATCH_MODES = ("shard", "split")
COUPLING_NAMES = ("independent", "paired", "minibatch_ot")


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


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
                raise ConfigError(f"model: {_one_line(e)}") from None
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(_one_line(e)) from None

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
            raise ConfigError(f"{p} is not valid JSON: {_one_line(e)}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed."""
        d = self.to_dict()
        d.update({k: (v.to_dict() if isinstance(v, ModelConfig) else v) for k, v in changes.items()})
        d["model"] = {k: v for k, v in d["model"].items() if k not in ("dataset", "base")}
        return TrainConfig.from_dict(d)


# ------------------------------------------------------------------------------------
# --set key=value overrides
# ------------------------------------------------------------------------------------

_FREE_DICTS = ("objective_hparams", "dataset_kwargs", "model.provenance")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` overrides (dotted keys, JSON values) and re-validate.

    Examples: ``model.backbone.width=64``, ``objective_hparams.K=4``,
    ``teacher=null``, ``betas=[0.9,0.99]``. A value that is not valid JSON is taken as
    a string (``dataset=moons``).

    Raises:
        ConfigError: malformed assignment or unknown key.
    """
    data = config.to_dict()
    data["model"] = {k: v for k, v in data["model"].items() if k not in ("dataset", "base")}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set model.backbone.width=64")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: empty key; e.g. --set lr=1e-3")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: i + 1])
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                if isinstance(node, dict) and prefix in _FREE_DICTS and part not in node:
                    node[part] = {}
                else:
                    raise ConfigError(f"--set {key}: {prefix!r} is not a section of the training config")
            node = node[part]
        last = parts[-1]
        parent = ".".join(parts[:-1])
        if last not in node and parent not in _FREE_DICTS:
            if parent == "model" and last in ("dataset", "base"):
                raise ConfigError(f"--set {key}: set the top-level {last!r} instead")
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"--set {key}: unknown key {last!r}; allowed here: {allowed}")
        node[last] = _parse_value(text)
    return TrainConfig.from_dict(data)


# ------------------------------------------------------------------------------------
# learning-rate schedule
# ------------------------------------------------------------------------------------


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate used for the update that follows ``step`` completed updates.

    See the module docstring for the schedules.
    """
    lr = float(config.lr)
    sched = config.lr_schedule
    if sched == "step":
        k = max(0, step - config.lr_decay_start) // config.lr_decay_every
        lr = lr * config.lr_decay_rate**k
    elif sched in ("linear", "cosine"):
        span = max(1, config.max_steps - config.lr_decay_start)
        frac = min(1.0, max(0.0, (step - config.lr_decay_start) / span))
        shape = frac if sched == "linear" else 0.5 * (1.0 - math.cos(math.pi * frac))
        lr = lr + (config.lr_min - lr) * shape
    if config.lr_warmup_steps > 0 and step < config.lr_warmup_steps:
        lr = lr * (step + 1) / config.lr_warmup_steps
    return lr


# ------------------------------------------------------------------------------------
# validation that reads files / data sets
# ------------------------------------------------------------------------------------


@dataclass
class ValidatedConfig:
    """What :func:`validate_config` resolved.

    Attributes:
        config: the config (``init_from`` filled in for ``pfmm``).
        objective_cls: the objective class (``name``, ``model_kind``, ``teacher_kind``).
        data_shape: shape of one sample.
        teacher_config: the teacher's ModelConfig, if any.
    """

    config: TrainConfig
    objective_cls: type
    data_shape: tuple[int, ...]
    teacher_config: ModelConfig | None = None


def trained_time_region(objective: Any) -> str:
    """The ``time_region`` a model trained by ``objective`` may claim (ModelConfig.time_region).

    ``"both"`` when the objective's time sampler draws ``s > t`` as well as ``s <= t``
    (``forward_only=False``, e.g. FMM, eq. 3.15) or the model is a velocity field;
    ``"forward"`` otherwise (the conservative answer when the objective has no sampler).
    """
    if getattr(objective, "model_kind", "flowmap") != "flowmap":
        return "both"
    times = getattr(objective, "times", None)
    if times is None or getattr(times, "forward_only", True):
        return "forward"
    return "both"


def _objective_class(name: str) -> type:
    from anystep.training import base

    try:
        import anystep.training.objectives  # noqa: F401  (registers the objectives)
    except ImportError:  # pragma: no cover - objectives not installed yet
        pass
    if name not in base.OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(base.OBJECTIVES)}")
    return base.OBJECTIVES[name]


def _read_model_config(path: str, role: str) -> ModelConfig:
    from anystep.core.modeldir import ModelDirError, read_config

    try:
        cfg = read_config(path)
    except ModelDirError as e:
        raise ConfigError(f"{role} {path!r}: {_one_line(e)}") from None
    if not (Path(path) / "model.safetensors").is_file():
        raise ConfigError(f"{role} {path!r} has no model.safetensors; train it first or fix the path")
    return cfg


def validate_config(config: TrainConfig) -> ValidatedConfig:
    """Check a config against the objective registry, the data sets and the teacher.

    Runs before any training. Every failure is a one-line :class:`ConfigError`:
    unknown objective, objective/model kind mismatch, bad objective hyper-parameters,
    teacher missing / not needed / of the wrong kind / of another data shape,
    data set or base of another shape than the model, warm start of another architecture.

    Returns:
        The validated config with defaults resolved.
    """
    from anystep.core.data import DataError, get_dataset

    cls = _objective_class(config.objective)
    model_kind = getattr(cls, "model_kind", "flowmap")
    teacher_kind = getattr(cls, "teacher_kind", None)
    if config.model.kind != model_kind:
        raise ConfigError(
            f"objective {config.objective!r} trains a {model_kind} model but model.kind is "
            f"{config.model.kind!r}; set model.kind={model_kind!r} (and backbone.time_inputs="
            f"{1 if model_kind == 'velocity' else 2})"
        )
    # objective hyper-parameters: instantiate once to let the objective reject bad values
    from anystep.core.interpolants import build_interpolant

    try:
        objective = cls(build_interpolant(config.model.interpolant), **config.objective_hparams)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"objective {config.objective!r} hyper-parameters: {_one_line(e)}") from None

    shape = tuple(config.model.data_shape)
    try:
        ds = get_dataset(config.dataset, **config.dataset_kwargs)
    except DataError as e:
        raise ConfigError(f"dataset: {_one_line(e)}") from None
    if tuple(ds.shape) != shape:
        raise ConfigError(
            f"data set {config.dataset!r} has samples of shape {tuple(ds.shape)} but model.data_shape is "
            f"{shape}; set model.data_shape and model.backbone.data_shape to {list(ds.shape)}"
        )
    if config.base.strip().lower() != "gaussian":
        try:
            base_ds = get_dataset(config.base)
        except DataError as e:
            raise ConfigError(f"base: {_one_line(e)}") from None
        if tuple(base_ds.shape) != shape:
            raise ConfigError(
                f"base data set {config.base!r} has samples of shape {tuple(base_ds.shape)} but the model's "
                f"data shape is {shape}; use base='gaussian' or a base of shape {list(shape)}"
            )
    if config.coupling == "paired" and config.base.strip().lower() == "gaussian":
        raise ConfigError("coupling='paired' needs a data set base whose rows are paired with the data; use 'independent'")

    teacher_cfg = None
    if teacher_kind is None and config.teacher is not None:
        raise ConfigError(f"objective {config.objective!r} takes no teacher; remove teacher ({config.teacher!r})")
    if teacher_kind is not None:
        if config.teacher is None:
            raise ConfigError(
                f"objective {config.objective!r} needs a {teacher_kind} teacher: pass --teacher DIR "
                f"(a model directory trained with e.g. the "
                f"{'velocity' if teacher_kind == 'velocity' else 'fmm'} objective)"
            )
        teacher_cfg = _read_model_config(config.teacher, "teacher")
        if teacher_cfg.kind != teacher_kind:
            raise ConfigError(
                f"objective {config.objective!r} needs a {teacher_kind} teacher but {config.teacher!r} is a "
                f"{teacher_cfg.kind} model"
            )
        if tuple(teacher_cfg.data_shape) != shape:
            raise ConfigError(
                f"teacher {config.teacher!r} has data shape {tuple(teacher_cfg.data_shape)} but the model has "
                f"{shape}; use a teacher trained on the same data"
            )
        if teacher_cfg.interpolant != config.model.interpolant:
            t_i, m_i = teacher_cfg.interpolant, config.model.interpolant
            raise ConfigError(
                f"teacher {config.teacher!r} was trained with interpolant {t_i.name!r} (gamma={t_i.gamma}) but the "
                f"model uses {m_i.name!r} (gamma={m_i.gamma}); its velocity/map is another flow, so distilling it "
                f"would learn the wrong map: set model.interpolant.name={t_i.name!r} and "
                f"model.interpolant.gamma={t_i.gamma} or use a teacher trained with the model's interpolant"
            )
        if teacher_cfg.kind == "flowmap" and teacher_cfg.time_region != "both" and (
            trained_time_region(objective) == "both"
        ):
            raise ConfigError(
                f"teacher {config.teacher!r} is a flow map trained on forward times only (time_region "
                f"'forward') but objective {config.objective!r} also samples s > t, where the teacher was "
                "never fitted: set objective_hparams.forward_only=true or use a teacher trained on both directions"
            )
    resolved = config
    if config.objective == "pfmm" and config.init_from is None and config.teacher is not None:
        resolved = config.replace(init_from=config.teacher)
    if resolved.init_from is not None:
        init_cfg = _read_model_config(resolved.init_from, "init_from")
        if init_cfg.kind == "velocity" and config.model.kind == "flowmap":
            from anystep.core.warmstart import check_warm_start

            check_warm_start(config.model, init_cfg, f"init_from {resolved.init_from!r}")
        elif init_cfg.kind != config.model.kind or init_cfg.backbone != config.model.backbone or (
            init_cfg.kind == "flowmap" and init_cfg.ansatz != config.model.ansatz
        ):
            raise ConfigError(
                f"init_from {resolved.init_from!r} is a {init_cfg.kind} model with another architecture "
                f"({init_cfg.backbone.name}, width {init_cfg.backbone.width}, depth {init_cfg.backbone.depth}, "
                f"ansatz {init_cfg.ansatz}); warm start needs model.backbone/ansatz equal to its config.json"
            )
    return ValidatedConfig(config=resolved, objective_cls=cls, data_shape=shape, teacher_config=teacher_cfg)

