"""Request/response schemas and the validation of every request parameter.

Requests carry parameters in the query string or a JSON body (the body wins on
conflicts). Validation happens here and only here: every bad input becomes an
:class:`ApiError` with a 4xx status and a JSON body
``{"error": <short code>, "message": <what was wrong and how to fix it>, "field": <param or null>}``.
The pydantic models document the API in the OpenAPI schema; the checks themselves
are hand-written so that each message can say how to fix the input.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMATS = ("json", "png", "npy")
MAX_SEED = 2**53 - 1
"""Largest seed (seeds stay exact in JavaScript clients); sample i uses ``seed + i``."""
RTOL_RANGE = (1e-6, 0.5)
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


# --------------------------------------------------------------------------------------
# pydantic models (OpenAPI documentation)
# --------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Every 4xx/429/503 answer."""

    error: str = Field(description="Short machine-readable code, e.g. 'out_of_range'.")
    message: str = Field(description="What was wrong and how to fix it.")
    field: str | None = Field(description="The offending parameter, or null.")


class GenerateRequest(BaseModel):
    """Parameters of ``POST /generate`` (JSON body; the same names work as query parameters)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Served model name (default: the first served model)."
    )
    steps: int | None = Field(
        None, ge=1, description="Number of steps K (1..max_steps, default 1)."
    )
    n: int | None = Field(None, ge=1, description="Number of samples (1..max_n, default 1).")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Seed; sample i uses seed + i. Absent: the server picks and returns one.",
    )
    grid: list[float] | str | None = Field(
        None,
        description="Custom times 0 = t_0 < ... < t_K = 1 (list, or comma-separated string); overrides steps.",
    )
    format: Literal["json", "png", "npy"] | None = Field(
        None, description="Response format (default json)."
    )
    solver: Literal["euler", "heun", "rk4", "dopri5"] | None = Field(
        None, description="Velocity models only: ODE solver (default euler)."
    )
    rtol: float | None = Field(None, description="dopri5 tolerance (atol = rtol).")
    latency_ms: float | None = Field(
        None,
        gt=0,
        description="Latency budget: the server picks the most steps whose measured cost fits.",
    )


class Timing(BaseModel):
    total: float = Field(description="Server-side milliseconds from arrival to response.")
    queue: float = Field(description="Milliseconds waiting for the first engine tick.")
    compute: float = Field(description="Milliseconds of engine ticks the request took part in.")


class GenerateResponse(BaseModel):
    """JSON answer of ``POST /generate``."""

    model: str
    kind: Literal["flowmap", "velocity"]
    steps: int
    nfe: int = Field(description="Network evaluations per sample.")
    seed: int
    n: int
    shape: list[int] = Field(description="Shape of `samples` (data units).")
    samples: list[Any] = Field(description="Samples as nested lists in the data set's own units.")
    solver: str | None
    grid: list[float] | None = Field(None, description="Times traversed (null for dopri5).")
    timing_ms: Timing
    chosen_by_budget: bool


class EncodeRequest(BaseModel):
    """Body of ``POST /encode``: data -> base with the inverse map ``X_{1,0}``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Served flow-map model name (default: the first flow map)."
    )
    x: list[Any] = Field(
        description="Samples [n, ...] as nested lists in the data set's own units."
    )
    steps: int | None = Field(None, ge=1, description="Steps of the reversed grid (default 1).")
    grid: list[float] | str | None = Field(
        None, description="Custom forward grid; it is run backwards."
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
    engine: str
    engines: list[str]
    max_steps: int
    max_n: int
    max_compute: int
    solvers: list[str]
    default_solver: str | None
    ready: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------

INT_FIELDS = {"steps", "n", "seed"}
FLOAT_FIELDS = {"rtol", "latency_ms"}
STR_FIELDS = {"model", "format", "solver"}
GENERATE_FIELDS = ("model", "steps", "n", "seed", "grid", "format", "solver", "rtol", "latency_ms")
ENCODE_FIELDS = ("model", "x", "steps", "grid")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body: empty -> ``{}``, else a JSON object (NaN/Infinity rejected)."""
    if not raw or not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            400, "malformed_json", "the request body is not UTF-8 text; send a JSON object"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ApiError(
            400,
            "malformed_json",
            f'the request body is not valid JSON ({e}); send a JSON object such as {{"steps": 4}}',
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "invalid_body",
            f'the JSON body must be an object of parameters, got {type(data).__name__}; e.g. {{"steps": 4, "n": 16}}',
        )
    return data


def _parse_int_text(name: str, text: str) -> int:
    t = text.strip()
    if not t or not (t.lstrip("+-").isdigit()) or len(t) > 30:
        raise ApiError(422, "invalid_type", f"{name} must be an integer, got {_show(text)}", name)
    return int(t)


def _parse_float_text(name: str, text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise ApiError(
            422, "invalid_type", f"{name} must be a number, got {_show(text)}", name
        ) from None
    if not math.isfinite(v):
        raise ApiError(
            422, "invalid_type", f"{name} must be a finite number, got {_show(text)}", name
        )
    return v


def _parse_grid_text(text: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise ApiError(
            422,
            "invalid_grid",
            f"grid must be comma-separated times such as 0,0.5,1, got {_show(text)}",
            "grid",
        )
    out = []
    for p in parts:
        try:
            out.append(float(p))
        except ValueError:
            raise ApiError(
                422,
                "invalid_grid",
                f"grid entry {_show(p)} is not a number; use times such as 0,0.5,1",
                "grid",
            ) from None
    return out


def parse_query(items: Sequence[tuple[str, str]], allowed: Sequence[str]) -> dict[str, Any]:
    """Typed values of query parameters (unknown or repeated names are errors)."""
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in allowed:
            raise ApiError(
                422,
                "unknown_field",
                f"unknown parameter {_show(key)}; allowed: {', '.join(allowed)}",
                key[:100],
            )
        if key in out:
            raise ApiError(
                422, "duplicate_field", f"parameter {key!r} is given twice; give it once", key
            )
        if key in INT_FIELDS:
            out[key] = _parse_int_text(key, value)
        elif key in FLOAT_FIELDS:
            out[key] = _parse_float_text(key, value)
        elif key == "grid":
            out[key] = _parse_grid_text(value)
        else:
            out[key] = value
    return out


def check_body_types(body: dict[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """Check the JSON body's keys and value types; ``null`` means "not given"."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(
                422,
                "unknown_field",
                f"unknown field {_show(key)}; allowed: {', '.join(allowed)}",
                str(key)[:100],
            )
        if value is None:
            continue
        if key in INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(
                    422, "invalid_type", f"{key} must be an integer, got {_show(value)}", key
                )
        elif key in FLOAT_FIELDS:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ApiError(
                    422, "invalid_type", f"{key} must be a finite number, got {_show(value)}", key
                )
            value = float(value)
        elif key in STR_FIELDS:
            if not isinstance(value, str):
                raise ApiError(
                    422, "invalid_type", f"{key} must be a string, got {_show(value)}", key
                )
        elif key == "grid":
            if isinstance(value, str):
                value = _parse_grid_text(value)
            elif isinstance(value, list):
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                    raise ApiError(
                        422,
                        "invalid_grid",
                        f"grid must be a list of numbers such as [0, 0.5, 1], got {_show(value)}",
                        "grid",
                    )
                value = [float(v) for v in value]
            else:
                raise ApiError(
                    422,
                    "invalid_grid",
                    f"grid must be a list of numbers such as [0, 0.5, 1], got {_show(value)}",
                    "grid",
                )
        out[key] = value
    return out


@dataclass
class GenerateParams:
    """A validated generate request.

    Attributes:
        model: served model name.
        steps: K (steps of the grid / of the fixed-step solver; 0 until dopri5 reports).
        n: number of samples.
        seed: first seed (sample i uses seed + i).
        seed_given: whether the client chose the seed.
        grid: ``[K + 1]`` times (None for dopri5).
        format: ``json``, ``png`` or ``npy``.
        solver: velocity models: the solver; flow maps: None.
        rtol: dopri5 tolerance.
        latency_ms: latency budget, if any.
        steps_given: whether the client gave ``steps``.
    """

    model: str
    steps: int
    n: int
    seed: int
    seed_given: bool
    grid: list[float] | None
    format: str
    solver: str | None
    rtol: float
    latency_ms: float | None
    steps_given: bool


def validate_grid(grid: list[float], max_steps: int) -> list[float]:
    """Check a custom grid (start 0, end 1, strictly increasing, at most ``max_steps`` steps)."""
    if len(grid) < 2:
        raise ApiError(
            422,
            "invalid_grid",
            "a grid needs at least two times, e.g. 0,1 (one step) or 0,0.5,1",
            "grid",
        )
    if len(grid) - 1 > max_steps:
        raise ApiError(
            422,
            "out_of_range",
            f"the grid has {len(grid) - 1} steps; at most {max_steps} are allowed",
            "grid",
        )
    if not all(math.isfinite(g) for g in grid):
        raise ApiError(422, "invalid_grid", "grid times must be finite numbers", "grid")
    if grid[0] != 0.0 or grid[-1] != 1.0:
        raise ApiError(
            422,
            "invalid_grid",
            f"a grid must start at 0 and end at 1 (got {grid[0]:g} .. {grid[-1]:g}); times lie in [0, 1]",
            "grid",
        )
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ApiError(
            422, "invalid_grid", "grid times must strictly increase, e.g. 0,0.25,0.5,1", "grid"
        )
    return [float(g) for g in grid]


def check_range(name: str, value: int, lo: int, hi: int, hint: str = "") -> int:
    if value < lo or value > hi:
        raise ApiError(
            422,
            "out_of_range",
            f"{name}={value} is out of range; use {lo}..{hi}{(' ' + hint) if hint else ''}",
            name,
        )
    return value
