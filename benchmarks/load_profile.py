"""Where a served request's CPU time goes: py-spy on the ``anystep serve`` process.

Used by :mod:`anystep.benchmarks.load` (``--profile``): :class:`PySpy` records collapsed
stacks at 200 Hz while a block of work runs, :func:`categorize_stacks` assigns each
sampled stack to the first serving layer it touches (:data:`PROFILE_CATEGORIES`).
Skipped, with the reason, when py-spy is missing or not permitted.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

from anystep.benchmarks.loadgen import LoopbackClient, generate_body

__all__ = ["PROFILE_CATEGORIES", "PySpy", "categorize_stacks", "profile_sequential", "py_spy_path"]

PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine call (torch / ONNX Runtime compute)", ("server/engines.py",)),
    ("scheduler (batch assembly, per-sample bookkeeping)", ("server/scheduler.py",)),
    ("base noise (registry.base_samples)", ("server/registry.py",)),
    ("metrics (prometheus_client)", ("server/metrics.py", "prometheus_client/")),
    ("request handler (parse, validate, encode response)", ("server/app.py", "server/schemas.py", "pydantic")),
    ("FastAPI / Starlette framework", ("fastapi/", "starlette/")),
    ("uvicorn HTTP protocol", ("uvicorn/", "h11/", "httptools")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)
"""Ordered rules assigning a sampled stack to the first category one of whose patterns it contains."""


def py_spy_path() -> str | None:
    """The ``py-spy`` executable (beside this Python, or on PATH), or None."""
    import shutil

    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.is_file() else shutil.which("py-spy")


def categorize_stacks(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Summarise py-spy ``--format raw`` (collapsed stacks) output.

    Args:
        collapsed: lines ``frame;frame;...;leaf count`` (root first).
        top: leaf functions kept.

    Returns:
        ``{"samples": total, "categories": {name: share}, "top_self": [{"frame", "share"}]}``;
        shares are fractions of the samples (py-spy samples only non-idle threads by default).
    """
    total = 0
    cats: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, cnt = line.rstrip().rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        c = int(cnt)
        total += c
        name = "other"
        for cat, pats in PROFILE_CATEGORIES:
            if any(p in stack for p in pats):
                name = cat
                break
        cats[name] = cats.get(name, 0) + c
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + c
    if total == 0:
        return {"samples": 0, "categories": {}, "top_self": []}
    return {
        "samples": total,
        "categories": {k: v / total for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_self": [{"frame": k, "share": v / total} for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]],
    }


class PySpy:
    """``py-spy record`` on a process while a block of work runs (collapsed stacks, 200 Hz)."""

    def __init__(self, pid: int, out_path: Path, max_seconds: float) -> None:
        self.pid, self.out_path, self.max_seconds = int(pid), out_path, max_seconds
        self.proc: Any = None
        self.error: str | None = None

    def start(self) -> None:
        import subprocess

        exe = py_spy_path()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return
        self.out_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw", "--nonblocking",
             "--duration", str(math.ceil(self.max_seconds)), "--output", str(self.out_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)  # let it attach
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            self.error = f"py-spy exited: {out.strip()[-300:]}"
            self.proc = None

    def stop(self) -> dict[str, Any] | None:
        import signal
        import subprocess

        if self.proc is None:
            return {"error": self.error} if self.error else None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            text = self.out_path.read_text(errors="replace")
        except OSError as e:
            return {"error": f"py-spy wrote no profile: {e}"}
        out = categorize_stacks(text)
        out["collapsed_stacks"] = str(self.out_path)
        return out


async def profile_sequential(port: int, pid: int, model: str, seconds: float, fmt_: str,
                              out_path: Path) -> dict[str, Any] | None:
    """py-spy on the server while steps=1, n=1 requests go one at a time for ``seconds``."""
    spy = PySpy(pid, out_path, seconds + 5)
    await asyncio.to_thread(spy.start)
    if spy.proc is None:
        return spy.stop()
    client = LoopbackClient(port)
    sent = 0
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await client.request("POST", "/generate", generate_body(model, 1, 1, 5000 + sent, fmt_))
            sent += 1
    finally:
        await client.close()
    res = await asyncio.to_thread(spy.stop)
    if res is not None:
        res["requests"] = sent
    return res
