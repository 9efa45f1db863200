"""A small digit classifier and the offline image metrics built on it.

The paper scores images with FID / Teacher-FID (Sec. 4.2, Table 1): the Frechet
distance between Gaussians fitted to Inception features of real and generated
images (or of teacher and student images for T-FID). Inception weights cannot be
downloaded here and Inception is meaningless on 8x8 grey digits, so for the
bundled ``digits`` data set we use the same formula on the penultimate features
of a small CNN trained by the project itself:

* ``digits-FD``: ``d^2 = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^{1/2})`` between
  the features of the real ``digits`` train split and of generated samples
  (``anystep.core.metrics.frechet_distance``).
* ``Teacher-FD``: the same between teacher samples and student samples (T-FID).
* class coverage: the entropy ``H = -sum_c p_c log p_c`` (nats, at most
  ``log 10 = 2.303``) of the classifier's predicted class frequencies ``p_c``,
  so a model that collapses onto a few digits shows a low entropy.

The classifier is trained on ``DigitsDataset(split="train")`` (1,437 images)
and its accuracy is measured on the held-out ``"test"`` split (360 images).
Training is deterministic (fixed seed, CPU); the weights are cached as
``model.safetensors`` + ``config.json`` under ``models/digits-classifier/`` so
every benchmark run scores with the same network.

Units: every function takes digits in *model units*, ``[n, 1, 8, 8]`` in
``[-1, 1]`` (``x = g / 8 - 1`` for grey levels ``g`` in ``0..16``). Generated
samples are clipped to ``[-1, 1]`` first, as ``DigitsDataset.to_units`` does.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anystep.core.metrics import frechet_distance
from anystep.errors import AnystepError

__all__ = [
    "CLASSIFIER_DIR",
    "ClassCoverage",
    "ClassifierError",
    "ClassifierReport",
    "DigitClassifier",
    "DigitsMetric",
    "DigitsScores",
    "TrainedClassifier",
    "class_coverage",
    "load_classifier",
    "save_classifier",
    "train_classifier",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER_DIR = REPO_ROOT / "models" / "digits-classifier"
"""Default cache folder of the classifier (``model.safetensors`` + ``config.json``)."""

FEATURE_DIM = 64
"""Dimension of the penultimate features used by digits-FD."""

_KIND = "digits-classifier"
_FORMAT_VERSION = 1


class ClassifierError(AnystepError):
    """Bad input to the digit metrics or an unreadable classifier folder; the message says how to fix it."""


# --------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """CNN for 8x8 grey digits: two conv stages, a 64-d penultimate layer, 10 logits.

    ``[B,1,8,8] -conv3x3(32)-ReLU-conv3x3(64)-ReLU-maxpool2-> [B,64,4,4]
    -conv3x3(64)-ReLU-flatten-> [B,1024] -linear-ReLU-> features [B,64] -linear-> logits [B,10]``.
    No batch norm, so each output depends only on its own input.
    """

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features.

        Args:
            x: ``[B, 1, 8, 8]`` digits in model units ``[-1, 1]``.

        Returns:
            ``[B, 64]`` features (after ReLU).
        """
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, 10]`` of digits ``x`` ``[B, 1, 8, 8]`` (model units)."""
        return self.fc2(self.drop(self.features(x)))


# --------------------------------------------------------------------------------------
# training, saving, loading
# --------------------------------------------------------------------------------------


@dataclass
class ClassifierReport:
    """How the classifier was trained and how well it does.

    Attributes:
        test_accuracy: accuracy on the 360-image ``digits`` test split.
        train_accuracy: accuracy on the 1,437-image train split (no augmentation).
        n_train: training images.
        n_test: test images.
        epochs: passes over the train split.
        seed: seed of initialisation, shuffling and augmentation.
        seconds: training wall time (0 when loaded from the cache).
    """

    test_accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    epochs: int
    seed: int
    seconds: float = 0.0


@dataclass
class TrainedClassifier:
    """A classifier in eval mode and its report.

    Attributes:
        model: the network (eval mode, no gradients).
        report: training record and accuracies.
        path: cache folder it was loaded from or saved to (None if neither).
    """

    model: DigitClassifier
    report: ClassifierReport
    path: Path | None = None


def _digits(split: str) -> tuple[Tensor, Tensor]:
    from anystep.core.data import DigitsDataset

    ds = DigitsDataset(split=split)
    return ds.tensor, ds.labels


def _shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Random translation by -1, 0 or +1 pixel per axis (zero = background padding)."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    shifted = torch.stack([pad[:, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)])
    pick = torch.randint(0, 9, (x.shape[0],), generator=g)
    return shifted[pick, torch.arange(x.shape[0])]


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def train_classifier(
    *, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3, seed: int = 0
) -> TrainedClassifier:
    """Train the classifier on the ``digits`` train split (deterministic on CPU).

    Adam, cosine learning-rate decay, random +-1 pixel shifts as augmentation.

    Args:
        epochs: passes over the 1,437 training images.
        batch_size: images per step.
        lr: peak learning rate.
        seed: seed of initialisation, shuffling and augmentation.

    Returns:
        TrainedClassifier with the test accuracy in its report.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ClassifierError(f"epochs must be an integer >= 1, got {epochs!r}")
    t0 = time.perf_counter()
    x_tr, y_tr = _digits("train")
    x_te, y_te = _digits("test")
    torch.manual_seed(seed)
    model = DigitClassifier()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i : i + batch_size]
            xb = _shift(x_tr[idx], g)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    report = ClassifierReport(
        test_accuracy=_accuracy(model, x_te, y_te),
        train_accuracy=_accuracy(model, x_tr, y_tr),
        n_train=len(x_tr),
        n_test=len(x_te),
        epochs=epochs,
        seed=seed,
        seconds=time.perf_counter() - t0,
    )
    return TrainedClassifier(model=model, report=report)


def save_classifier(trained: TrainedClassifier, path: str | os.PathLike = CLASSIFIER_DIR) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (with the report) to ``path``.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in trained.model.state_dict().items()}
    tmp = p / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "kind": _KIND})
    os.replace(tmp, p / "model.safetensors")
    meta = {
        "kind": _KIND,
        "format_version": _FORMAT_VERSION,
        "feature_dim": FEATURE_DIM,
        "input": "digits in model units [n, 1, 8, 8], x = grey / 8 - 1",
        "report": asdict(trained.report),
    }
    (p / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    trained.path = p
    return p


def _load_dir(p: Path) -> TrainedClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClassifierError(f"{p}/config.json is missing or not JSON ({exc}); delete {p} to retrain") from None
    if not isinstance(meta, dict) or meta.get("kind") != _KIND or meta.get("feature_dim") != FEATURE_DIM:
        raise ClassifierError(f"{p}/config.json is not a {_KIND} v{_FORMAT_VERSION} config; delete {p} to retrain")
    try:
        state = load_file(str(p / "model.safetensors"))
        model = DigitClassifier()
        model.load_state_dict(state)
        report = ClassifierReport(**{**meta["report"], "seconds": 0.0})
    except (SafetensorError, OSError, RuntimeError, TypeError, KeyError) as exc:
        raise ClassifierError(f"{p}: cannot load the classifier ({exc}); delete {p} to retrain") from None
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return TrainedClassifier(model=model, report=report, path=p)


def load_classifier(
    path: str | os.PathLike | None = CLASSIFIER_DIR, *, train_if_missing: bool = True, save: bool = True
) -> TrainedClassifier:
    """Load the cached classifier, or train (and cache) it when the folder has none.

    Args:
        path: cache folder; ``None`` never reads or writes a cache (always trains).
        train_if_missing: train when ``path`` holds no classifier (else raise).
        save: write a freshly trained classifier to ``path``.

    Returns:
        TrainedClassifier in eval mode.

    Raises:
        ClassifierError: no classifier at ``path`` and ``train_if_missing`` is False,
            or an unreadable cache.
    """
    if path is not None:
        p = Path(path)
        if (p / "model.safetensors").is_file():
            return _load_dir(p)
        if not train_if_missing:
            raise ClassifierError(
                f"no digit classifier in {p}; run `python -m anystep.benchmarks.digits_classifier` to train it"
            )
    trained = train_classifier()
    if path is not None and save:
        save_classifier(trained, path)
    return trained


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def _as_digits(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 3 and tuple(t.shape[1:]) == (8, 8):
        t = t[:, None]
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, 8, 8):
        raise ClassifierError(
            f"{name}: expected digits in model units of shape [n, 1, 8, 8] (or [n, 8, 8]), got {list(t.shape)}"
        )
    if t.shape[0] < 2:
        raise ClassifierError(f"{name}: needs at least 2 samples, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ClassifierError(f"{name}: samples contain NaN or inf (a diverged model?)")
    return t.clamp(-1.0, 1.0)


@dataclass
class ClassCoverage:
    """Classifier-predicted class frequencies of a sample set.

    Attributes:
        entropy: ``-sum_c p_c log p_c`` in nats (``log 10 = 2.303`` when uniform).
        normalized_entropy: ``entropy / log 10`` in ``[0, 1]``.
        fractions: ``p_c`` for ``c = 0..9``.
        min_fraction: ``min_c p_c`` (0 when a digit is never produced).
        mean_confidence: mean of the largest softmax probability (low for blurry, ambiguous digits).
    """

    entropy: float
    normalized_entropy: float
    fractions: list[float]
    min_fraction: float
    mean_confidence: float


def class_coverage(logits: Tensor) -> ClassCoverage:
    """Coverage statistics from classifier logits ``[n, 10]``."""
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    p = torch.bincount(pred, minlength=10).double() / len(pred)
    nz = p[p > 0]
    h = float(-(nz * nz.log()).sum())
    return ClassCoverage(
        entropy=h,
        normalized_entropy=h / math.log(10),
        fractions=[float(v) for v in p],
        min_fraction=float(p.min()),
        mean_confidence=float(probs.max(1).values.mean()),
    )


@dataclass
class DigitsScores:
    """Scores of one sample set.

    Attributes:
        digits_fd: Frechet distance to the real train split (classifier features).
        teacher_fd: Frechet distance to the teacher's samples (None without a teacher set).
        coverage: predicted-class coverage.
        n: number of samples scored.
    """

    digits_fd: float
    teacher_fd: float | None
    coverage: ClassCoverage
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DigitsMetric:
    """digits-FD, Teacher-FD and class coverage with one fixed classifier.

    Build with :meth:`create`. The reference features are those of the whole
    ``digits`` train split (what the generators are trained on).

    Attributes:
        classifier: the trained classifier.
        ref_features: ``[1437, 64]`` features of the train split.
    """

    classifier: TrainedClassifier
    ref_features: np.ndarray = field(repr=False)

    @classmethod
    def create(cls, path: str | os.PathLike | None = CLASSIFIER_DIR) -> DigitsMetric:
        """Load (or train and cache) the classifier and featurise the train split."""
        trained = load_classifier(path)
        metric = cls(classifier=trained, ref_features=np.zeros((0, FEATURE_DIM)))
        metric.ref_features = metric.features(_digits("train")[0])
        return metric

    @torch.no_grad()
    def features(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Penultimate features ``[n, 64]`` (float64) of digits ``[n, 1, 8, 8]`` in model units."""
        t = _as_digits(x, "features")
        out = [self.classifier.model.features(t[i : i + 1024]) for i in range(0, len(t), 1024)]
        return torch.cat(out).double().numpy()

    @torch.no_grad()
    def logits(self, x: Tensor | np.ndarray) -> Tensor:
        """Class logits ``[n, 10]`` of digits ``[n, 1, 8, 8]`` in model units."""
        t = _as_digits(x, "logits")
        return torch.cat([self.classifier.model(t[i : i + 1024]) for i in range(0, len(t), 1024)])

    def digits_fd(self, x: Tensor | np.ndarray) -> float:
        """Frechet distance between features of ``x`` and of the real train split."""
        return frechet_distance(self.ref_features, self.features(x))

    def fd(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
        """Frechet distance between the features of two sample sets (e.g. Teacher-FD)."""
        return frechet_distance(self.features(x), self.features(y))

    def score(
        self, x: Tensor | np.ndarray, teacher: Tensor | np.ndarray | None = None
    ) -> DigitsScores:
        """digits-FD, Teacher-FD (if ``teacher`` samples are given) and class coverage of ``x``.

        Args:
            x: ``[n, 1, 8, 8]`` generated digits, model units.
            teacher: ``[m, 1, 8, 8]`` teacher samples (e.g. dopri5), model units.
        """
        fx = self.features(x)
        t_fd = None if teacher is None else frechet_distance(self.features(teacher), fx)
        return DigitsScores(
            digits_fd=frechet_distance(self.ref_features, fx),
            teacher_fd=t_fd,
            coverage=class_coverage(self.logits(x)),
            n=int(fx.shape[0]),
        )


def main() -> None:  # pragma: no cover - thin CLI
    """Train the classifier, cache it under ``models/digits-classifier`` and print its accuracy."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(CLASSIFIER_DIR), help="cache folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = train_classifier()
    save_classifier(trained, args.out)
    r = trained.report
    print(
        f"digit classifier: test accuracy {r.test_accuracy:.4f} ({r.n_test} images), "
        f"train {r.train_accuracy:.4f}, {r.seconds:.1f} s -> {args.out}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
