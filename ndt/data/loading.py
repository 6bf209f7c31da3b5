"""`load_dataset`: a dataset's seeded train/test subsets as in-memory CPU tensors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ndt.data.common import STREAM_SUBSET, RawSplit, seeded_generator
from ndt.data.images import load_cifar10_splits, load_digits_splits, load_torchvision_splits
from ndt.data.spec import DATASET_NAMES, DatasetSpec, Encoding, dataset_spec
from ndt.data.text import load_ag_news_lm_splits, load_ag_news_splits

log = logging.getLogger(__name__)

#: The study's test-subset size per dataset (250, but 300 for qmnist and ag_news; ag_news_lm as ag_news).
DEFAULT_TEST_SUBSET: dict[str, int] = {name: 250 for name in DATASET_NAMES} | {
    "qmnist": 300,
    "ag_news": 300,
    "ag_news_lm": 300,
}
#: The study's training-subset size (all datasets; digits has only 1,437 and uses them all).
DEFAULT_TRAIN_SUBSET = 1500
#: Default number of probe examples (see `SplitData.probe`).
DEFAULT_PROBE_SIZE = 160

_SPLIT_INDEX = {"train": 0, "test": 1}  # index of each split's subset stream


@dataclass(frozen=True)
class SplitData:
    """A dataset's training and test subsets, on the CPU.

    Attributes:
        spec: shape and kind of the examples.
        train_x: (N_train, *spec.input_shape): float32 normalised images (N, 1, 28, 28) (CIFAR-10:
            (N, 3, 32, 32)); for AG
            News int64 token ids (N, 100) with encoding "embedding", the same ids as float32 with "raw_ids".
        train_y: int64 (N_train,) labels in 0..num_classes-1; for a "next_token" dataset (ag_news_lm)
            int64 (N_train, S) next-token targets, `IGNORE_INDEX` at padding (`spec.task`).
        test_x: (N_test, *spec.input_shape), as `train_x`.
        test_y: int64 (N_test,) (or (N_test, S)), as `train_y`.
    """

    spec: DatasetSpec
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def probe(self, n: int = DEFAULT_PROBE_SIZE) -> tuple[Tensor, Tensor]:
        """The first `n` test-subset examples: fixed for the run, since the subset is.

        The test subset is in random (seeded) order, so its first examples are a random sample of
        the test split. If the test subset is smaller than `n`, all of it is returned (logged).

        Returns:
            x (n, *spec.input_shape), y int64 (n,): views of `test_x`, `test_y`.
        """
        if n <= 0:
            raise ValueError(f"probe size must be positive, got {n}")
        if n > len(self.test_y):
            log.warning(
                "%s: probe of %d asked, test subset has %d; using all", self.spec.name, n, len(self.test_y)
            )
        return self.test_x[:n], self.test_y[:n]


def subset_indices(size: int, subset: int | None, seed: int, split: str) -> Tensor:
    """Indices of the seeded subset of a split, in random order.

    The subset is the first `subset` entries of a permutation of range(size) drawn from a generator
    seeded by (seed, split): train and test have their own streams, so changing one size leaves the
    other's draw unchanged, and a larger subset contains the smaller one of the same seed.

    Args:
        size: examples in the split.
        subset: examples to keep; None keeps all (still shuffled). Must be <= size (see `load_dataset`).
        seed: the run seed, >= 0.
        split: "train" or "test".

    Returns:
        int64 (min(subset, size),) distinct indices into the split.

    Raises:
        ValueError: an unknown split.
    """
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    k = size if subset is None else subset
    generator = seeded_generator(seed, STREAM_SUBSET, _SPLIT_INDEX[split])
    return torch.randperm(size, generator=generator)[:k]


def _clip_subset(name: str, split: str, subset: int | None, size: int) -> int | None:
    """`subset` clipped to the split's `size`, logged; rejects sizes below 1."""
    if subset is None:
        return None
    if subset <= 0:
        raise ValueError(f"{name}: {split} subset must be positive or None (all), got {subset}")
    if subset > size:
        # Digits has 1,437 training images, fewer than the default 1,500: expected, so only info.
        level = logging.INFO if name == "digits" else logging.WARNING
        log.log(
            level,
            "%s: %s subset of %d exceeds the split's %d examples; using all %d",
            name,
            split,
            subset,
            size,
            size,
        )
        return size
    return subset


def _raw_splits(name: str, data_dir: Path, download: bool) -> tuple[RawSplit, RawSplit]:
    if name in ("mnist", "fashion_mnist", "qmnist"):
        return load_torchvision_splits(name, data_dir, download)
    if name == "ag_news":
        return load_ag_news_splits(data_dir)
    if name == "ag_news_lm":
        return load_ag_news_lm_splits(data_dir)
    if name == "digits":
        return load_digits_splits()
    if name == "cifar10":
        return load_cifar10_splits(data_dir, download)
    raise AssertionError(f"no loader for dataset {name!r}")  # dataset_spec rejected unknown names


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str],
    seed: int,
    train_subset: int | None = DEFAULT_TRAIN_SUBSET,
    test_subset: int | Literal["default"] | None = "default",
    encoding: Encoding | None = None,
    download: bool = True,
) -> SplitData:
    """Load a dataset's seeded training and test subsets as CPU tensors.

    Args:
        name: one of `DATASET_NAMES` (`mnist`, `fashion_mnist`, `qmnist`, `ag_news`, `ag_news_lm`, `digits`,
            `cifar10`).
        data_dir: data directory (config key `paths.data_dir`); torchvision's root for the image
            datasets (CIFAR-10: `<data_dir>/cifar-10-batches-py/`), `<data_dir>/ag_news/{train,test}.csv`
            for AG News (both ag_news and ag_news_lm); unused by digits.
        seed: run seed (>= 0) for the subset draws.
        train_subset: training examples kept (None: all). Clipped to the split, with a warning
            (info for digits, whose 1,437 training images are fewer than the default 1,500).
        test_subset: test examples kept; "default" is `DEFAULT_TEST_SUBSET[name]`, None all. Clipped likewise.
        encoding: text encoding for AG News ("embedding" default, or "raw_ids"); None: the spec's default.
        download: let torchvision download missing image files (AG News and digits never download).

    Returns:
        The subsets; images float32 (N, 1, 28, 28) (CIFAR-10: (N, 3, 32, 32)), AG News (N, 100) ids;
        labels int64 (N,); ag_news_lm (N, 64) input ids and (N, 64) targets.

    Raises:
        ValueError: unknown dataset, invalid encoding, or a subset size below 1.
        DatasetNotFoundError: the dataset's files are missing (the message names the paths).
    """
    spec = dataset_spec(name, encoding)
    if test_subset == "default":
        test_subset = DEFAULT_TEST_SUBSET[name]
    train, test = _raw_splits(name, Path(data_dir), download)
    tensors: list[Tensor] = []
    for split, raw, subset in (("train", train, train_subset), ("test", test, test_subset)):
        kept = _clip_subset(name, split, subset, raw.size)
        x, y = raw.take(subset_indices(raw.size, kept, seed, split))
        if spec.encoding == "raw_ids":
            x = x.to(torch.float32)  # the study feeds the ids themselves as numbers
        tensors += [x.contiguous(), y.contiguous()]
    data = SplitData(spec, *tensors)
    log.info(
        "%s (seed %d): %d train, %d test examples, x %s",
        name,
        seed,
        len(data.train_y),
        len(data.test_y),
        spec.input_shape,
    )
    return data
