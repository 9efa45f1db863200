"""Helpers to run a real server in a subprocess (tests, benchmarks, load runs).

:class:`ServerProcess` starts ``anystep serve`` on a free loopback port, waits for
``/readyz`` and stops it with SIGTERM (graceful shutdown), so tests exercise real
HTTP through uvicorn. :func:`make_tiny_models` writes small random model
directories (MLPs for 2D data, a tiny U-Net for digits) for tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """``anystep serve`` in a subprocess on 127.0.0.1.

    Args:
        models: ``{name: model_dir}`` to serve.
        args: extra CLI arguments (e.g. ``["--max-batch", "8"]``).
        env: extra environment variables.
        ready_timeout: seconds to wait for ``/readyz``.
        log_path: file receiving the server's stdout/stderr.
        engine: ``--engine`` when ``args`` give none (default torch, quick to start;
            None runs the CLI default ``auto``).
    """

    models: dict[str, str | os.PathLike]
    args: Sequence[str] = ()
    env: dict[str, str] | None = None
    ready_timeout: float = 90.0
    log_path: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    engine: str | None = "torch"
    """``--engine`` unless ``args`` name one (torch: no export at start-up; None: the CLI default, auto)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start and wait until ready (raises RuntimeError with the log tail on failure)."""
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            **(self.env or {}),
        }
        for attempt in range(3):
            self.port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "anystep.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
            for name, path in self.models.items():
                cmd += ["--model", f"{name}={path}"]
            cmd += list(self.args)
            if self.engine is not None and "--engine" not in self.args:
                cmd += ["--engine", self.engine]
            if self.log_path is None:
                import tempfile

                self.log_path = Path(tempfile.mkstemp(prefix="anystep-serve-", suffix=".log")[1])
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            if self._wait_ready():
                return self
            if "address already in use" in self.log_tail().lower() and attempt < 2:
                continue
            self.stop()
            raise RuntimeError(f"server did not become ready; log tail:\n{self.log_tail()}")
        raise RuntimeError("server did not start")  # pragma: no cover

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:  # noqa: PYI034 - a dataclass, not subclassed
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_tiny_models(
    root: str | os.PathLike, seed: int = 0, digits: bool = True
) -> dict[str, Path]:
    """Write small random model directories for tests.

    Creates ``checkerboard`` (flow map, MLP), ``checkerboard-teacher`` (velocity, MLP)
    and, with ``digits``, ``digits`` (flow map, tiny U-Net on ``[1, 8, 8]``). Weights are
    re-drawn from N(0, 0.1^2) so the networks are far from the identity.

    Returns:
        ``{name: directory}``.
    """
    import torch

    from anystep.core.config import BackboneConfig, ModelConfig
    from anystep.core.flowmap import build_model
    from anystep.core.modeldir import save_model_dir

    specs = [
        ("checkerboard", "flowmap", (2,), "mlp", "checkerboard"),
        ("checkerboard-teacher", "velocity", (2,), "mlp", "checkerboard"),
    ]
    if digits:
        specs.append(("digits", "flowmap", (1, 8, 8), "unet", "digits"))
    out: dict[str, Path] = {}
    gen = torch.Generator().manual_seed(seed)
    for name, kind, shape, net, dataset in specs:
        bb = BackboneConfig(
            name=net,
            data_shape=shape,
            time_inputs=2 if kind == "flowmap" else 1,
            width=32,
            depth=2,
            fourier_features=4,
            channels=8,
            channel_mult=(1, 2),
        )
        # random weights: they claim both directions so that /encode can be exercised
        cfg = ModelConfig(
            kind=kind, backbone=bb, data_shape=shape, dataset=dataset, provenance={"test": True},
            time_region="both",
        )
        model = build_model(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        out[name] = save_model_dir(Path(root) / name, model, cfg)
    return out
