"""Checks of a training config that read files or data sets, run BEFORE any training starts.

:func:`validate_config` checks a :class:`~anystep.training.config.TrainConfig` against the
objective registry, the data sets and the teacher / warm-start model directories; every
failure is a one-line :class:`~anystep.core.config.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anystep.core.config import ConfigError, ModelConfig
from anystep.errors import one_line
from anystep.training.train_config import TrainConfig

__all__ = ["ValidatedConfig", "trained_time_region", "validate_config"]


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


def _read_model_config(path: str, role: str) -> ModelConfig:
    from anystep.core.modeldir import ModelDirError, read_config

    try:
        cfg = read_config(path)
    except ModelDirError as e:
        raise ConfigError(f"{role} {path!r}: {one_line(e)}") from None
    if not (Path(path) / "model.safetensors").is_file():
        raise ConfigError(f"{role} {path!r} has no model.safetensors; train it first or fix the path")
    return cfg


def _check_data_set(role: str, name: str, kwargs: dict[str, Any], shape: tuple[int, ...], fix: str) -> None:
    """One rule for the run's data sets (``dataset``, and ``base`` unless it is Gaussian).

    The data set ``name`` must exist and draw samples of the model's ``shape``.

    Args:
        role: the config field that names it (``"dataset"`` or ``"base"``).
        name: the data set's name.
        kwargs: its keyword arguments (``dataset_kwargs``).
        shape: ``model.data_shape``.
        fix: what to do on a shape mismatch; ``{found}`` becomes the data set's sample shape.

    Raises:
        ConfigError: unknown data set or bad arguments (its message), or another sample shape.
    """
    from anystep.core.data import DataError, get_dataset

    try:
        found = tuple(get_dataset(name, **kwargs).shape)
    except DataError as e:
        raise ConfigError(f"{role}: {one_line(e)}") from None
    if found != shape:
        what = "data set" if role == "dataset" else f"{role} data set"
        raise ConfigError(
            f"{what} {name!r} has samples of shape {found} but model.data_shape is {shape}; "
            + fix.format(found=list(found))
        )


def validate_config(config: TrainConfig) -> ValidatedConfig:
    """Check a config against the objective registry, the data sets and the teacher.

    Runs before any training. Every failure is a one-line :class:`ConfigError`:
    unknown objective, objective/model kind mismatch, bad objective hyper-parameters,
    teacher missing / not needed / of the wrong kind / of another data shape,
    data set or base of another shape than the model, warm start of another architecture.

    Returns:
        The validated config with defaults resolved.
    """
    from anystep.training.base import objective_class  # imports torch: only when validating

    cls = objective_class(config.objective)
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
        raise ConfigError(f"objective {config.objective!r} hyper-parameters: {one_line(e)}") from None

    shape = tuple(config.model.data_shape)
    _check_data_set(
        "dataset", config.dataset, config.dataset_kwargs, shape,
        "set model.data_shape and model.backbone.data_shape to {found}",
    )
    if config.base.strip().lower() != "gaussian":
        _check_data_set("base", config.base, {}, shape, f"use base='gaussian' or a base of shape {list(shape)}")
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
