"""The Triton side of :mod:`anystep.benchmarks.load_triton`: repository, client loop, metrics.

* :func:`ensure_triton_repo`: the model repository ``anystep export --format triton``
  writes, cached by the model directory's hash;
* :class:`TritonStepClient`: a request of n samples and K steps as K KServe-v2
  ``infer`` calls (what a Triton user's client does; Triton knows nothing of steps),
  bodies built and parsed by ``tritonclient``, sent over the benchmark's own keep-alive
  client; :func:`triton_phase` runs it in the shared closed loop;
* :func:`triton_batches`: rows per model execution from Triton's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anystep.benchmarks.loadgen import (
    LoadBenchError,
    LoopbackClient,
    PhaseResult,
    RequestRecord,
    closed_loop,
)

__all__ = ["TritonStepClient", "ensure_triton_repo", "triton_batches", "triton_phase", "triton_versions"]


def ensure_triton_repo(model_dir: Path, work_dir: Path, name: str, *, max_batch: int, max_queue_delay_us: int,
                       log: Callable[[str], None] = print) -> tuple[Path, Any]:
    """The Triton model repository of ``model_dir`` (``anystep export --format triton``), cached.

    Written to ``work_dir/triton-repo/<name>`` by :func:`anystep.export.triton_repo.export_triton`
    (single-step ONNX graph, ``max_batch_size = max_batch``, dynamic batching); rewritten
    when the model directory's content hash, the batch limit or the batcher delay changed.

    Returns:
        ``(repository, manifest of the model)``.
    """
    from anystep.core.modeldir import model_dir_sha256
    from anystep.export.common import BatchRange
    from anystep.export.manifest import ManifestError, load_manifest
    from anystep.export.onnx_export import OnnxOptions
    from anystep.export.triton_repo import export_triton

    repo = work_dir / "triton-repo"
    cfg_text = repo / name / "config.pbtxt"
    sha = model_dir_sha256(model_dir)
    try:
        m = load_manifest(repo / name)
        text = cfg_text.read_text()
        if (m.model_dir_sha256 == sha and f"max_batch_size: {max_batch}\n" in text
                and f"max_queue_delay_microseconds: {max_queue_delay_us}\n" in text):
            return repo, m
    except (OSError, ManifestError, ValueError):
        pass
    t0 = time.perf_counter()
    log(f"[triton] exporting {model_dir.name} to a Triton model repository ({repo})")
    opts = OnnxOptions(batch=BatchRange(1, min(64, max_batch), max_batch))
    res = export_triton(model_dir, repo, opts, name=name, instance_kind="cpu",
                        max_queue_delay_us=max_queue_delay_us, overwrite=True)
    log(f"[triton] export done in {time.perf_counter() - t0:.0f} s")
    return repo, res.manifests[name]


class TritonStepClient:
    """A request of ``n`` samples and K steps as K KServe-v2 ``infer`` calls (the client's loop).

    Bodies are built and parsed by ``tritonclient.http`` (binary tensors); the transport
    is the benchmark's keep-alive :class:`~anystep.benchmarks.loadgen.LoopbackClient`,
    the same one that talks to anystep.

    Args:
        model: Triton model name.
        manifest: the export manifest (input and output names).
        data_shape: shape of one sample.
    """

    def __init__(self, model: str, manifest: Any, data_shape: Sequence[int]) -> None:
        try:
            import tritonclient.http as th
        except ImportError:
            raise LoadBenchError("the Triton benchmark needs tritonclient: pip install 'anystep[triton]'") from None
        names = [t.name for t in manifest.inputs]
        if len(names) != 3:
            raise LoadBenchError(f"Triton model {model!r} has inputs {names}; an unconditional flow map has (x, s, t)")
        self._th = th
        self.model = model
        self.path = f"/v2/models/{model}/infer"
        self.input_names = names
        self.output_name = manifest.outputs[0].name
        self.data_shape = tuple(int(d) for d in data_shape)

    def _body(self, x: np.ndarray, s: float, t: float) -> tuple[bytes, dict[str, str]]:
        th = self._th
        b = x.shape[0]
        ins = []
        for name, a in zip(self.input_names, (x, np.full((b, 1), s, np.float32), np.full((b, 1), t, np.float32))):
            ii = th.InferInput(name, list(a.shape), "FP32")
            ii.set_data_from_numpy(a, binary_data=True)
            ins.append(ii)
        out = th.InferRequestedOutput(self.output_name, binary_data=True)
        body, json_len = th.InferenceServerClient.generate_request_body(ins, outputs=[out])
        return body, ({"Inference-Header-Content-Length": str(json_len)} if json_len is not None else {})

    async def sample(self, client: LoopbackClient, steps: int, n: int, seed: int) -> tuple[int, np.ndarray | None]:
        """Base samples of seeds ``seed .. seed+n-1`` moved by K calls ``x <- X_{t_k, t_k+1}(x)``.

        Returns:
            ``(HTTP status of the last call, samples [n, *shape] or None on an error)``.
        """
        from anystep.core.grid import uniform_grid
        from anystep.core.noise import base_noise_np

        grid = uniform_grid(steps)
        x = base_noise_np(seed, n, self.data_shape)
        for k in range(steps):
            body, headers = self._body(x, float(grid[k]), float(grid[k + 1]))
            status, h, data = await client.request("POST", self.path, body, content_type="application/octet-stream",
                                                   headers=headers)
            if status != 200:
                return status, None
            hl = h.get("inference-header-content-length")
            res = self._th.InferenceServerClient.parse_response_body(data, header_length=int(hl) if hl else None)
            x = np.asarray(res.as_numpy(self.output_name), dtype=np.float32).reshape(n, *self.data_shape)
        return 200, x


async def triton_phase(port: int, tc: TritonStepClient, requests: Sequence[Any], *, concurrency: int, n: int,
                       time_limit_s: float) -> PhaseResult:
    """The closed loop of :func:`~anystep.benchmarks.loadgen.run_phase`, each request K Triton calls."""

    async def send(client: LoopbackClient, i: int) -> RequestRecord:
        r = requests[i]
        status, _ = await tc.sample(client, r.steps, n, r.seed)
        return RequestRecord(steps=r.steps, status=status, latency_s=0.0)

    return await closed_loop(port, len(requests), send, concurrency=concurrency, time_limit_s=time_limit_s,
                             steps=[r.steps for r in requests])


def triton_batches(before: dict, after: dict, model: str) -> dict[str, Any]:
    """Rows per Triton model execution over a phase (``nv_inference_count / nv_inference_exec_count``)."""
    def total(samples: dict, name: str) -> float:
        return sum(v for (nm, lab), v in samples.items() if nm == name and dict(lab).get("model") == model)

    rows = total(after, "nv_inference_count") - total(before, "nv_inference_count")
    execs = total(after, "nv_inference_exec_count") - total(before, "nv_inference_exec_count")
    return {"rows": rows, "executions": execs, "mean": rows / execs if execs > 0 else None}



def triton_versions(python: str, port: int) -> dict[str, str | None]:
    import json
    import subprocess

    out: dict[str, str | None] = {}
    try:
        r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('nvidia-pytriton'))"],
                           capture_output=True, text=True, timeout=60, check=False)
        out["nvidia-pytriton"] = r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia-pytriton"] = None

    async def meta() -> str | None:
        c = LoopbackClient(port)
        try:
            status, _, body = await c.request("GET", "/v2")
            return json.loads(body).get("version") if status == 200 else None
        finally:
            await c.close()

    out["tritonserver"] = asyncio.run(meta())
    return out
