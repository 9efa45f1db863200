"""Property-based fuzzing of the OpenAPI schema (schemathesis) against a live server: no 5xx.

Schemathesis reads ``/openapi.json``, generates valid and invalid requests for every
operation (query parameters, JSON bodies, wrong types, boundary values) and checks each
answer: never a server error, status codes and content types as documented, JSON bodies
matching their response schemas.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anystep.server.testing import ServerProcess, make_tiny_models

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _schemathesis() -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    if not found:
        pytest.skip("schemathesis is not installed (extra 'dev')")
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # 2D models only: generated requests name the documented example model, rarely another
    dirs = make_tiny_models(tmp_path_factory.mktemp("models"), seed=6, digits=False)
    proc = ServerProcess(
        models=dirs,
        args=["--max-steps", "16", "--max-n", "16", "--max-compute", "512"],
        log_path=tmp_path_factory.mktemp("logs") / "serve.log",
    )
    with proc:
        yield proc


def _fuzz(server: ServerProcess, tmp_path: Path, max_examples: int, timeout: float) -> None:
    cmd = [
        _schemathesis(),
        "run",
        server.url + "/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        "--seed",
        "0",
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
    ]
    # cwd: schemathesis writes its reports and caches into the working directory
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, check=False
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:] + "\nserver log:\n" + server.log_tail()
    assert "passed" in out and " failed" not in out.split("SUMMARY")[-1], out[-3000:]
    assert "unhandled error" not in server.log_tail(100_000), server.log_tail()


def test_fuzz_openapi_no_5xx(server, tmp_path):
    _fuzz(server, tmp_path, max_examples=25, timeout=120)


@pytest.mark.slow
def test_fuzz_openapi_no_5xx_long(server, tmp_path):
    _fuzz(server, tmp_path, max_examples=400, timeout=600)
