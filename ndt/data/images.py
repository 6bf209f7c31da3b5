"""Image datasets: MNIST, Fashion-MNIST, QMNIST and CIFAR-10 through torchvision, and scikit-learn's digits.

The study's image datasets reach the model as float32 (N, 1, 28, 28), standardised per dataset with
a fixed (mean, std) so that all architectures take every one of them unchanged. CIFAR-10 (issue 13's
extended set) reaches it as float32 (N, 3, 32, 32), standardised per channel.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.datasets import MNIST

from ndt.data.common import RawSplit, not_found_error

log = logging.getLogger(__name__)

#: Per-dataset (mean, std) of pixel values scaled to [0, 1], applied as (x - mean) / std.
NORMALISATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),  # the usual MNIST training-set statistics
    "fashion_mnist": (0.2860, 0.3530),  # the usual Fashion-MNIST training-set statistics
    "qmnist": (0.1307, 0.3081),  # QMNIST reconstructs MNIST's digits: same statistics
    # Computed once over all 1,797 digits after /16 and bilinear upscaling to 28x28 (as done in
    # `_scaled_digits`): mean 0.30526, std 0.32469 (float64, population std), rounded to 4 places.
    "digits": (0.3053, 0.3247),
}

#: CIFAR-10's per-channel (R, G, B) mean and std of pixel values scaled to [0, 1]: the widely
#: published statistics of its 50,000 training images (population std over all pixels of a channel;
#: not the (0.2023, 0.1994, 0.2010) often copied, which is a mean of per-image stds).
CIFAR10_NORMALISATION: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)

#: Digits split: the first 1,437 images train, the last 360 test (about 80/20). Fixed and
#: seed-independent so that every seed evaluates on the same held-out writers' digits.
DIGITS_TEST_SIZE = 360

_TORCHVISION_CLASSES: dict[str, type[MNIST]] = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    "qmnist": torchvision.datasets.QMNIST,
}


def normalise_uint8(images: Tensor, mean: float, std: float) -> Tensor:
    """Turn uint8 images into standardised float32 images with a channel axis.

    Args:
        images: uint8 (N, H, W), pixel values 0..255.
        mean: mean of the [0, 1]-scaled pixels.
        std: std of the [0, 1]-scaled pixels.

    Returns:
        float32 (N, 1, H, W): (pixel / 255 - mean) / std.
    """
    return images.unsqueeze(1).to(torch.float32).div_(255.0).sub_(mean).div_(std)


def _expected_files(name: str, data_dir: Path) -> list[Path]:
    """The raw files torchvision's class for `name` checks for, read off its own attributes."""
    cls = _TORCHVISION_CLASSES[name]
    raw = data_dir / cls.__name__ / "raw"
    if name == "qmnist":
        # QMNIST.resources maps train/test to (images url, labels url); files are the urls' names
        # without the compression suffix, as in QMNIST.images_file / labels_file.
        urls = [url for what in ("train", "test") for url, _ in torchvision.datasets.QMNIST.resources[what]]
    else:
        urls = [url for url, _ in cls.resources]
    return [raw / os.path.splitext(os.path.basename(url))[0] for url in urls]


def _torchvision_split(name: str, data_dir: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """Load one split through torchvision's dataset class, as its uint8 tensors.

    Args:
        name: `mnist`, `fashion_mnist` or `qmnist`.
        data_dir: torchvision root (files under `<data_dir>/<ClassName>/raw/`).
        train: training split if True, else test (QMNIST's 60k `what="test"` set).
        download: let torchvision fetch missing files.

    Returns:
        images uint8 (N, 28, 28), labels int64 (N,) in 0..9.

    Raises:
        DatasetNotFoundError: files absent and not downloaded (off, or no network).
    """
    cls = _TORCHVISION_CLASSES[name]
    try:
        if name == "qmnist":
            dataset = torchvision.datasets.QMNIST(
                str(data_dir), what="train" if train else "test", download=download
            )
        else:
            dataset = cls(str(data_dir), train=train, download=download)
    except (RuntimeError, OSError) as err:
        # torchvision says "Dataset not found" (RuntimeError) or fails to download (RuntimeError or
        # URLError, an OSError). If the files are there after all, the error is something else.
        expected = _expected_files(name, data_dir)
        if all(p.is_file() for p in expected):
            raise
        tried = f"Downloading failed ({err}). " if download else ""
        raise not_found_error(
            name,
            data_dir,
            expected,
            f"{tried}To get them, load with download=True on a machine with network access (torchvision fetches "
            f"them into {data_dir / cls.__name__ / 'raw'}), or copy the uncompressed raw files there.",
        ) from err
    images, labels = dataset.data, dataset.targets
    if name == "qmnist":
        # QMNIST's targets are (N, 8) int: class, NIST hsf, writer id, ...; the class is column 0.
        labels = labels[:, 0]
    if images.dtype != torch.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{name}: expected uint8 (N, 28, 28) images, got {images.dtype} {tuple(images.shape)}"
        )
    return images, labels.to(torch.int64)


def load_torchvision_splits(name: str, data_dir: Path, download: bool) -> tuple[RawSplit, RawSplit]:
    """Train and test splits of `mnist`, `fashion_mnist` or `qmnist`.

    The uint8 tensors torchvision holds are indexed and normalised directly (no PIL round trip per
    image), and only for the examples a subset keeps.

    Returns:
        (train, test) splits whose `take` gives float32 (K, 1, 28, 28) normalised images, int64 (K,) labels.
    """
    mean, std = NORMALISATION[name]
    splits = []
    for train in (True, False):
        images, labels = _torchvision_split(name, data_dir, train, download)

        def take(idx: Tensor, images: Tensor = images, labels: Tensor = labels) -> tuple[Tensor, Tensor]:
            return normalise_uint8(images[idx], mean, std), labels[idx]

        splits.append(RawSplit(size=len(labels), take=take))
    return splits[0], splits[1]


def normalise_uint8_rgb(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Turn uint8 channels-last colour images into standardised float32 channels-first images.

    Args:
        images: uint8 (N, H, W, C), pixel values 0..255 (torchvision's CIFAR-10 `data` layout).
        mean: per-channel mean of the [0, 1]-scaled pixels, length C.
        std: per-channel std of the [0, 1]-scaled pixels, length C.

    Returns:
        float32 (N, C, H, W): (pixel / 255 - mean[c]) / std[c].
    """
    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (N, C, H, W), a copy
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _cifar10_files(data_dir: Path) -> list[Path]:
    """The files torchvision's CIFAR10 checks (five training batches, the test batch, the metadata)."""
    cls = torchvision.datasets.CIFAR10
    folder = data_dir / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [folder / name for name in names]


def load_cifar10_splits(data_dir: Path, download: bool) -> tuple[RawSplit, RawSplit]:
    """Train (50,000) and test (10,000) splits of CIFAR-10 through torchvision's `CIFAR10` loader.

    torchvision reads the pickled batches of ``<data_dir>/cifar-10-batches-py/`` after checking each
    file's md5 against the published one (`CIFAR10.train_list`, `test_list`, `meta`), downloading
    and extracting ``cifar-10-python.tar.gz`` first when `download` is set and a check fails.

    Returns:
        (train, test) splits whose `take` gives float32 (K, 3, 32, 32) normalised images, int64 (K,) labels.

    Raises:
        DatasetNotFoundError: files absent and not downloaded (off, or no network).
    """
    mean, std = CIFAR10_NORMALISATION
    cls = torchvision.datasets.CIFAR10
    splits = []
    for train in (True, False):
        try:
            dataset = cls(str(data_dir), train=train, download=download)
        except (RuntimeError, OSError) as err:
            # torchvision says "Dataset not found or corrupted" (RuntimeError) or fails to download
            # (RuntimeError, or URLError: an OSError). Files all present: a checksum or read error.
            expected = _cifar10_files(data_dir)
            if all(p.is_file() for p in expected):
                raise
            tried = f"Downloading failed ({err}). " if download else ""
            raise not_found_error(
                "cifar10",
                data_dir,
                expected,
                f"{tried}To get them, load with download=True on a machine with network access (torchvision "
                f"fetches {cls.url} and extracts it into {data_dir / cls.base_folder}), or extract that "
                f"archive into {data_dir} yourself.",
            ) from err
        images = torch.from_numpy(dataset.data)  # uint8 (N, 32, 32, 3)
        labels = torch.tensor(dataset.targets, dtype=torch.int64)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (32, 32, 3):
            raise ValueError(
                f"cifar10: expected uint8 (N, 32, 32, 3) images, got {images.dtype} {tuple(images.shape)}"
            )

        def take(idx: Tensor, images: Tensor = images, labels: Tensor = labels) -> tuple[Tensor, Tensor]:
            return normalise_uint8_rgb(images[idx], mean, std), labels[idx]

        splits.append(RawSplit(size=len(labels), take=take))
    return splits[0], splits[1]


def _scaled_digits() -> tuple[Tensor, Tensor]:
    """All 1,797 of scikit-learn's 8x8 digits, scaled to [0, 1] and upsampled to 28x28.

    Returns:
        images float32 (1797, 1, 28, 28) in [0, 1] (not standardised), labels int64 (1797,) in 0..9.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import and only digits needs it

    digits = load_digits()
    # Pixel values are counts 0..16 (a 4x4 block of the 32x32 bitmap), so /16 maps them to [0, 1].
    small = torch.from_numpy(digits.images).to(torch.float32).div_(16.0).unsqueeze(1)
    images = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return images, torch.from_numpy(digits.target).to(torch.int64)


def load_digits_splits() -> tuple[RawSplit, RawSplit]:
    """Train (first 1,437) and test (last 360) splits of scikit-learn's digits; no files, no download.

    Returns:
        (train, test) splits whose `take` gives float32 (K, 1, 28, 28) standardised images, int64 (K,) labels.
    """
    images, labels = _scaled_digits()
    mean, std = NORMALISATION["digits"]
    images = (images - mean) / std
    n_train = len(labels) - DIGITS_TEST_SIZE
    splits = []
    for lo, hi in ((0, n_train), (n_train, len(labels))):
        x, y = images[lo:hi], labels[lo:hi]

        def take(idx: Tensor, x: Tensor = x, y: Tensor = y) -> tuple[Tensor, Tensor]:
            return x[idx], y[idx]

        splits.append(RawSplit(size=hi - lo, take=take))
    log.debug("digits: %d train, %d test images", n_train, DIGITS_TEST_SIZE)
    return splits[0], splits[1]
