"""Serving a class-conditional map: class / guidance per request or per sample, clear 422s, batch invariance."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import save_model_dir
from anystep.server.app import ServerConfig, create_app
from anystep.server.registry import Limits, ModelSpec


def _model(tmp_path, kind: str):
    cfg = ModelConfig(
        kind=kind,
        backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2 if kind == "flowmap" else 1, width=32, depth=2),
        data_shape=(2,), dataset="blobs", num_classes=4, guidance_input=kind == "flowmap", ansatz="residual",
        provenance={"objective_hparams": {"guidance_min": 1.0, "guidance_max": 3.0}} if kind == "flowmap" else {},
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".cond." in f".{name}":
                p.copy_(torch.randn(p.shape))
    return save_model_dir(tmp_path / kind, model, cfg)


@pytest.fixture(scope="module", params=["torch", "onnx"])
def client(request, tmp_path_factory):
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp(f"cond-{request.param}")
    specs = [ModelSpec("cond", _model(tmp, "flowmap")), ModelSpec("condv", _model(tmp, "velocity"))]
    cfg = ServerConfig(models=specs, limits=Limits(max_steps=16, max_n=64, max_compute=4096), engine=request.param)
    with TestClient(create_app(cfg)) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


def _gen(c, **params):
    r = c.post("/generate", json=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_class_and_guidance_per_request_and_per_sample(client):
    a = _gen(client, model="cond", n=4, seed=10, **{"class": 2}, guidance=2.0)
    assert a["class"] == [2, 2, 2, 2] and a["guidance"] == [2.0] * 4 and a["nfe"] == 1
    b = _gen(client, model="cond", n=3, seed=10, **{"class": [2, 0, 1]}, guidance=[2.0, 1.0, 3.0])
    assert b["class"] == [2, 0, 1]
    np.testing.assert_allclose(np.array(a["samples"])[0], np.array(b["samples"])[0], atol=1e-5)  # same seed/class/w
    c = _gen(client, model="cond", n=1, seed=10, **{"class": 3}, guidance=2.0)
    assert not np.allclose(np.array(a["samples"])[0], np.array(c["samples"])[0], atol=1e-3)  # the class matters
    q = client.post("/generate?model=cond&class=1,2&guidance=1.5&n=2&seed=3")
    assert q.status_code == 200, q.text
    assert q.json()["class"] == [1, 2]


def test_default_class_is_drawn_from_the_seed(client):
    a = _gen(client, model="cond", n=5, seed=100)
    b = _gen(client, model="cond", n=2, seed=103)
    assert a["class"][3:] == b["class"] and a["guidance"] == [1.0] * 5
    np.testing.assert_allclose(np.array(a["samples"])[3:], np.array(b["samples"]), atol=1e-5)


@pytest.mark.parametrize(
    "params, field, text",
    [
        ({"class": 4}, "class", "0..3"),
        ({"class": [0, 1]}, "class", "one per sample"),
        ({"guidance": 7.0}, "guidance", "1..3"),
        ({"class": "x"}, "class", ""),
    ],
)
def test_bad_conditioning_is_a_422(client, params, field, text):
    r = client.post("/generate", json={"model": "cond", "n": 3, **params})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field and text in body["message"]


def test_guidance_on_an_unconditional_model_is_a_422(tmp_path):
    from anystep.server.testing import make_tiny_models

    dirs = make_tiny_models(tmp_path, seed=1)
    name, path = next(iter(dirs.items()))
    cfg = ServerConfig(models=[ModelSpec(name, path)], engine="torch")
    with TestClient(create_app(cfg)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.post("/generate", json={"model": name, "guidance": 2.0})
        assert r.status_code == 422 and "unconditional" in r.json()["message"]


def test_guided_velocity_counts_two_evaluations(client):
    a = _gen(client, model="condv", n=2, seed=1, **{"class": 1}, guidance=2.0, solver="euler", steps=4)
    assert a["nfe"] == 8
    info = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert info["cond"]["num_classes"] == 4 and info["cond"]["guidance_range"] == [1.0, 3.0]


def test_client_sends_class_and_guidance():
    from anystep.client.messages import _generate_payload

    body = _generate_payload("digits-cond", 1, 3, 0, "npy", None, None, None, None, 7, [1.0, 2.0, 3.0])
    assert body["class"] == 7 and body["guidance"] == [1.0, 2.0, 3.0]
    body = _generate_payload("digits-cond", 1, 2, 0, "npy", None, None, None, None, [1, 2], 2)
    assert body["class"] == [1, 2] and body["guidance"] == 2.0
    assert "class" not in _generate_payload("digits", 1, 1, 0, "npy", None, None, None, None)
