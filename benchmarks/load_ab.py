"""Two server revisions side by side in one run: a baseline commit against this checkout.

On a shared machine the load changes between two runs by more than most serving changes,
so a before/after is only credible when both servers run at the same time, interleaved.
This starts ``anystep serve`` twice -- the ``--baseline`` commit (a ``git worktree`` of it,
imported through a package overlay instead of this checkout's editable install) and this
checkout -- with the same models and options, and sends sequential requests in rounds,
the cases (server x {empty ``GET /healthz``, ``steps=K`` for each K}) in a random order per
round, a block of requests each. Per server: client-side medians and the server's own
``X-Anystep-Time-Ms - X-Anystep-Compute-Ms`` (the time outside the engine calls, no HTTP),
and the per-step slopes between the smallest and the largest K::

    python -m anystep.benchmarks.load_ab --baseline 6c25c90
    python -m anystep.benchmarks.load_ab --baseline HEAD~3 --steps 1,4,16 --rounds 60
    python -m anystep.benchmarks.load_ab --baseline 6c25c90 --dopri5 3   # + a dopri5 solve in flight

Results: ``benchmarks/results/load_ab.{json,md}``; the worktree stays in ``runs/load_ab`` for
the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.common import (
    OUT_HELP,
    REPO_ROOT,
    existing_notes,
    git_revision,
    int_list,
    load_average,
    machine_info,
    markdown_table,
    notes_section,
    run_cli,
    versions,
    write_results,
)
from anystep.benchmarks.loadgen import LoadBenchError, LoopbackClient
from anystep.server.registry import models_dir as bundled_models_dir

MODULE = "anystep.benchmarks.load_ab"

LAUNCHER = '''"""Run the anystep CLI of the package overlay {overlay!r} (written by anystep.benchmarks.load_ab)."""
import sys

# this checkout's editable install would resolve anystep.* first: drop its finder, import the overlay
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path.insert(0, {overlay!r})
for name in [k for k in sys.modules if k == "anystep" or k.startswith("anystep.")]:
    del sys.modules[name]
from anystep.cli import main

sys.argv[0] = "anystep"
main()
'''


@dataclass
class AbSettings:
    """Everything that determines a run (written to the results JSON).

    Attributes:
        baseline: the commit (any git revision) served as "before".
        model: flow-map name served by both (its ``<model>-teacher`` too when present).
        models_dir: folder of model directories.
        steps: step counts K timed (n = 1).
        engine: ``--engine`` of both servers.
        rounds: interleaved rounds.
        block: requests per case and round.
        dopri5_runs: alternating runs per server of the overhead benchmark's dopri5 interference phase
            (steps=1 p50 to the map with and without a dopri5 solve of ``<model>-teacher`` in flight); 0: none.
        seed: order of the cases.
    """

    baseline: str = "HEAD"
    model: str = "checkerboard"
    models_dir: Path = REPO_ROOT / "models"
    steps: tuple[int, ...] = (1, 16)
    engine: str = "onnx"
    rounds: int = 40
    block: int = 15
    dopri5_runs: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 1 or max(self.steps) > 64:
            raise LoadBenchError(f"--steps must be integers in 1..64, got {self.steps}")
        if self.rounds < 1 or self.block < 1:
            raise LoadBenchError("--rounds and --block must be >= 1")
        if self.dopri5_runs < 0:
            raise LoadBenchError("--dopri5 must be >= 0")
        if self.engine not in ("torch", "onnx", "auto"):
            raise LoadBenchError(f"--engine must be torch, onnx or auto, got {self.engine!r}")


def baseline_overlay(repo: Path, rev: str, work_dir: Path) -> tuple[str, Path]:
    """A worktree of ``rev`` and the package overlay and launcher that import it.

    The overlay maps the baseline's ``[tool.setuptools] package-dir`` (``anystep.server`` ->
    ``server/``, ...) with symbolic links, the way the editable install maps this checkout.

    Returns:
        ``(full commit hash, launcher script path)``.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise LoadBenchError("load_ab reads the baseline's pyproject.toml with tomllib: run it on Python >= 3.11") from None
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                             capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        raise LoadBenchError(f"--baseline {rev!r} is not a commit of {repo}; give a hash, tag or HEAD~N") from None
    tree = work_dir / f"baseline-{sha[:12]}"
    if not (tree / "pyproject.toml").is_file():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(tree), sha], check=True,
                       capture_output=True, text=True)
    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-dir", {})
    overlay = work_dir / f"overlay-{sha[:12]}"
    pkg = overlay / "anystep"
    if not pkg.is_dir():
        tmp = work_dir / f".overlay-{sha[:12]}.tmp-{os.getpid()}"
        (tmp / "anystep").mkdir(parents=True)
        root = tree / mapping.get("anystep", "anystep")
        for entry in root.iterdir():
            (tmp / "anystep" / entry.name).symlink_to(entry)
        for name, folder in mapping.items():
            if name.startswith("anystep.") and name.count(".") == 1:
                link = tmp / "anystep" / name.split(".", 1)[1]
                if not link.exists():
                    link.symlink_to(tree / folder)
        os.replace(tmp, overlay)
    launcher = work_dir / f"launch-{sha[:12]}.py"
    launcher.write_text(LAUNCHER.format(overlay=str(overlay)))
    return sha, launcher


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadBenchError(f"a server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise LoadBenchError("a server was not ready in time")


async def interleaved(ports: dict[str, int], settings: AbSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Sequential requests of every (server, case), a block per case in a random order per round."""
    clients = {n: LoopbackClient(p) for n, p in ports.items()}
    cases = [(n, k) for n in ports for k in ("empty", *settings.steps)]
    rec: dict[tuple[str, Any], list[tuple[float, float]]] = {c: [] for c in cases}

    async def one(name: str, k: Any, seed: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        if k == "empty":
            status, _, _ = await clients[name].request("GET", "/healthz")
            outside = float("nan")
        else:
            body = json.dumps({"model": settings.model, "steps": k, "n": 1, "seed": seed}).encode()
            status, h, _ = await clients[name].request("POST", "/generate", body)
            outside = float(h.get("x-anystep-time-ms", "nan")) - float(h.get("x-anystep-compute-ms", "nan"))
        if status != 200:
            raise LoadBenchError(f"{name} answered {status} for {k}")
        return time.perf_counter() - t0, outside

    try:
        for c in cases:  # warm-up
            for i in range(5):
                await one(*c, i)
        rng = random.Random(settings.seed)
        for r in range(settings.rounds):
            rng.shuffle(cases)
            for c in cases:
                for i in range(settings.block):
                    rec[c].append(await one(*c, 1000 * r + i))
            if r % max(1, settings.rounds // 4) == 0:
                log(f"  round {r + 1}/{settings.rounds}")
    finally:
        for c in clients.values():
            await c.close()
    return summarize_ab(rec, settings.steps)


def summarize_ab(rec: dict[tuple[str, Any], list[tuple[float, float]]], steps: Sequence[int]) -> dict[str, Any]:
    """Per server: client p50 (ms) of every case, server-side outside-engine p50 (ms) of every K, and the
    per-step slopes (us) between the smallest and the largest K (client side and server side)."""
    out: dict[str, Any] = {}
    lo, hi = min(steps), max(steps)
    for name in dict.fromkeys(n for n, _ in rec):
        row: dict[str, Any] = {"client_ms": {}, "server_outside_ms": {}, "requests": 0}
        for (n, k), v in rec.items():
            if n != name:
                continue
            row["requests"] += len(v)
            row["client_ms"][str(k)] = 1000.0 * float(np.median([a for a, _ in v]))
            if k != "empty":
                row["server_outside_ms"][str(k)] = float(np.median([b for _, b in v]))
        if hi > lo:
            row["client_per_step_us"] = 1000.0 * (row["client_ms"][str(hi)] - row["client_ms"][str(lo)]) / (hi - lo)
            row["server_per_step_us"] = (1000.0 * (row["server_outside_ms"][str(hi)] - row["server_outside_ms"][str(lo)])
                                         / (hi - lo))
        out[name] = row
    return out


def run(settings: AbSettings, *, out_dir: Path, work_dir: Path, command: str,
        log: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Start the baseline and this checkout's server, time them interleaved, write ``load_ab.{json,md}``."""
    from anystep.server.testing import free_port

    mdir = Path(settings.models_dir)
    if not (mdir / settings.model / "config.json").is_file():
        raise LoadBenchError(f"no model directory {mdir / settings.model}; pass --models-dir/--model")
    work_dir.mkdir(parents=True, exist_ok=True)
    sha, launcher = baseline_overlay(REPO_ROOT, settings.baseline, work_dir)
    models = ["--model", f"{settings.model}={mdir / settings.model}"]
    if (mdir / f"{settings.model}-teacher" / "config.json").is_file():
        models += ["--model", f"{settings.model}-teacher={mdir / settings.model}-teacher"]
    args = ["--engine", settings.engine, "--threads", "1", "--max-queue", "256", "--log-level", "warning",
            "--cache-dir", str(work_dir / "serve-cache")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmds = {"before": [sys.executable, str(launcher)], "after": [sys.executable, "-m", "anystep.cli"]}
    load_start = load_average()
    t0 = time.perf_counter()
    procs: dict[str, subprocess.Popen] = {}
    ports: dict[str, int] = {}
    try:
        for name, cmd in cmds.items():
            ports[name] = free_port()
            with open(work_dir / f"serve-{name}.log", "wb") as f:
                procs[name] = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(ports[name]),
                                                *models, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        for name in cmds:
            _wait_ready(ports[name], procs[name])
        log(f"[ab] before = {sha[:12]}, after = this checkout ({git_revision(REPO_ROOT)}): {settings.rounds} rounds")
        servers = asyncio.run(interleaved(ports, settings, log))
        if settings.dopri5_runs:
            if not any(m.endswith("-teacher") for m in models):
                raise LoadBenchError(f"--dopri5 needs {settings.model}-teacher in {mdir}")
            from anystep.benchmarks.load_overhead import dopri5_interference

            log(f"[ab] dopri5 interference: {settings.dopri5_runs} alternating runs per server")
            for _ in range(settings.dopri5_runs):
                for name, port in ports.items():
                    d = asyncio.run(dopri5_interference(port, settings.model, f"{settings.model}-teacher", 100,
                                                        LoopbackClient))
                    servers[name].setdefault("dopri5", []).append(d)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    machine = machine_info()
    data = {"benchmark": "load_ab", "command": command, "baseline_commit": sha, "git_revision": git_revision(REPO_ROOT),
            "machine": machine, "machine_description": machine.describe(), "load_average_start": load_start,
            "load_average": load_average(), "duration_s": time.perf_counter() - t0,
            "versions": versions(("numpy", "onnxruntime", "fastapi", "uvicorn")),
            "settings": {**asdict(settings), "models_dir": str(Path(settings.models_dir).name)}, "servers": servers}
    if write:
        md = out_dir / "load_ab.md"
        paths = write_results(out_dir, "load_ab", data, render_markdown(data, existing_notes(md)))
        log(f"[done] {paths.json}, {paths.markdown}")
    return data


def render_markdown(data: dict[str, Any], notes: str | None = None) -> str:
    """The side-by-side table of both servers."""
    s = data["settings"]
    ks = [str(k) for k in s["steps"]]
    head = ["server", "requests", "empty round trip ms", *(f"steps={k} ms" for k in ks),
            *(f"outside engine, steps={k} ms (server)" for k in ks)]
    rows = []
    for name, r in data["servers"].items():
        label = f"{name} ({data['baseline_commit'][:12]})" if name == "before" else f"{name} ({data['git_revision']})"
        rows.append([label, r["requests"], r["client_ms"]["empty"], *(r["client_ms"][k] for k in ks),
                     *(r["server_outside_ms"][k] for k in ks)])
    lines = [
        "# Two server revisions side by side", "",
        f"- Command: `{data['command']}`",
        f"- Machine: {data['machine_description']}",
        f"- Load average (1/5/15 min) at the start {data['load_average_start']}, at the end {data['load_average']}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v),
        (f"- Both servers at once: `anystep serve --engine {s['engine']} --threads 1` with `{s['model']}`, n = 1, "
         f"sequential requests on one keep-alive connection per server; {s['rounds']} rounds, each case (server x "
         f"empty route / steps) as a block of {s['block']} requests in a random order per round. Medians."), "",
        markdown_table(head, rows), "",
    ]
    if len(ks) > 1:
        lines += ["| server | per step, client side (us) | per step outside the engine, server side (us) |",
                  "|---|---:|---:|"]
        for name, r in data["servers"].items():
            lines.append(f"| {name} | {r['client_per_step_us']:.1f} | {r['server_per_step_us']:.1f} |")
        lines.append("")
    if any("dopri5" in r for r in data["servers"].values()):
        lines += [("steps=1 p50 to the map alone / with a dopri5 solve of the teacher in flight (the overhead "
                  "benchmark's phase, alternating runs):"), "",
                  "| server | alone ms | with dopri5 ms | increase |", "|---|---|---|---|"]
        for name, r in data["servers"].items():
            for d in r.get("dopri5", []):
                lines.append(f"| {name} | {d['alone_p50_ms']:.3f} | {d['with_dopri5_p50_ms']:.3f} | {d['increase']:+.0%} |")
        lines.append("")
    lines += notes_section(notes)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m anystep.benchmarks.load_ab``."""
    d = AbSettings()
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=("A baseline commit's server and this checkout's, side by side in one run (interleaved "
                     "sequential requests): client latency and the server's own time outside the engine. "
                     "Writes load_ab.{json,md}."),
        epilog="Run under `nice -n -5` on a shared machine and read the load average in the report.",
    )
    p.add_argument("--baseline", required=True, help="the commit served as 'before' (hash, tag, HEAD~N)")
    p.add_argument("--model", default=None, help=f"flow-map name (default {d.model})")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of model directories (default $ANYSTEP_MODELS_DIR or <repo>/models)")
    p.add_argument("--steps", type=int_list, default=None, help="step counts timed (default 1,16)")
    p.add_argument("--engine", default=None, choices=("torch", "onnx", "auto"), help=f"default {d.engine}")
    p.add_argument("--rounds", type=int, default=None, help=f"interleaved rounds (default {d.rounds})")
    p.add_argument("--block", type=int, default=None, help=f"requests per case and round (default {d.block})")
    p.add_argument("--dopri5", type=int, default=None, dest="dopri5_runs",
                   help="alternating runs per server of the dopri5-in-flight phase (default 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--work-dir", type=Path, default=None, help="baseline worktree, logs (default runs/load_ab)")
    return p


def settings_from_args(args: argparse.Namespace) -> AbSettings:
    """Explicit options into :class:`AbSettings`."""
    kw: dict[str, Any] = {}
    for name in ("model", "steps", "engine", "rounds", "block", "dopri5_runs"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    kw["models_dir"] = args.models_dir if args.models_dir is not None else bundled_models_dir()
    return AbSettings(baseline=args.baseline, seed=args.seed, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m anystep.benchmarks.load_ab``); returns the exit status."""
    return run_cli(argv, parser=build_parser(), settings_from_args=settings_from_args, run=run, module=MODULE,
                   work_dir=REPO_ROOT / "runs" / "load_ab", settings_errors=(LoadBenchError,))


if __name__ == "__main__":
    sys.exit(main())
