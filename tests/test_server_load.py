"""Load: a slow adaptive request neither stalls steps=1 requests to other models nor outlives
its timeout or its client (issue 19.2), over real HTTP (uvicorn in a thread); and the
README's `generate -n 1000` fits the default limits (issue 19.9/10: per-model sample limits)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from anystep.server.app import ServerConfig, create_app
from anystep.server.registry import Limits, ModelSpec, load_models
from anystep.server.testing import free_port, make_tiny_models


class SlowVelocity:
    """Wraps a velocity engine: each call sleeps (a big network) and is counted."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, 0
        self.name, self.kind, self.data_shape = inner.name, inner.kind, inner.data_shape

    def evaluate(self, x, s, t):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.evaluate(x, s, t)

    def warmup(self, sizes, repeats: int = 1):
        return self.inner.warmup(sizes, repeats=1)

    def describe(self):
        return {**self.inner.describe(), "engine": "slow-test"}

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    dirs = make_tiny_models(tmp_path_factory.mktemp("models"), seed=4, digits=False)
    limits = Limits(max_steps=16, max_compute=1 << 22, max_nfe=100_000)
    models = load_models([ModelSpec(n, p) for n, p in dirs.items()], "torch", limits=limits)
    slow = next(m for m in models if m.kind == "velocity")
    slow.engine = SlowVelocity(slow.engine, delay=0.01)
    cfg = ServerConfig(engine="torch", limits=limits, request_timeout_s=1.0, warmup=True, max_batch=256)
    app = create_app(cfg, models=models)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.05)
    yield url, slow.engine
    srv.should_exit = True
    th.join(10)


SLOW = {"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 1e-8, "max_nfe": 10_000, "n": 256, "seed": 0}


def test_slow_dopri5_neither_stalls_other_models_nor_outlives_its_timeout(server):
    url, slow_engine = server
    out: dict = {}

    def slow_request():
        with httpx.Client(timeout=30) as c:
            t0 = time.perf_counter()
            out["slow"] = c.post(url + "/generate", json=SLOW)
            out["slow_s"] = time.perf_counter() - t0
            out["calls_at_503"] = slow_engine.calls

    th = threading.Thread(target=slow_request)
    th.start()
    time.sleep(0.2)  # the adaptive solve is running
    quick = []
    with httpx.Client(timeout=30) as c:
        while th.is_alive() and len(quick) < 200:
            r = c.post(url + "/generate", json={"model": "checkerboard", "steps": 1, "n": 1})
            quick.append((r.status_code, r.json()["timing_ms"]["total"] if r.status_code == 200 else None))
    th.join()
    # steps=1 requests to another model kept being answered while the solve ran
    assert len(quick) >= 10 and all(code == 200 for code, _ in quick), (quick[:5], out["slow"].text)
    # the solve was stopped at its timeout with a 503 saying so ...
    assert out["slow"].status_code == 503 and out["slow"].json()["error"] == "timeout"
    assert out["slow_s"] < 1.0 + 0.5
    # ... and stopped using the engine within one tick
    time.sleep(0.3)
    assert slow_engine.calls - out["calls_at_503"] <= 1
    print(f"\nsteps=1 p50 during the dopri5 solve: {np.median([ms for _, ms in quick]):.2f} ms (server side)")


def test_client_that_leaves_stops_its_request(server):
    url, slow_engine = server
    with httpx.Client(timeout=0.3) as c, pytest.raises(httpx.TimeoutException):
        c.post(url + "/generate", json=SLOW)
    time.sleep(0.5)  # the server notices the closed connection within one poll (0.2 s)
    before = slow_engine.calls
    time.sleep(0.3)
    assert slow_engine.calls - before <= 1


def test_readme_generate_n_1000_fits_the_default_limits(tmp_path):
    """`anystep generate --model cb --steps 4 -n 1000` against `anystep serve` defaults."""
    from fastapi.testclient import TestClient

    dirs = make_tiny_models(tmp_path, seed=5, digits=True)
    cfg = ServerConfig(models=[ModelSpec("cb", dirs["checkerboard"]), ModelSpec("digits", dirs["digits"])], engine="torch")
    with TestClient(create_app(cfg)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.02)
        r = c.post("/generate", json={"model": "cb", "steps": 4, "n": 1000, "seed": 0})
        assert r.status_code == 200, r.text
        assert r.json()["shape"] == [1000, 2]
        info = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        # the sample limit is a cost per model: numbers per response, not one --max-n for all
        assert info["cb"]["max_n"] == Limits().max_values // 2
        assert info["digits"]["max_n"] == Limits().max_values // 64
