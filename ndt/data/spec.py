"""What a model needs to know about a dataset, without loading it.

One definition per dataset name (the `conf/dataset/` option names). Models are built from a
`DatasetSpec`; loaders return data matching it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "text"]
#: How examples reach the model: images as pixels; AG News as token ids through a learned
#: `nn.Embedding` ("embedding", the default) or as the study's 100 ids cast to float ("raw_ids").
Encoding = Literal["pixels", "embedding", "raw_ids"]
#: What the labels are: one class per example ("classification", labels (N,)), or the next token at
#: every position ("next_token", labels (N, S), `IGNORE_INDEX` where there is no next token).
Task = Literal["classification", "next_token"]
#: The target of a position that has no next token (padding): PyTorch's and Hugging Face's
#: ``ignore_index``, so no loss or accuracy counts it (`ndt.models.objective`).
IGNORE_INDEX = -100

#: AG News vocabulary: {PAD: 0, UNK: 1} + the 5,000 most frequent training tokens.
AG_NEWS_VOCAB_SIZE = 5_002
#: AG News sequences are cut or padded to this many tokens.
AG_NEWS_SEQ_LEN = 100
#: `ag_news_lm` input length: 64 tokens in, the same 64 shifted by one as targets. One text per
#: sequence (see `ndt.data.text.next_token_pairs`); AG News texts (a title and one or two sentences)
#: mostly fit in 64 words, and attention costs grow with the square of the length (64 vs the study's 100).
AG_NEWS_LM_SEQ_LEN = 64


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and kind of one dataset's examples.

    Attributes:
        name: config option name (`mnist`, `fashion_mnist`, `qmnist`, `ag_news`, `ag_news_lm`, `digits`,
            `cifar10`).
        modality: "image" or "text".
        input_shape: shape of one example as the model receives it, e.g. (1, 28, 28), (3, 32, 32) or (100,).
        num_classes: number of labels; for "next_token" the vocabulary (every token id is a class).
        encoding: "pixels" for images; "embedding" or "raw_ids" for text ("embedding" only for
            "next_token": the ids are the targets too).
        vocab_size: token vocabulary size (text only), PAD=0 and UNK=1 included.
        task: "classification" (labels (N,) in 0..num_classes-1) or "next_token" (labels (N, S):
            the next token id, or `IGNORE_INDEX` = -100 where the next position is padding).
    """

    name: str
    modality: Modality
    input_shape: tuple[int, ...]
    num_classes: int
    encoding: Encoding = "pixels"
    vocab_size: int | None = None
    task: Task = "classification"

    @property
    def num_inputs(self) -> int:
        """Number of values in one example (784 for 1x28x28, 100 for AG News)."""
        return math.prod(self.input_shape)


_IMAGE = {"modality": "image", "input_shape": (1, 28, 28), "num_classes": 10, "encoding": "pixels"}

_SPECS: dict[str, dict[str, object]] = {
    "mnist": _IMAGE,
    "fashion_mnist": _IMAGE,
    "qmnist": _IMAGE,
    "digits": _IMAGE,
    "ag_news": {
        "modality": "text",
        "input_shape": (AG_NEWS_SEQ_LEN,),
        "num_classes": 4,
        "encoding": "embedding",
        "vocab_size": AG_NEWS_VOCAB_SIZE,
    },
    # CIFAR-10 (issue 13's extended set): 32x32 RGB, 10 classes, channels first.
    "cifar10": {"modality": "image", "input_shape": (3, 32, 32), "num_classes": 10, "encoding": "pixels"},
    # Next-token prediction on the same texts, tokeniser and vocabulary as ag_news.
    "ag_news_lm": {
        "modality": "text",
        "input_shape": (AG_NEWS_LM_SEQ_LEN,),
        "num_classes": AG_NEWS_VOCAB_SIZE,
        "encoding": "embedding",
        "vocab_size": AG_NEWS_VOCAB_SIZE,
        "task": "next_token",
    },
}

DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


def dataset_spec(name: str, encoding: Encoding | None = None) -> DatasetSpec:
    """Return the spec of dataset `name`, optionally with another text `encoding`.

    Raises:
        ValueError: unknown name, or an encoding that does not apply to the dataset.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    spec = DatasetSpec(name=name, **_SPECS[name])  # type: ignore[arg-type]
    if encoding is None or encoding == spec.encoding:
        return spec
    if spec.modality == "text" and spec.task == "classification" and encoding in ("embedding", "raw_ids"):
        return DatasetSpec(**{**spec.__dict__, "encoding": encoding})
    valid = (
        "embedding, raw_ids" if spec.modality == "text" and spec.task == "classification" else spec.encoding
    )
    raise ValueError(f"dataset {name!r} has no encoding {encoding!r}; valid: {valid} (key dataset.encoding)")
