"""Real HTTP against ``anystep serve`` in a subprocess (uvicorn on a free 127.0.0.1 port)."""

from __future__ import annotations

import concurrent.futures
import io
import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from anystep.server.testing import ServerProcess, make_tiny_models

DIGITS_UNITS_PER_MODEL_UNIT = (
    8.0  # digits grey level g = 8 (x + 1): compare at atol 1e-5 in model units
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("models"), seed=3)


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    proc = ServerProcess(
        models=model_dirs,
        args=["--max-steps", "64", "--max-n", "64", "--max-batch", "256", "--max-compute", "4096"],
        log_path=tmp_path_factory.mktemp("logs") / "serve.log",
    )
    with proc:
        yield proc


def test_auto_engine_resolution():
    from anystep.server.engines import available_engines, resolve_engine

    here = available_engines()
    assert resolve_engine("auto") == ("tensorrt" if "tensorrt" in here else "onnx" if "onnx" in here else "torch")
    assert resolve_engine("torch") == "torch"


@pytest.mark.slow
def test_default_engine_is_auto_and_shown(model_dirs, tmp_path):
    """`anystep serve` without --engine picks the fastest engine here and says which (issue 16)."""
    from anystep.server.engines import resolve_engine

    want = resolve_engine("auto")
    proc = ServerProcess(
        models={"checkerboard": model_dirs["checkerboard"]},
        engine=None,
        env={"ANYSTEP_CACHE_DIR": str(tmp_path / "cache")},
        log_path=tmp_path / "serve.log",
        ready_timeout=300,
    )
    with proc:
        models = {m["name"]: m for m in httpx.get(proc.url + "/v1/models", timeout=10).json()["models"]}
        assert models["checkerboard"]["engine"] == want == models["checkerboard"]["engine_detail"]["engine"]
        assert "auto chose" in proc.log_tail(100_000)
        assert _post(proc.url, json={"steps": 2, "n": 4}).status_code == 200


def _post(url: str, **kw) -> httpx.Response:
    return httpx.post(url + "/generate", timeout=30.0, **kw)


def test_each_format_over_http(server):
    j = _post(server.url, json={"model": "checkerboard", "steps": 2, "n": 8, "seed": 5})
    assert j.status_code == 200 and j.headers["content-type"].startswith("application/json")
    d = j.json()
    assert d["shape"] == [8, 2] and d["steps"] == 2 and d["nfe"] == 2 and d["seed"] == 5
    npy = _post(
        server.url, params={"model": "checkerboard", "steps": 2, "n": 8, "seed": 5, "format": "npy"}
    )
    arr = np.load(io.BytesIO(npy.content), allow_pickle=False)
    np.testing.assert_allclose(arr, np.array(d["samples"]), atol=1e-6)
    for key in ("model", "steps", "nfe", "seed", "time-ms"):
        assert f"x-anystep-{key}" in npy.headers
    png = _post(server.url, params={"model": "digits", "n": 9, "seed": 0, "format": "png"})
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(png.content)).verify()
    assert png.headers["x-anystep-steps"] == "1" and png.headers["x-anystep-seed"] == "0"


REQUESTS = [
    {"model": "checkerboard", "steps": 1, "n": 3, "seed": 100},
    {"model": "checkerboard", "steps": 7, "n": 4, "seed": 200},
    {"model": "checkerboard", "steps": 32, "n": 2, "seed": 300},
    {"model": "checkerboard", "grid": [0, 0.05, 0.5, 0.9, 1], "n": 3, "seed": 400},
    {"model": "checkerboard", "steps": 16, "n": 1, "seed": 500},
    {"model": "checkerboard-teacher", "solver": "euler", "steps": 24, "n": 3, "seed": 600},
    {"model": "checkerboard-teacher", "solver": "rk4", "steps": 6, "n": 2, "seed": 700},
    {"model": "checkerboard-teacher", "solver": "heun", "steps": 11, "n": 4, "seed": 800},
    {"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 1e-3, "n": 2, "seed": 900},
    {"model": "digits", "steps": 3, "n": 2, "seed": 1000},
    {"model": "digits", "steps": 8, "n": 3, "seed": 1100},
]


def _samples(url: str, body: dict) -> tuple[np.ndarray, dict]:
    r = _post(url, json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    return np.array(d["samples"], dtype=np.float64), d


def test_seeds_reproducible_and_batch_invariant_under_concurrency(server):
    alone = [_samples(server.url, b) for b in REQUESTS]  # each served by itself
    again = _samples(server.url, REQUESTS[1])
    np.testing.assert_array_equal(again[0], alone[1][0])  # same seed, same request: same bytes

    def metric(text: str, name: str) -> float:
        return sum(
            float(v)
            for v in re.findall(rf'^{name}{{model="checkerboard"}} (\S+)$', text, re.MULTILINE)
        )

    before = httpx.get(server.url + "/metrics").text
    work = REQUESTS * 3  # 33 concurrent requests with mixed models, steps and solvers
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(work)) as pool:
        mixed = list(pool.map(lambda b: _samples(server.url, b), work))
    after = httpx.get(server.url + "/metrics").text
    for i, (got, d) in enumerate(mixed):
        want, dw = alone[i % len(REQUESTS)]
        scale = DIGITS_UNITS_PER_MODEL_UNIT if d["model"] == "digits" else 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=str(work[i]))
        assert (d["steps"], d["nfe"], d["seed"]) == (dw["steps"], dw["nfe"], dw["seed"])
    # the samples of concurrent requests were fused: fewer engine calls than request-steps
    calls = metric(after, "anystep_engine_batch_size_count") - metric(
        before, "anystep_engine_batch_size_count"
    )
    rows = metric(after, "anystep_engine_batch_size_sum") - metric(
        before, "anystep_engine_batch_size_sum"
    )
    flow_steps = sum(
        len(b["grid"]) - 1 if "grid" in b else b["steps"]
        for b in work
        if b["model"] == "checkerboard"
    )
    flow_rows = sum(
        (len(b["grid"]) - 1 if "grid" in b else b["steps"]) * b["n"]
        for b in work
        if b["model"] == "checkerboard"
    )
    assert rows == flow_rows  # every sample-step evaluated exactly once
    assert calls < flow_steps, (calls, flow_steps)


@pytest.mark.parametrize(
    "kw,status",
    [
        ({"params": {"steps": 0}}, 422),
        ({"params": {"steps": 65}}, 422),
        ({"params": {"n": 0}}, 422),
        ({"params": {"n": 65}}, 422),
        ({"params": {"n": 64, "steps": 64, "model": "checkerboard-teacher", "solver": "rk4"}}, 422),
        ({"params": {"model": "nope"}}, 404),
        ({"params": {"format": "bmp"}}, 422),
        ({"params": {"grid": "0,0.6,0.4,1"}}, 422),
        ({"params": {"grid": "0,2"}}, 422),
        ({"params": {"solver": "rk4", "model": "checkerboard"}}, 422),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"json": {"n": "many"}}, 422),
    ],
)
def test_bad_inputs_over_http_are_4xx(server, kw, status):
    r = _post(server.url, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "field"} and body["message"]


def test_metrics_count_requests_over_http(server):
    def count(text: str) -> float:
        m = re.search(
            r'^anystep_requests_total{model="checkerboard",route="/generate",status="200",steps="13"} (\S+)$',
            text,
            re.MULTILINE,
        )
        return float(m.group(1)) if m else 0.0

    before = count(httpx.get(server.url + "/metrics").text)
    for _ in range(4):
        assert _post(server.url, params={"model": "checkerboard", "steps": 13}).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    assert count(text) == before + 4
    assert "anystep_request_latency_seconds_bucket" in text and "anystep_queue_depth" in text


def test_bounded_load_run_has_no_failures(server):
    """Loopback-only load: a fixed number of requests, bounded concurrency and time."""
    rng = np.random.default_rng(0)
    bodies = [
        {
            "model": "checkerboard",
            "steps": int(rng.integers(1, 9)),
            "n": int(rng.integers(1, 17)),
            "seed": i,
        }
        for i in range(64)
    ]
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60.0

    def one(body: dict) -> None:
        if time.monotonic() > deadline:
            with lock:
                failures.append("time limit reached")
            return
        try:
            r = _post(server.url, json=body)
            ok = r.status_code == 200 and r.json()["n"] == body["n"]
        except httpx.HTTPError as e:
            ok, r = False, e
        if not ok:
            with lock:
                failures.append(f"{body}: {getattr(r, 'status_code', r)}")

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, bodies))
    assert not failures, failures[:5]
    assert time.monotonic() - t0 < 60.0


@pytest.mark.slow
def test_bounded_load_run_long(server):
    """A longer loopback load run: 1000 requests, 16 workers, mixed models and steps."""
    rng = np.random.default_rng(1)
    models = ["checkerboard", "checkerboard-teacher", "digits"]
    bodies = []
    for i in range(1000):
        m = models[int(rng.integers(0, 3))]
        body = {
            "model": m,
            "steps": int(rng.integers(1, 9)),
            "n": int(rng.integers(1, 17)),
            "seed": i,
        }
        if m == "checkerboard-teacher":
            body["solver"] = ["euler", "heun", "rk4"][int(rng.integers(0, 3))]
        bodies.append(body)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda b: _post(server.url, json=b).status_code, bodies))
    assert codes.count(200) == len(bodies), {c: codes.count(c) for c in set(codes)}
    assert time.monotonic() - t0 < 300


def test_auth_and_graceful_shutdown(model_dirs, tmp_path):
    """With ANYSTEP_API_KEY set, every route but health needs the bearer token; SIGTERM lets
    an in-flight request finish before the process exits."""
    proc = ServerProcess(
        models={"cbt": model_dirs["checkerboard-teacher"]},
        args=["--max-batch", "1", "--max-steps", "1024", "--max-compute", "1000000"],
        env={"ANYSTEP_API_KEY": "k3y"},
        log_path=tmp_path / "serve.log",
    )
    with proc:
        url = proc.url
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/readyz").status_code == 200
        r = httpx.post(url + "/generate")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert httpx.get(url + "/metrics").status_code == 401
        assert (
            httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        auth = {"Authorization": "Bearer k3y"}
        assert httpx.get(url + "/v1/models", headers=auth).status_code == 200
        # a long request: 8 samples x 128 rk4 steps, one row per engine call (4096 calls)
        result: dict = {}

        def long_request() -> None:
            body = {"solver": "rk4", "steps": 128, "n": 8, "seed": 1}
            result["r"] = httpx.post(url + "/generate", json=body, headers=auth, timeout=120.0)

        th = threading.Thread(target=long_request)
        th.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the request is in the scheduler
            m = re.search(
                r'^anystep_inflight_requests{model="cbt"} (\S+)$',
                httpx.get(url + "/metrics", headers=auth).text,
                re.MULTILINE,
            )
            if m and float(m.group(1)) >= 1:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the long request never reached the scheduler")
        code = proc.stop(timeout=120)
        th.join(timeout=120)
        # uvicorn re-raises the captured SIGTERM after a clean shutdown
        assert code in (0, -signal.SIGTERM), proc.log_tail()
        log = proc.log_tail(100_000)
        # uvicorn found the request still open at SIGTERM, waited for it, then shut down
        assert (
            "Waiting for connections to close" in log and "Application shutdown complete" in log
        ), log
        r = result["r"]
        assert r.status_code == 200, r.text
        assert r.json()["nfe"] == 128 * 4
