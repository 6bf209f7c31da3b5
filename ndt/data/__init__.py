"""The study's datasets as in-memory tensors: seeded subsets, resumable batch order.

`load_dataset` returns a dataset's training and test subsets (`SplitData`); `EpochSampler` gives
shuffled index batches into them. `spec` describes each dataset without loading it.
"""

from ndt.data.common import DATA_DIR_KEY, DatasetNotFoundError
from ndt.data.loading import (
    DEFAULT_PROBE_SIZE,
    DEFAULT_TEST_SUBSET,
    DEFAULT_TRAIN_SUBSET,
    SplitData,
    load_dataset,
    subset_indices,
)
from ndt.data.sampler import EpochSampler
from ndt.data.spec import (
    AG_NEWS_SEQ_LEN,
    AG_NEWS_VOCAB_SIZE,
    DATASET_NAMES,
    DatasetSpec,
    Encoding,
    Modality,
    dataset_spec,
)

__all__ = [
    "AG_NEWS_SEQ_LEN",
    "AG_NEWS_VOCAB_SIZE",
    "DATASET_NAMES",
    "DATA_DIR_KEY",
    "DEFAULT_PROBE_SIZE",
    "DEFAULT_TEST_SUBSET",
    "DEFAULT_TRAIN_SUBSET",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Encoding",
    "EpochSampler",
    "Modality",
    "SplitData",
    "dataset_spec",
    "load_dataset",
    "subset_indices",
]
