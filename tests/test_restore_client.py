"""Translation sources through the Python client, ``anystep generate --source`` and ``anystep sample --source``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import exit_code

pytest.importorskip("fastapi")

from anystep.client import AnystepHTTPError, AnystepInputError, Client
from anystep.core.data import get_dataset
from anystep.server.testing import ServerProcess

MODELS = Path(__file__).resolve().parents[1] / "models"
RESTORE = MODELS / "digits-restore"


@pytest.fixture(scope="module")
def noisy():
    ds = get_dataset("digits-noisy:test")
    return ds.to_units(ds.degrade(ds.tensor[:5], torch.Generator().manual_seed(7)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (RESTORE / "config.json").is_file():
        pytest.skip("models/digits-restore is not bundled")
    proc = ServerProcess(models={"restore": RESTORE, "digits": MODELS / "digits"},
                         log_path=tmp_path_factory.mktemp("logs") / "serve.log")
    with proc:
        yield proc


def test_client_sends_sources_and_reads_them_back(server, noisy):
    with Client(server.url, retries=0) as c:
        j = c.generate(model="restore", source=noisy, format="json", steps=2)
        assert j.samples.shape == (5, 8, 8) and j.n == 5 and j.nfe == 2
        np.testing.assert_allclose(j.source, noisy, atol=1e-5)
        b = c.generate(model="restore", source=noisy.tolist(), steps=2)  # npy answer, list input
        np.testing.assert_allclose(b.samples, j.samples, atol=1e-5)
        with pytest.raises(AnystepHTTPError) as ei:
            c.generate(model="restore", source=np.zeros((2, 7, 7)))
        assert ei.value.field == "source" and ei.value.status == 422
        with pytest.raises(AnystepHTTPError) as ei:
            c.generate(model="digits", source=noisy)
        assert ei.value.field == "source" and ei.value.error == "not_translation"


@pytest.mark.parametrize(
    "source, n, text",
    [(np.full((1, 8, 8), np.nan), 1, "NaN"), (np.zeros((2, 8, 8)), 3, "n=3"), ("noisy", 1, "numbers")],
)
def test_client_checks_sources_before_sending(source, n, text):
    with Client("http://127.0.0.1:1", retries=0) as c, pytest.raises(AnystepInputError) as ei:
        c.generate(model="restore", source=source, n=n)
    assert text in str(ei.value)


def _cli(*args) -> int:
    return exit_code(list(args))


def test_generate_and_sample_cli_with_a_source(server, noisy, tmp_path, capsys):
    np.save(tmp_path / "noisy.npy", noisy)
    out = tmp_path / "restored.json"
    assert _cli("generate", "--url", server.url, "--model", "restore", "--source", str(tmp_path / "noisy.npy"),
                "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["shape"] == [5, 8, 8] and np.allclose(doc["source"], noisy, atol=1e-5)
    # anystep sample runs the same map offline on the same sources
    assert _cli("sample", str(RESTORE), "--source", str(tmp_path / "noisy.npy"), "--out", str(tmp_path / "s.npy")) == 0
    offline = np.load(tmp_path / "s.npy", allow_pickle=False)
    np.testing.assert_allclose(offline, np.array(doc["samples"]), atol=1e-4)
    # a source file of the wrong shape: exit 2, one error naming --source
    np.save(tmp_path / "bad.npy", np.zeros((2, 7, 7), np.float32))
    capsys.readouterr()
    assert _cli("generate", "--url", server.url, "--model", "restore", "--source", str(tmp_path / "bad.npy")) == 2
    err = capsys.readouterr().err
    assert "source" in err and "[n, 8, 8]" in err and "Traceback" not in err
    assert _cli("sample", str(RESTORE), "--source", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b.npy")) == 2
    assert _cli("sample", str(MODELS / "digits"), "--source", str(tmp_path / "noisy.npy"),
                "--out", str(tmp_path / "b.npy")) == 2
    assert "base gaussian" in capsys.readouterr().err


def test_sample_cli_draws_sources_from_the_data_base(tmp_path):
    """Without --source a translation map restores degraded digits drawn from the seed (not Gaussian noise)."""
    from anystep.core.api import generate
    from anystep.core.data import seeded_base_samples

    res = generate(RESTORE, n=3, seed=11, steps=1)
    x0 = seeded_base_samples("digits-noisy", 11, 3, (1, 8, 8))
    from anystep.core.modeldir import load_model_dir
    from anystep.core.samplers import sample_flowmap

    want = sample_flowmap(load_model_dir(RESTORE).model, x0, steps=1).x
    torch.testing.assert_close(res.x, want, atol=1e-5, rtol=0)
