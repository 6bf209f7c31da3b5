"""Pieces shared by the loaders: the not-found error, a split before subsetting, seeded generators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: The config key that sets where datasets live; named in every not-found message.
DATA_DIR_KEY = "paths.data_dir"

#: Stream tags for `seeded_generator`, so that the subset draws and the epoch permutations made
#: from the same run seed never share a random stream.
STREAM_SUBSET = 1
STREAM_EPOCH = 2


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent from the data directory and could not be downloaded.

    Attributes:
        paths: the files that were expected (absolute paths).
    """

    def __init__(self, message: str, paths: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


def not_found_error(
    dataset: str, data_dir: Path, paths: Sequence[Path], how_to_get: str
) -> DatasetNotFoundError:
    """Build the error raised when `dataset`'s files are missing.

    Args:
        dataset: dataset name as in the config (`mnist`, `ag_news`, ...).
        data_dir: the data directory that was searched.
        paths: every file expected, missing or not; the missing ones are listed first in the message.
        how_to_get: one or two sentences on where the files come from.
    """
    missing = [p for p in paths if not p.is_file()]
    lines = [
        f"dataset {dataset!r}: files not found under the data directory {data_dir}",
        "expected:",
        *(f"  {p}{'  (missing)' if p in missing else ''}" for p in paths),
        f"The data directory is the config key {DATA_DIR_KEY} (e.g. `{DATA_DIR_KEY}=/path/to/data`).",
        how_to_get,
    ]
    return DatasetNotFoundError("\n".join(lines), paths)


@dataclass(frozen=True)
class RawSplit:
    """One split of a dataset before subsetting: its size and a way to materialise examples.

    Loaders return this rather than tensors so that the costly conversion (normalising images,
    encoding text) runs only on the examples the subset keeps.

    Attributes:
        size: number of examples in the split.
        take: maps a LongTensor of indices (K,) to `(x, y)`: x of shape (K, *input_shape), y int64 (K,).
    """

    size: int
    take: Callable[[Tensor], tuple[Tensor, Tensor]]


def seeded_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU `torch.Generator` for one stream of randomness derived from the run seed.

    `np.random.SeedSequence` hashes the entropy words, so nearby seeds, streams and indices give
    unrelated generators (unlike `seed + epoch`, where run 1's epoch 0 would be run 0's epoch 1).
    The entropy always has three words, so no two (seed, stream, index) triples collide.

    Args:
        seed: the run seed, >= 0.
        stream: one of the `STREAM_*` tags.
        index: position within the stream (0/1 for train/test subsets, the epoch for permutations).

    Raises:
        ValueError: a negative seed or index (SeedSequence takes non-negative entropy only).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
