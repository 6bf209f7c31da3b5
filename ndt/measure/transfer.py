"""A measurement's way to the host: pieces on any devices, one reused host buffer, no waiting.

`stage(pieces, pool)` copies a measurement's flat float64 pieces (every layer's Gram statistics, then
loss and gradient norm) into one host buffer taken from a `BufferPool`:

1. Consecutive pieces on the same device are concatenated there (one kernel), so a model on one GPU
   makes one device-to-host copy per measurement; a model spread over several devices makes one per
   run of consecutive layers on a device, each into its own slice of the same host buffer.
2. Each CUDA copy is queued with ``non_blocking=True`` on its device's current stream into pinned
   (page-locked) memory, and an event is recorded behind it: the training thread never waits. A
   copy from pageable memory, or to it, would block the host until the device caught up.
3. Whoever reads the buffer (the spectra worker) first waits on those events (`Staged.wait`), copies
   the values out, and gives the buffer back to the pool (`Staged.land`).

The pool bounds what is in flight: at most `PINNED_BUFFERS` buffers exist, reused from one
measurement to the next (a model measures the same shapes at every step, so after the first
measurement nothing is allocated). When all are in use the caller waits for one (back-pressure: the
worker is behind) or, on the inline path where nobody else would free one, lands pending measurements
itself (`reclaim`). Pinned memory is a scarce resource of the whole machine; pinning one buffer per
queued measurement (the queue holds up to 64) would grow with a slow host, which is what this avoids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Most host buffers a tracker's pool holds: measurements staged but not yet read by the worker. At
#: the study's sampling (every 5 steps) that is 80 training steps of slack before training waits for
#: the worker; each buffer is one measurement's statistics (a few KB to a few MB).
PINNED_BUFFERS = 16
#: Buffers are allocated in multiples of this many float64s (32 KiB), so that a measurement a little
#: larger than the last (a different number of valid tokens) reuses a buffer instead of replacing it.
_GRANULE = 4096
#: Seconds between the checks a waiting `acquire` makes (`on_wait`: has the worker died?).
_POLL_S = 0.5
#: Seconds between two polls of a copy's event (a measurement's copy takes microseconds to a few ms).
_SPIN_S = 2e-4


class BufferPool:
    """Reusable 1-D float64 host buffers, at most `max_buffers` of them at once; thread-safe.

    Args:
        max_buffers: most buffers that exist at once (in use plus free).
        pin: page-locked memory (needs CUDA): what a non-blocking device-to-host copy lands in. False
            gives ordinary memory (a model on the CPU; the same logic, testable without a GPU).

    Attributes:
        allocations: buffers allocated so far (a reused buffer is not counted again).
    """

    def __init__(self, max_buffers: int = PINNED_BUFFERS, pin: bool = True) -> None:
        if max_buffers < 1:
            raise ValueError(f"max_buffers must be >= 1, got {max_buffers}")
        self.max_buffers = int(max_buffers)
        self.pin = bool(pin)
        self.allocations = 0
        self._free: list[torch.Tensor] = []
        self._in_use: dict[int, torch.Tensor] = {}  # id(buffer) -> buffer
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Buffers that exist now (in use plus free), <= max_buffers."""
        with self._cond:
            return len(self._free) + len(self._in_use)

    @property
    def in_use(self) -> int:
        """Buffers acquired and not yet released."""
        with self._cond:
            return len(self._in_use)

    def acquire(
        self,
        numel: int,
        reclaim: Callable[[], int] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """A buffer of at least `numel` float64s (its first `numel` are the caller's to fill).

        Reuses the smallest free buffer that fits; else allocates while fewer than `max_buffers` exist
        (replacing a free one that is too small when at the cap); else, all being in use:

        Args:
            numel: float64s needed.
            reclaim: called (without the pool's lock) to release buffers when all are in use; returns
                how many it released. For a caller that is the only one releasing (the inline path).
            on_wait: without `reclaim`, the caller waits for another thread's `release`; this is
                called every half second meanwhile and may raise to stop waiting (a dead worker).

        Raises:
            RuntimeError: `reclaim` released nothing (every buffer is held elsewhere: a deadlock).
        """
        numel = max(int(numel), 1)
        while True:
            with self._cond:
                fits = [b for b in self._free if b.numel() >= numel]
                if fits:
                    buf = min(fits, key=torch.Tensor.numel)
                    self._free.remove(buf)
                    self._in_use[id(buf)] = buf
                    return buf
                if self._free and len(self._free) + len(self._in_use) >= self.max_buffers:
                    self._free.remove(min(self._free, key=torch.Tensor.numel))  # too small: replaced
                if len(self._free) + len(self._in_use) < self.max_buffers:
                    capacity = -(-numel // _GRANULE) * _GRANULE
                    buf = torch.empty(capacity, dtype=torch.float64, pin_memory=self.pin)
                    self.allocations += 1
                    self._in_use[id(buf)] = buf
                    return buf
                if reclaim is None:
                    self._cond.wait(timeout=_POLL_S)  # then look again
            if reclaim is not None:
                if reclaim() <= 0:
                    raise RuntimeError(
                        f"all {self.max_buffers} host buffers are in use and none could be reclaimed"
                    )
            elif on_wait is not None:
                on_wait()

    def release(self, buf: torch.Tensor) -> None:
        """Give back a buffer from `acquire` (its copies must have landed: see `Staged.wait`)."""
        with self._cond:
            if self._in_use.pop(id(buf), None) is None:
                raise ValueError("release of a buffer this pool did not hand out (or released twice)")
            self._free.append(buf)
            self._cond.notify()


@dataclass
class Staged:
    """A measurement's values on their way to the host.

    Attributes:
        host: (N,) float64 host tensor; valid once `wait` returns.
        buffer: the pool buffer `host` is a view of; None once given back (`release`).
        pool: where `buffer` goes back.
        events: one per CUDA copy, recorded on that device's stream behind the copy.
    """

    host: torch.Tensor
    buffer: torch.Tensor | None = None
    pool: BufferPool | None = None
    events: list[torch.cuda.Event] = field(default_factory=list)

    def wait(self) -> None:
        """Block until every copy has landed (on the thread that reads, never the training thread).

        Polls the events rather than synchronising on them: a query never blocks the device's
        stream, and the GIL is free for the training thread between polls. (The sync debug mode is
        process-wide, so the worker is checked too: it must not copy to the host blocking either.)
        """
        for event in self.events:
            while not event.query():
                time.sleep(_SPIN_S)
        self.events = []

    def land(self) -> np.ndarray:
        """Wait, take the values as a numpy array of the caller's own, and return the buffer to the pool."""
        self.wait()
        if self.buffer is None:  # its buffer may already hold another measurement's values
            raise RuntimeError("this staged measurement was already landed or released")
        values = self.host.numpy().copy()  # the buffer is reused by the next measurement
        self.release()
        return values

    def release(self) -> None:
        """Give the buffer back without reading it (waits for its copies first: they write into it)."""
        self.wait()
        if self.buffer is not None and self.pool is not None:
            buf, self.buffer = self.buffer, None
            self.pool.release(buf)


def device_runs(pieces: Sequence[torch.Tensor]) -> list[tuple[torch.device, list[torch.Tensor]]]:
    """Consecutive pieces grouped by device, in order: [(device, pieces on it), ...]."""
    runs: list[tuple[torch.device, list[torch.Tensor]]] = []
    for p in pieces:
        if runs and runs[-1][0] == p.device:
            runs[-1][1].append(p)
        else:
            runs.append((p.device, [p]))
    return runs


def stage(
    pieces: Sequence[torch.Tensor],
    pool: BufferPool,
    reclaim: Callable[[], int] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Staged:
    """Start the copy of 1-D float64 `pieces`, concatenated in order, to the host; never waits for a device.

    Args:
        pieces: 1-D float64 tensors, each on any device.
        pool: where the host buffer comes from. (A CPU measurement solved inline is not staged at
            all: the tracker keeps its host tensors as they are.)
        reclaim, on_wait: passed to `BufferPool.acquire`.

    Returns:
        The staged values (`Staged.host` holds them once `Staged.wait` returns).
    """
    runs = [(d, p[0] if len(p) == 1 else torch.cat(p)) for d, p in device_runs(pieces)]
    total = sum(t.numel() for _, t in runs)
    buffer = pool.acquire(total, reclaim=reclaim, on_wait=on_wait)
    host = buffer[:total]
    events: list[torch.cuda.Event] = []
    offset = 0
    for device, values in runs:
        n = values.numel()
        if device.type == "cuda":
            # Queued on the current stream of the tensor's device (where the values were made), into
            # pinned memory: the host goes on at once. The event marks when this slice has landed.
            host[offset : offset + n].copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        else:
            host[offset : offset + n].copy_(values)  # CPU: a memcpy; other devices: their own sync
        offset += n
    return Staged(host=host, buffer=buffer, pool=pool, events=events)
