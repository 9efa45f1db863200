"""Request/response schemas: the Pydantic models that document ``/docs`` also validate.

Requests carry parameters in the query string or a JSON body (the body wins on
conflicts). Query text is typed by the model's field types with the strict parsers of
:mod:`anystep.core.params` (only ASCII integers are integers), merged with the body,
and validated by the same strict Pydantic model that the OpenAPI schema shows. Every
bad input becomes an :class:`ApiError` with a 4xx status and a JSON body
``{"error": <short code>, "message": <what was wrong and how to fix it>, "field": <param or null>}``.
Per-model checks (kind vs solver, conflicts, the compute budget) follow in
:mod:`.validation`, through :func:`anystep.core.params.resolve_sampling`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anystep.core.grid import GridError, parse_grid
from anystep.core.params import ParamError, parse_float, parse_int
from anystep.core.tableaux import SOLVERS

FORMATS = ("json", "png", "npy")
MAX_SEED = 2**53 - 1
"""Largest seed (seeds stay exact in JavaScript clients); sample i uses ``seed + i``."""
LATENCY_MAX_MS = 600_000.0


class ApiError(Exception):
    """A request the server answers with a JSON error.

    Args:
        status: HTTP status (4xx for bad input; 429/503 for load).
        error: short machine-readable code, e.g. ``"out_of_range"``.
        message: what was wrong and how to fix it.
        field: the offending parameter, if any.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.error = error
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "field": self.field}

    @classmethod
    def from_param(cls, e: ParamError | GridError, code: str = "invalid_parameter") -> ApiError:
        """A core parameter error as a 422 naming its field."""
        return cls(422, code, str(e), getattr(e, "field", None))


def show(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------
# pydantic models (the OpenAPI documentation and the validation)
# --------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", strict=True)


class ErrorResponse(BaseModel):
    """Every 4xx/429/503 answer."""

    error: str = Field(description="Short machine-readable code, e.g. 'out_of_range'.")
    message: str = Field(description="What was wrong and how to fix it.")
    field: str | None = Field(description="The offending parameter, or null.")


class GenerateRequest(BaseModel):
    """Parameters of ``POST /generate`` (JSON body; the same names work as query parameters)."""

    model_config = _STRICT

    model: str | None = Field(None, max_length=200, description="Served model name (default: the first served model).")
    steps: int | None = Field(None, ge=1, description="Number of steps K (1..max_steps, default 1). Not with grid or dopri5.")
    n: int | None = Field(None, ge=1, description="Number of samples (1..the model's max_n, default 1).")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description=(
            "Seed; sample i uses seed + i, so a sample does not depend on the batch it is drawn in: the base "
            "noise is exact, the sample equal up to the engine's float rounding across batch sizes "
            "(|difference| <= 1e-5 in model units, tested). Absent: the server picks and returns one."
        ),
    )
    grid: list[float] | str | None = Field(
        None, description="Custom times 0 = t_0 < ... < t_K = 1 (list, or comma-separated string). Not with steps."
    )
    format: Literal["json", "png", "npy"] | None = Field(None, description="Response format (default json).")
    solver: Literal[SOLVERS] | None = Field(None, description="Velocity models only: ODE solver (default euler).")  # type: ignore[valid-type]
    rtol: float | None = Field(None, allow_inf_nan=False, description="dopri5 tolerance (atol = rtol, default 1e-3).")
    max_nfe: int | None = Field(
        None, ge=7, description="dopri5: most evaluations per sample (enforced; the budget charges n x max_nfe)."
    )
    latency_ms: float | None = Field(
        None,
        gt=0,
        le=LATENCY_MAX_MS,
        allow_inf_nan=False,
        description="Latency budget: the server picks the most steps whose measured cost fits (steps, if given, caps it).",
    )
    class_: int | list[int] | None = Field(
        None,
        alias="class",
        description=(
            "Class-conditional models: the class of every sample, or one per sample (list, or comma-separated "
            "in the query). Default: any class, drawn from each sample's seed."
        ),
    )
    guidance: float | list[float] | None = Field(
        None,
        description=(
            "Class-conditional models: classifier-free guidance scale w (default 1), or one per sample; a map "
            "accepts the range it was distilled on (see /v1/models)."
        ),
    )
    source: list[Any] | None = Field(
        None,
        description=(
            "Translation models only (a data-set base, `translation: true` in /v1/models, e.g. digits-restore): "
            "the source samples [n, ...] (`source_shape`) in the base data set's own units (the shape /encode "
            "takes), each mapped by X_{0,1}; n is their number. JSON body only, or a binary .npy body "
            "(Content-Type application/x-npy) with the other parameters in the query. Absent: the sources are "
            "drawn from the base data set, source i from seed + i, and returned as `source`."
        ),
    )


class EncodeRequest(BaseModel):
    """Body of ``POST /encode``: data -> base with the inverse map ``X_{1,0}``.

    ``x`` may instead be sent as a binary ``.npy`` body (``Content-Type: application/x-npy``)
    with the other parameters in the query string.
    """

    model_config = _STRICT

    model: str | None = Field(None, max_length=200, description="Served flow-map model name (default: the first flow map).")
    x: list[Any] = Field(description="Samples [n, ...] as nested lists in the data set's own units.")
    steps: int | None = Field(None, ge=1, description="Steps of the reversed grid (default 1). Not with grid.")
    grid: list[float] | str | None = Field(None, description="Custom forward grid; it is run backwards. Not with steps.")


class Timing(BaseModel):
    total: float = Field(description="Server-side milliseconds from arrival to response.")
    queue: float = Field(description="Milliseconds waiting for the first engine tick.")
    compute: float = Field(description="Milliseconds of engine ticks the request took part in.")


class GenerateResponse(BaseModel):
    """JSON answer of ``POST /generate``."""

    model: str
    kind: Literal["flowmap", "velocity"]
    steps: int
    nfe: int = Field(description="Network evaluations per sample (the most any sample used, for dopri5).")
    seed: int
    n: int
    shape: list[int] = Field(description="Shape of `samples` (data units).")
    samples: list[Any] = Field(description="Samples as nested lists in the data set's own units.")
    solver: str | None
    grid: list[float] | None = Field(None, description="Times traversed (null for dopri5).")
    timing_ms: Timing
    chosen_by_budget: bool
    source: list[Any] | None = Field(
        None, description="Translation models (json): the source samples that were mapped, in the base data set's units."
    )


class EncodeResponse(BaseModel):
    model: str
    z: list[Any] = Field(description="Base-space points [n, *data_shape] (model units).")
    shape: list[int]
    steps: int
    nfe: int
    timing_ms: Timing


class ModelInfo(BaseModel):
    name: str
    kind: Literal["flowmap", "velocity"]
    dataset: str
    data_shape: list[int]
    units_shape: list[int]
    units: str
    engine: str
    engine_detail: dict[str, Any]
    engines: list[str]
    max_steps: int
    max_n: int
    max_compute: int
    max_nfe: int | None
    solvers: list[str]
    default_solver: str | None
    invertible: bool = Field(
        True, description="POST /encode is served: the map was trained on both time directions (time_region)."
    )
    supported_steps: list[int] | None = Field(
        None,
        description="Flow maps trained for some step counts only (shortcut, consistency, progressive "
        "distillation): the only steps accepted, on the uniform grid; null: any steps and any grid.",
    )
    base: str = Field("gaussian", description="The base distribution rho_0: gaussian, or a data set (translation).")
    translation: bool = Field(
        False, description="The base is a data set: POST /generate takes `source` samples of shape [n, *source_shape]."
    )
    source_shape: list[int] | None = None
    source_units: str | None = None
    num_classes: int | None = None
    guidance_input: bool | None = None
    guidance_range: list[float] | None = None
    default_guidance: float | None = None
    ready: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------

GENERATE_FIELDS = tuple(f.alias or name for name, f in GenerateRequest.model_fields.items())
ENCODE_FIELDS = tuple(EncodeRequest.model_fields)
GENERATE_QUERY_FIELDS = tuple(f for f in GENERATE_FIELDS if f != "source")
"""Fields of the /generate query string (``source`` comes in the body only)."""
INT_FIELDS = frozenset({"steps", "n", "seed", "max_nfe"})
FLOAT_FIELDS = frozenset({"rtol", "latency_ms"})
LIST_FIELDS = frozenset({"class", "guidance"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_UNPARSED = object()
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body: empty -> ``{}``, else a JSON object (NaN/Infinity rejected)."""
    if not raw or not raw.strip():
        return {}
    data = _UNPARSED
    if not _LONG_DIGITS.search(raw):  # orjson reads integers beyond 64 bits as floats: those take json's path
        try:  # fast path; whatever orjson refuses (NaN, 1e400, lone surrogates, ...) gets json's answer below
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if isinstance(data, dict):
        return data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8 text; send a JSON object") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ApiError(
            400,
            "malformed_json",
            f'the request body is not valid JSON ({str(e)[:200]}); send a JSON object such as {{"steps": 4}}',
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "invalid_body",
            f'the JSON body must be an object of parameters, got {type(data).__name__}; e.g. {{"steps": 4, "n": 16}}',
        )
    return data


def parse_query(items: Sequence[tuple[str, str]], allowed: Sequence[str]) -> dict[str, Any]:
    """Typed values of query parameters (unknown or repeated names are errors)."""
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in allowed:
            raise ApiError(
                422, "unknown_field", f"unknown parameter {show(key)}; allowed: {', '.join(allowed)}", key[:100]
            )
        if key in out:
            raise ApiError(422, "duplicate_field", f"parameter {key!r} is given twice; give it once", key)
        try:
            if key in INT_FIELDS:
                out[key] = parse_int(key, value)
            elif key in FLOAT_FIELDS:
                out[key] = parse_float(key, value)
            elif key == "grid":
                out[key] = parse_grid(value)
            elif key in LIST_FIELDS:  # "7" or "1,2,3" (one per sample)
                parse = parse_int if key == "class" else parse_float
                vals = [parse(key, v.strip()) for v in value.split(",")]
                out[key] = vals[0] if len(vals) == 1 else vals
            else:
                out[key] = value
        except ParamError as e:
            raise ApiError(422, "invalid_type", str(e), key) from None
        except GridError as e:
            raise ApiError(422, "invalid_grid", str(e), "grid") from None
    return out


_MESSAGES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "literal_error": "must be one of the listed values",
}


def validation_error(e: ValidationError, allowed: Sequence[str]) -> ApiError:
    """The first Pydantic error as a 422 naming the field and saying what to send."""
    err = e.errors(include_url=False)[0]
    loc = err.get("loc") or ()
    fld = str(loc[0])[:100] if loc else None
    kind = err.get("type", "")
    got = show(err.get("input"))
    if kind == "extra_forbidden":
        return ApiError(422, "unknown_field", f"unknown field {show(fld)}; allowed: {', '.join(allowed)}", fld)
    if kind == "missing":
        return ApiError(422, "missing_field", f"{fld} is required", fld)
    if fld == "grid":
        return ApiError(
            422, "invalid_grid", f"grid must be a list of numbers such as [0, 0.5, 1] or text '0,0.5,1', got {got}", "grid"
        )
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than", "string_too_long"):
        return ApiError(422, "out_of_range", f"{fld}={got} is out of range: {err.get('msg', '').lower()}", fld)
    what = _MESSAGES.get(kind, err.get("msg", "is invalid").lower())
    if kind == "literal_error":
        what = f"must be one of: {err.get('ctx', {}).get('expected', '')}"
    return ApiError(422, "invalid_type", f"{fld} {what}, got {got}", fld)


def drop_nulls(body: dict[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """A JSON body without ``null`` values of known fields (``null`` means "not given")."""
    return {k: v for k, v in body.items() if v is not None or k not in allowed}


def check_range(name: str, value: int, lo: int, hi: int, hint: str = "") -> int:
    """``lo <= value <= hi`` or a 422 naming the range."""
    if value < lo or value > hi:
        raise ApiError(
            422, "out_of_range", f"{name}={value} is out of range; use {lo}..{hi}{(' ' + hint) if hint else ''}", name
        )
    return value
