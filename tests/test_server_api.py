"""The HTTP API in-process (FastAPI TestClient): formats, validation, auth, metrics, budgets."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anystep.core.modeldir import load_model_dir
from anystep.core.samplers import base_noise, sample_flowmap
from anystep.server.app import ServerConfig, create_app
from anystep.server.registry import (
    Limits,
    ModelSpec,
    RegistryError,
    discover_default_models,
    load_models,
)
from anystep.server.testing import make_tiny_models

LIMITS = Limits(max_steps=16, max_n=32, max_compute=256)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("models"), seed=2)


def _app(model_dirs, **kw):
    kw.setdefault("limits", LIMITS)
    kw.setdefault("engine", "torch")  # quick to build; `auto` is tested in test_server_engines_auto
    cfg = ServerConfig(models=[ModelSpec(n, p) for n, p in model_dirs.items()], **kw)
    return create_app(cfg)


def _wait_ready(c: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(model_dirs):
    app = _app(model_dirs)
    with TestClient(app) as c:
        _wait_ready(c)
        yield c


def _is_error(r, status: int | tuple[int, ...], field: str | None = "__any__"):
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "message", "field"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and len(body["message"]) > 10
    if field != "__any__":
        assert body["field"] == field, body
    return body


# ---------------------------------------------------------------------------------------
# formats and semantics
# ---------------------------------------------------------------------------------------


def test_json_samples_equal_core_sampler(client, model_dirs):
    r = client.post("/generate", params={"model": "checkerboard", "steps": 3, "n": 5, "seed": 11})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["model"], d["kind"], d["steps"], d["nfe"], d["seed"], d["n"]) == (
        "checkerboard",
        "flowmap",
        3,
        3,
        11,
        5,
    )
    assert d["shape"] == [5, 2] and d["solver"] is None and d["chosen_by_budget"] is False
    assert (
        set(d["timing_ms"]) == {"total", "queue", "compute"}
        and d["timing_ms"]["total"] >= d["timing_ms"]["compute"]
    )
    lm = load_model_dir(model_dirs["checkerboard"])
    want = sample_flowmap(lm.model, base_noise(range(11, 16), (2,)), steps=3).x.numpy()
    np.testing.assert_allclose(np.array(d["samples"]), want, atol=1e-5)
    assert r.headers["x-anystep-steps"] == "3" and r.headers["x-anystep-seed"] == "11"


def test_npy_and_png_and_data_units(client):
    r = client.post(
        "/generate", json={"model": "digits", "steps": 2, "n": 4, "seed": 0, "format": "npy"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert arr.shape == (4, 8, 8) and arr.dtype == np.float32
    assert arr.min() >= 0 and arr.max() <= 16  # digits grey levels
    assert (r.headers["x-anystep-model"], r.headers["x-anystep-nfe"]) == ("digits", "2")
    assert float(r.headers["x-anystep-time-ms"]) > 0
    j = client.post("/generate", json={"model": "digits", "steps": 2, "n": 4, "seed": 0}).json()
    np.testing.assert_allclose(np.array(j["samples"]), arr, atol=1e-5)
    png = client.post("/generate", params={"model": "digits", "n": 16, "seed": 0, "format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size[0] > 8 * 4 and img.size[1] > 8 * 4
    scatter = client.post(
        "/generate", params={"model": "checkerboard", "n": 30, "seed": 0, "format": "png"}
    )
    assert scatter.status_code == 200 and Image.open(io.BytesIO(scatter.content)).size == (512, 512)


def test_body_wins_over_query_and_grid_conflicts_with_steps(client):
    r = client.post("/generate?steps=2&n=1&seed=3", json={"steps": 5}).json()
    assert r["steps"] == 5 and r["n"] == 1 and r["seed"] == 3
    # issue 19.5: steps and grid together are a conflict, not a silent override
    bad = _is_error(client.post("/generate", params={"grid": "0,0.2,1", "steps": 7, "seed": 1}), 422, "steps")
    assert "keep grid" in bad["message"]
    g = client.post("/generate", params={"grid": "0,0.2,1", "seed": 1}).json()
    assert g["steps"] == 2 and g["grid"] == [0.0, 0.2, 1.0]
    g2 = client.post("/generate", json={"grid": [0, 0.2, 1], "seed": 1}).json()
    assert g2["samples"] == g["samples"]


def test_seed_is_picked_and_reproducible(client):
    a = client.post("/generate", params={"n": 3}).json()
    assert isinstance(a["seed"], int) and a["seed"] >= 0
    b = client.post("/generate", params={"n": 3, "seed": a["seed"]}).json()
    assert a["samples"] == b["samples"]
    # sample i uses seed + i: a request starting one seed later is shifted by one sample
    c = client.post("/generate", params={"n": 2, "seed": a["seed"] + 1}).json()
    np.testing.assert_allclose(c["samples"], a["samples"][1:], atol=1e-6)


@pytest.mark.parametrize("solver,nfe", [("euler", 4), ("heun", 8), ("rk4", 16)])
def test_velocity_solvers(client, solver, nfe):
    d = client.post(
        "/generate",
        params={"model": "checkerboard-teacher", "solver": solver, "steps": 4, "n": 2, "seed": 0},
    ).json()
    assert d["kind"] == "velocity" and d["solver"] == solver and d["nfe"] == nfe and d["steps"] == 4


def test_dopri5_reports_adaptive_nfe(client):
    d = client.post(
        "/generate",
        json={"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 1e-3, "n": 2, "seed": 0},
    ).json()
    assert d["solver"] == "dopri5" and d["grid"] is None and d["nfe"] >= 7 and d["steps"] >= 1
    # without max_nfe the bound is the largest the budget allows (256 / 2); n x max_nfe is charged
    assert d["nfe"] <= LIMITS.max_compute // 2
    over = client.post(
        "/generate", json={"model": "checkerboard-teacher", "solver": "dopri5", "max_nfe": 100, "n": 3}
    )
    assert _is_error(over, 422, "n")["error"] == "over_budget"
    tight = client.post(
        "/generate",
        json={"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 1e-6, "max_nfe": 7, "n": 1, "seed": 0},
    )
    assert _is_error(tight, 422, "max_nfe")["error"] == "solver_failed"
    default = client.post(
        "/generate", json={"model": "checkerboard-teacher", "n": 2, "seed": 0, "steps": 2}
    ).json()
    assert default["solver"] == "euler" and default["nfe"] == 2


def test_encode_inverts_with_reversed_grid(client, model_dirs):
    x = [[0.5, -1.0], [1.5, 0.25]]
    r = client.post("/encode", json={"model": "checkerboard", "x": x, "steps": 2})
    assert r.status_code == 200, r.text
    d = r.json()
    lm = load_model_dir(model_dirs["checkerboard"])
    want = sample_flowmap(lm.model, torch.tensor(x), steps=2, reverse=True).x.numpy()
    np.testing.assert_allclose(np.array(d["z"]), want, atol=1e-5)
    assert d["steps"] == 2 and d["nfe"] == 2 and d["shape"] == [2, 2]
    # digits take grey levels [n, 8, 8]
    img = np.full((1, 8, 8), 8.0).tolist()
    r = client.post("/encode", json={"model": "digits", "x": img})
    assert r.status_code == 200 and r.json()["shape"] == [1, 1, 8, 8]


def test_latency_budget_picks_steps(client):
    lo = client.post("/generate", params={"latency_ms": 1e-4, "n": 4, "seed": 0}).json()
    hi = client.post("/generate", params={"latency_ms": 1e5, "n": 4, "seed": 0}).json()
    assert lo["chosen_by_budget"] and hi["chosen_by_budget"]
    assert lo["steps"] == 1
    assert hi["steps"] == LIMITS.max_steps  # everything fits a huge budget
    capped = client.post(
        "/generate", params={"latency_ms": 1e5, "n": 4, "seed": 0, "steps": 4}
    ).json()
    assert capped["steps"] == 4
    # the budget respects the compute limit: 32 samples x 16 steps > 256
    big = client.post("/generate", params={"latency_ms": 1e5, "n": 32, "seed": 0}).json()
    assert big["steps"] * 32 <= LIMITS.max_compute


def test_models_health_openapi(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"checkerboard", "checkerboard-teacher", "digits"}
    assert models["digits"]["data_shape"] == [1, 8, 8] and models["digits"]["units_shape"] == [8, 8]
    assert models["checkerboard-teacher"]["solvers"] == ["euler", "heun", "rk4", "dopri5"]
    assert (
        models["checkerboard"]["solvers"] == []
        and models["checkerboard"]["max_steps"] == LIMITS.max_steps
    )
    assert (
        "torch" in models["checkerboard"]["engines"] and models["checkerboard"]["engine"] == "torch"
    )
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/generate"]["post"]
    assert {p["name"] for p in op["parameters"]} >= {
        "model",
        "steps",
        "n",
        "seed",
        "grid",
        "format",
        "solver",
    }
    assert "requestBody" in op and "/encode" in spec["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/").status_code == 200 and "html" in client.get("/").headers["content-type"]


# ---------------------------------------------------------------------------------------
# every bad input answers 4xx JSON {"error", "message", "field"}
# ---------------------------------------------------------------------------------------

BAD_GENERATE = [
    # (query, json body, status, field)
    ({"steps": 0}, None, 422, "steps"),
    ({"steps": LIMITS.max_steps + 1}, None, 422, "steps"),
    ({"steps": "abc"}, None, 422, "steps"),
    ({"steps": "1.5"}, None, 422, "steps"),
    (None, {"steps": "4"}, 422, "steps"),
    (None, {"steps": True}, 422, "steps"),
    (None, {"steps": 2.0}, 422, "steps"),
    ({"n": 0}, None, 422, "n"),
    ({"n": -3}, None, 422, "n"),
    ({"n": LIMITS.max_n + 1}, None, 422, "n"),
    (None, {"n": [1]}, 422, "n"),
    ({"n": 32, "steps": 16}, None, 422, "n"),  # n x steps over the compute budget
    (None, {"model": "checkerboard-teacher", "solver": "rk4", "steps": 16, "n": 8}, 422, "n"),
    ({"model": "nope"}, None, 404, "model"),
    (None, {"model": 3}, 422, "model"),
    ({"format": "gif"}, None, 422, "format"),
    ({"grid": "0,0.5,0.5,1"}, None, 422, "grid"),
    ({"grid": "0,0.7,0.3,1"}, None, 422, "grid"),
    ({"grid": "0,1.5"}, None, 422, "grid"),
    ({"grid": "-0.5,1"}, None, 422, "grid"),
    ({"grid": "0.1,1"}, None, 422, "grid"),
    ({"grid": "0,a,1"}, None, 422, "grid"),
    ({"grid": ""}, None, 422, "grid"),
    ({"grid": ",".join(str(i / 20) for i in range(21))}, None, 422, "grid"),  # 20 steps > max
    (None, {"grid": [0]}, 422, "grid"),
    (None, {"grid": 5}, 422, "grid"),
    (None, {"grid": [0, "x", 1]}, 422, "grid"),
    ({"model": "checkerboard", "solver": "rk4"}, None, 422, "solver"),
    ({"model": "checkerboard-teacher", "solver": "rk45"}, None, 422, "solver"),
    ({"model": "checkerboard-teacher", "rtol": 1e-3}, None, 422, "rtol"),
    ({"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 0}, None, 422, "rtol"),
    ({"model": "checkerboard-teacher", "solver": "dopri5", "rtol": "nan"}, None, 422, "rtol"),
    ({"model": "checkerboard-teacher", "solver": "dopri5", "grid": "0,1"}, None, 422, "grid"),
    ({"seed": -1}, None, 422, "seed"),
    ({"seed": 2**60}, None, 422, "seed"),
    ({"seed": "x"}, None, 422, "seed"),
    ({"latency_ms": 0}, None, 422, "latency_ms"),
    ({"latency_ms": -5}, None, 422, "latency_ms"),
    ({"latency_ms": "inf"}, None, 422, "latency_ms"),
    ({"latency_ms": 5, "grid": "0,1"}, None, 422, "latency_ms"),
    ({"stepz": 4}, None, 422, "stepz"),
    (None, {"stepz": 4}, 422, "stepz"),
    ("steps=1&steps=2", None, 422, "steps"),
]


@pytest.mark.parametrize("query,body,status,field", BAD_GENERATE)
def test_bad_generate_inputs_are_4xx(client, query, body, status, field):
    url = "/generate" + (f"?{query}" if isinstance(query, str) else "")
    r = client.post(url, params=query if isinstance(query, dict) else None, json=body)
    _is_error(r, status, field)


@pytest.mark.parametrize(
    "content,status",
    [
        (b"{bad json", 400),
        (b"[1, 2]", 422),
        (b'{"steps": NaN}', 400),
        (b'"steps"', 422),
        (b"\xff\xfe", 400),
    ],
)
def test_malformed_bodies_are_4xx(client, content, status):
    r = client.post("/generate", content=content, headers={"content-type": "application/json"})
    _is_error(r, status, None)


BAD_ENCODE = [
    ({"model": "checkerboard-teacher", "x": [[0.0, 0.0]]}, 422, "model"),
    ({"model": "checkerboard", "x": [[0.0, 0.0, 0.0]]}, 422, "x"),
    ({"model": "checkerboard", "x": [0.0, 0.0]}, 422, "x"),
    ({"model": "checkerboard", "x": [[0.0], [0.0, 1.0]]}, 422, "x"),
    ({"model": "checkerboard", "x": [["a", "b"]]}, 422, "x"),
    ({"model": "checkerboard", "x": "abc"}, 422, "x"),
    ({"model": "checkerboard"}, 422, "x"),
    ({"model": "checkerboard", "x": []}, 422, "x"),
    ({"model": "checkerboard", "x": [[1e39, 0.0]]}, 422, "x"),
    ({"model": "checkerboard", "x": [[0.0, 0.0]], "steps": 0}, 422, "steps"),
    ({"model": "checkerboard", "x": [[0.0, 0.0]], "grid": [0, 2]}, 422, "grid"),
    ({"model": "checkerboard", "x": [[0.0, 0.0]], "extra": 1}, 422, "extra"),
    ({"model": "zzz", "x": [[0.0, 0.0]]}, 404, "model"),
    ({"model": "checkerboard", "x": [[0.0, 0.0]] * 33}, 422, "n"),
]


@pytest.mark.parametrize("body,status,field", BAD_ENCODE)
def test_bad_encode_inputs_are_4xx(client, body, status, field):
    _is_error(client.post("/encode", json=body), status, field)


def test_routing_errors_are_json(client):
    _is_error(client.get("/nope"), 404, None)
    _is_error(client.get("/generate"), 405, None)
    _is_error(client.post("/encode"), 422, "x")  # empty body: x is missing


def test_body_too_large_is_413(model_dirs):
    with TestClient(_app(model_dirs, max_body_bytes=1000)) as c:
        _wait_ready(c)
        big = {"model": "checkerboard", "x": [[0.0, 0.0]] * 200}
        _is_error(c.post("/encode", json=big), 413, None)


# ---------------------------------------------------------------------------------------
# auth, metrics, readiness, timeouts
# ---------------------------------------------------------------------------------------


def test_auth_on_every_route_but_health(model_dirs):
    with TestClient(_app(model_dirs, api_key="s3cret")) as c:
        _wait_ready(c)
        assert c.get("/healthz").status_code == 200
        # the playground shell carries no data and must load so the user can enter the key
        assert c.get("/").status_code == 200
        for method, path in (
            ("post", "/generate"),
            ("get", "/v1/models"),
            ("get", "/metrics"),
            ("post", "/encode"),
            ("get", "/openapi.json"),
        ):
            r = getattr(c, method)(path)
            _is_error(r, 401, None)
            assert r.headers["www-authenticate"] == "Bearer"
        _is_error(c.post("/generate", headers={"Authorization": "Bearer wrong"}), 401)
        _is_error(c.post("/generate", headers={"Authorization": "Basic s3cret"}), 401)
        ok = c.post("/generate", params={"seed": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_metrics_count_requests(model_dirs):
    with TestClient(_app(model_dirs)) as c:
        _wait_ready(c)
        for _ in range(3):
            assert (
                c.post(
                    "/generate", params={"model": "checkerboard", "steps": 2, "n": 3}
                ).status_code
                == 200
            )
        c.post("/generate", params={"steps": 0})
        text = c.get("/metrics").text
    assert (
        'anystep_requests_total{model="checkerboard",route="/generate",status="200",steps="2"} 3.0'
        in text
    )
    assert 'route="/generate",status="422"' in text
    assert 'anystep_request_latency_seconds_count{model="checkerboard",steps="2"} 3.0' in text
    # 3 requests x 2 steps = 6 engine calls of 3 rows (plus warm-up, not counted)
    assert 'anystep_engine_batch_size_count{model="checkerboard"} 6.0' in text
    assert 'anystep_engine_batch_size_sum{model="checkerboard"} 18.0' in text
    assert 'anystep_queue_depth{model="checkerboard"}' in text


def test_not_ready_is_503_with_retry_after(model_dirs, monkeypatch):
    from anystep.server import engines

    orig = engines.Engine.warmup

    def slow(self, *a, **k):
        time.sleep(1.0)
        return orig(self, *a, **k)

    monkeypatch.setattr(engines.Engine, "warmup", slow)
    with TestClient(_app({"checkerboard": model_dirs["checkerboard"]})) as c:
        r = c.get("/readyz")
        _is_error(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        g = c.post("/generate")
        _is_error(g, 503)
        assert "retry-after" in g.headers
        assert c.get("/healthz").status_code == 200
        _wait_ready(c)
        assert c.post("/generate").status_code == 200


def test_request_timeout_is_503_not_a_hang(model_dirs):
    with TestClient(
        _app({"cbt": model_dirs["checkerboard-teacher"]}, request_timeout_s=0.001, max_batch=1)
    ) as c:
        _wait_ready(c)
        r = c.post("/generate", json={"solver": "rk4", "steps": 16, "n": 4})
        body = _is_error(r, 503)
        assert body["error"] == "timeout" and "retry-after" in r.headers


# ---------------------------------------------------------------------------------------
# registry / CLI
# ---------------------------------------------------------------------------------------


def test_default_models_come_from_models_dir(tmp_path, monkeypatch, model_dirs):
    import shutil

    shutil.copytree(model_dirs["checkerboard"], tmp_path / "checkerboard")
    shutil.copytree(model_dirs["digits"], tmp_path / "digits")
    monkeypatch.setenv("ANYSTEP_MODELS_DIR", str(tmp_path))
    specs = discover_default_models()
    assert [s.name for s in specs] == ["checkerboard", "digits"]
    monkeypatch.setenv("ANYSTEP_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(RegistryError, match="no bundled models"):
        discover_default_models()


def test_serve_cli_errors_exit_2(tmp_path, monkeypatch, capsys):
    from anystep.cli import main

    monkeypatch.setenv("ANYSTEP_MODELS_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["serve"])
    assert e.value.code == 2 and "no bundled models" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", f"x={tmp_path / 'missing'}"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_model_spec_parsing(tmp_path):
    assert ModelSpec.parse("a=/x/y").name == "a"
    assert ModelSpec.parse("/x/digits").name == "digits"
    for bad in ("=x", "a=", "a b=/x"):
        with pytest.raises(RegistryError):
            ModelSpec.parse(bad)
    with pytest.raises(RegistryError, match="twice"):
        load_models([ModelSpec("a", tmp_path), ModelSpec("a", tmp_path)])


def test_openapi_examples_are_json_serialisable(client):
    json.dumps(client.get("/openapi.json").json())
