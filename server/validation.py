"""Validation of ``/generate`` and ``/encode`` against a served model (4xx here, never deeper).

The declarative part is the strict Pydantic schema (:mod:`.schemas`); the per-model
part is the core sampling contract :func:`anystep.core.params.resolve_sampling`
(kind vs solver, conflicts such as ``steps`` with ``grid`` or with ``dopri5``) and
:func:`~anystep.core.params.check_budget` (``n x nfe``, dopri5 charged ``n x max_nfe``).
This module only maps core errors to 422 bodies naming the field.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from anystep.core.conditioning import ConditioningError, resolve_conditioning
from anystep.core.grid import GridError
from anystep.core.params import (
    ParamError,
    SamplingSpec,
    UnsupportedStepsError,
    check_budget,
    resolve_sampling,
)
from anystep.core.units import UnitsError

from .registry import ServedModel
from .schemas import (
    ENCODE_FIELDS,
    GENERATE_FIELDS,
    MAX_SEED,
    ApiError,
    EncodeRequest,
    GenerateRequest,
    check_range,
    show,
    validation_error,
)

DEFAULT_RTOL = 1e-3
"""The server's dopri5 tolerance when a request names none."""


@dataclass
class GenerateParams:
    """A validated generate request.

    Attributes:
        model: the served model.
        spec: the resolved sampling (method, grid, nfe bound).
        n: number of samples.
        seed: first seed (sample i uses seed + i).
        format: ``json``, ``png`` or ``npy``.
        solver: velocity models: the solver; flow maps: None.
        latency_ms: latency budget, if any (then ``steps`` caps the chosen steps).
        steps_cap: the client's ``steps`` with a latency budget.
        cond: per-sample class labels / guidance scales of a class-conditional model.
        x0: translation models: the client's source samples ``[n, *data_shape]`` in model
            units (None: the sources are drawn from the base by seed).
    """

    model: ServedModel
    spec: SamplingSpec
    n: int
    seed: int
    format: str
    solver: str | None
    latency_ms: float | None = None
    steps_cap: int | None = None
    cond: Any = None
    x0: np.ndarray | None = None


def resolve_model(models: dict[str, ServedModel], name: Any, want_kind: str | None = None) -> ServedModel:
    """The served model named ``name`` (or the first one of ``want_kind``), else 404/422."""
    if name is None:
        for m in models.values():
            if want_kind is None or m.kind == want_kind:
                return m
        raise ApiError(422, "no_model", f"no served model is a {want_kind}; see GET /v1/models", "model")
    if name not in models:
        raise ApiError(
            404,
            "unknown_model",
            f"unknown model {show(name)}; served models: {', '.join(models)} (GET /v1/models)",
            "model",
        )
    return models[name]


def _png_renderable(m: ServedModel) -> bool:
    shape = m.data_shape
    return shape == (2,) or (len(shape) == 3 and shape[0] in (1, 3))


_SPECS: dict[tuple, tuple[ServedModel, SamplingSpec]] = {}
"""Resolved specs of grid-free requests, per model and parameters (the grid read-only, shared)."""
_MAX_SPECS = 4096


def sampling_spec(m: ServedModel, n: int = 1, **kw: Any) -> SamplingSpec:
    """The model's :func:`~anystep.core.params.resolve_sampling` of ``kw``, or a 4xx :class:`ApiError`.

    Requests without a custom grid are resolved once per model and parameters (a cache: the
    hot path builds no grid per request); their spec is shared, its grid read-only.
    """
    # dopri5 without max_nfe: the largest bound the compute budget allows for n samples
    default_max_nfe = max(7, min(m.limits.max_nfe, m.limits.max_compute // max(1, n)))
    key = None
    if kw.get("grid") is None:
        key = (id(m), default_max_nfe, *sorted((k, type(v), v) for k, v in kw.items()))
        hit = _SPECS.get(key)
        if hit is not None and hit[0] is m:
            return hit[1]
    spec = _resolve(m, default_max_nfe, kw)
    if key is not None:
        spec.grid.flags.writeable = False
        if len(_SPECS) >= _MAX_SPECS:
            _SPECS.clear()
        _SPECS[key] = (m, spec)
    return spec


def _resolve(m: ServedModel, default_max_nfe: int, kw: dict[str, Any]) -> SamplingSpec:
    try:
        return resolve_sampling(
            m.kind,
            max_steps=m.limits.max_steps,
            supported_steps=getattr(m.config, "supported_steps", None),
            default_rtol=DEFAULT_RTOL,
            default_max_nfe=default_max_nfe,
            **kw,
        )
    except UnsupportedStepsError as e:  # e.g. steps=4 on a consistency model (trained for X_{s,1} only)
        raise ApiError.from_param(e, "unsupported_steps") from None
    except (ParamError, GridError) as e:
        raise ApiError.from_param(e, "invalid_grid" if getattr(e, "field", None) == "grid" else "invalid_parameter") from None


@dataclass(frozen=True)
class _Checked:
    """What a generate request's parameters (all but ``seed``) resolve to on one model: the same for
    every request of those parameters (:func:`validate_generate` keeps it per parameter set)."""

    models: dict[str, ServedModel]
    model: ServedModel
    spec: SamplingSpec
    n: int
    format: str
    latency_ms: float | None
    steps_cap: int | None
    classes: Any
    guidance: Any


_CHECKED: dict[tuple, _Checked] = {}
"""Checked parameter sets without a source, keyed by ``id(models)`` and every ``(name, type, value)``
but the seed (the type too: ``1``, ``1.0`` and ``True`` are equal keys of a dict, not equal inputs; floats
by their bits, ``0.0`` is not ``-0.0``)."""
_MAX_CHECKED = 4096


def validate_generate(raw: dict[str, Any], models: dict[str, ServedModel], source: Any = None) -> GenerateParams:
    """Merged query + body parameters (without ``source``) and the source samples -> :class:`GenerateParams`.

    Every check but the seed's depends on the parameters and the model only: a parameter set without
    ``source`` or ``grid`` that passed them once is not checked again (the strict schema included) -- a repeated
    request re-checks its seed (a seed the schema might refuse takes the full path, so errors are the
    same) and its conditioning.

    Raises:
        ApiError: a 4xx naming the field (``source`` on a Gaussian-base model, of the wrong shape, ...).
    """
    key = None
    if source is None:
        key = (id(models), *[(k, v.hex()) if type(v) is float else (k, type(v), v) for k, v in raw.items() if k != "seed"])
        try:
            hit = _CHECKED.get(key)
        except TypeError:  # a list (grid, per-sample class or guidance): not kept
            key = hit = None
        if hit is not None and hit.models is models and models.get(hit.model.name) is hit.model:
            seed = raw.get("seed")
            if seed is None or (type(seed) is int and 0 <= seed <= MAX_SEED):  # what the schema accepts
                return _seeded(hit, seed)
    try:
        req = GenerateRequest.model_validate(raw)
    except ValidationError as e:
        raise validation_error(e, GENERATE_FIELDS) from None
    m = resolve_model(models, req.model)
    x0 = None if source is None else parse_source(source, m, req.n)
    fmt = req.format or "json"
    if fmt == "png" and not _png_renderable(m):
        raise ApiError(
            422,
            "unsupported_format",
            f"png renders 2D points or images; {m.name} has samples of shape {list(m.data_shape)}: use json or npy",
            "format",
        )
    if req.max_nfe is not None and req.max_nfe > m.limits.max_nfe:
        raise ApiError(422, "out_of_range", f"max_nfe={req.max_nfe} is out of range; use 7..{m.limits.max_nfe}", "max_nfe")
    steps_cap = None
    steps = req.steps
    if req.latency_ms is not None:
        if req.grid is not None:
            raise ApiError(422, "conflict", "give either grid or latency_ms, not both: keep one", "latency_ms")
        if req.solver == "dopri5":
            raise ApiError(
                422, "budget_not_applicable", "latency_ms needs a flow map or a fixed-step solver, not dopri5", "latency_ms"
            )
        steps_cap, steps = steps, None
        if steps_cap is not None and steps_cap > m.limits.max_steps:
            raise ApiError(422, "out_of_range", f"steps={steps_cap} is out of range; use 1..{m.limits.max_steps}", "steps")
    if x0 is not None:
        n = check_range("n", x0.shape[0], 1, m.max_n, f"(rows of source) for {m.name}")
    else:
        n = check_range("n", req.n if req.n is not None else 1, 1, m.max_n, f"for {m.name}")
    spec = sampling_spec(m, n, steps=steps, grid=req.grid, solver=req.solver, rtol=req.rtol, max_nfe=req.max_nfe)
    try:
        check_budget(n, spec, m.limits.max_compute)  # with a latency budget: at least one step
    except ParamError as e:
        raise ApiError(422, "over_budget", str(e), e.field) from None
    checked = _Checked(models, m, spec, n, fmt, req.latency_ms, steps_cap, req.class_, req.guidance)
    params = _seeded(checked, req.seed, x0)
    if key is not None and req.grid is None:  # all passed: the next request of these parameters skips them
        # (a custom grid's spec is the request's own, writable: not shared)
        if len(_CHECKED) >= _MAX_CHECKED:
            _CHECKED.clear()
        _CHECKED[key] = checked
    return params


def _seeded(c: _Checked, seed: int | None, x0: np.ndarray | None = None) -> GenerateParams:
    """The per-request part of :func:`validate_generate`: the seed (drawn when absent), its range, the
    conditioning of the seeds ``seed .. seed + n - 1`` (and its budget)."""
    m, n, spec = c.model, c.n, c.spec
    seed = seed if seed is not None else random.randrange(0, 2**31)
    check_range("seed", seed + n - 1, 0, MAX_SEED, "(sample i uses seed + i: seed + n - 1 must stay in range)")
    try:  # the seeds of sample_seeds(seed, n) as a range: no per-seed objects
        cond = resolve_conditioning(m.config, range(int(seed), int(seed) + n), c.classes, c.guidance)
    except ConditioningError as e:
        fld = "class" if "class" in str(e) and "guidance" not in str(e) else "guidance"
        raise ApiError(422, "invalid_conditioning", f"{m.name}: {e}", fld) from None
    if cond.guided_teacher:  # two network evaluations per solver evaluation
        try:
            check_budget(2 * n, spec, m.limits.max_compute)
        except ParamError as e:
            raise ApiError(422, "over_budget", f"{e} (guidance evaluates the model twice per step)", e.field) from None
    return GenerateParams(
        cond=cond,
        model=m,
        spec=spec,
        n=n,
        seed=int(seed),
        format=c.format,
        solver=None if m.kind == "flowmap" else spec.method,
        latency_ms=c.latency_ms,
        steps_cap=c.steps_cap,
        x0=x0,
    )


def parse_source(source: Any, m: ServedModel, n: int | None) -> np.ndarray:
    """A translation model's source samples (base data units) -> ``[n, *data_shape]`` model units, or a 422.

    Args:
        source: nested lists or an array ``[n, *source_shape]`` in the base data set's units.
        m: the served model; its base must be a data set (``m.translation``).
        n: the request's ``n``, if given: it must equal the number of sources.
    """
    if not m.translation:
        raise ApiError(
            422,
            "not_translation",
            f"{m.name} maps Gaussian noise (base gaussian), it takes no source samples: drop source (the seed "
            "draws the noise) or pick a translation model (translation: true in GET /v1/models)",
            "source",
        )
    units = m.source_units
    arr = parse_samples(source, m, field="source", units=units)
    if n is not None and n != arr.shape[0]:
        raise ApiError(
            422, "conflict", f"n={n} but source has {arr.shape[0]} rows; drop n (it is the number of sources)", "n"
        )
    try:
        return units.from_units(arr)
    except UnitsError as e:
        raise ApiError(422, "invalid_samples", f"source cannot be converted to model units: {e}", "source") from None


@dataclass
class EncodeParams:
    """A validated encode request.

    Attributes:
        model: the served flow map.
        spec: the forward grid (run backwards).
        x1: ``[n, *data_shape]`` float32 data in model units.
    """

    model: ServedModel
    spec: SamplingSpec
    x1: np.ndarray


def validate_encode(params: dict[str, Any], x: Any, models: dict[str, ServedModel]) -> EncodeParams:
    """Parameters (without ``x``) and the samples ``x`` (nested lists or an array) -> :class:`EncodeParams`."""
    try:
        req = EncodeRequest.model_validate({**params, "x": []})
    except ValidationError as e:
        raise validation_error(e, ENCODE_FIELDS) from None
    if x is None:
        raise ApiError(422, "missing_field", "x is required: samples [n, ...] in the data set's own units", "x")
    m = resolve_model(models, req.model, want_kind="flowmap")
    if m.kind != "flowmap":
        raise ApiError(422, "not_invertible", f"{m.name} is a velocity model; encode needs a flow map (X_{{1,0}})", "model")
    try:  # a forward-only map (s <= t) never fitted X_{1,0}: refuse, do not answer wrongly
        from anystep.core.config import TimeRegionError, check_invertible

        check_invertible(m.config, m.name)
    except ImportError:  # pragma: no cover - older core without time regions
        pass
    except TimeRegionError as e:
        raise ApiError(422, "not_invertible", str(e), "model") from None
    spec = sampling_spec(m, steps=req.steps, grid=req.grid)
    x_units = parse_samples(x, m)
    n = check_range("n", x_units.shape[0], 1, m.max_n, "(rows of x)")
    try:
        check_budget(n, spec, m.limits.max_compute)
    except ParamError as e:
        raise ApiError(422, "over_budget", str(e), "x") from None
    try:
        x1 = m.units.from_units(x_units)
    except UnitsError as e:
        raise ApiError(422, "invalid_samples", f"x cannot be converted to model units: {e}", "x") from None
    return EncodeParams(model=m, spec=spec, x1=x1)


def parse_samples(x: Any, m: ServedModel, field: str = "x", units: Any = None) -> np.ndarray:
    """Nested lists (or an array) -> ``[n, *units_shape]`` finite float32, or a 4xx naming the expected shape.

    Args:
        x: the samples.
        m: the served model.
        field: the request field named by errors (``x`` of /encode, ``source`` of /generate).
        units: the units whose shape is expected (default: the model's data units).
    """
    want = list((units or m.units).units_shape)
    hint = f"[n, {', '.join(map(str, want))}]"
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, list):
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError, RecursionError):
            raise ApiError(422, "invalid_samples", f"{field} must be a rectangular nested list of shape {hint}", field) from None
    else:
        raise ApiError(422, "invalid_type", f"{field} must be a nested list of numbers of shape {hint}", field)
    if arr.dtype.kind not in "iuf":
        raise ApiError(422, "invalid_type", f"{field} must hold only numbers, as a nested list of shape {hint}", field)
    if list(arr.shape[1:]) != want or arr.ndim != len(want) + 1:
        raise ApiError(422, "invalid_shape", f"{field} has shape {list(arr.shape)}; {m.name} needs {hint}", field)
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ApiError(422, "invalid_samples", f"{field} values must be finite float32 numbers", field)
    return arr


def parse_npy(raw: bytes) -> np.ndarray:
    """A binary ``.npy`` body (no pickles) -> array, or a 400 saying how to send one."""
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/... on malformed files
        raise ApiError(
            400, "malformed_npy", "the body is not a .npy array; send numpy.save(f, x) output with Content-Type application/x-npy"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise ApiError(400, "malformed_npy", "the body must hold one .npy array")
    return arr
