"""FID with Inception-v3 features, through torch-fidelity or pytorch-fid, offline only.

The paper reports FID and Teacher-FID (T-FID) of CIFAR-10 / ImageNet-32 samples
(Sec. 4.2, Tables 1 and 2): the Frechet distance ``|mu_a - mu_b|^2 + tr(S_a + S_b
- 2 (S_a S_b)^{1/2})`` between Gaussians fitted to the 2048-d pool features of the
TF-ported Inception-v3 of the original FID code. This module extracts those
features with an established package and computes the distance with
``anystep.core.metrics.frechet_distance``:

* ``torch-fidelity`` (``FeatureExtractorInceptionV3``, feature ``"2048"``), weights
  file ``weights-inception-2015-12-05-6726825d.pth``;
* ``pytorch-fid`` (``InceptionV3([3])``), weights file
  ``pt_inception-2015-12-05-6726825d.pth``.

**No downloads, ever.** Both packages download their weights on first use;
here the weights file must already be on disk, found (in this order) at

1. ``$ANYSTEP_FID_WEIGHTS`` (a path to either file), then
2. ``<torch hub dir>/checkpoints/<file name>`` (``torch.hub.get_dir()``, i.e.
   ``$TORCH_HOME/hub`` or ``~/.cache/torch/hub``), where the packages cache it.

When no weights file is found :func:`find_inception_weights` raises
:class:`FIDUnavailableError` naming every path searched and how to provide one;
when the package is missing it says what to install. Both checks run before any
network is built. Note that both packages read the weights with ``torch.load``
(PyTorch's own ``.pth`` format, not safetensors); only put a file you trust there.

Images: ``[n, 3, H, W]`` (or ``[n, 1, H, W]``, repeated to RGB) in model units
``[-1, 1]``; they are quantised to 8-bit as the FID reference code does.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anystep.core.metrics import frechet_distance
from anystep.errors import AnystepError

__all__ = [
    "BACKENDS",
    "WEIGHT_FILES",
    "FIDUnavailableError",
    "InceptionFID",
    "InceptionWeights",
    "fid_status",
    "find_inception_weights",
]

ENV_VAR = "ANYSTEP_FID_WEIGHTS"
BACKENDS = ("torch-fidelity", "pytorch-fid")
WEIGHT_FILES = {
    "torch-fidelity": "weights-inception-2015-12-05-6726825d.pth",
    "pytorch-fid": "pt_inception-2015-12-05-6726825d.pth",
}
_MODULES = {"torch-fidelity": "torch_fidelity", "pytorch-fid": "pytorch_fid"}


class FIDUnavailableError(AnystepError):
    """Inception FID cannot run offline here; the message says what is missing and how to add it."""


@dataclass
class InceptionWeights:
    """A located weights file.

    Attributes:
        backend: ``"torch-fidelity"`` or ``"pytorch-fid"`` (which package reads it).
        path: the file.
    """

    backend: str
    path: Path


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _candidates(backend: str | None) -> list[tuple[str, Path]]:
    """``(backend, path)`` pairs to try, in order: ``$ANYSTEP_FID_WEIGHTS``, then the hub cache."""
    backends = BACKENDS if backend is None else (backend,)
    out: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if backend is None:
            backend_of_env = "pytorch-fid" if p.name == WEIGHT_FILES["pytorch-fid"] else "torch-fidelity"
        else:
            backend_of_env = backend
        out.append((backend_of_env, p))
    for b in backends:
        out.append((b, _hub_checkpoints() / WEIGHT_FILES[b]))
    return out


def find_inception_weights(backend: str | None = None) -> InceptionWeights:
    """Locate an Inception weights file on disk (never downloads).

    Args:
        backend: ``"torch-fidelity"``, ``"pytorch-fid"`` or None (either).

    Returns:
        The first file found (``$ANYSTEP_FID_WEIGHTS`` first, then the torch hub cache).

    Raises:
        FIDUnavailableError: no file found; the message lists every path searched.
        ValueError: unknown ``backend``.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown FID backend {backend!r}; choose one of {list(BACKENDS)}")
    searched = []
    for b, p in _candidates(backend):
        if p.is_file():
            return InceptionWeights(backend=b, path=p)
        searched.append(str(p))
    names = " or ".join(WEIGHT_FILES[b] for b in (BACKENDS if backend is None else (backend,)))
    raise FIDUnavailableError(
        "Inception FID weights are not present locally and are never downloaded at run time. "
        f"Searched: {', '.join(searched)}. To enable FID, copy {names} (from a machine with internet "
        f"access, where the package caches it on first use) into {_hub_checkpoints()} or set "
        f"{ENV_VAR}=/path/to/file. Without them use digits-FD (anystep.benchmarks.digits_classifier)."
    )


def _check_package(backend: str) -> None:
    module = _MODULES[backend]
    if importlib.util.find_spec(module) is None:
        raise FIDUnavailableError(
            f"Inception weights for {backend} were found but the package is not installed: "
            f"pip install {backend} (it needs a torchvision built for this torch version)"
        )


def fid_status(backend: str | None = None) -> str:
    """One line saying whether Inception FID can run here (for benchmark reports)."""
    try:
        w = find_inception_weights(backend)
        _check_package(w.backend)
    except FIDUnavailableError as exc:
        return f"unavailable: {exc}"
    return f"available: {w.backend} with {w.path}"


def _to_uint8_rgb(x: Tensor | np.ndarray) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(
            f"FID needs images of shape [n, 3, H, W] or [n, 1, H, W] in model units [-1, 1], got {list(t.shape)}"
        )
    if t.shape[1] == 1:
        t = t.repeat(1, 3, 1, 1)
    return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionFID:
    """Inception-v3 pool features and FID, offline.

    Construction checks weights and package first (raising
    :class:`FIDUnavailableError` with a clear message); nothing is downloaded.

    Args:
        backend: ``"torch-fidelity"``, ``"pytorch-fid"`` or None (whichever weights are found).
        device: where Inception runs.
        batch_size: images per forward pass.
    """

    def __init__(self, backend: str | None = None, device: str | torch.device = "cpu", batch_size: int = 100) -> None:
        self.weights = find_inception_weights(backend)
        _check_package(self.weights.backend)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if self.weights.backend == "torch-fidelity":
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self._net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(self.weights.path)
            ).to(self.device)
        else:
            # pytorch-fid resolves its weights through torch.hub's cache: point TORCH_HOME at the file's
            # folder layout only when it already sits there (checked above), so no download can start.
            from pytorch_fid.inception import InceptionV3

            if self.weights.path.parent != _hub_checkpoints():
                raise FIDUnavailableError(
                    f"pytorch-fid only reads its weights from {_hub_checkpoints()}; copy "
                    f"{self.weights.path.name} there (found at {self.weights.path})"
                )
            self._net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(self.device).eval()

    @torch.no_grad()
    def features(self, x: Tensor | np.ndarray) -> np.ndarray:
        """2048-d Inception pool features ``[n, 2048]`` of images ``[n, C, H, W]`` in ``[-1, 1]``."""
        u8 = _to_uint8_rgb(x)
        out = []
        for i in range(0, len(u8), self.batch_size):
            b = u8[i : i + self.batch_size].to(self.device)
            if self.weights.backend == "torch-fidelity":
                f = self._net(b)[0]
            else:
                f = self._net(b.float() / 255.0)[0].flatten(1)
            out.append(f.double().cpu())
        return torch.cat(out).numpy()

    def fid(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
        """FID between two image sets (e.g. data vs samples, or teacher vs student = T-FID)."""
        return frechet_distance(self.features(x), self.features(y))
