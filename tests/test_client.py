"""The Python client and ``anystep generate`` against a real server (and a mock transport)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from anystep.client import AnystepConnectionError, AnystepHTTPError, AsyncClient, Client
from anystep.server.testing import ServerProcess, free_port, make_tiny_models


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dirs = make_tiny_models(tmp_path_factory.mktemp("models"), seed=5)
    # a short queue, so that concurrent requests meet 429s
    proc = ServerProcess(
        models=dirs,
        args=["--max-queue", "2", "--max-batch", "4", "--max-steps", "64", "--max-n", "64"],
        log_path=tmp_path_factory.mktemp("logs") / "serve.log",
    )
    with proc:
        yield proc


def test_import_does_not_import_torch():
    code = (
        "import sys, anystep.client, anystep.client.cli, anystep.client.api; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_generate_each_format(server):
    with Client(server.url) as c:
        npy = c.generate(model="digits", steps=2, n=4, seed=0)
        assert (
            npy.format == "npy"
            and npy.samples.shape == (4, 8, 8)
            and npy.samples.dtype == np.float32
        )
        assert (npy.model, npy.kind, npy.steps, npy.nfe, npy.seed, npy.n) == (
            "digits",
            "flowmap",
            2,
            2,
            0,
            4,
        )
        assert set(npy.timing_ms) == {"total", "queue", "compute"}
        js = c.generate(model="digits", steps=2, n=4, seed=0, format="json")
        np.testing.assert_allclose(js.samples, npy.samples, atol=1e-5)
        assert js.grid == [0.0, 0.5, 1.0]
        png = c.generate(model="digits", steps=2, n=4, seed=0, format="png")
        assert (
            png.samples is None and isinstance(png.image, Image.Image) and png.png[:4] == b"\x89PNG"
        )
        assert png.steps == 2 and png.seed == 0
        picked = c.generate(model="checkerboard", n=3)
        assert picked.seed is not None
        again = c.generate(model="checkerboard", n=3, seed=picked.seed)
        np.testing.assert_array_equal(again.samples, picked.samples)
        ode = c.generate(model="checkerboard-teacher", steps=3, n=2, seed=1, solver="rk4")
        assert ode.solver == "rk4" and ode.nfe == 12
        budget = c.generate(model="checkerboard", n=2, seed=1, latency_ms=1e5)
        assert budget.chosen_by_budget and budget.steps == 64


def test_encode_models_health(server):
    with Client(server.url) as c:
        assert c.health() == {"status": "ok"} and c.ready()
        names = {m["name"] for m in c.models()}
        assert names == {"checkerboard", "checkerboard-teacher", "digits"}
        e = c.encode([[0.1, 0.2], [1.0, -1.0]], model="checkerboard", steps=2)
        assert e.z.shape == (2, 2) and e.steps == 2 and e.nfe == 2


def test_errors_carry_the_server_message(server):
    with Client(server.url) as c:
        with pytest.raises(AnystepHTTPError) as ei:
            c.generate(model="checkerboard", steps=0)
        e = ei.value
        assert (e.status, e.error, e.field) == (422, "out_of_range", "steps")
        assert "steps=0" in e.message and "1..64" in e.message and "steps=0" in str(e)
        with pytest.raises(AnystepHTTPError) as ei:
            c.generate(model="nope")
        assert ei.value.status == 404 and "checkerboard" in ei.value.message
        with pytest.raises(AnystepHTTPError) as ei:
            c.encode([[0.0, 0.0]], model="checkerboard-teacher")
        assert ei.value.field == "model"
    with pytest.raises(ValueError, match="format"):
        Client(server.url).generate(format="gif")


def test_retries_with_backoff_on_a_full_queue(server):
    """8 concurrent long requests against a queue of 2: raw HTTP meets 429 + Retry-After,
    the client retries with backoff and every request succeeds."""
    body = {"model": "checkerboard-teacher", "solver": "rk4", "steps": 24, "n": 16, "seed": 3}

    def raw(_):
        return httpx.post(server.url + "/generate", json=body, timeout=60.0)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(raw, range(8)))
    rejected = [r for r in answers if r.status_code == 429]
    assert rejected, [r.status_code for r in answers]
    assert all(
        int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "queue_full" for r in rejected
    )
    assert all(r.status_code in (200, 429) for r in answers)

    def with_client(_):
        with Client(server.url, retries=50, backoff=0.02, max_backoff=0.2) as c:
            return c.generate(**{k: v for k, v in body.items()}, format="npy")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(with_client, range(8)))
    for r in results:  # same seed: same samples, whichever attempt got through
        np.testing.assert_allclose(r.samples, results[0].samples, atol=1e-5)


def test_async_client_matches_sync(server):
    async def go():
        async with AsyncClient(server.url, retries=20, backoff=0.02, max_backoff=0.2) as c:
            assert await c.ready()
            rs = await asyncio.gather(
                *(c.generate(model="checkerboard", steps=k, n=2, seed=k) for k in (1, 2, 4))
            )
            models = await c.models()
            return rs, models

    rs, models = asyncio.run(go())
    assert len(models) == 3
    with Client(server.url) as c:
        for k, r in zip((1, 2, 4), rs):
            assert r.steps == k
            np.testing.assert_allclose(
                r.samples, c.generate(model="checkerboard", steps=k, n=2, seed=k).samples, atol=1e-5
            )


def test_retry_logic_with_a_mock_transport():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"error": "not_ready", "message": "warming up", "field": None},
            )
        assert request.headers["authorization"] == "Bearer k"
        assert json.loads(request.content) == {"n": 2, "format": "json", "steps": 3, "seed": 7}
        return httpx.Response(
            200,
            json={
                "model": "m",
                "kind": "flowmap",
                "steps": 3,
                "nfe": 3,
                "seed": 7,
                "n": 2,
                "shape": [2, 2],
                "samples": [[0, 1], [None, 2]],
                "solver": None,
                "grid": [0, 0.5, 1],
                "timing_ms": {"total": 1, "queue": 0, "compute": 1},
                "chosen_by_budget": False,
            },
        )

    c = Client(
        "http://anystep.test",
        api_key="k",
        retries=3,
        backoff=0.0,
        transport=httpx.MockTransport(handler),
    )
    r = c.generate(steps=3, n=2, seed=7, format="json")
    assert len(calls) == 3 and r.samples.shape == (2, 2) and np.isnan(r.samples[1, 0])

    calls.clear()
    c2 = Client(
        "http://anystep.test",
        retries=1,
        backoff=0.0,
        transport=httpx.MockTransport(
            lambda req: httpx.Response(
                429,
                headers={"Retry-After": "0"},
                json={"error": "queue_full", "message": "full", "field": None},
            )
        ),
    )
    with pytest.raises(AnystepHTTPError) as ei:
        c2.generate()
    assert ei.value.status == 429 and ei.value.retry_after == 0.0


def test_connection_errors_are_reported():
    port = free_port()
    with pytest.raises(AnystepConnectionError, match="cannot reach"):
        Client(f"http://127.0.0.1:{port}", retries=1, backoff=0.01).health()


def test_generate_cli(server, tmp_path, capsys):
    # end to end in a subprocess once ...
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "anystep.cli",
            "generate",
            "--url",
            server.url,
            "--model",
            "digits",
            "--steps",
            "1",
            "-n",
            "16",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "grid.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 32 and "seed=0" in r.stderr

    # ... and in-process for the other outputs and errors
    from anystep.cli import main

    def cli(*args) -> int:
        try:
            main(["generate", "--url", server.url, *args])
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    assert (
        cli(
            "--model",
            "digits",
            "--steps",
            "1",
            "-n",
            "16",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "s.npy"),
        )
        == 0
    )
    arr = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert arr.shape == (16, 8, 8)
    assert (
        cli(
            "--model",
            "digits",
            "--steps",
            "1",
            "-n",
            "16",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "s.json"),
        )
        == 0
    )
    doc = json.loads((tmp_path / "s.json").read_text())
    np.testing.assert_allclose(np.array(doc["samples"]), arr, atol=1e-5)
    assert doc["nfe"] == 1 and doc["seed"] == 0
    capsys.readouterr()
    assert cli("--model", "checkerboard", "-n", "2", "--seed", "1") == 0  # JSON on stdout
    assert json.loads(capsys.readouterr().out)["shape"] == [2, 2]
    assert cli("--model", "digits", "--steps", "0") == 2
    err = capsys.readouterr().err
    assert "steps=0" in err and "Traceback" not in err
    assert cli("--out", str(tmp_path / "x.gif")) == 2
    assert ".png" in capsys.readouterr().err
