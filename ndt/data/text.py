"""AG News: the standard CSV files, tokenised into fixed-length sequences of word ids.

Files: `<data_dir>/ag_news/train.csv` (120,000 rows) and `test.csv` (7,600 rows), no header, columns
class (1-4), title, description, as in the `ag_news_csv` release of Zhang, Zhao & LeCun (2015).

Two datasets read them: ``ag_news`` (classify each text into its 4 classes, 100 ids per text) and
``ag_news_lm`` (next-token prediction, `load_ag_news_lm_splits`): the same tokeniser and vocabulary,
one text per sequence, its first 65 ids cut into 64 inputs and the same 64 shifted by one as targets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ndt.data.common import RawSplit, not_found_error
from ndt.data.spec import AG_NEWS_LM_SEQ_LEN, AG_NEWS_SEQ_LEN, AG_NEWS_VOCAB_SIZE, IGNORE_INDEX

log = logging.getLogger(__name__)

PAD = 0  # pads sequences at the end; also the id of the empty position
UNK = 1  # every token outside the vocabulary
#: Number of most frequent training tokens in the vocabulary (5,002 ids with PAD and UNK).
VOCAB_TOKENS = AG_NEWS_VOCAB_SIZE - 2
NUM_CLASSES = 4

_FILES = ("train.csv", "test.csv")


def expected_files(data_dir: Path) -> list[Path]:
    """Paths of AG News' train and test CSV files under `data_dir`."""
    return [data_dir / "ag_news" / f for f in _FILES]


def read_csv(path: Path) -> pd.DataFrame:
    """Read one AG News CSV file.

    Returns:
        DataFrame with columns `label` (int64, 0..3: the file's class 1..4 minus one) and `text`
        (title + " " + description, as in the file).

    Raises:
        ValueError: not three columns, or a class outside 1..4.
    """
    # keep_default_na=False: an empty description stays "" and a title such as "NA" stays text.
    df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8")
    if df.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 columns (class, title, description), found {df.shape[1]}")
    labels = pd.to_numeric(df[0]).to_numpy(dtype=np.int64) - 1
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{path}: classes must be 1..{NUM_CLASSES}, found {labels.min() + 1}..{labels.max() + 1}"
        )
    return pd.DataFrame({"label": labels, "text": df[1] + " " + df[2]})


def tokenize(text: pd.Series) -> pd.Series:
    """Lower-case, drop every character outside [a-z0-9] and whitespace, split on whitespace.

    Dropped characters join their neighbours ("U.S." -> "us", "don't" -> "dont"), so punctuation
    never makes a token of its own.

    Args:
        text: (N,) strings.

    Returns:
        (N,) lists of tokens, same index.
    """
    cleaned = text.str.lower().str.replace(r"[^a-z0-9\s]", "", regex=True)
    return cleaned.str.split()


def build_vocabulary(tokens: pd.Series, size: int = VOCAB_TOKENS) -> dict[str, int]:
    """Map the `size` most frequent tokens to ids 2.. (PAD=0, UNK=1 are reserved).

    Ties are broken by token, ascending, so the vocabulary is a pure function of the counts
    (independent of row order and of pandas' sort stability).

    Args:
        tokens: (N,) lists of tokens, as from `tokenize`.
        size: number of tokens kept (fewer if the corpus has fewer distinct tokens).

    Returns:
        token -> id; ids 2 .. 1 + min(size, distinct tokens), most frequent first.
    """
    counts = tokens.explode().dropna().value_counts()
    table = pd.DataFrame({"token": counts.index.astype(str), "count": counts.to_numpy()})
    table = table.sort_values(["count", "token"], ascending=[False, True]).head(size)
    return {token: i + 2 for i, token in enumerate(table["token"])}


def encode(tokens: pd.Series, vocab: dict[str, int], seq_len: int = AG_NEWS_SEQ_LEN) -> Tensor:
    """Turn token lists into fixed-length id sequences: UNK for unknown tokens, cut or PAD-ed at the end.

    Args:
        tokens: (N,) lists of tokens.
        vocab: token -> id, as from `build_vocabulary`.
        seq_len: output length; longer texts keep their first `seq_len` tokens.

    Returns:
        int64 (N, seq_len) ids.
    """
    tokens = tokens.reset_index(drop=True)
    # One row per token, indexed by its text's row; empty texts explode to a single NaN.
    flat = tokens.explode().dropna()
    position = flat.groupby(level=0).cumcount().to_numpy()
    ids = flat.map(vocab).fillna(UNK).to_numpy(dtype=np.int64)
    rows = flat.index.to_numpy(dtype=np.int64)
    keep = position < seq_len
    out = np.full((len(tokens), seq_len), PAD, dtype=np.int64)
    out[rows[keep], position[keep]] = ids[keep]
    return torch.from_numpy(out)


def next_token_pairs(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets of PAD-ed id sequences (one text per row, PAD only at the end).

    Position t reads ids[t] and is trained to predict ids[t + 1]. A target that is PAD (past the end
    of the text) is `IGNORE_INDEX`, so that padding is never predicted nor counted: a text of L tokens
    gives L - 1 targets (its last token has no next one: the vocabulary has no end-of-text id).
    UNK targets are kept (predicting "a rare word" is part of the task).

    Args:
        ids: int64 (N, S + 1) ids, as from `encode` with ``seq_len = S + 1``.

    Returns:
        x int64 (N, S) = ids[:, :S]; y int64 (N, S) = ids[:, 1:], IGNORE_INDEX where that is PAD.
    """
    x = ids[:, :-1].contiguous()
    y = ids[:, 1:].clone()
    y[y == PAD] = IGNORE_INDEX
    return x, y


def _read_ag_news(data_dir: Path) -> tuple[list[tuple[pd.DataFrame, pd.Series]], dict[str, int]]:
    """[(train rows, their tokens), (test rows, their tokens)] and the vocabulary of the full training file.

    Raises:
        DatasetNotFoundError: a CSV file is missing (there is no download for AG News).
    """
    paths = expected_files(data_dir)
    if not all(p.is_file() for p in paths):
        raise not_found_error(
            "ag_news",
            data_dir,
            paths,
            "To get them, copy train.csv and test.csv of the standard `ag_news_csv` release "
            "(Zhang, Zhao & LeCun 2015; no header, columns class 1-4, title, description) there.",
        )
    train, test = read_csv(paths[0]), read_csv(paths[1])
    train_tokens, test_tokens = tokenize(train["text"]), tokenize(test["text"])
    vocab = build_vocabulary(train_tokens)
    log.info("ag_news: vocabulary of %d tokens (+ PAD, UNK) from %d training texts", len(vocab), len(train))
    return [(train, train_tokens), (test, test_tokens)], vocab


def load_ag_news_splits(data_dir: Path) -> tuple[RawSplit, RawSplit]:
    """Train and test splits of AG News.

    The vocabulary is built on the FULL training file (all 120,000 texts), not on the training
    subset, so that every subset size and seed encodes a word with the same id.

    Args:
        data_dir: the data directory; files under `<data_dir>/ag_news/`.

    Returns:
        (train, test) splits whose `take` gives int64 (K, 100) ids and int64 (K,) labels in 0..3.

    Raises:
        DatasetNotFoundError: a CSV file is missing (there is no download for AG News).
    """
    read, vocab = _read_ag_news(data_dir)
    splits = []
    for df, tokens in read:
        labels = torch.tensor(
            df["label"].to_numpy(dtype=np.int64)
        )  # a copy: pandas hands out read-only arrays

        # Encoding only the kept examples: the subsets are a few hundred of 120,000 texts.
        def take(idx: Tensor, tokens: pd.Series = tokens, labels: Tensor = labels) -> tuple[Tensor, Tensor]:
            return encode(tokens.iloc[idx.numpy()], vocab), labels[idx]

        splits.append(RawSplit(size=len(df), take=take))
    return splits[0], splits[1]


def load_ag_news_lm_splits(data_dir: Path, seq_len: int = AG_NEWS_LM_SEQ_LEN) -> tuple[RawSplit, RawSplit]:
    """Train and test splits of ``ag_news_lm``: next-token prediction on AG News texts.

    One text per sequence (not packed): an example is a text, so the seeded subsets, the probe and
    the per-text token mean of a measurement mean what they mean for ``ag_news``, and the padding at
    the end of short texts is what the padding mask keeps out of the measurements. The vocabulary has
    no end-of-text id, so packing texts would let the model predict across unrelated articles.

    Args:
        data_dir: the data directory; files under `<data_dir>/ag_news/` (the ``ag_news`` files).
        seq_len: input positions S; a text's first S + 1 tokens are used.

    Returns:
        (train, test) splits whose `take` gives int64 (K, S) input ids and int64 (K, S) targets
        (`next_token_pairs`).

    Raises:
        DatasetNotFoundError: a CSV file is missing.
    """
    read, vocab = _read_ag_news(data_dir)
    splits = []
    for df, tokens in read:

        def take(idx: Tensor, tokens: pd.Series = tokens) -> tuple[Tensor, Tensor]:
            return next_token_pairs(encode(tokens.iloc[idx.numpy()], vocab, seq_len + 1))

        splits.append(RawSplit(size=len(df), take=take))
    return splits[0], splits[1]
