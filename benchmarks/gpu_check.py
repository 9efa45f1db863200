"""The GPU check: CUDA training, per-step engine latency, serving and ONNX parity on one GPU.

One prepared run that measures the GPU path of anystep on the device machine (one
NVIDIA H200, Python 3.12, torch 2.11 + CUDA, no internet, at most 64 MiB carried, about
8 minutes) and writes ``gpu.json`` / ``gpu.md``:

1. **train**: the CIFAR-10 Table-4 U-Net (256 channels, ``[1, 2, 2, 2]``, batch 256) as
   velocity teacher and as LMD flow map (eq. 3.7) on synthetic 32x32 images, each in fp32
   and bf16 (and bf16 + channels_last), a few hundred steps in all; images/s from
   ``train_log.jsonl`` (median over log intervals after the first);
2. **step**: one flow-map step ``X_{s,t}`` of the digits U-Net (bundled ``models/digits``)
   and the CIFAR-size U-Net at batch 1/16/256 for torch eager, ``torch.compile`` and
   the CUDA-graph engine (:mod:`anystep.server.engine_cudagraph`): medians of
   interleaved rounds, each call timed with CUDA events, numpy in and out as the server
   calls it; plus ``|graph - eager|``;
3. **serve**: ``anystep serve`` on the GPU (CUDA-graph engine), p50 of ``POST /generate``
   at steps 1/4 and n 1/64 for both flow maps, and dopri5 on their teachers on the same
   GPU; the bare engine call next to ``steps=1, n=1``;
4. **onnx**: the GPU-trained models exported to ONNX (:func:`anystep.export.onnx_export.export_onnx`,
   with its own parity check) and run on CPU ONNX Runtime against the model on the GPU
   (TF32 off);
5. **compile**: ``torch.compile`` (default mode, dynamic batch) timed beside eager and the
   CUDA-graph engine, last, because compiling a U-Net takes minutes; a model or batch size
   is skipped, and said so, when under ``compile_guard_s`` (45 s) of the allowance is left.

Every section records its error instead of stopping the run, and the files are
rewritten after each section, so a run cut short still reports what it measured.
``--budget-s`` (default 450) bounds the whole check; sections shorten their step and
request counts to fit and say so.

``--dry-run`` runs the same code on the CPU with tiny models in seconds (the test
suite does); its files say DRY RUN and are not GPU numbers.

How to run it on the device machine (from a checkout of the repository):

1. here, where a package index is reachable, build the wheelhouse (serving stack,
   onnxscript, the anystep wheel; about 16 MiB, checked against 64 MiB)::

       make gpu-wheelhouse        # = .venv/bin/python -m anystep.benchmarks.gpu_wheelhouse --out .gpu-wheelhouse

2. on the device, in the repository root, with ``.gpu-wheelhouse`` carried next to the
   tree (the device tool's ``carry: [".gpu-wheelhouse"]``; the tree plus the wheels must
   stay under 64 MiB), give the command a 590 s timeout::

       python3 benchmarks/gpu_check.py --wheelhouse .gpu-wheelhouse --out "$OUT" --budget-s 450

   (``make gpu-check GPU_OUT="$OUT"`` runs the same). The wheels are unpacked into a
   private folder on ``sys.path`` (no pip, nothing installed, the device's torch 2.11
   stays), ``$OUT/gpu.{json,md}`` come back; copy them to ``benchmarks/results/``.
   With the project's device tool that is one call: ``command`` as above, ``carry:
   [".gpu-wheelhouse"]``, ``timeout_s: 590``; the check itself stops new work at 450 s,
   and the files are rewritten after every section, so even a cut-off run reports. A
   shorter rerun: ``--sections step,serve`` (about 2 minutes).

The wheelhouse must be rebuilt after code changes: it holds the anystep wheel of the
tree as it was (``gpu.json`` records ``anystep_from``: ``wheelhouse`` or ``environment``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

NAME = "gpu"
SECTIONS = ("train", "step", "serve", "onnx", "compile")
ENGINE_KEYS = ("eager", "compile", "cudagraph")
SHARES = {"train": 0.36, "step": 0.14, "serve": 0.14, "onnx": 0.12, "compile": 0.24}
"""Share of the budget each section may use (what one leaves goes to the next)."""


def bootstrap(wheelhouse: Path, site: Path) -> Path:
    """Unpack every wheel of ``wheelhouse`` into ``site`` and put it first on the path.

    Wheels are zip files, so no pip is needed; ``PYTHONPATH`` is set too, so the server
    subprocess sees the same packages.
    """
    wheels = sorted(Path(wheelhouse).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: no wheels in {wheelhouse}; build them with `make gpu-wheelhouse`")
    site.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(site)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return site


@dataclass
class Settings:
    """What the check runs (defaults: the device run; :meth:`dry` the CPU rehearsal)."""

    device: str = "cuda"
    dry_run: bool = False
    budget_s: float = 450.0
    sections: tuple[str, ...] = SECTIONS
    engines: tuple[str, ...] = ENGINE_KEYS
    train_steps: int = 120
    min_train_steps: int = 30
    train_batch: int = 256
    train_channels: int | None = None  # None: Table 4's 256
    train_runs: tuple[tuple[str, str, bool], ...] = (
        ("velocity", "fp32", False), ("velocity", "bf16", False), ("velocity", "bf16", True),
        ("lmd", "fp32", False), ("lmd", "bf16", False),
    )
    log_every: int = 10
    batches: tuple[int, ...] = (1, 16, 256)
    rounds: int = 15
    calls_per_round: int = 10
    serve_steps: tuple[int, ...] = (1, 4)
    serve_n: tuple[int, ...] = (1, 64)
    serve_requests: int = 30
    serve_max_batch: int = 256
    dopri5_requests: int = 10
    onnx_batches: tuple[int, ...] = (1, 4)
    compile_guard_s: float = 45.0
    strict: bool = False

    @classmethod
    def dry(cls, **kw: Any) -> Settings:
        base = cls(device="cpu", dry_run=True, budget_s=300.0, train_steps=3, min_train_steps=2, train_batch=4,
                   train_channels=8, log_every=1, batches=(1, 3), rounds=2, calls_per_round=2, serve_n=(1, 2),
                   serve_max_batch=4, serve_requests=2, dopri5_requests=1, onnx_batches=(1, 2), compile_guard_s=0.0,
                   train_runs=(("velocity", "fp32", False), ("velocity", "bf16", True), ("lmd", "bf16", False)))
        return replace(base, **kw)


class Budget:
    """Wall-clock budget of the check, shared out between sections."""

    def __init__(self, total_s: float) -> None:
        self.total_s = float(total_s)
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.t0)

    def share(self, section: str, todo: Sequence[str]) -> float:
        """Seconds for ``section``: its share of what is left among the sections to do."""
        weights = sum(SHARES[s] for s in todo) or 1.0
        return max(0.0, self.left() * SHARES[section] / weights)


def _log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def _versions() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn", "pydantic"):
        try:  # metadata only: importing onnxscript/fastapi just for a version costs seconds
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def torch_support(pyproject: Path, torch_version: str) -> dict[str, Any]:
    """Whether ``torch_version`` lies in pyproject's ``[tool.anystep] supported-torch`` range.

    The range is a comma list of ``>=X.Y`` / ``<X.Y`` bounds (what the pyproject uses).
    """
    try:
        import tomllib

        spec = tomllib.loads(pyproject.read_text())["tool"]["anystep"]["supported-torch"]
    except (ImportError, OSError, KeyError, ValueError):
        return {"range": None, "torch": torch_version, "inside": None}

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2])

    have, inside = key(torch_version), True
    for bound in spec.split(","):
        bound = bound.strip()
        if bound.startswith(">="):
            inside &= have >= key(bound[2:])
        elif bound.startswith("<"):
            inside &= have < key(bound[1:])
    return {"range": spec, "torch": torch_version, "inside": bool(inside)}


def _scrub(text: str, paths: dict[str, Path | str]) -> str:
    """``text`` with this machine's folders replaced by placeholders (results hold no paths)."""
    for tag, path in sorted(paths.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(path), tag)
    return text


def run(s: Settings, *, out_dir: Path, work: Path, models_dir: Path, command: str,
        strict: bool = False) -> dict[str, Any]:
    """Run the selected sections; rewrite ``out_dir/gpu.{json,md}`` after each one."""
    budget = Budget(s.budget_s)
    # a private compile cache: a stale or half-written shared one (another process, a killed
    # run) must not fail torch.compile here
    old_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((work / "inductor-cache").resolve()))
    try:
        return _run_sections(s, budget, out_dir=out_dir, work=work, models_dir=models_dir, command=command,
                             strict=strict)
    finally:
        if old_cache is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def _run_sections(s: Settings, budget: Budget, *, out_dir: Path, work: Path, models_dir: Path, command: str,
                  strict: bool) -> dict[str, Any]:
    import torch

    from anystep.benchmarks import gpu_sections as sections
    from anystep.benchmarks.common import machine_info, write_results
    from anystep.benchmarks.gpu_report import evaluate_goals, render_markdown

    data: dict[str, Any] = {"name": NAME, "dry_run": s.dry_run, "command": command, "settings": asdict(s),
                            "machine": asdict(machine_info()), "versions": _versions(),
                            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                                     "matmul": torch.backends.cuda.matmul.allow_tf32},
                            "torch_support": torch_support(Path("pyproject.toml"), torch.__version__),
                            "sections": {}, "seconds": {}}
    import anystep

    site = os.environ.get("ANYSTEP_GPU_SITE")
    data["anystep_from"] = "wheelhouse" if site and anystep.__file__.startswith(site) else "environment"
    folders = {"<work>": work.resolve(), "<repo>": Path.cwd(), "<site>": os.environ.get("ANYSTEP_GPU_SITE", "\0")}
    flow: dict[str, Path] = {}
    teach: dict[str, Path] = {}
    for name, kind in (("digits", "flow"), ("digits-teacher", "teach")):
        if (models_dir / name / "config.json").is_file():
            (flow if kind == "flow" else teach)["digits"] = models_dir / name
    todo = [x for x in SECTIONS if x in s.sections]
    for i, section in enumerate(todo):
        seconds = budget.share(section, todo[i:])
        _log(f"section {section}: {seconds:.0f} s of {budget.left():.0f} s left")
        t0 = time.perf_counter()
        try:
            if section == "train":
                result = sections.train_section(s, work / "train", seconds)
                trained = result.pop("_model_dirs")
                if "lmd" in trained:
                    flow["cifar"] = Path(trained["lmd"])
                if "velocity" in trained:
                    teach["cifar"] = Path(trained["velocity"])
            elif section == "step":
                if "cifar" not in flow:
                    flow["cifar"] = sections.fresh_flowmap(s, work)
                result = sections.step_section(s, flow, seconds, [k for k in s.engines if k != "compile"])
            elif section == "serve":
                result = sections.serve_section(s, flow, teach, seconds)
            elif section == "compile":
                if "compile" not in s.engines:
                    result = {"skipped": "--engines has no compile"}
                else:  # last: compilation takes minutes; eager and cudagraph re-timed beside it
                    result = sections.step_section(s, flow, seconds, list(s.engines))
            else:
                both = {**flow, **{f"{k}-teacher": v for k, v in teach.items()}}
                both = dict(sorted(both.items(), key=lambda kv: not kv[0].startswith("cifar")))  # GPU-trained first
                result = sections.onnx_section(s, both, work, seconds)
        except Exception as e:
            if strict or s.strict:
                raise
            result = {"error": _scrub(f"{type(e).__name__}: {e}", folders),
                      "traceback": _scrub(traceback.format_exc()[-3000:], folders)}
            _log(f"section {section} failed: {result['error']}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        data["sections"][section] = result
        data["seconds"][section] = time.perf_counter() - t0
        data["goals"] = evaluate_goals(data)
        write_results(out_dir, NAME, data, render_markdown(data))
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for the exact device command.")
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (seconds; not GPU numbers)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results; dry run: runs/gpu-dry-run)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for runs and exports (default: a temp dir)")
    p.add_argument("--wheelhouse", type=Path, default=None, help="unpack these wheels first (the device run)")
    p.add_argument("--models-dir", type=Path, default=None, help="bundled models (default ./models)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the check (default 450)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--engines", default=",".join(ENGINE_KEYS), help=f"comma list of {','.join(ENGINE_KEYS)}")
    p.add_argument("--train-steps", type=int, default=None, help="most steps per training run")
    p.add_argument("--train-runs", default=None,
                   help="comma list of OBJECTIVE:PRECISION[:cl], e.g. velocity:fp32,lmd:bf16 (default: "
                        "velocity fp32/bf16/bf16+channels_last, lmd fp32/bf16)")
    p.add_argument("--device", default=None, help="torch device (default cuda; dry run cpu)")
    p.add_argument("--strict", action="store_true", help="stop at the first failing section (tests)")
    return p


def _names(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in allowed]
    if bad or not names:
        raise SystemExit(f"error: {flag} {text!r}: choose from {','.join(allowed)}")
    return names


def parse_train_runs(text: str) -> tuple[tuple[str, str, bool], ...]:
    """``"velocity:fp32,lmd:bf16:cl"`` -> ``(("velocity", "fp32", False), ("lmd", "bf16", True))``."""
    runs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        parts = item.split(":")
        ok = len(parts) in (2, 3) and parts[0] in ("velocity", "lmd") and parts[1] in ("fp32", "bf16", "fp16")
        if not ok or (len(parts) == 3 and parts[2] != "cl"):
            raise SystemExit(f"error: --train-runs item {item!r}: use velocity|lmd:fp32|bf16|fp16[:cl]")
        runs.append((parts[0], parts[1], len(parts) == 3))
    if not runs:
        raise SystemExit("error: --train-runs is empty")
    return tuple(runs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tempfile

    if args.wheelhouse is not None:
        site = bootstrap(args.wheelhouse, Path(tempfile.mkdtemp(prefix="anystep-site-")))
        os.environ["ANYSTEP_GPU_SITE"] = str(site)
    kw: dict[str, Any] = {"sections": _names(args.sections, SECTIONS, "--sections"),
                          "engines": _names(args.engines, ENGINE_KEYS, "--engines")}
    for key, val in (("budget_s", args.budget_s), ("train_steps", args.train_steps), ("device", args.device)):
        if val is not None:
            kw[key] = val
    if args.train_runs is not None:
        kw["train_runs"] = parse_train_runs(args.train_runs)
    kw["strict"] = bool(args.strict)
    s = Settings.dry(**kw) if args.dry_run else Settings(**kw)
    try:
        import torch
    except ImportError:
        print(f"error: torch is not importable by {sys.executable}; run the check with the Python that has "
              "torch (on the device: the preinstalled python3)", file=sys.stderr)
        return 2

    if s.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    if s.dry_run:
        torch.set_num_threads(1)
    out = args.out or Path("runs/gpu-dry-run" if s.dry_run else "benchmarks/results")
    models_dir = args.models_dir or Path("models")
    raw = list(sys.argv[1:] if argv is None else argv)
    for flag in ("--out", "--work", "--wheelhouse", "--models-dir"):  # no machine paths in results
        if flag in raw[:-1] and Path(raw[raw.index(flag) + 1]).is_absolute():
            raw[raw.index(flag) + 1] = f"<{flag[2:]}>"
    command = " ".join(["python3", "benchmarks/gpu_check.py", *(shlex.quote(a) for a in raw)])
    with tempfile.TemporaryDirectory(prefix="anystep-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        data = run(s, out_dir=out, work=work, models_dir=models_dir, strict=args.strict, command=command)
    failed = [k for k, v in data["sections"].items() if isinstance(v, dict) and "error" in v]
    _log(f"wrote {out}/{NAME}.json and .md; " + (f"failed sections: {failed}" if failed else "all sections ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
