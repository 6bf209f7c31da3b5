"""Tests of ndt.data: loaders on small files written in the real formats, subsets, the sampler.

Nothing is downloaded: each test writes IDX, CSV or CIFAR-10 pickle files into tmp_path and loads
them with download=False through the same code the study uses. Expected values are computed by hand.
"""

from __future__ import annotations

import csv
import logging
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cifar10_files import N_TEST, TRAIN_PER_BATCH, accept_files, write_cifar10

from ndt.data import (
    DEFAULT_TEST_SUBSET,
    DatasetNotFoundError,
    EpochSampler,
    load_dataset,
)
from ndt.data.text import build_vocabulary, tokenize

# --- IDX ("SN3 Pascal Vincent") files, as LeCun's MNIST and QMNIST distribute them -------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file: magic (0, 0, type code, ndim), big-endian int32 dims, big-endian data."""
    type_code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = struct.pack(">I", (type_code << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def make_images(n: int) -> np.ndarray:
    """uint8 (n, 28, 28): pixel (0,0) is 255, (0,1) is 0, (27,27) is the example's index, the rest 128."""
    images = np.full((n, 28, 28), 128, dtype=np.uint8)
    images[:, 0, 0] = 255
    images[:, 0, 1] = 0
    images[:, 27, 27] = np.arange(n)
    return images


def write_mnist_like(root: Path, folder: str, n_train: int = 12, n_test: int = 8) -> dict[str, np.ndarray]:
    """MNIST's four uncompressed files under `<root>/<folder>/raw/`; returns the labels written."""
    raw = root / folder / "raw"
    labels = {
        "train": (np.arange(n_train) * 7 % 10).astype(np.uint8),
        "t10k": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", make_images(n))  # magic 2051
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[prefix])  # magic 2049
    return labels


def test_idx_magic_numbers(tmp_path: Path) -> None:
    write_idx(tmp_path / "i", make_images(2))
    write_idx(tmp_path / "l", np.zeros(2, np.uint8))
    write_idx(tmp_path / "q", np.zeros((2, 8), np.int32))
    assert struct.unpack(">IIII", (tmp_path / "i").read_bytes()[:16]) == (2051, 2, 28, 28)
    assert struct.unpack(">II", (tmp_path / "l").read_bytes()[:8]) == (2049, 2)
    assert struct.unpack(">III", (tmp_path / "q").read_bytes()[:12]) == (3074, 2, 8)


# (1 - 0.1307) / 0.3081 and (0 - 0.1307) / 0.3081; (1 - 0.2860) / 0.3530 and -0.2860 / 0.3530.
MNIST_WHITE, MNIST_BLACK = 2.8214865, -0.4242129
FASHION_WHITE, FASHION_BLACK = 2.0226629, -0.8101983


def file_index(x: torch.Tensor, mean: float = 0.1307, std: float = 0.3081) -> torch.Tensor:
    """The file index k each image carries in pixel (27, 27), undoing (k / 255 - mean) / std: int64 (N,)."""
    return torch.round((x[:, 0, 27, 27] * std + mean) * 255).long()


@pytest.mark.parametrize(
    ("name", "folder", "mean_std", "white", "black"),
    [
        ("mnist", "MNIST", (0.1307, 0.3081), MNIST_WHITE, MNIST_BLACK),
        ("fashion_mnist", "FashionMNIST", (0.2860, 0.3530), FASHION_WHITE, FASHION_BLACK),
    ],
)
def test_mnist_like_loads_and_normalises(
    tmp_path: Path, name: str, folder: str, mean_std: tuple[float, float], white: float, black: float
) -> None:
    labels = write_mnist_like(tmp_path, folder)
    data = load_dataset(name, data_dir=tmp_path, seed=0, train_subset=None, test_subset=None, download=False)
    assert data.train_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.test_x.shape == (8, 1, 28, 28)
    assert data.train_y.dtype == torch.int64
    for x, y, file_labels in (
        (data.train_x, data.train_y, labels["train"]),
        (data.test_x, data.test_y, labels["t10k"]),
    ):
        torch.testing.assert_close(x[:, 0, 0, 0], torch.full((len(y),), white))
        torch.testing.assert_close(x[:, 0, 0, 1], torch.full((len(y),), black))
        # Pixel (27, 27) holds the file index k: recover k and check the label travelled with the image.
        index = file_index(x, *mean_std)
        assert sorted(index.tolist()) == list(range(len(y)))  # every example once
        assert y.tolist() == [int(file_labels[i]) for i in index]


def test_subsets_are_seeded_and_independent(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")

    def load(seed: int, train: int, test: int) -> tuple[list[int], list[int]]:
        data = load_dataset(
            "mnist", data_dir=tmp_path, seed=seed, train_subset=train, test_subset=test, download=False
        )
        return file_index(data.train_x).tolist(), file_index(data.test_x).tolist()

    train5, test3 = load(0, 5, 3)
    assert len(train5) == 5 and len(set(train5)) == 5 and len(test3) == 3
    assert load(0, 5, 3) == (train5, test3)  # same seed, same subsets
    assert load(1, 5, 3)[0] != train5  # another seed, another subset
    train7, test3_again = load(0, 7, 3)
    assert test3_again == test3  # the test draw ignores the training size
    assert train7[:5] == train5  # a larger subset extends the smaller one
    assert load(0, 5, 6)[0] == train5  # and the train draw ignores the test size


def test_subset_larger_than_split_is_clipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_mnist_like(tmp_path, "MNIST")
    with caplog.at_level(logging.INFO, logger="ndt.data"):
        data = load_dataset(
            "mnist", data_dir=tmp_path, seed=0, train_subset=100, test_subset=4, download=False
        )
    assert len(data.train_y) == 12 and len(data.test_y) == 4
    assert any(
        r.levelno == logging.WARNING and "train subset of 100" in r.getMessage() for r in caplog.records
    )


def test_probe_is_first_test_examples(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")
    data = load_dataset("mnist", data_dir=tmp_path, seed=3, train_subset=4, test_subset=6, download=False)
    x, y = data.probe(5)
    assert torch.equal(x, data.test_x[:5]) and torch.equal(y, data.test_y[:5])


def test_missing_mnist_file_names_path_and_config_key(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")
    missing = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path, seed=0, download=False)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert f"{missing}  (missing)" in message
    assert "paths.data_dir" in message
    assert "download=True" in message
    assert missing in info.value.paths


def test_missing_directory_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"paths\.data_dir"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "nowhere", seed=0, download=False)


# --- QMNIST: images as MNIST, labels an (N, 8) int32 IDX matrix whose column 0 is the class ------


def write_qmnist(root: Path, n_train: int = 10, n_test: int = 9) -> dict[str, np.ndarray]:
    raw = root / "QMNIST" / "raw"
    classes = {}
    for what, n in (("train", n_train), ("test", n_test)):
        classes[what] = (np.arange(n) * 3 % 10).astype(np.int32)
        extended = np.zeros((n, 8), dtype=np.int32)
        extended[:, 0] = classes[what]  # class
        extended[:, 1] = 4  # NIST hsf series
        extended[:, 2] = 2100 + np.arange(n)  # writer id: not a class, must not leak into labels
        write_idx(raw / f"qmnist-{what}-images-idx3-ubyte", make_images(n))
        write_idx(raw / f"qmnist-{what}-labels-idx2-int", extended)  # magic 3074
    return classes


def test_qmnist_loads_class_column_and_60k_test_file(tmp_path: Path) -> None:
    classes = write_qmnist(tmp_path)
    data = load_dataset(
        "qmnist", data_dir=tmp_path, seed=0, train_subset=None, test_subset=None, download=False
    )
    assert data.train_x.shape == (10, 1, 28, 28) and data.test_x.shape == (9, 1, 28, 28)
    torch.testing.assert_close(data.test_x[:, 0, 0, 0], torch.full((9,), MNIST_WHITE))  # MNIST's statistics
    for x, y, what in ((data.train_x, data.train_y, "train"), (data.test_x, data.test_y, "test")):
        assert y.tolist() == [int(classes[what][i]) for i in file_index(x)]
    assert DEFAULT_TEST_SUBSET["qmnist"] == 300


def test_missing_qmnist_names_its_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("qmnist", data_dir=tmp_path, seed=0, download=False)
    assert str(tmp_path / "QMNIST" / "raw" / "qmnist-test-labels-idx2-int") in str(info.value)
    assert "paths.data_dir" in str(info.value)


# --- AG News CSV -----------------------------------------------------------------------------

AG_TRAIN = [
    ("3", "Wall St. bears", 'Bears, bears & "bulls"!'),
    ("1", "U.S. news", "bulls win, again"),
    ("4", "Café 2024", ""),
    ("2", "Line\nbreak", "tab\there"),
]
AG_TEST = [
    ("2", "Bears again", "bulls " + "zzz " * 120),
    ("4", 'Win, "quoted, comma"', "unknown words"),
]
# Hand-counted training tokens: bears 3, bulls 2, and once each (ascending, digits first):
# 2024 again break caf here line news st tab us wall win.
AG_VOCAB = {"bears": 2, "bulls": 3, "2024": 4, "again": 5, "break": 6, "caf": 7, "here": 8, "line": 9}
AG_VOCAB |= {"news": 10, "st": 11, "tab": 12, "us": 13, "wall": 14, "win": 15}


def write_ag_news(root: Path) -> None:
    folder = root / "ag_news"
    folder.mkdir(parents=True)
    for name, rows in (("train.csv", AG_TRAIN), ("test.csv", AG_TEST)):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)  # as the release: every field quoted


def padded(ids: list[int]) -> list[int]:
    return (ids + [0] * 100)[:100]


def test_ag_news_tokens_vocabulary_padding_labels(tmp_path: Path) -> None:
    write_ag_news(tmp_path)
    data = load_dataset(
        "ag_news", data_dir=tmp_path, seed=0, train_subset=None, test_subset=None, download=False
    )
    assert data.spec.encoding == "embedding" and data.train_x.dtype == torch.int64
    assert data.train_x.shape == (4, 100) and data.test_x.shape == (2, 100)
    # Labels 0..3 are distinct in each file, so they identify the rows after the shuffle.
    train = {int(y): x.tolist() for x, y in zip(data.train_x, data.train_y, strict=True)}
    test = {int(y): x.tolist() for x, y in zip(data.test_x, data.test_y, strict=True)}
    assert train == {
        2: padded([14, 11, 2, 2, 2, 3]),  # wall st bears bears bears bulls
        0: padded([13, 10, 3, 15, 5]),  # us news bulls win again
        3: padded([7, 4]),  # caf 2024 (é dropped; empty description)
        1: padded([9, 6, 12, 8]),  # line break tab here
    }
    assert test == {
        1: [2, 5, 3] + [1] * 97,  # bears again bulls zzz...: UNK, cut at 100
        3: padded([15, 1, 1, 1, 1]),  # win quoted comma unknown words
    }


def test_ag_news_raw_ids_are_float_ids(tmp_path: Path) -> None:
    write_ag_news(tmp_path)
    emb = load_dataset("ag_news", data_dir=tmp_path, seed=2, train_subset=3, test_subset=2, download=False)
    raw = load_dataset(
        "ag_news",
        data_dir=tmp_path,
        seed=2,
        train_subset=3,
        test_subset=2,
        encoding="raw_ids",
        download=False,
    )
    assert raw.spec.encoding == "raw_ids" and raw.train_x.dtype == torch.float32
    assert torch.equal(raw.train_x, emb.train_x.float()) and torch.equal(raw.test_y, emb.test_y)


def lm_pair(ids: list[int]) -> tuple[list[int], list[int]]:
    """Inputs and targets of one text, computed here: its first 65 ids, PAD-ed; targets shifted by one,
    -100 where the next position is padding."""
    window = (ids + [0] * 65)[:65]
    return window[:64], [t if t != 0 else -100 for t in window[1:]]


def test_ag_news_lm_inputs_and_next_token_targets(tmp_path: Path) -> None:
    write_ag_news(tmp_path)
    data = load_dataset(
        "ag_news_lm", data_dir=tmp_path, seed=0, train_subset=None, test_subset=None, download=False
    )
    assert data.spec.task == "next_token" and data.spec.num_classes == data.spec.vocab_size == 5002
    assert data.train_x.shape == data.train_y.shape == (4, 64) and data.test_x.shape == (2, 64)
    assert data.train_x.dtype == data.train_y.dtype == torch.int64
    # The texts' first tokens are distinct: they identify the rows after the shuffle. Same ids as ag_news.
    train = {int(x[0]): (x.tolist(), y.tolist()) for x, y in zip(data.train_x, data.train_y, strict=True)}
    assert train == {
        14: lm_pair([14, 11, 2, 2, 2, 3]),  # wall st bears bears bears bulls
        13: lm_pair([13, 10, 3, 15, 5]),  # us news bulls win again
        7: lm_pair([7, 4]),  # caf 2024: one target
        9: lm_pair([9, 6, 12, 8]),  # line break tab here
    }
    assert train[7][1] == [4] + [-100] * 63  # by hand: only "caf" -> "2024" is predicted
    test = {int(x[0]): (x.tolist(), y.tolist()) for x, y in zip(data.test_x, data.test_y, strict=True)}
    # bears again bulls zzz x 120: cut at 65 tokens, so every one of the 64 targets counts (no padding)
    assert test[2] == ([2, 5, 3] + [1] * 61, [5, 3] + [1] * 62)
    assert test[15] == lm_pair([15, 1, 1, 1, 1])  # win quoted comma unknown words
    # the same texts and subsets as ag_news: the inputs are ag_news's ids, cut to 64
    cls = load_dataset("ag_news", data_dir=tmp_path, seed=3, train_subset=3, test_subset=2, download=False)
    lm = load_dataset("ag_news_lm", data_dir=tmp_path, seed=3, train_subset=3, test_subset=2, download=False)
    assert torch.equal(lm.train_x, cls.train_x[:, :64]) and torch.equal(lm.test_x, cls.test_x[:, :64])


def test_tokenize_and_vocabulary_tie_break() -> None:
    assert tokenize(pd.Series(["It's U.S.-made, 100%!"])).tolist() == [["its", "usmade", "100"]]
    rows = [["b", "a", "c", "b"], ["c", "a", "d"]]  # a, b, c twice; d once
    assert build_vocabulary(pd.Series(rows), size=3) == {"a": 2, "b": 3, "c": 4}
    assert build_vocabulary(pd.Series(rows[::-1]), size=3) == {"a": 2, "b": 3, "c": 4}


def test_missing_ag_news_file(tmp_path: Path) -> None:
    write_ag_news(tmp_path)
    (tmp_path / "ag_news" / "test.csv").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("ag_news", data_dir=tmp_path, seed=0)
    assert f"{tmp_path / 'ag_news' / 'test.csv'}  (missing)" in str(info.value)
    assert "paths.data_dir" in str(info.value)


# --- digits (scikit-learn's bundled 8x8 images) ----------------------------------------------


def test_digits_shapes_split_and_standardisation(caplog: pytest.LogCaptureFixture) -> None:
    from sklearn.datasets import load_digits

    with caplog.at_level(logging.INFO, logger="ndt.data"):
        default = load_dataset("digits", data_dir="unused", seed=0)
    # 1,500 > 1,437 training images: clipped, at info level since it is the default.
    assert len(default.train_y) == 1437 and len(default.test_y) == 250
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert default.train_x.shape == (1437, 1, 28, 28) and default.train_x.dtype == torch.float32
    assert default.train_y.dtype == torch.int64 and set(default.train_y.tolist()) == set(range(10))

    full = load_dataset("digits", data_dir="unused", seed=0, train_subset=None, test_subset=None)
    assert len(full.test_y) == 360
    # The test split is the last 360 images: same label counts as sklearn's last 360 targets.
    expected = np.bincount(load_digits().target[-360:], minlength=10)
    assert torch.bincount(full.test_y, minlength=10).tolist() == expected.tolist()
    # The hard-coded (mean, std) standardise all 1,797 images.
    everything = torch.cat([full.train_x, full.test_x])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3


def test_digits_subset_determinism() -> None:
    a = load_dataset("digits", data_dir="unused", seed=0, train_subset=100, test_subset=50)
    b = load_dataset("digits", data_dir="unused", seed=0, train_subset=100, test_subset=50)
    c = load_dataset("digits", data_dir="unused", seed=1, train_subset=100, test_subset=50)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.test_x, c.test_x)


def test_defaults_and_bad_arguments(tmp_path: Path) -> None:
    assert DEFAULT_TEST_SUBSET == {
        "mnist": 250,
        "fashion_mnist": 250,
        "qmnist": 300,
        "ag_news": 300,
        "ag_news_lm": 300,
        "digits": 250,
        "cifar10": 250,
    }
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn", data_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="encoding"):
        load_dataset("digits", data_dir=tmp_path, seed=0, encoding="raw_ids")
    with pytest.raises(ValueError, match="positive"):
        load_dataset("digits", data_dir=tmp_path, seed=0, train_subset=0)


# --- CIFAR-10: pickled batches of (N, 3072) uint8 rows (see tests/cifar10_files.py) --------------

#: CIFAR-10's published per-channel statistics, written out here (not read from ndt.data.images).
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])


def test_cifar10_loads_normalises_and_keeps_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar10(tmp_path)
    accept_files(monkeypatch, tmp_path)
    data = load_dataset(
        "cifar10", data_dir=tmp_path, seed=0, train_subset=None, test_subset=None, download=False
    )
    assert data.spec.input_shape == (3, 32, 32) and data.spec.num_classes == 10
    assert tuple(data.train_x.shape) == (5 * TRAIN_PER_BATCH, 3, 32, 32)
    assert tuple(data.test_x.shape) == (N_TEST, 3, 32, 32)
    for x, y, (images, labels) in (
        (data.train_x, data.train_y, written["train"]),
        (data.test_x, data.test_y, written["test"]),
    ):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        # The red pixel (0, 0) numbers the examples: undo the normalisation to find which each row is.
        index = np.rint((x[:, 0, 0, 0].double().numpy() * CIFAR_STD[0] + CIFAR_MEAN[0]) * 255).astype(int)
        assert sorted(index.tolist()) == list(range(len(labels)))  # every example once (shuffled)
        expected = (images[index] / 255.0 - CIFAR_MEAN[None, :, None, None]) / CIFAR_STD[None, :, None, None]
        np.testing.assert_allclose(x.double().numpy(), expected, rtol=0, atol=1e-5)
        assert y.tolist() == labels[index].tolist()


def test_cifar10_checksums_are_still_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    # Without the fixture's checksum table, torchvision compares with the real files' md5s and refuses.
    with pytest.raises(RuntimeError, match="corrupted"):
        load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    accept_files(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1])  # altered after its md5 was taken
    with pytest.raises(RuntimeError, match="corrupted"):
        load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)


def test_missing_cifar10_names_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    accept_files(monkeypatch, tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "test_batch"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    message = str(info.value)
    assert f"{missing}  (missing)" in message and "paths.data_dir" in message and "download=True" in message
    folder = tmp_path / "cifar-10-batches-py"
    expected = [folder / f"data_batch_{k}" for k in range(1, 6)] + [
        folder / "test_batch",
        folder / "batches.meta",
    ]
    assert list(info.value.paths) == expected
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere", seed=0, download=False)


# --- EpochSampler ----------------------------------------------------------------------------


def test_sampler_covers_every_index_once_per_epoch() -> None:
    sampler = EpochSampler(n=10, batch_size=4, seed=0)
    orders = []
    for epoch in range(3):
        assert sampler.epoch == epoch
        batches = list(sampler)
        assert [len(b) for b in batches] == [4, 4, 2]  # drop_last=False
        order = torch.cat(batches)
        assert sorted(order.tolist()) == list(range(10))
        orders.append(order.tolist())
    assert orders[0] != orders[1]  # a new permutation each epoch
    assert sampler.state_dict() == {"epoch": 3, "position": 0}


def test_sampler_is_deterministic_per_seed() -> None:
    def first_batches(seed: int) -> list[list[int]]:
        sampler = EpochSampler(n=50, batch_size=8, seed=seed)
        return [sampler.next_batch().tolist() for _ in range(10)]

    assert first_batches(5) == first_batches(5)
    assert first_batches(5) != first_batches(6)


def test_sampler_resumes_mid_epoch_exactly() -> None:
    uninterrupted = EpochSampler(n=10, batch_size=3, seed=7)
    for _ in range(5):  # epoch 0 has 4 batches (3, 3, 3, 1): stop one batch into epoch 1
        uninterrupted.next_batch()
    state = uninterrupted.state_dict()
    assert state == {"epoch": 1, "position": 3}
    resumed = EpochSampler(n=10, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    for _ in range(9):
        assert torch.equal(resumed.next_batch(), uninterrupted.next_batch())
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_sampler_rejects_bad_state() -> None:
    sampler = EpochSampler(n=10, batch_size=3, seed=0)
    with pytest.raises(ValueError):
        sampler.load_state_dict({"epoch": 0, "position": 10})
