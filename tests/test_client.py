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
from cli_run import exit_code
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
        assert "steps=0" in e.message and "steps=0" in str(e)
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
    def cli(*args) -> int:
        return exit_code(["generate", "--url", server.url, *args])

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


# --------------------------------------------------------------------------------------
# issue 19 item 9: torch-free and quick, one-line errors, no dumped HTML, clear input errors
# --------------------------------------------------------------------------------------

BLOCK_TORCH = """
import sys, time
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test: the client must not import it")
        return None
sys.meta_path.insert(0, _NoTorch())
t0 = time.perf_counter()
from anystep.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = int(e.code or 0)
else:
    code = 0
print(f"seconds={time.perf_counter() - t0:.3f}", file=sys.stderr)
sys.exit(code)
"""


def _blocked(args, timeout=120):
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_generate_help_and_generate_run_with_torch_blocked(server, tmp_path):
    r = _blocked(["generate", "--help"])
    assert r.returncode == 0, r.stderr
    assert "--url" in r.stdout and "Ask a running anystep server" in r.stdout
    r = _blocked(["generate", "--url", server.url, "--model", "checkerboard", "--steps", "2", "-n", "8",
                  "--seed", "0", "--out", str(tmp_path / "cb.npy")])
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "cb.npy").shape == (8, 2)
    r = _blocked(["generate", "--url", "ftp://127.0.0.1:1", "--out", str(tmp_path / "x.npy")])
    assert r.returncode == 2 and "ftp://" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://127.0.0.1:8000", "uses ftp://"),
        ("http://[::1", "malformed"),
        ("http://127.0.0.1:99999", "malformed"),
        ("http://", "no host"),
        ("http://a b:1", "spaces"),
        ("http://127.0.0.1:8000/?x=1", "query"),
    ],
)
def test_malformed_url_is_one_line_exit_2(url, fragment, tmp_path, capsys):
    from anystep.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["generate", "--url", url, "--retries", "0", "--out", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert ei.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    from anystep.client import AnystepInputError

    with pytest.raises(AnystepInputError, match=fragment.split()[0]):
        Client(url)


HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>" + "x" * 5000
    + "</style></head><body><h1>Bad Gateway</h1><p>" + "lorem ipsum " * 500 + "</p></body></html>"
)


def _html_transport(status):
    return httpx.MockTransport(
        lambda req: httpx.Response(status, text=HTML_PAGE, headers={"content-type": "text/html"})
    )


def test_html_error_of_another_server_is_summarised_not_dumped():
    with Client("http://proxy.example:80", retries=0, transport=_html_transport(502)) as c, pytest.raises(
        AnystepHTTPError
    ) as ei:
        c.generate(n=1)
    msg = str(ei.value)
    assert "502 Bad Gateway" in msg and "not an anystep" in msg
    assert len(msg) < 400 and "\n" not in msg and "lorem" not in msg and "<" not in msg


def test_html_200_of_another_server_is_a_clear_error():
    from anystep.client import AnystepProtocolError

    with Client("http://other.example", retries=0, transport=_html_transport(200)) as c:
        with pytest.raises(AnystepProtocolError, match="anystep server"):
            c.generate(n=1)
        with pytest.raises(AnystepProtocolError, match="anystep server"):
            c.models()
    json_200 = httpx.MockTransport(lambda req: httpx.Response(200, json={"hello": "world"}))
    with Client("http://other.example", retries=0, transport=json_200) as c:
        for call in (lambda: c.generate(n=1, format="json"), lambda: c.encode([[0.0, 0.0]]), c.models):
            with pytest.raises(AnystepProtocolError, match="not an anystep answer"):
                call()


def test_html_error_in_the_cli_is_one_line(monkeypatch, capsys, tmp_path):
    from anystep.client import api

    real = api.Client.__init__

    def patched(self, url, *a, **kw):
        kw["transport"] = _html_transport(404)
        real(self, url, *a, **kw)

    monkeypatch.setattr(api.Client, "__init__", patched)
    from anystep.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["generate", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert ei.value.code == 2 and len(err) == 1 and "HTTP 404" in err[0] and "lorem" not in err[0], err


@pytest.mark.parametrize("x", [[[float("nan"), 0.0]], [[0.0, float("inf")]], [["a", 0.0]], [1.0, 2.0], []])
def test_encode_of_bad_data_raises_an_anystep_error_before_sending(x):
    from anystep.client import AnystepClientError, AnystepInputError

    sent = []
    t = httpx.MockTransport(lambda req: sent.append(req) or httpx.Response(500))
    with Client("http://127.0.0.1:1", retries=0, transport=t) as c, pytest.raises(AnystepInputError) as ei:
        c.encode(x)
    assert isinstance(ei.value, AnystepClientError) and sent == []
    assert "encode needs" in str(ei.value)


def test_readme_generate_works_against_the_readme_serve_command(tmp_path):
    """The README's `anystep serve ...` then `anystep generate ... -n 1000` (bundled models)."""
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    lines = (repo / "README.md").read_text().splitlines()
    serve = next(ln for ln in lines if ln.strip().startswith("anystep serve "))
    gen = next(ln for ln in lines if ln.strip().startswith("anystep generate ") and "-n 1000" in ln)
    serve_args = shlex.split(serve.strip().rstrip("&"))[2:]
    models, extra, it = {}, [], iter(serve_args)
    for a in it:
        if a == "--model":
            name, _, path = next(it).partition("=")
            models[name] = repo / path
        elif a in ("--port", "--host"):
            next(it)
        else:
            extra.append(a)
    if "--engine" in extra and extra[extra.index("--engine") + 1] == "onnx":
        pytest.importorskip("onnxruntime")
    for p in models.values():
        if not (p / "config.json").is_file():
            pytest.skip(f"{p} is not bundled")
    gen_args = shlex.split(gen.strip())[2:]
    out_i = gen_args.index("--out") + 1
    gen_args[out_i] = str(tmp_path / gen_args[out_i])
    with ServerProcess(models=models, args=extra, log_path=tmp_path / "serve.log") as srv:
        r = subprocess.run([sys.executable, "-m", "anystep.cli", "generate", "--url", srv.url, *gen_args],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr + srv.log_tail()
        assert "n=1000" in r.stderr
        assert Image.open(gen_args[out_i]).size[0] > 64
        with Client(srv.url) as c:  # and the same request for the samples themselves
            npy = c.generate(model=gen_args[gen_args.index("--model") + 1], steps=4, n=1000, seed=0)
            assert npy.samples.shape == (1000, 2) and np.isfinite(npy.samples).all()
