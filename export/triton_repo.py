"""Triton Inference Server model repositories for exported models, and a pytriton test server.

``anystep export MODEL_DIR --format triton --out REPO [--name NAME] [--plan TRT_EXPORT_DIR]``
writes::

    REPO/NAME/config.pbtxt          platform "onnxruntime_onnx"
    REPO/NAME/1/model.onnx          the validated ONNX graph (step or fused)
    REPO/NAME/anystep-export.json   its manifest (artifact "1/model.onnx")
    REPO/NAME_trt/...               platform "tensorrt_plan", "1/model.plan" (with --plan)

Batching: ``max_batch_size`` is the batch range's max, so every tensor's ``dims`` leave
out the batch dim. The per-sample times ``s [batch]`` and ``t [batch]`` of the graph have
no dims left, which Triton does not allow for a batching model; they are declared
``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, so a client sends ``s`` as ``[B, 1]``
and the model receives ``[B]``, one time per sample, and dynamic batching can merge
requests at different steps. Time convention: ``t = 0`` base, ``t = 1`` data.

:func:`serve_with_pytriton` starts the Triton server bundled with nvidia-pytriton
(which runs on CPU) serving a repository's ONNX models through an ONNX Runtime session
wrapped as a Python callable, with the names, dims, reshapes and batching of each
``config.pbtxt``. pytriton needs ``numpy<2``, so it runs in its own interpreter
(``$ANYSTEP_TRITON_PYTHON``, else ``.venv-triton/bin/python`` at the repository root,
else this interpreter if it has pytriton); see :func:`find_triton_python`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MANIFEST_NAME, ONNX_NAME, PLAN_NAME, BatchRange, ExportError, replace_dir
from .manifest import ExportManifest, TensorSpec, load_manifest

CONFIG_NAME = "config.pbtxt"
VERSION = "1"
INSTANCE_KINDS = ("auto", "cpu", "gpu")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
}
WORKER = Path(__file__).with_name("pytriton_worker.py")


class TritonUnavailableError(RuntimeError):
    """pytriton (or a Python that has it) is not available, or its server did not start."""


# --------------------------------------------------------------------------------------
# config.pbtxt
# --------------------------------------------------------------------------------------


def _tensor_block(spec: TensorSpec) -> str:
    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        raise ExportError(
            f"tensor {spec.name} has dtype {spec.dtype}, which has no Triton type here"
        )
    dims = [int(d) for d in spec.shape[1:]]  # the batch dim is implicit (max_batch_size > 0)
    lines = ["  {", f'    name: "{spec.name}"', f"    data_type: {dtype}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:  # per-sample scalar ([batch] in the graph): [B, 1] on the wire, [B] in the model
        lines.append("    dims: [ 1 ]")
        lines.append("    reshape: { shape: [ ] }")
    lines.append("  }")
    return "\n".join(lines)


def triton_config_text(
    name: str,
    manifest: ExportManifest,
    *,
    platform: str = "onnxruntime_onnx",
    max_batch_size: int,
    preferred_batch_size: int | None = None,
    max_queue_delay_us: int = 100,
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
) -> str:
    """The ``config.pbtxt`` of one model.

    Args:
        name: Triton model name (the folder name).
        manifest: the artifact's manifest (inputs/outputs, kind, fused steps).
        platform: ``"onnxruntime_onnx"`` or ``"tensorrt_plan"``.
        max_batch_size: largest batch Triton forms (the batch range's max).
        preferred_batch_size: batch the dynamic batcher aims for (the opt batch).
        max_queue_delay_us: how long the batcher waits to fill a batch.
        instance_kind: ``"KIND_CPU"`` or ``"KIND_GPU"``.
        instance_count: model instances.

    Returns:
        protobuf text of ``inference.ModelConfig``.
    """
    if platform not in ("onnxruntime_onnx", "tensorrt_plan"):
        raise ExportError(f"platform {platform!r}: use onnxruntime_onnx or tensorrt_plan")
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ExportError(f"instance kind {instance_kind!r}: use KIND_CPU or KIND_GPU")
    what = f"{manifest.kind} {'fused ' + str(manifest.fused_steps) + '-step sampler' if manifest.graph == 'fused' else 'single step'}"
    out = [
        f"# anystep export: {what} of {manifest.dataset} ({manifest.precision}); time convention: {manifest.time_convention}",
        f"# source model dir sha256 {manifest.model_dir_sha256}",
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {int(max_batch_size)}",
        "input [",
        ",\n".join(_tensor_block(t) for t in manifest.inputs),
        "]",
        "output [",
        ",\n".join(_tensor_block(t) for t in manifest.outputs),
        "]",
        "dynamic_batching {",
    ]
    if preferred_batch_size:
        out.append(f"  preferred_batch_size: [ {int(preferred_batch_size)} ]")
    out += [
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {int(instance_count)}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
        f'default_model_filename: "{ONNX_NAME if platform == "onnxruntime_onnx" else PLAN_NAME}"',
    ]
    return "\n".join(out) + "\n"


def parse_config(path_or_text: str | os.PathLike) -> Any:
    """Parse a ``config.pbtxt`` with Triton's own protobuf schema (shipped by tritonclient).

    Args:
        path_or_text: a file path, or the text itself.

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        ImportError: tritonclient is not installed (``pip install 'anystep[triton]'``).
        ExportError: the text does not parse.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    src = str(path_or_text)
    is_path = isinstance(path_or_text, os.PathLike) or ("\n" not in src and Path(src).is_file())
    text = Path(src).read_text() if is_path else src
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ExportError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from None
    return cfg


def _validate_config(text: str) -> None:
    """Parse-check generated configs when tritonclient is installed (it always is in tests)."""
    try:
        parse_config(text)
    except ImportError:
        pass


# --------------------------------------------------------------------------------------
# Repository export
# --------------------------------------------------------------------------------------


@dataclass
class TritonExportResult:
    """A model repository written by :func:`export_triton`.

    Attributes:
        repository: the repository root.
        models: names of the models written (``NAME`` and, with a plan, ``NAME_trt``).
        manifests: ``{model name: manifest}``.
    """

    repository: Path
    models: list[str]
    manifests: dict[str, ExportManifest] = field(default_factory=dict)


def default_model_name(kind: str, dataset: str, fused_steps: int | None) -> str:
    """``<dataset>_<kind>`` (``_k<K>`` for fused graphs), e.g. ``checkerboard_flowmap_k4``."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}_{kind}")
    return f"{base}_k{fused_steps}" if fused_steps else base


def resolve_instance_kind(kind: str) -> str:
    """``auto`` -> ``KIND_GPU`` when a CUDA GPU is visible here, else ``KIND_CPU``."""
    if kind not in INSTANCE_KINDS:
        raise ExportError(f"--instance-kind {kind!r}: use one of {', '.join(INSTANCE_KINDS)}")
    if kind == "auto":
        from .tensorrt_build import cuda_device_count

        return "KIND_GPU" if cuda_device_count() > 0 else "KIND_CPU"
    return "KIND_GPU" if kind == "gpu" else "KIND_CPU"


def _same_signature(a: ExportManifest, b: ExportManifest) -> bool:
    return (
        [dataclasses.astuple(t) for t in a.inputs] == [dataclasses.astuple(t) for t in b.inputs]
        and [dataclasses.astuple(t) for t in a.outputs]
        == [dataclasses.astuple(t) for t in b.outputs]
        and a.graph == b.graph
        and a.grid == b.grid
    )


def export_triton(
    model_dir: str | os.PathLike,
    repository: str | os.PathLike,
    onnx_opts=None,
    *,
    name: str | None = None,
    plan: str | os.PathLike | None = None,
    instance_kind: str = "auto",
    max_queue_delay_us: int = 100,
    overwrite: bool = False,
) -> TritonExportResult:
    """``anystep export MODEL_DIR --format triton --out REPO``: add a model to a repository.

    Args:
        model_dir: model directory.
        repository: repository root (created if missing; other models in it are kept).
        onnx_opts: :class:`~anystep.export.onnx_export.OnnxOptions` (step or fused graph,
            batch range: ``max`` becomes ``max_batch_size``, ``opt`` the preferred batch).
        name: model name (default :func:`default_model_name`).
        plan: a TensorRT export folder (from ``--format tensorrt``) of the same model
            directory and graph: adds ``NAME_trt`` with platform ``tensorrt_plan``.
        instance_kind: ``auto``, ``cpu`` or ``gpu`` for the ONNX model's instance group.
        max_queue_delay_us: dynamic batcher delay.
        overwrite: replace existing models of the same names.

    Returns:
        TritonExportResult.

    Raises:
        ModelDirError / ExportError / ManifestError: bad input (exit 2); nothing written.
        ParityError: the ONNX graph failed validation (exit 1); nothing written.
    """
    from anystep.core.modeldir import model_dir_sha256

    from .onnx_export import OnnxOptions, load_for_export, write_onnx

    opts = onnx_opts or OnnxOptions()
    if opts.precision != "fp32":
        raise ExportError(
            "the Triton ONNX model is fp32; for fp16 add a TensorRT plan built with --fp16 (--plan)"
        )
    repo = Path(repository).absolute()
    if repo.exists() and not repo.is_dir():
        raise ExportError(f"--out {repo} is a file; give the model repository folder")
    kind_text = resolve_instance_kind(instance_kind)
    if not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ExportError("--max-queue-delay-us must be an integer >= 0")
    plan_manifest = None
    if plan is not None:
        plan_manifest = load_manifest(plan)
        if plan_manifest.format != "tensorrt":
            raise ExportError(
                f"--plan {plan} holds a {plan_manifest.format} export; give a --format tensorrt output folder"
            )
        if not plan_manifest.artifact_path.is_file():
            raise ExportError(f"--plan {plan}: {plan_manifest.artifact} is missing")
    loaded = load_for_export(model_dir)
    cfg = loaded.config
    if plan_manifest is not None and plan_manifest.model_dir_sha256 != model_dir_sha256(
        loaded.path
    ):
        raise ExportError(
            f"--plan {plan} was built from another model directory (sha256 differs); rebuild it"
        )
    if name is None:
        from .fused import fused_grid

        k = (len(fused_grid(opts.fused_steps, opts.grid)) - 1) if opts.fused else None
        name = default_model_name(cfg.kind, cfg.dataset, k)
    if not _NAME_RE.match(name):
        raise ExportError(
            f"--name {name!r}: use letters, digits, '_', '.', '-' (start with a letter or digit)"
        )
    names = [name] + ([f"{name}_trt"] if plan_manifest is not None else [])
    for n in names:
        if (repo / n).exists() and not overwrite:
            raise ExportError(
                f"{repo / n} already exists; pass --overwrite to replace it, or choose another --name"
            )

    created_repo = not repo.exists()
    try:
        repo.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {repo.parent}: {e}") from None
    stage = Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-", dir=repo.parent))
    manifests: dict[str, ExportManifest] = {}
    try:
        model_root = stage / name
        (model_root / VERSION).mkdir(parents=True)
        m = write_onnx(loaded, model_root / VERSION, opts)
        (model_root / VERSION / MANIFEST_NAME).unlink()
        m.artifact = f"{VERSION}/{ONNX_NAME}"
        b: BatchRange = opts.batch
        m.triton = {
            "model_name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": b.max,
            "instance_kind": kind_text,
            "s_t_reshape": "dims [1] -> [] (send s, t as [B, 1]; class-conditional graphs: y, w too)",
        }
        text = triton_config_text(
            name,
            m,
            max_batch_size=b.max,
            preferred_batch_size=b.opt,
            max_queue_delay_us=max_queue_delay_us,
            instance_kind=kind_text,
        )
        _validate_config(text)
        (model_root / CONFIG_NAME).write_text(text)
        m.write(model_root)
        manifests[name] = m
        if plan_manifest is not None:
            if not _same_signature(plan_manifest, m):
                raise ExportError(
                    f"--plan {plan} was built for another graph ({plan_manifest.graph}, inputs "
                    f"{plan_manifest.input_names}); export it with the same --fused-steps/--grid"
                )
            trt_name = f"{name}_trt"
            trt_root = stage / trt_name
            (trt_root / VERSION).mkdir(parents=True)
            shutil.copy2(plan_manifest.artifact_path, trt_root / VERSION / PLAN_NAME)
            pm = dataclasses.replace(plan_manifest, artifact=f"{VERSION}/{PLAN_NAME}", path=None)
            trt_max = (
                int(plan_manifest.tensorrt["profile"]["max"]) if plan_manifest.tensorrt else b.max
            )
            trt_opt = (
                int(plan_manifest.tensorrt["profile"]["opt"]) if plan_manifest.tensorrt else b.opt
            )
            pm.triton = {
                "model_name": trt_name,
                "platform": "tensorrt_plan",
                "max_batch_size": trt_max,
                "instance_kind": "KIND_GPU",
            }
            text = triton_config_text(
                trt_name,
                pm,
                platform="tensorrt_plan",
                max_batch_size=trt_max,
                preferred_batch_size=trt_opt,
                max_queue_delay_us=max_queue_delay_us,
                instance_kind="KIND_GPU",
            )
            _validate_config(text)
            (trt_root / CONFIG_NAME).write_text(text)
            pm.write(trt_root)
            manifests[trt_name] = pm
        if created_repo and not repo.exists():
            os.replace(stage, repo)
        else:
            repo.mkdir(parents=True, exist_ok=True)
            for n in names:
                replace_dir(stage / n, repo / n)
    except BaseException:
        if created_repo and repo.exists() and not any(repo.iterdir()):
            repo.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for n, man in manifests.items():
        man.path = repo / n / MANIFEST_NAME
    return TritonExportResult(repository=repo, models=names, manifests=manifests)


# --------------------------------------------------------------------------------------
# pytriton test server
# --------------------------------------------------------------------------------------


@dataclass
class TritonServer:
    """A running pytriton server (see :func:`serve_with_pytriton`).

    Attributes:
        http_url: ``host:port`` for ``tritonclient.http.InferenceServerClient``.
        grpc_url: ``host:port`` for ``tritonclient.grpc.InferenceServerClient``.
        metrics_url: ``http://host:port/metrics``.
        models: models being served.
        log_path: the server's combined log.
        python: the interpreter running pytriton.
    """

    http_url: str
    grpc_url: str
    metrics_url: str
    models: list[str]
    log_path: Path
    python: str
    process: subprocess.Popen = field(repr=False)


def _has_pytriton(python: str) -> bool:
    try:
        r = subprocess.run(
            [python, "-c", "import pytriton, onnxruntime, numpy, tritonclient"],
            capture_output=True,
            timeout=60,
            check=False,
            env=_worker_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def project_root() -> Path:
    """The source checkout holding this package (``export/`` is mapped to ``anystep.export``)."""
    return Path(__file__).resolve().parents[1]


def find_triton_python() -> str:
    """The interpreter that runs pytriton.

    Order: ``$ANYSTEP_TRITON_PYTHON``; ``<checkout>/.venv-triton/bin/python`` (made by
    ``make triton-venv``: Debian's ``python3 -m venv .venv-triton`` then
    ``pip install nvidia-pytriton onnxruntime 'numpy<2'``); this interpreter when it has
    pytriton.

    Raises:
        TritonUnavailableError: none of them has pytriton + onnxruntime.
    """
    tried = []
    env = os.environ.get("ANYSTEP_TRITON_PYTHON")
    candidates = [env] if env else []
    candidates.append(str(project_root() / ".venv-triton" / "bin" / "python"))
    candidates.append(sys.executable)
    for c in candidates:
        if not c or (c != sys.executable and not Path(c).exists()):
            tried.append(f"{c} (missing)")
            continue
        if _has_pytriton(c):
            return c
        tried.append(f"{c} (no pytriton/onnxruntime/numpy<2)")
    raise TritonUnavailableError(
        "no Python with nvidia-pytriton found (tried " + ", ".join(tried) + "); create one with "
        "`/usr/bin/python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton onnxruntime "
        "'numpy<2'` or set ANYSTEP_TRITON_PYTHON"
    )


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(k, None)
    return env


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (bound and released; may race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_with_pytriton(
    repository: str | os.PathLike,
    models: Sequence[str] | None = None,
    *,
    python: str | None = None,
    startup_timeout_s: float = 120.0,
    log_path: str | os.PathLike | None = None,
    threads: int = 2,
) -> Iterator[TritonServer]:
    """Serve a repository's ONNX models with the Triton server bundled in nvidia-pytriton.

    Each model's ``1/model.onnx`` runs in an ONNX Runtime session wrapped as a Python
    callable, bound under the model's name with the inputs, outputs (names, dims,
    ``reshape``), ``max_batch_size`` and dynamic batching of its ``config.pbtxt``.
    TensorRT models (``tensorrt_plan``) are skipped: pytriton serves Python callables.

    Args:
        repository: a model repository (e.g. from :func:`export_triton`).
        models: which models to serve (default: every ``onnxruntime_onnx`` model).
        python: interpreter with pytriton (default :func:`find_triton_python`).
        startup_timeout_s: how long to wait for the server to report ready.
        log_path: where the server's log goes (default: a temp file).
        threads: ONNX Runtime intra-op threads of each model's session.

    Yields:
        TritonServer with the HTTP and gRPC endpoints on 127.0.0.1.

    Raises:
        TritonUnavailableError: no pytriton, or the server did not become ready (the
            message holds the log's last lines).
    """
    repo = Path(repository).absolute()
    if not repo.is_dir():
        raise ExportError(f"model repository {repo} does not exist")
    if int(threads) < 1:
        raise ExportError(f"threads must be >= 1 (ONNX Runtime intra-op threads), got {threads}")
    if models is None:
        models = []
        for cfg_path in sorted(repo.glob(f"*/{CONFIG_NAME}")):
            if 'platform: "onnxruntime_onnx"' in cfg_path.read_text():
                models.append(cfg_path.parent.name)
    if not models:
        raise ExportError(f"{repo} holds no onnxruntime_onnx model to serve")
    py = python or find_triton_python()
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    workdir = Path(tempfile.mkdtemp(prefix="anystep-pytriton-"))
    ready = workdir / "ready.json"
    log = Path(log_path) if log_path else workdir / "server.log"
    cmd = [
        py,
        str(WORKER),
        "--repository",
        str(repo),
        "--ready-file",
        str(ready),
        "--workspace",
        str(workdir / "workspace"),
        "--http-port",
        str(ports["http"]),
        "--grpc-port",
        str(ports["grpc"]),
        "--metrics-port",
        str(ports["metrics"]),
        "--threads",
        str(int(threads)),
    ]
    for m in models:
        cmd += ["--model", m]
    logf = open(log, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=_worker_env(),
        start_new_session=True,  # its own process group: tritonserver and stubs go with it
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise TritonUnavailableError(
                    f"pytriton exited with code {proc.returncode}: {_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise TritonUnavailableError(
                    f"pytriton did not become ready in {startup_timeout_s:.0f} s: {_tail(log)}"
                )
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        yield TritonServer(
            http_url=info["http"],
            grpc_url=info["grpc"],
            metrics_url=info["metrics"],
            models=list(models),
            log_path=log,
            python=py,
            process=proc,
        )
    finally:
        _stop(proc)
        logf.close()
        if log_path is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(workdir / "workspace", ignore_errors=True)


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ask the worker to stop (close its stdin), then terminate, then kill."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()  # type: ignore[union-attr]
    try:
        proc.wait(timeout=timeout_s)
        return
    except subprocess.TimeoutExpired:
        pass
    import signal

    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group this module started (start_new_session)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) if lines else "(empty log)"
