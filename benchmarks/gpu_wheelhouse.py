"""Build the wheelhouse that travels to the GPU machine with the repository.

The GPU machine has Python 3.12, torch 2.11 + CUDA, onnx, CPU onnxruntime, numpy,
scipy, safetensors, click, httpx, pytest and scikit-learn, no internet, and takes at
most 64 MiB of files per run. This script (run here, where a package index is
reachable) puts into one folder, by ``pip download --no-deps`` of the versions
installed in this environment (the ones CI tests):

* the serving stack the image lacks: fastapi, starlette, pydantic (+ pydantic-core,
  annotated-types, typing-inspection, typing-extensions, annotated-doc), uvicorn,
  prometheus-client;
* small anystep dependencies that may be missing there: tqdm, pillow;
* the dynamo ONNX exporter's pure-Python parts: onnxscript, onnx-ir, ml-dtypes
  (without them the export falls back to the torchscript exporter);
* the anystep wheel itself, built from this tree (``pip wheel --no-deps``), so torch is
  never pulled: the device keeps its own torch 2.11.

Binary wheels are fetched for CPython 3.12 on manylinux x86-64 (``--platform`` to
change). ``benchmarks/gpu_check.py --wheelhouse DIR`` unpacks them into a private
folder on ``sys.path`` (no pip needed there, nothing installed system-wide). The
total size is checked against the 64 MiB limit.

Usage::

    .venv/bin/python -m anystep.benchmarks.gpu_wheelhouse --out .gpu-wheelhouse
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["LIMIT_BYTES", "WHEELS", "build_wheelhouse", "main", "wheel_requirements"]

WHEELS = (
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "typing-extensions", "annotated-doc", "uvicorn", "prometheus-client",
    "tqdm", "pillow",
    "onnxscript", "onnx-ir", "ml-dtypes",
)
"""Distributions the device image lacks (installed there without their dependencies)."""

LIMIT_BYTES = 64 * 2**20
"""What one device run may carry (wheels and the repository's untracked files together)."""


def wheel_requirements(names: Sequence[str] = WHEELS) -> list[str]:
    """``name==version`` for each distribution installed here, bare ``name`` otherwise."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def build_wheelhouse(
    out: Path,
    *,
    repo: Path,
    python_version: str = "3.12",
    platforms: Sequence[str] = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"),
    limit_bytes: int = LIMIT_BYTES,
) -> list[Path]:
    """Download the wheels and build anystep's into ``out``; return the wheel paths.

    Raises:
        RuntimeError: pip failed, or the folder exceeds ``limit_bytes``.
    """
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("anystep-*.whl"):
        old.unlink()  # always the tree as it is now
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "none",
           "--abi", "abi3", "-d", str(out)]
    for p in platforms:
        cmd += ["--platform", p]
    cmd += ["--platform", "any"]
    for cmd_run in (cmd + wheel_requirements(),
                    [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                     "-w", str(out), str(repo)]):
        res = subprocess.run(cmd_run, check=False, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd_run[:4])} failed:\n{res.stderr[-2000:]}")
    wheels = sorted(out.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    if total > limit_bytes:
        raise RuntimeError(f"the wheelhouse holds {total / 2**20:.1f} MiB, over the {limit_bytes / 2**20:.0f} MiB limit")
    return wheels


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anystep.benchmarks.gpu_wheelhouse", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".gpu-wheelhouse"), help="wheel folder (default .gpu-wheelhouse)")
    p.add_argument("--python-version", default="3.12", help="the device's Python (default 3.12)")
    p.add_argument("--platform", action="append", default=None,
                   help="pip --platform tags (repeatable; default manylinux x86-64)")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    kwargs = {"platforms": tuple(args.platform)} if args.platform else {}
    try:
        wheels = build_wheelhouse(args.out, repo=repo, python_version=args.python_version, **kwargs)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
