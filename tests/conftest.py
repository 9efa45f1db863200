import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")
# OpenMP threads that spin-wait make every small torch call slow on a busy 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # client-only environments
    pass


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after): deterministic kernels, no oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """An app, not started yet, serving ``make_tiny_models``' 2-D pair (``checkerboard`` flow map,
    ``checkerboard-teacher`` velocity) on the torch engine, at most 16 steps and 32 samples.

    A test module that needs more on the app before it starts (user middleware) overrides this
    fixture with one of the same name that takes ``tiny_app`` and returns it changed.
    """
    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import Limits, ModelSpec
    from anystep.server.testing import make_tiny_models

    dirs = make_tiny_models(tmp_path_factory.mktemp("models"), seed=3, digits=False)
    cfg = ServerConfig(
        models=[ModelSpec(n, p) for n, p in dirs.items()], engine="torch", limits=Limits(max_steps=16, max_n=32)
    )
    return create_app(cfg)


@pytest.fixture(scope="module")
def tiny_served(tiny_app):
    """``(app, client)``: ``tiny_app`` started in a ``TestClient``, once ``/readyz`` answers 200."""
    import time

    from fastapi.testclient import TestClient

    with TestClient(tiny_app) as c:
        deadline = time.monotonic() + 30.0
        while c.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                pytest.fail("the tiny server never became ready (/readyz) within 30 s")
            time.sleep(0.05)
        yield tiny_app, c
