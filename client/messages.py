"""Request bodies and answer parsing of the anystep HTTP API (``/generate``, ``/encode``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from .errors import (
    AnystepClientError,
    AnystepInputError,
    AnystepProtocolError,
    _not_anystep,
    _one_line,
)

FORMATS = ("npy", "json", "png")


@dataclass
class GenerateResult:
    """Answer of ``POST /generate``.

    Attributes:
        model: served model name.
        kind: ``"flowmap"`` or ``"velocity"``.
        steps: steps taken (K; accepted steps for dopri5).
        nfe: network evaluations per sample.
        seed: first seed (sample i used ``seed + i``).
        n: number of samples.
        format: ``npy``, ``json`` or ``png``.
        samples: ``[n, ...]`` float32 in the data set's own units (None for png).
        image: the PNG as a ``PIL.Image`` (png only).
        png: the PNG bytes (png only).
        solver: ODE solver (velocity models), else None.
        grid: times traversed (json only; None for dopri5).
        timing_ms: server-side ``{"total", "queue", "compute"}`` milliseconds.
        chosen_by_budget: True when ``latency_ms`` chose ``steps``.
        source: translation models (json only): the source samples that were mapped
            (the client's, or those the server drew from the seed), in the base data set's units.
    """

    model: str
    kind: str
    steps: int
    nfe: int
    seed: int
    n: int
    format: str
    samples: np.ndarray | None = None
    image: Any = None
    png: bytes | None = field(default=None, repr=False)
    solver: str | None = None
    grid: list[float] | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    chosen_by_budget: bool = False
    source: np.ndarray | None = None


@dataclass
class EncodeResult:
    """Answer of ``POST /encode``.

    Attributes:
        model: served model name.
        z: ``[n, *data_shape]`` float32 base-space points (model units).
        steps: steps of the reversed grid.
        nfe: network evaluations per sample.
        timing_ms: server-side timings.
    """

    model: str
    z: np.ndarray
    steps: int
    nfe: int
    timing_ms: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# shared request building / response parsing
# --------------------------------------------------------------------------------------


def _generate_payload(
    model: str | None,
    steps: int | None,
    n: int,
    seed: int | None,
    format: str,
    grid: Sequence[float] | None,
    solver: str | None,
    rtol: float | None,
    latency_ms: float | None,
    classes: int | Sequence[int] | None = None,
    guidance: float | Sequence[float] | None = None,
    source: Any = None,
) -> dict[str, Any]:
    if format not in FORMATS:
        raise AnystepInputError(f"format={format!r}: use one of {list(FORMATS)}")
    body: dict[str, Any] = {"n": n, "format": format}
    if source is not None:  # translation models: n is the number of sources
        arr = _finite_samples(source, "source", "generate")
        if n not in (1, arr.shape[0]):
            raise AnystepInputError(f"n={n} but source has {arr.shape[0]} rows; leave n out (it is the number of sources)")
        body = {"source": arr.tolist(), "format": format}
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
        if steps is not None and steps != 1:  # an explicit cap on the steps the budget may pick
            body["steps"] = steps
    elif steps is not None:
        body["steps"] = steps
    for key, value in (("model", model), ("seed", seed), ("solver", solver), ("rtol", rtol)):
        if value is not None:
            body[key] = value
    if grid is not None:
        body["grid"] = [float(g) for g in grid]
        body.pop("steps", None)
    if classes is not None:  # class-conditional models: one class for all samples, or one per sample
        body["class"] = int(classes) if isinstance(classes, int) else [int(c) for c in classes]
    if guidance is not None:
        body["guidance"] = float(guidance) if isinstance(guidance, (int, float)) else [float(w) for w in guidance]
    return body






def _float_array(data: Any) -> np.ndarray:
    try:
        return np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):  # nulls stand for non-finite values

        def fix(v: Any) -> Any:
            if isinstance(v, list):
                return [fix(u) for u in v]
            return float("nan") if v is None else v

        return np.asarray(fix(data), dtype=np.float32)




def _parse_generate(resp: httpx.Response, fmt: str) -> GenerateResult:
    try:
        return _parse_generate_unchecked(resp, fmt)
    except AnystepClientError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _parse_generate_unchecked(resp: httpx.Response, fmt: str) -> GenerateResult:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        d = resp.json()
        return GenerateResult(
            model=d["model"],
            kind=d["kind"],
            steps=int(d["steps"]),
            nfe=int(d["nfe"]),
            seed=int(d["seed"]),
            n=int(d["n"]),
            format="json",
            samples=_float_array(d["samples"]).reshape(d.get("shape") or -1),
            solver=d.get("solver"),
            grid=d.get("grid"),
            timing_ms={k: float(v) for k, v in d.get("timing_ms", {}).items()},
            chosen_by_budget=bool(d.get("chosen_by_budget", False)),
            source=None if d.get("source") is None else _float_array(d["source"]),
        )
    h = resp.headers
    common: dict[str, Any] = dict(  # noqa: C408 - keyword form reads like the headers
        model=h.get("x-anystep-model", ""),
        kind=h.get("x-anystep-kind", ""),
        steps=int(h.get("x-anystep-steps", 0)),
        nfe=int(h.get("x-anystep-nfe", 0)),
        seed=int(h.get("x-anystep-seed", 0)),
        n=int(h.get("x-anystep-n", 0)),
        solver=h.get("x-anystep-solver") or None,
        timing_ms={
            k: float(h[f"x-anystep-{name}-ms"])
            for k, name in (("total", "time"), ("queue", "queue"), ("compute", "compute"))
            if f"x-anystep-{name}-ms" in h
        },
        chosen_by_budget=h.get("x-anystep-chosen-by-budget", "false") == "true",
    )
    if ctype.startswith("image/png"):
        from PIL import Image

        img = Image.open(io.BytesIO(resp.content))
        img.load()
        return GenerateResult(format="png", png=resp.content, image=img, **common)
    if "npy" in ctype or ctype.startswith("application/octet-stream"):
        arr = np.load(io.BytesIO(resp.content), allow_pickle=False)
        return GenerateResult(format="npy", samples=arr, **common)
    raise AnystepProtocolError(
        f"{resp.request.url} answered with content type {ctype!r} for format={fmt}; is it an anystep server?"
    )


def _parse_encode(resp: httpx.Response) -> EncodeResult:
    try:
        d = resp.json()
        return EncodeResult(
            model=d["model"],
            z=_float_array(d["z"]).reshape(d.get("shape") or -1),
            steps=int(d["steps"]),
            nfe=int(d["nfe"]),
            timing_ms={k: float(v) for k, v in d.get("timing_ms", {}).items()},
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _json_of(resp: httpx.Response, key: str | None = None) -> Any:
    try:
        d = resp.json()
        return d if key is None else d[key]
    except (KeyError, TypeError, ValueError) as e:
        raise _not_anystep(resp, "a body", e) from None


def _finite_samples(x: Any, name: str, what: str) -> np.ndarray:
    """Samples ``[n, ...]`` (a list or array) as finite float32, or :class:`AnystepInputError` saying what to fix."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise AnystepInputError(
            f"{what} needs {name} as numbers of shape [n, *data_shape] (a list or array), got {type(x).__name__}: "
            f"{_one_line(e, 120)}"
        ) from None
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise AnystepInputError(f"{what} needs {name} of shape [n, *data_shape] with n >= 1, got shape {list(arr.shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AnystepInputError(
            f"{what} needs finite data: {name} holds {int(bad.sum())} NaN/Inf value(s) (first at index {list(first)}); "
            "remove or replace them"
        )
    return arr


def _encode_payload(
    x: Any, model: str | None, steps: int | None, grid: Sequence[float] | None
) -> dict[str, Any]:
    arr = _finite_samples(x, "x", "encode")
    body: dict[str, Any] = {"x": arr.tolist()}
    if model is not None:
        body["model"] = model
    if grid is not None:
        body["grid"] = [float(g) for g in grid]
    elif steps is not None:
        body["steps"] = steps
    return body
