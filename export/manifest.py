"""The export manifest ``anystep-export.json`` written beside every exported artifact.

It records where an artifact came from (model directory and its sha256), what it
computes (kind, data shape, graph inputs and outputs, the time convention
``t=0 base, t=1 data``, fused steps and grid), how it was made (opset, precision,
exporter, package versions) and how well it matches its reference (the tolerance it
was checked against and the maximum error reached).

:func:`load_manifest` is the one loader every consumer (the server, the benchmarks)
uses; it never unpickles anything (plain JSON).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MANIFEST_NAME, TIME_CONVENTION, ExportError

FORMAT_VERSION = 1
FORMATS = ("onnx", "tensorrt")
GRAPHS = ("step", "fused")


class ManifestError(ExportError):
    """A manifest is missing, not valid JSON, or lacks a required field."""


@dataclass
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: tensor name in the graph (``x``, ``s``, ``t``, ``x_t``, ``v``, ``x0``, ``x1``).
        shape: dims; the batch dim is the string ``"batch"``, others are ints.
        dtype: numpy dtype name (``"float32"``).
    """

    name: str
    shape: list[int | str]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        if not isinstance(d, dict) or "name" not in d or "shape" not in d:
            raise ManifestError(f"a tensor entry needs 'name' and 'shape', got {d!r}")
        return cls(
            name=str(d["name"]), shape=list(d["shape"]), dtype=str(d.get("dtype", "float32"))
        )


@dataclass
class Tolerance:
    """How an artifact was validated.

    Attributes:
        atol, rtol: the bound checked element-wise, ``|y - y_ref| <= atol + rtol |y_ref|``.
        max_abs_err: the largest ``|y - y_ref|`` seen over all checked inputs.
        max_rel_err: the largest ``|y - y_ref| / (atol + rtol |y_ref|)`` (<= 1 means passed).
        reference: what the artifact was compared with (``"torch"``, ``"onnxruntime"``,
            ``"onnx-step-graph"`` for a fused graph against K single-step calls).
        batches: batch sizes checked.
        time_pairs: ``(s, t)`` pairs checked (``t`` alone for velocity models); ``"mixed"``
            stands for random per-sample times within one batch.
        other_references: max ``|y - y_ref|`` against further references that were also
            checked against the same bound (e.g. ``{"torch": 3e-7}`` for a fused graph).
    """

    atol: float
    rtol: float
    max_abs_err: float
    max_rel_err: float
    reference: str
    batches: list[int] = field(default_factory=list)
    time_pairs: list[Any] = field(default_factory=list)
    other_references: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tolerance:
        try:
            return cls(
                atol=float(d["atol"]),
                rtol=float(d["rtol"]),
                max_abs_err=float(d["max_abs_err"]),
                max_rel_err=float(d.get("max_rel_err", 0.0)),
                reference=str(d.get("reference", "")),
                batches=list(d.get("batches", [])),
                time_pairs=list(d.get("time_pairs", [])),
                other_references={
                    str(k): float(v) for k, v in dict(d.get("other_references", {})).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"tolerance entry is malformed ({e}): {d!r}") from None


@dataclass
class ExportManifest:
    """Contents of ``anystep-export.json``.

    Attributes:
        format: ``"onnx"`` or ``"tensorrt"``.
        artifact: file name of the artifact beside the manifest (``model.onnx``, ``model.plan``).
        artifact_sha256: sha256 of the artifact's bytes.
        kind: ``"flowmap"`` (``X_{s,t}``) or ``"velocity"`` (``b_t``).
        graph: ``"step"`` (one call of the model) or ``"fused"`` (the whole K-step sampler).
        source_model_dir: the model directory exported (absolute path at export time).
        model_dir_sha256: sha256 of its ``config.json`` and ``model.safetensors``.
        data_shape: shape of one sample.
        dataset: data set the model was trained on (rho_1).
        base: base distribution (rho_0).
        time_convention: always ``"t=0 base, t=1 data"``.
        opset: ONNX opset of the graph.
        precision: ``"fp32"`` or ``"fp16"``.
        exporter: how the ONNX graph was made (``"dynamo"`` or ``"torchscript"``).
        inputs / outputs: graph tensors (batch dim named ``"batch"``).
        tolerance: validation result.
        versions: package versions used (anystep, torch, onnx, onnxruntime, tensorrt, ...).
        batch: ``{"min", "opt", "max"}`` batch range the artifact was checked (and profiled) for.
        fused_steps: K of a fused graph (None for a step graph).
        grid: the K+1 times of a fused graph (``0 = t_0 < ... < t_K = 1``), else None.
        solver: fixed-step ODE solver of a fused velocity graph (``euler``, ``heun``, ``rk4``).
        nfe: network evaluations per call of the graph.
        tensorrt: TensorRT build details (version, profile, strongly typed, timing cache,
            build time, device), only for ``format == "tensorrt"``.
        triton: Triton details (model name, platform, max_batch_size) when the artifact
            lives in a Triton model repository.
        created_at: ISO-8601 UTC time of the export.
        format_version: manifest schema version.
    """

    format: str
    artifact: str
    artifact_sha256: str
    kind: str
    graph: str
    source_model_dir: str
    model_dir_sha256: str
    data_shape: list[int]
    dataset: str
    base: str
    opset: int
    precision: str
    exporter: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tolerance: Tolerance
    versions: dict[str, str]
    batch: dict[str, int]
    time_convention: str = TIME_CONVENTION
    fused_steps: int | None = None
    grid: list[float] | None = None
    solver: str | None = None
    nfe: int = 1
    tensorrt: dict[str, Any] | None = None
    triton: dict[str, Any] | None = None
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def artifact_path(self) -> Path:
        """Absolute path of the artifact (needs ``path``, set by :func:`load_manifest`)."""
        if self.path is None:
            raise ManifestError(
                "this manifest was not loaded from a file; its artifact has no path"
            )
        return self.path.parent / self.artifact

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``path`` left out)."""
        d = dataclasses.asdict(self)
        d.pop("path", None)
        return d

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``anystep-export.json`` into ``folder``; returns its path."""
        p = Path(folder) / MANIFEST_NAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> ExportManifest:
        """Validate and build a manifest from parsed JSON.

        Raises:
            ManifestError: a required field is missing or has the wrong type.
        """
        if not isinstance(d, dict):
            raise ManifestError(f"a manifest must hold a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(d))
        if missing:
            raise ManifestError(
                f"manifest lacks field(s) {missing}; re-export with `anystep export`"
            )
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {kw['format_version']} is newer than this anystep "
                f"understands ({FORMAT_VERSION}); upgrade anystep"
            )
        if kw["format"] not in FORMATS:
            raise ManifestError(f"manifest format {kw['format']!r} is not one of {list(FORMATS)}")
        if kw["kind"] not in ("flowmap", "velocity"):
            raise ManifestError(f"manifest kind {kw['kind']!r} must be 'flowmap' or 'velocity'")
        if kw["graph"] not in GRAPHS:
            raise ManifestError(f"manifest graph {kw['graph']!r} must be one of {list(GRAPHS)}")
        try:
            kw["inputs"] = [TensorSpec.from_dict(t) for t in kw["inputs"]]
            kw["outputs"] = [TensorSpec.from_dict(t) for t in kw["outputs"]]
            kw["tolerance"] = Tolerance.from_dict(kw["tolerance"])
            kw["data_shape"] = [int(v) for v in kw["data_shape"]]
            kw["opset"] = int(kw["opset"])
            kw["batch"] = {k: int(v) for k, v in dict(kw["batch"]).items()}
        except (TypeError, ValueError) as e:
            raise ManifestError(f"manifest is malformed: {e}") from None
        return cls(**kw, path=path)


def load_manifest(path: str | os.PathLike) -> ExportManifest:
    """Load an export manifest.

    Args:
        path: the ``anystep-export.json`` file, or the folder holding it (an export
            folder, or a Triton model folder ``<repo>/<name>``).

    Returns:
        The validated :class:`ExportManifest` (its ``path`` set, so ``artifact_path`` works).

    Raises:
        ManifestError: missing file, invalid JSON, or missing/invalid fields.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(
            f"no export manifest at {p}; export the model with `anystep export` first"
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{p} is not a readable JSON manifest: {e}") from None
    return ExportManifest.from_dict(data, path=p.absolute())
