"""Data sets for the data distribution rho_1 (and rho_0 when the base is a data set).

Time convention: ``t = 0`` is the base distribution rho_0, ``t = 1`` the data
distribution rho_1 (paper, Sec. 2: the interpolant ``I_t`` joins ``x0 ~ rho_0``
to ``x1 ~ rho_1``). Every data set here produces samples ``x1`` for the
interpolant of paper Eq. (2.1); ``base_sample`` produces ``x0``.

Labels. Data sets with class labels (``digits``, ``cifar10``, ``folder:`` with one
sub-folder per class, ``npz:`` with a ``y`` array, ``blobs``) report ``num_classes > 0``
and ``sample_labelled(n, g)`` returns a :class:`LabelledSample` ``(x, y)``; its ``x`` is
exactly what ``sample(n, g)`` draws from the same generator state.

Every sample is drawn *only* from the ``torch.Generator`` that is passed in, so
the same generator seed always gives the same batch. Per-sample base noise (row ``i`` a
function of ``seeds[i]`` only) is :func:`anystep.core.noise.base_noise`.

Units. "Model units" are what the networks see (images in ``[-1, 1]``,
channel-first ``[N, C, H, W]``). Each data set's ``to_units`` maps model units
back to the data set's own units and layout (digits: ``[n, 8, 8]`` grey levels
``0..16``; 8-bit images: ``[n, H, W]`` or ``[n, H, W, C]`` levels ``0..255``;
2D sets: identity) and ``from_units`` is its inverse. Both apply the data set's
``units`` record, :func:`anystep.core.units.units_for` of its name and shape (the record a
served model uses without building the data set); only ``npz:`` of 8-bit pixels, whose
dtype the name does not tell, builds its own.

Registry names (``list_datasets()``):

* 2D toys, kind ``"2d"``: ``checkerboard``, ``8gaussians``, ``moons``,
  ``spirals``, ``rings`` (definitions in the ``_sample_*`` functions of :mod:`.toy`).
* ``gaussian``: ``N(mean, cov)`` in any dimension ``d`` (kind ``"2d"`` for
  ``d = 2``, else ``"vector"``).
* ``blobs``: a labelled 2D set, ``K`` classes ``N(mu_k, sigma^2 I)`` (tests of conditioning).
* ``digits``: scikit-learn's bundled 8x8 digits (kind ``"image"``).
* ``digits-noisy``: digits plus Gaussian pixel noise, the degraded base of the
  restoration (image-to-image) map; ``sample_pair`` draws (noisy, clean) pairs.
* ``folder:/path`` (``ImageFolderDataset``), ``npz:/path`` (``NpzDataset``),
  ``cifar10:/root`` (``Cifar10Dataset``, binary format): real data read from
  disk, never downloaded.

Modules: :mod:`.base` (``Dataset``, records, checks), :mod:`.toy` (2D sets, blobs,
gaussian), :mod:`.digits`, :mod:`.images` (folder, npz, cifar10), :mod:`.registry`.
"""

from .base import DataError, Dataset, LabelledSample, PairedSample
from .digits import DIGITS_SPLIT_SEED, DIGITS_TRAIN_FRACTION, DigitsDataset, NoisyDigitsDataset
from .images import CIFAR10_CLASSES, Cifar10Dataset, ImageFolderDataset, NpzDataset
from .registry import base_sample, get_dataset, list_datasets, seeded_base_samples
from .toy import RING_RADII, BlobsDataset, GaussianDataset, Toy2DDataset, checkerboard_density

__all__ = [
    "CIFAR10_CLASSES",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TRAIN_FRACTION",
    "RING_RADII",
    "BlobsDataset",
    "Cifar10Dataset",
    "DataError",
    "Dataset",
    "DigitsDataset",
    "GaussianDataset",
    "ImageFolderDataset",
    "LabelledSample",
    "NoisyDigitsDataset",
    "NpzDataset",
    "PairedSample",
    "Toy2DDataset",
    "base_sample",
    "checkerboard_density",
    "get_dataset",
    "list_datasets",
    "seeded_base_samples",
]

