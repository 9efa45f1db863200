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
