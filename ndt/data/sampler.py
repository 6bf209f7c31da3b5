"""Shuffled mini-batches of indices whose order can be saved and resumed exactly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from ndt.data.common import STREAM_EPOCH, seeded_generator


class EpochSampler:
    """Batches of indices into in-memory tensors, a fresh permutation of range(n) each epoch.

    Epoch e's permutation comes from a generator seeded by (seed, e) alone, so the position
    (epoch, index into the permutation) is the whole state: a sampler restored with
    `load_state_dict` yields exactly the batches an uninterrupted one would have.

    The last batch of an epoch is kept even when partial (drop_last=False): with subsets of a few
    hundred examples, dropping it would leave some examples out of every epoch. Batches never span
    two epochs. After an epoch's last batch the sampler moves on to the next epoch at once, so
    `epoch` and `state_dict()` already name the epoch the next batch comes from.

    Attributes:
        n: number of examples indexed.
        batch_size: examples per batch (the last batch of an epoch may be smaller).
        seed: the run seed, >= 0.
        device: where the batches (index tensors) live: the device of the data they index.
        epoch: epoch of the next batch, from 0.
        position: index into this epoch's permutation where the next batch starts, 0 <= position < n.

    Example:
        >>> sampler = EpochSampler(n=10, batch_size=4, seed=0)
        >>> [len(b) for b in sampler]  # one epoch
        [4, 4, 2]
        >>> sampler.epoch
        1
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        # Batches are slices of the epoch's permutation, which moves to `device` once per epoch: no
        # host-to-device copy per step on the training path.
        self.device = torch.device(device)
        self.epoch = 0
        self.position = 0
        self._permutation: Tensor | None = None  # of self.epoch, made when first needed

    def __len__(self) -> int:
        """Batches per full epoch, the partial last one included."""
        return -(-self.n // self.batch_size)

    def permutation(self, epoch: int) -> Tensor:
        """The order of epoch `epoch`: int64 (n,), a permutation of range(n)."""
        return torch.randperm(self.n, generator=seeded_generator(self.seed, STREAM_EPOCH, epoch))

    def _on_device(self, perm: Tensor) -> Tensor:
        """The permutation moved to `device` without blocking the host.

        It is drawn on the CPU (the same order on every device, and across a resume on another one).
        To CUDA it goes from pinned memory with ``non_blocking=True``: a copy from pageable memory
        would wait for every kernel queued before it. The pinned block stays reserved by torch's
        host allocator until the copy has run, so dropping it here is safe.
        """
        if self.device.type != "cuda":
            return perm.to(self.device)
        return perm.pin_memory().to(self.device, non_blocking=True)

    def next_batch(self) -> Tensor:
        """The next batch: int64 (batch_size,) on `device`, or fewer at the end of an epoch."""
        if self._permutation is None:
            self._permutation = self._on_device(self.permutation(self.epoch))
        batch = self._permutation[self.position : self.position + self.batch_size]
        self.position += len(batch)
        if self.position >= self.n:
            self.epoch += 1
            self.position = 0
            self._permutation = None
        return batch

    def __iter__(self) -> Iterator[Tensor]:
        """The remaining batches of the current epoch (all of them when at its start)."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """Where the next batch starts: {"epoch": int, "position": int}."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a `state_dict()` taken from a sampler with the same n, batch_size and seed.

        Raises:
            ValueError: a negative epoch, or a position outside [0, n).
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.n:
            raise ValueError(f"invalid sampler state {dict(state)} for n={self.n}")
        self.epoch, self.position = epoch, position
        self._permutation = None
