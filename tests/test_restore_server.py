"""Serving a translation map (base: a data set): source samples in the /generate body, 422s, reproducibility.

The model is the bundled restoration map ``models/digits-restore`` (noisy digits -> clean,
base ``digits-noisy``); a Gaussian-base map (``models/digits``) checks the refusals.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from anystep.core.data import get_dataset, seeded_base_samples
from anystep.core.modeldir import load_model_dir
from anystep.core.samplers import sample_flowmap
from anystep.core.units import units_for
from anystep.server.app import ServerConfig, create_app
from anystep.server.registry import Limits, ModelSpec

MODELS = Path(__file__).resolve().parents[1] / "models"
RESTORE = MODELS / "digits-restore"


@pytest.fixture(scope="module")
def client():
    if not (RESTORE / "config.json").is_file():
        pytest.skip("models/digits-restore is not bundled")
    specs = [ModelSpec("restore", RESTORE), ModelSpec("digits", MODELS / "digits")]
    cfg = ServerConfig(models=specs, limits=Limits(max_steps=16, max_n=64, max_compute=4096), engine="torch")
    with TestClient(create_app(cfg)) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def noisy():
    """Six degraded test digits in grey levels (the base data set's units), and their clean originals."""
    ds = get_dataset("digits-noisy:test")
    clean = ds.tensor[:6]
    degraded = ds.degrade(clean, torch.Generator().manual_seed(3))
    return ds.to_units(degraded), ds.to_units(clean)


def _gen(c, **body):
    r = c.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_translation_and_source_shape(client):
    info = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert info["restore"]["translation"] is True and info["restore"]["base"] == "digits-noisy"
    assert info["restore"]["source_shape"] == [8, 8] and info["restore"]["invertible"] is True
    assert info["digits"]["translation"] is False and info["digits"]["source_shape"] is None


@pytest.mark.parametrize("steps", [1, 2])
def test_source_is_mapped_by_the_map(client, noisy, steps):
    """The answer is X_{0,1} of the given sources (model units in, data units out), n = their number."""
    src, _ = noisy
    d = _gen(client, model="restore", source=src.tolist(), steps=steps)
    assert d["n"] == 6 and d["shape"] == [6, 8, 8] and d["nfe"] == steps
    np.testing.assert_allclose(np.array(d["source"]), src, atol=1e-5)  # the sources are echoed back
    lm = load_model_dir(RESTORE)
    x0 = torch.from_numpy(units_for("digits-noisy", (1, 8, 8)).from_units(src))
    want = units_for("digits", (1, 8, 8)).to_units(sample_flowmap(lm.model, x0, steps=steps).x.numpy())
    np.testing.assert_allclose(np.array(d["samples"]), want, atol=1e-4)


def test_restoration_moves_toward_the_clean_digit(client, noisy):
    """The bundled map restores: closer to the clean digits than the noisy sources are."""
    src, clean = noisy
    out = np.array(_gen(client, model="restore", source=src.tolist())["samples"])
    assert np.mean((out - clean) ** 2) < 0.6 * np.mean((np.clip(src, 0, 16) - clean) ** 2)


def test_same_source_same_sample_in_any_batch(client, noisy):
    src, _ = noisy
    alone = np.array(_gen(client, model="restore", source=src[2:3].tolist())["samples"])
    batch = np.array(_gen(client, model="restore", source=src.tolist())["samples"])
    again = np.array(_gen(client, model="restore", source=src.tolist())["samples"])
    np.testing.assert_allclose(batch[2:3], alone, atol=1e-4)  # 1e-5 in model units = 8e-5 grey levels
    np.testing.assert_array_equal(batch, again)


def test_npy_body_with_query_parameters(client, noisy):
    src, _ = noisy
    buf = io.BytesIO()
    np.save(buf, src.astype(np.float32), allow_pickle=False)
    r = client.post("/generate?model=restore&steps=2&format=npy", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    want = np.array(_gen(client, model="restore", source=src.tolist(), steps=2)["samples"])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_without_source_the_sources_are_drawn_from_the_seed(client):
    a = _gen(client, model="restore", n=3, seed=40)
    b = _gen(client, model="restore", n=2, seed=41)
    np.testing.assert_allclose(np.array(a["source"])[1:], np.array(b["source"]), atol=1e-6)
    np.testing.assert_allclose(np.array(a["samples"])[1:], np.array(b["samples"]), atol=1e-4)
    drawn = seeded_base_samples("digits-noisy", 40, 3, (1, 8, 8)).numpy()
    np.testing.assert_allclose(np.array(a["source"]), units_for("digits-noisy", (1, 8, 8)).to_units(drawn), atol=1e-5)
    # the echoed source, sent back, gives the same restoration
    c = _gen(client, model="restore", source=a["source"])
    np.testing.assert_allclose(np.array(c["samples"]), np.array(a["samples"]), atol=1e-4)


@pytest.mark.parametrize(
    "body, status, error, field, text",
    [
        ({"model": "restore", "source": [[[0.0] * 8] * 7]}, 422, "invalid_shape", "source", "[n, 8, 8]"),
        ({"model": "restore", "source": [[0.0] * 64]}, 422, "invalid_shape", "source", "[n, 8, 8]"),
        ({"model": "restore", "source": [[["a"] * 8] * 8]}, 422, "invalid_type", "source", "numbers"),
        ({"model": "restore", "source": "noisy"}, 422, "invalid_type", "source", "[n, 8, 8]"),
        ({"model": "restore", "source": [[[0.0] * 8] * 8], "n": 2}, 422, "conflict", "n", "drop n"),
        ({"model": "restore", "source": []}, 422, "invalid_shape", "source", "[n, 8, 8]"),
        ({"model": "digits", "source": [[[0.0] * 8] * 8]}, 422, "not_translation", "source", "base gaussian"),
    ],
)
def test_bad_source_is_a_422_naming_the_field(client, body, status, error, field, text):
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    d = r.json()
    assert (d["error"], d["field"]) == (error, field) and text in d["message"]


def test_source_in_the_query_or_non_finite_npy_is_refused(client):
    r = client.post("/generate?model=restore&source=1")
    assert r.status_code == 422 and r.json()["field"] == "source"
    buf = io.BytesIO()
    np.save(buf, np.full((1, 8, 8), np.nan, np.float32), allow_pickle=False)
    r = client.post("/generate?model=restore", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 422 and r.json()["field"] == "source" and "finite" in r.json()["message"]
    r = client.post("/generate?model=restore", content=b"not npy", headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_npy"


def test_gaussian_models_answer_without_a_source_field(client):
    d = _gen(client, model="digits", n=2, seed=1)
    assert "source" not in d and d["shape"] == [2, 8, 8]


def test_openapi_documents_source_in_the_body_only(client):
    op = client.get("/openapi.json").json()["paths"]["/generate"]["post"]
    assert "source" not in {p["name"] for p in op["parameters"]}
    assert "source" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
