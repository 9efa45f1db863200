"""The triton engine against a real Triton server (nvidia-pytriton on CPU).

The export package writes a Triton model repository and starts the Triton server
bundled with nvidia-pytriton (in its own interpreter, ``.venv-triton``, made by
``make triton-venv``); the gateway keeps the step loop and sends one Triton request
per fused step. Skipped, with the reason, when pytriton is not available.
"""

from __future__ import annotations

import concurrent.futures

import httpx
import numpy as np
import pytest
import torch

from anystep.core.modeldir import load_model_dir
from anystep.core.samplers import base_noise, sample_flowmap
from anystep.core.solvers import solve_fixed
from anystep.server.engines import TorchEngine, TritonEngine
from anystep.server.testing import ServerProcess, make_tiny_models

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (extra 'triton')")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    try:
        from anystep.export.common import BatchRange
        from anystep.export.onnx_export import OnnxOptions
        from anystep.export.triton_repo import (
            TritonUnavailableError,
            export_triton,
            find_triton_python,
            serve_with_pytriton,
        )
    except ImportError as e:
        pytest.skip(f"the export package's Triton support is unavailable: {e}")
    try:
        find_triton_python()
    except TritonUnavailableError as e:
        pytest.skip(f"no Triton server can start here: {e}")
    root = tmp_path_factory.mktemp("triton")
    dirs = make_tiny_models(root / "models", seed=4, digits=False)
    repo = root / "repo"
    opts = OnnxOptions(exporter="torchscript", batch=BatchRange(1, 8, 64))
    for name in ("checkerboard", "checkerboard-teacher"):
        export_triton(dirs[name], repo, opts, name=name, instance_kind="cpu")
    try:
        with serve_with_pytriton(repo, log_path=root / "triton.log") as server:
            yield server, dirs
    except TritonUnavailableError as e:
        pytest.skip(f"the Triton server did not start: {e}")


def test_triton_engine_matches_torch(triton):
    server, dirs = triton
    lm = load_model_dir(dirs["checkerboard"])
    eng = TritonEngine(server.http_url, "checkerboard", (2,), kind="flowmap")
    assert eng.input_names == ["x", "s", "t"] and eng.max_batch == 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 2)).astype(np.float32)  # > max_batch_size: split into 2 requests
    s, t = (
        rng.random(100).astype(np.float32),
        rng.random(100).astype(np.float32),
    )  # per-sample times
    np.testing.assert_allclose(
        eng.step(x, s, t), TorchEngine(lm.model, (2,)).step(x, s, t), atol=1e-5
    )
    vel = TritonEngine(server.http_url, "checkerboard-teacher", (2,), kind="velocity")
    lv = load_model_dir(dirs["checkerboard-teacher"])
    np.testing.assert_allclose(
        vel.velocity(x, t), TorchEngine(lv.model, (2,)).velocity(x, t), atol=1e-5
    )
    with pytest.raises(Exception, match="no ready model|cannot reach"):
        TritonEngine(server.http_url, "missing", (2,), kind="flowmap")


@pytest.mark.slow
def test_gateway_serves_through_triton(triton, tmp_path):
    server, dirs = triton
    proc = ServerProcess(
        models={
            "checkerboard": dirs["checkerboard"],
            "checkerboard-teacher": dirs["checkerboard-teacher"],
        },
        args=["--engine", "triton", "--triton-url", server.http_url],
        log_path=tmp_path / "serve.log",
    )
    bodies = [
        {"model": "checkerboard", "steps": 1, "n": 3, "seed": 10},
        {"model": "checkerboard", "steps": 5, "n": 2, "seed": 20},
        {"model": "checkerboard", "grid": [0, 0.3, 1], "n": 4, "seed": 30},
        {"model": "checkerboard-teacher", "solver": "heun", "steps": 3, "n": 2, "seed": 40},
    ]
    with proc:
        models = httpx.get(proc.url + "/v1/models").json()["models"]
        assert {m["engine"] for m in models} == {"triton"}
        with concurrent.futures.ThreadPoolExecutor(len(bodies) * 2) as pool:
            out = list(
                pool.map(
                    lambda b: httpx.post(proc.url + "/generate", json=b, timeout=60.0), bodies * 2
                )
            )
    lm = load_model_dir(dirs["checkerboard"])
    lv = load_model_dir(dirs["checkerboard-teacher"])
    for body, r in zip(bodies * 2, out):
        assert r.status_code == 200, r.text
        got = np.array(r.json()["samples"])
        x0 = base_noise(range(body["seed"], body["seed"] + body["n"]), (2,))
        if body["model"] == "checkerboard":
            grid = torch.tensor(body["grid"]) if "grid" in body else None
            want = sample_flowmap(lm.model, x0, steps=body.get("steps"), grid=grid).x
        else:
            want = solve_fixed(lv.model, x0, 0.0, 1.0, method="heun", steps=3).x
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
