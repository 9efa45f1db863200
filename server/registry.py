"""Which models a server serves: model directories, their engines, units and limits.

A served model is a model directory (``config.json`` + ``model.safetensors``, loaded
without pickle) plus an engine that evaluates it. Without explicit ``--model``
specs, ``anystep serve`` serves the bundled models that exist under the models
folder (``$ANYSTEP_MODELS_DIR`` or ``<repo>/models``): ``checkerboard`` (flow map),
``checkerboard-teacher`` (velocity), ``digits``, ``digits-teacher``, ``digits-cond``
(class-conditional flow map with a guidance input), ``digits-restore`` (noisy -> clean digits:
``/generate`` restores a noisy digit drawn from the seed, ``/encode`` maps clean -> noisy).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.core.noise import base_noise_np
from anystep.core.tableaux import DEFAULT_SOLVER, SOLVERS
from anystep.core.units import Units, model_units
from anystep.errors import AnystepError

from .engines import (
    ENGINE_CHOICES,
    ENGINES,
    Engine,
    EngineOptions,
    available_engines,
    build_engine,
    resolve_engine,
)

log = logging.getLogger("anystep.server")

BUNDLED_MODELS = ("checkerboard", "checkerboard-teacher", "digits", "digits-teacher", "digits-cond", "digits-restore")
"""Model names served by default, in this order, when their directories exist."""



class RegistryError(AnystepError):
    """A model spec or model directory cannot be served; the message says how to fix it."""


@dataclass
class ModelSpec:
    """``NAME=DIR`` from the command line.

    Attributes:
        name: the served name (what requests put in ``model``).
        path: the model directory.
    """

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse ``NAME=DIR`` (or just ``DIR``, served under the directory's name)."""
        if not isinstance(text, str) or not text.strip():
            raise RegistryError("a model spec must be NAME=DIR, e.g. --model digits=models/digits")
        name, sep, path = text.partition("=")
        if not sep:
            path, name = text, Path(text.rstrip("/")).name
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise RegistryError(
                f"model spec {text!r}: use NAME=DIR, e.g. --model digits=models/digits"
            )
        if not all(c.isalnum() or c in "-_." for c in name):
            raise RegistryError(
                f"model name {name!r} may only hold letters, digits, '-', '_' and '.'"
            )
        return cls(name=name, path=Path(path).expanduser())


def models_dir() -> Path:
    """The bundled models folder: ``$ANYSTEP_MODELS_DIR`` or ``<repo>/models``."""
    env = os.environ.get("ANYSTEP_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import anystep

    return Path(anystep.__file__).resolve().parents[1] / "models"


def discover_default_models(root: str | os.PathLike | None = None) -> list[ModelSpec]:
    """The bundled models that exist under ``root`` (default :func:`models_dir`).

    Raises:
        RegistryError: none of :data:`BUNDLED_MODELS` exists there.
    """
    base = Path(root) if root is not None else models_dir()
    specs = [
        ModelSpec(name, base / name)
        for name in BUNDLED_MODELS
        if (base / name / "config.json").is_file()
    ]
    if not specs:
        raise RegistryError(
            f"no bundled models found in {base} (looked for {', '.join(BUNDLED_MODELS)}); "
            "train them (make models), set ANYSTEP_MODELS_DIR, or pass --model NAME=DIR"
        )
    return specs


@dataclass
class Limits:
    """Per-request limits, applied to each served model by its own cost.

    Attributes:
        max_steps: largest K (steps of a grid or of a fixed-step solver).
        max_n: most samples per request; None derives it per model as
            ``max_values // (values per sample)`` (a 2D model may return many more
            points than an image model).
        max_compute: most sample-evaluations per request, ``n x nfe`` (dopri5 is
            charged ``n x max_nfe``, a bound the solver enforces).
        max_values: most output numbers per request (``n x values per sample``).
        max_nfe: default and largest dopri5 ``max_nfe`` per sample.
    """

    max_steps: int = 128
    max_n: int | None = None
    max_compute: int = 65536
    max_values: int = 1 << 20
    max_nfe: int = 256

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_compute", "max_values", "max_nfe"):
            if int(getattr(self, name)) < 1:
                raise RegistryError(f"{name} must be >= 1")
        if self.max_n is not None and int(self.max_n) < 1:
            raise RegistryError("max_n must be >= 1")
        if self.max_nfe < 7:
            raise RegistryError("max_nfe must be >= 7 (one dopri5 step)")

    def max_n_for(self, data_shape: Sequence[int]) -> int:
        """The sample limit of a model with samples of ``data_shape``."""
        per = max(1, int(np.prod(tuple(data_shape))))
        derived = max(1, int(self.max_values) // per)
        return derived if self.max_n is None else min(int(self.max_n), derived)


@dataclass
class ServedModel:
    """A model the server answers requests for.

    Attributes:
        name: served name.
        path: model directory.
        config: its ``ModelConfig``.
        engine: the engine evaluating it.
        units: model units <-> data units (:class:`anystep.core.units.Units`).
        limits: request limits.
        engines: engines this server could use for it.
        scheduler: its step scheduler (set when the app starts).
        ready: True once warmed up.
    """

    name: str
    path: Path
    config: Any
    engine: Engine
    units: Units
    limits: Limits
    engines: list[str] = field(default_factory=list)
    scheduler: Any = None
    ready: bool = False
    max_n: int = field(init=False)
    base: str = field(init=False)
    _base_ds: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.max_n = self.limits.max_n_for(self.data_shape)
        self.base = getattr(self.config, "base", "gaussian") or "gaussian"
        if self.base != "gaussian":
            from anystep.core.data import get_dataset

            self._base_ds = get_dataset(self.base)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.data_shape)

    @property
    def translation(self) -> bool:
        """A translation map: its base is a data set (e.g. degraded digits), so ``/generate`` takes ``source``."""
        return self._base_ds is not None

    @property
    def source_units(self) -> Units | None:
        """Units of a translation model's source samples (the base data set's own units), else None."""
        return self._base_ds.units if self._base_ds is not None else None

    @property
    def solvers(self) -> list[str]:
        return list(SOLVERS) if self.kind == "velocity" else []

    def base_samples(self, seed: int, n: int) -> np.ndarray:
        """Base samples ``x0 ~ rho_0`` of a request: row ``i`` is a function of seed ``seed + i`` only.

        Gaussian bases use the vectorised counter-based generator
        (:func:`anystep.core.noise.base_noise_np`, O(1) numpy calls in ``n``).

        Returns:
            ``[n, *data_shape]`` float32.
        """
        if self._base_ds is None:
            return base_noise_np(seed, n, self.data_shape)
        from anystep.core.data import seeded_base_samples

        return seeded_base_samples(self._base_ds, seed, n, self.data_shape).numpy()

    def _conditioning_info(self) -> dict[str, Any]:
        """``num_classes`` / guidance range and default of class-conditional models (nothing otherwise)."""
        if not getattr(self.config, "num_classes", 0):
            return {}
        from anystep.core.conditioning import DEFAULT_GUIDANCE, guidance_range

        rng = guidance_range(self.config) if self.config.guidance_input else None
        return {
            "num_classes": int(self.config.num_classes),
            "guidance_input": bool(self.config.guidance_input),
            "guidance_range": list(rng) if rng else None,
            "default_guidance": DEFAULT_GUIDANCE,
        }

    def info(self) -> dict[str, Any]:
        """The ``/v1/models`` entry."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dataset": self.config.dataset,
            "data_shape": list(self.data_shape),
            "units_shape": list(self.units.units_shape),
            "units": self.units.name,
            "engine": self.engine.name,
            "engine_detail": {
                **self.engine.describe(),
                "executor": getattr(self.scheduler, "mode", None),
            },
            "engines": list(self.engines),
            "max_steps": self.limits.max_steps,
            "max_n": self.max_n,
            "max_compute": self.limits.max_compute,
            "max_nfe": self.limits.max_nfe if self.kind == "velocity" else None,
            "solvers": self.solvers,
            "default_solver": DEFAULT_SOLVER if self.kind == "velocity" else None,
            "invertible": (self.config.time_region or "both") == "both",
            "base": self.base,
            "translation": self.translation,
            "source_shape": list(self.source_units.units_shape) if self.translation else None,
            "source_units": self.source_units.name if self.translation else None,
            "supported_steps": _supported_steps(self.config),
            **self._conditioning_info(),
            "ready": self.ready,
        }


def _supported_steps(config: Any) -> list[int] | None:
    """The step counts a flow map supports (``config.supported_steps``), None for any."""
    steps = getattr(config, "supported_steps", None)
    return None if steps is None else [int(k) for k in steps]


def _check_base(name: str, config: Any) -> None:
    """Fail at load time (not per request) when the base distribution cannot be sampled."""
    base = getattr(config, "base", "gaussian") or "gaussian"
    if base == "gaussian":
        return
    try:
        from anystep.core.data import get_dataset

        shape = tuple(get_dataset(base).shape)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot sample the base"
        raise RegistryError(
            f"{name}: base distribution {base!r} is not available here: {e}"
        ) from None
    if shape != tuple(config.data_shape):
        raise RegistryError(
            f"{name}: base {base!r} has sample shape {shape}, the model {tuple(config.data_shape)}"
        )


def _units_of(config: Any) -> Units:
    """The units stored with the model (``config.units``) or derived from its data set name."""
    return model_units(config)


def load_models(
    specs: Sequence[ModelSpec],
    engine: str = "auto",
    options: EngineOptions | None = None,
    limits: Limits | None = None,
) -> list[ServedModel]:
    """Load every model directory and build its engine.

    Args:
        specs: what to serve (names must be unique).
        engine: engine name for every model (one of :data:`~anystep.server.engines.ENGINES`);
            ``auto`` picks the fastest available (:func:`~anystep.server.engines.resolve_engine`).
        options: engine options.
        limits: request limits (shared).

    Returns:
        The served models, in spec order.

    Raises:
        RegistryError / ModelDirError / EngineError: with a message naming the problem.
    """
    from anystep.core.modeldir import load_model_dir, read_config

    if not specs:
        raise RegistryError("nothing to serve: pass --model NAME=DIR or create the bundled models")
    if engine not in ENGINE_CHOICES:
        raise RegistryError(f"unknown engine {engine!r}; choose one of {list(ENGINE_CHOICES)}")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RegistryError(f"model name(s) {dupes} given twice; each --model needs its own NAME")
    options = options or EngineOptions()
    limits = limits or Limits()
    engines_here = available_engines(options)
    out: list[ServedModel] = []
    chosen = resolve_engine(engine, options)
    if engine == "auto":
        log.info("--engine auto chose %s (available here: %s)", chosen, ", ".join(engines_here))
    for spec in specs:
        config = read_config(spec.path)
        model = load_model_dir(spec.path).model if chosen == "torch" else None
        eng = build_engine(chosen, spec.name, spec.path, config, options, model=model)
        if eng.kind != config.kind:
            raise RegistryError(
                f"{spec.name}: engine serves a {eng.kind} model but config.json says {config.kind}"
            )
        if config.num_classes:  # class-conditional: every engine call carries y (and w)
            eng.num_classes = int(config.num_classes)
            eng.cond_inputs = ("y", "w") if config.guidance_input else ("y",)
        _check_base(spec.name, config)
        out.append(
            ServedModel(
                name=spec.name,
                path=spec.path,
                config=config,
                engine=eng,
                units=_units_of(config),
                limits=limits,
                engines=sorted(set(engines_here) | {chosen}, key=ENGINES.index),
            )
        )
        log.info("loaded %s (%s, engine %s) from %s", spec.name, config.kind, eng.describe(), spec.path)
    return out
