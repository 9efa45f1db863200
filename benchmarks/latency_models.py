"""The model pairs of the latency benchmark and the quality of their samples.

Split from :mod:`anystep.benchmarks.latency`: :func:`load_pair` loads
``<models_dir>/<name>`` (flow map) and ``<models_dir>/<name>-teacher`` (velocity),
:class:`QualityScorer` scores samples with the data set's metric (checkerboard KL with
the exact density and ``W_2^2``; digits-FD / Teacher-FD).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anystep.benchmarks.latency_methods import BenchSettings, LatencyBenchError

__all__ = ["ModelPair", "QualityScorer", "load_pair"]




@dataclass
class ModelPair:
    """A flow map and its teacher (either may be absent).

    Attributes:
        name: pair name (``"checkerboard"``).
        flowmap: loaded flow map or None.
        teacher: loaded velocity model or None.
        flowmap_dir, teacher_dir: their directories.
        dataset: data set name of the models' configs.
        data_shape: shape of one sample.
    """

    name: str
    flowmap: Any
    teacher: Any
    flowmap_dir: Path | None
    teacher_dir: Path | None
    dataset: str
    data_shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        from anystep.core.modeldir import model_dir_sha256

        out: dict[str, Any] = {"dataset": self.dataset, "data_shape": list(self.data_shape)}
        for role, loaded, d in (("flowmap", self.flowmap, self.flowmap_dir), ("teacher", self.teacher, self.teacher_dir)):
            if loaded is None:
                out[role] = None
                continue
            cfg = loaded.config
            prov = dict(cfg.provenance or {})
            out[role] = {
                "dir": str(d),
                "sha256": model_dir_sha256(d),
                "kind": cfg.kind,
                "backbone": asdict(cfg.backbone),
                "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
                "provenance": {k: prov[k] for k in list(prov)[:12]},
            }
        return out


def load_pair(name: str, models_dir: Path) -> ModelPair:
    """Load ``<models_dir>/<name>`` (flow map) and ``<models_dir>/<name>-teacher`` (velocity).

    Raises:
        LatencyBenchError: neither directory exists, a directory holds the wrong kind of
            model, the two disagree on data set or shape, or the base is not Gaussian.
    """
    from anystep.core.modeldir import load_model_dir

    fm_dir, te_dir = models_dir / name, models_dir / f"{name}-teacher"
    fm = load_model_dir(fm_dir) if fm_dir.is_dir() else None
    te = load_model_dir(te_dir) if te_dir.is_dir() else None
    if fm is None and te is None:
        hint = f" (python -m anystep.benchmarks.{name} bundles it)" if name in ("checkerboard", "digits") else ""
        raise LatencyBenchError(
            f"no model {name!r}: neither {fm_dir} nor {te_dir} exists; train/bundle it first{hint} "
            "or pass --models-dir"
        )
    if fm is not None and fm.config.kind != "flowmap":
        raise LatencyBenchError(f"{fm_dir} holds a {fm.config.kind} model; <name> must be the flow map")
    if te is not None and te.config.kind != "velocity":
        raise LatencyBenchError(f"{te_dir} holds a {te.config.kind} model; <name>-teacher must be a velocity model")
    cfgs = [m.config for m in (fm, te) if m is not None]
    datasets = {c.dataset for c in cfgs}
    shapes = {tuple(c.data_shape) for c in cfgs}
    if len(datasets) > 1 or len(shapes) > 1:
        raise LatencyBenchError(f"{fm_dir} and {te_dir} disagree on data set/shape: {datasets}, {shapes}")
    for c in cfgs:
        if getattr(c, "base", "gaussian") not in (None, "gaussian"):
            raise LatencyBenchError(f"{name}: base {c.base!r} is not supported; the benchmark draws x0 ~ N(0, I)")
    return ModelPair(name=name, flowmap=fm, teacher=te, flowmap_dir=fm_dir if fm else None,
                     teacher_dir=te_dir if te else None, dataset=str(cfgs[0].dataset),
                     data_shape=tuple(int(d) for d in cfgs[0].data_shape))


class QualityScorer:
    """Scores samples ``[n, *shape]`` (model units) with the data set's metric.

    * 2D data (``[n, 2]``): ``KL(rho_1 || rho_hat_1)``
      (:func:`anystep.core.metrics.kl_divergence_2d`; the exact density for the
      checkerboard, fresh target samples otherwise) and ``W_2^2`` to fresh target samples
      (:func:`anystep.core.metrics.w2_squared`, exact OT on a fixed subsample).
    * digits: digits-FD and Teacher-FD (:class:`anystep.benchmarks.digits_classifier.DigitsMetric`).
    * anything else: no metric (latency only).

    Attributes:
        primary: name of the headline metric (``"kl"``, ``"digits_fd"`` or None); lower is better.
        floor: the primary metric of real data scored the same way (the estimator's floor).
    """

    def __init__(self, dataset: str, data_shape: tuple[int, ...], settings: BenchSettings) -> None:
        self.dataset = dataset
        self.data_shape = data_shape
        self.settings = settings
        self.primary: str | None = None
        self.floor: dict[str, float] | None = None
        self._metric = None
        self._target_w2: np.ndarray | None = None
        self._target_kl: np.ndarray | None = None
        self._density = None
        if tuple(data_shape) == (2,):
            from anystep.core.data import get_dataset

            ds = get_dataset(dataset)
            g = torch.Generator().manual_seed(10_000 + settings.seed)
            self._target_w2 = ds.sample(settings.w2_samples, g).double().numpy()
            if dataset == "checkerboard":
                from anystep.core.data import checkerboard_density

                self._density = checkerboard_density
            else:
                self._target_kl = ds.sample(settings.n_quality, g).double().numpy()
            self.primary = "kl"
            floor = ds.sample(settings.n_quality, torch.Generator().manual_seed(20_000 + settings.seed))
            self.floor = self.score(floor)
        elif dataset == "digits":
            from anystep.benchmarks.digits_classifier import DigitsMetric
            from anystep.core.data import DigitsDataset

            self._metric = DigitsMetric.create()
            self.primary = "digits_fd"
            self.floor = {"digits_fd": float(self._metric.digits_fd(DigitsDataset(split="test").tensor))}

    def score(self, x: Tensor | np.ndarray, teacher: Tensor | np.ndarray | None = None) -> dict[str, float]:
        """Quality of samples ``x`` ``[n, *shape]``; ``teacher`` samples enable Teacher-FD."""
        s = self.settings
        if self.primary == "kl":
            from anystep.core.metrics import kl_divergence_2d, w2_squared

            arr = x.detach().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
            kl = float(kl_divergence_2d(self._target_kl, arr, bins=s.kl_bins, range_=tuple(s.kl_range),
                                        target_density=self._density))
            ok = arr[np.all(np.isfinite(arr), axis=1)]
            w2 = float(w2_squared(ok, self._target_w2, max_samples=s.w2_samples, seed=s.seed)) if len(ok) else math.inf
            out = {"kl": kl, "w2": w2}
            if self.floor is not None:  # minus the estimator's finite-sample bias (data scored the same way)
                out["kl_excess"] = kl - self.floor["kl"]
            return out
        if self.primary == "digits_fd":
            xs = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
            xs = torch.nan_to_num(xs.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
            sc = self._metric.score(xs, teacher=None if teacher is None else torch.as_tensor(teacher).float().clamp(-1, 1))
            out = {"digits_fd": float(sc.digits_fd), "entropy": float(sc.coverage.entropy)}
            if sc.teacher_fd is not None:
                out["teacher_fd"] = float(sc.teacher_fd)
            return out
        return {}
