"""Small CIFAR-10 files in the real "python version" format, for tests (no download).

The real archive ``cifar-10-python.tar.gz`` extracts to ``cifar-10-batches-py/`` holding
``data_batch_1`` .. ``data_batch_5`` (10,000 images each), ``test_batch`` and ``batches.meta``. Each
batch is a pickled dict: ``data`` a uint8 (N, 3072) array whose row is one image as three 32x32
planes, R then G then B, each row-major; ``labels`` a list of N ints in 0..9; ``batch_label`` and
``filenames`` (which torchvision ignores). ``batches.meta`` is a pickled dict with ``label_names``
(the 10 class names), ``num_cases_per_batch`` and ``num_vis`` (3,072).

**Checksums.** torchvision's `CIFAR10` accepts a folder only if every file's md5 equals the one it
lists for the real file (`CIFAR10.train_list`, `test_list`, `meta["md5"]`, checked by
`_check_integrity` and `_load_meta` through `torchvision.datasets.utils.check_integrity`). Files
written here cannot match those, so `accept_files` replaces the class's checksum table (through
pytest's `monkeypatch`, undone after the test) with the md5s of the files just written. The check
itself still runs unchanged: a file altered after writing, or a missing one, is still rejected.
Everything else (the paths, the pickle reading, the reshape to HWC) is torchvision's own code.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision

#: Examples per training batch file and in the test file (the real files hold 10,000 each).
TRAIN_PER_BATCH = 4
N_TEST = 6
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-py"


def make_images(n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, 3, 32, 32) random images; the red pixel (0, 0) holds the example's index `offset + i`."""
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = offset + np.arange(n)
    return images


def _pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are Python 2 pickles; torchvision reads any


def write_cifar10(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the seven files under `<root>/cifar-10-batches-py/`.

    Training images are numbered 0..19 across the five batches (pixel (0, 0) of the red plane),
    test images 0..5.

    Returns:
        {"train": (images, labels), "test": (images, labels)}: uint8 (N, 3, 32, 32), int64 (N,), in
        file order, as written.
    """
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    files = [(f"data_batch_{k}", "train", TRAIN_PER_BATCH) for k in range(1, 6)] + [
        ("test_batch", "test", N_TEST)
    ]
    for name, split, n in files:
        offset = sum(len(a) for a in written[split][0])
        images = make_images(n, offset, rng)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        _pickle(
            folder / name,
            {
                "batch_label": f"{name} (ndt test fixture)",
                "labels": [int(v) for v in labels],
                "data": images.reshape(n, 3 * 32 * 32),  # R plane, G plane, B plane, each row-major
                "filenames": [f"img_{offset + i}.png" for i in range(n)],
            },
        )
        written[split][0].append(images)
        written[split][1].append(labels)
    _pickle(
        folder / "batches.meta", {"label_names": CLASS_NAMES, "num_cases_per_batch": 10000, "num_vis": 3072}
    )
    return {split: (np.concatenate(x), np.concatenate(y)) for split, (x, y) in written.items()}


def md5(path: Path) -> str:
    """Hex md5 of a file's bytes (what torchvision's check_integrity computes)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def accept_files(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make torchvision's checksum table list the md5s of the files under `<root>/cifar-10-batches-py/`."""
    cls = torchvision.datasets.CIFAR10
    folder = root / FOLDER
    monkeypatch.setattr(cls, "train_list", [[name, md5(folder / name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5(folder / name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
