"""Which models a server serves: model directories, their engines, units and limits.

A served model is a model directory (``config.json`` + ``model.safetensors``, loaded
without pickle) plus an engine that evaluates it. Without explicit ``--model``
specs, ``anystep serve`` serves the bundled models that exist under the models
folder (``$ANYSTEP_MODELS_DIR`` or ``<repo>/models``): ``checkerboard`` (flow map),
``checkerboard-teacher`` (velocity), ``digits``, ``digits-teacher``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anystep.errors import AnystepError

from .engines import ENGINES, Engine, EngineOptions, available_engines, build_engine

log = logging.getLogger("anystep.server")

BUNDLED_MODELS = ("checkerboard", "checkerboard-teacher", "digits", "digits-teacher")
"""Model names served by default, in this order, when their directories exist."""

SOLVERS = ("euler", "heun", "rk4", "dopri5")
"""ODE solvers offered for velocity models (``euler`` is the default)."""


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
    """Per-request limits of a served model.

    Attributes:
        max_steps: largest K (steps of a grid or of a fixed-step solver).
        max_n: most samples per request.
        max_compute: most sample-evaluations per request, ``n * nfe``.
    """

    max_steps: int = 128
    max_n: int = 256
    max_compute: int = 65536

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_n", "max_compute"):
            if int(getattr(self, name)) < 1:
                raise RegistryError(f"{name} must be >= 1")


class Units:
    """Conversion between model units and the data set's own units (``to_units``/``from_units``).

    Falls back to the identity when the data set cannot be built in this process.
    """

    def __init__(self, dataset: str, data_shape: Sequence[int]) -> None:
        self.dataset_name = dataset
        self.data_shape = tuple(int(d) for d in data_shape)
        self._ds: Any = None
        try:
            from anystep.core.data import get_dataset

            ds = get_dataset(dataset)
            if tuple(ds.shape) == self.data_shape:
                self._ds = ds
            else:
                log.warning(
                    "data set %r has shape %s, model %s: serving model units",
                    dataset,
                    ds.shape,
                    self.data_shape,
                )
        except Exception as e:  # noqa: BLE001 - unknown/unavailable data set: identity units
            log.warning("data set %r unavailable (%s): serving model units", dataset, e)
        zero = np.zeros((1, *self.data_shape), dtype=np.float32)
        self.units_shape = tuple(self.to_units(zero).shape[1:])

    def to_units(self, x: np.ndarray) -> np.ndarray:
        """``[n, *data_shape]`` model units -> ``[n, *units_shape]`` data units (float32)."""
        if self._ds is None:
            return np.asarray(x, dtype=np.float32)
        return np.asarray(self._ds.to_units(x), dtype=np.float32)

    def from_units(self, x: np.ndarray) -> np.ndarray:
        """``[n, *units_shape]`` data units -> ``[n, *data_shape]`` model units (float32)."""
        if self._ds is None:
            return np.asarray(x, dtype=np.float32).reshape(-1, *self.data_shape)
        out = self._ds.from_units(x)
        return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)


@dataclass
class ServedModel:
    """A model the server answers requests for.

    Attributes:
        name: served name.
        path: model directory.
        config: its ``ModelConfig``.
        engine: the engine evaluating it.
        units: data-unit conversion of its data set.
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

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.data_shape)

    @property
    def solvers(self) -> list[str]:
        return list(SOLVERS) if self.kind == "velocity" else []

    def base_samples(self, seeds: Sequence[int]) -> np.ndarray:
        """Base samples ``x0 ~ rho_0``, row ``i`` drawn from its own generator seeded ``seeds[i]``.

        Returns:
            ``[len(seeds), *data_shape]`` float32.
        """
        import torch

        from anystep.core.samplers import base_noise

        base = getattr(self.config, "base", "gaussian") or "gaussian"
        if base == "gaussian":
            return base_noise(list(seeds), self.data_shape).numpy()
        from anystep.core.data import get_dataset

        ds = get_dataset(base)
        rows = [ds.sample(1, torch.Generator().manual_seed(int(s)))[0] for s in seeds]
        return torch.stack(rows).to(torch.float32).numpy()

    def info(self) -> dict[str, Any]:
        """The ``/v1/models`` entry."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dataset": self.config.dataset,
            "data_shape": list(self.data_shape),
            "units_shape": list(self.units.units_shape),
            "engine": self.engine.name,
            "engines": list(self.engines),
            "max_steps": self.limits.max_steps,
            "max_n": self.limits.max_n,
            "max_compute": self.limits.max_compute,
            "solvers": self.solvers,
            "default_solver": "euler" if self.kind == "velocity" else None,
            "ready": self.ready,
        }


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


def load_models(
    specs: Sequence[ModelSpec],
    engine: str = "torch",
    options: EngineOptions | None = None,
    limits: Limits | None = None,
) -> list[ServedModel]:
    """Load every model directory and build its engine.

    Args:
        specs: what to serve (names must be unique).
        engine: engine name for every model (one of :data:`~anystep.server.engines.ENGINES`).
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
    if engine not in ENGINES:
        raise RegistryError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RegistryError(f"model name(s) {dupes} given twice; each --model needs its own NAME")
    options = options or EngineOptions()
    limits = limits or Limits()
    engines_here = available_engines(options)
    out: list[ServedModel] = []
    for spec in specs:
        config = read_config(spec.path)
        model = load_model_dir(spec.path).model if engine == "torch" else None
        eng = build_engine(engine, spec.name, spec.path, config, options, model=model)
        if eng.kind != config.kind:
            raise RegistryError(
                f"{spec.name}: engine serves a {eng.kind} model but config.json says {config.kind}"
            )
        _check_base(spec.name, config)
        out.append(
            ServedModel(
                name=spec.name,
                path=spec.path,
                config=config,
                engine=eng,
                units=Units(config.dataset, config.data_shape),
                limits=limits,
                engines=sorted(set(engines_here) | {engine}, key=ENGINES.index),
            )
        )
        log.info("loaded %s (%s, %s) from %s", spec.name, config.kind, engine, spec.path)
    return out
