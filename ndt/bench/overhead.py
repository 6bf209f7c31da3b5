"""Tracking overhead: training time with vs without the tracker, beside the floor.

The floor is the cost of the bare eigendecompositions the tracker must do (one per layer per
measurement, on the same Gram matrices, batched and split over threads as the tracker does:
`ndt.measure.spectrum.eigvalsh_batched`), as a share of the untracked training time. Targets: the
MLP 784-256-128-10 at batch 128 on CPU <= 15% (median of >= 5 paired runs); on CUDA (spectra solved
off the training stream) <= 1%.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ndt.measure.capture import ActivationCapture
from ndt.measure.spectrum import eigvalsh_batched, gram_stats, single_threaded_blas
from ndt.measure.tracker import HighFrequencyTracker
from ndt.models import build_model
from ndt.storage.parquet import FLUSH_EVERY

SAMPLING_FREQUENCY = 5


def mlp_784_256_128_10() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def small_cnn() -> nn.Module:
    return build_model("cnn_shallow", "mnist")


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp 784-256-128-10": mlp_784_256_128_10,
    "cnn_shallow": small_cnn,
}


@dataclass
class OverheadRow:
    """One model and batch: paired untracked/tracked timings (seconds, one entry per pair)."""

    model: str
    device: str
    batch: int
    steps: int
    base_s: list[float]
    tracked_s: list[float]
    floor_s: float

    @property
    def overhead(self) -> float:
        """Median over the pairs of tracked / untracked - 1: each pair ran back to back, so a slow
        stretch of a shared machine slows both halves of a pair and cancels in its ratio."""
        return float(np.median(np.asarray(self.tracked_s) / np.asarray(self.base_s))) - 1

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) over the pairs of the per-pair overhead."""
        r = np.asarray(self.tracked_s) / np.asarray(self.base_s) - 1
        return float(r.min()), float(r.max())

    @property
    def floor(self) -> float:
        return self.floor_s / float(np.median(self.base_s))

    @property
    def ratio(self) -> float:
        return self.overhead / self.floor if self.floor > 0 else float("nan")


def _synthetic_images(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """4,096 seeded Gaussian 1 x 28 x 28 images and labels of 10 classes (timing needs no real data)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 28, 28, generator=gen).to(device)
    return x, torch.randint(0, 10, (4096,), generator=gen).to(device)


def _train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, tracked: bool
) -> float:
    """Seconds of one run of `steps` steps, tracked or not (tracker made and closed inside the timing)."""
    with tempfile.TemporaryDirectory() as tmp:
        return sum(_chunks(model, x, y, batch, steps, steps, f"{tmp}/m" if tracked else None))


def _eig_floor(
    model: nn.Module,
    x: torch.Tensor,
    batch: int,
    measurements: int,
    flush_every: int = FLUSH_EVERY,
    repeats: int = 5,
) -> float:
    """Seconds the bare eigendecompositions of `measurements` measurements take: host, float64, the
    Grams of `flush_every` measurements solved together per shape, as the tracker's flush does."""
    with ActivationCapture(model, transform=gram_stats) as cap:
        model(x[:batch])
    groups: dict[int, list[np.ndarray]] = {}
    for st in cap.activations.values():
        g = st.gram.cpu().numpy()
        groups.setdefault(g.shape[0], []).extend([g] * flush_every)
    stacks = [np.stack(v) for v in groups.values()]
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        with single_threaded_blas():
            for s in stacks:
                eigvalsh_batched(s)
        best = min(best, time.perf_counter() - t)
    return best * measurements / flush_every


def _chunks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    steps: int,
    chunk: int,
    writer: str | None,
    phases: np.ndarray | None = None,
) -> Iterator[float]:
    """Train `steps` steps (tracked when `writer` is a directory), `chunk` steps per ``next``; yield
    the seconds each chunk took. The tracker is made in the first chunk and closed (every row
    written) in the last, so the chunks' sum is what a whole tracked run costs. With `phases` (a
    (steps, 4) array; host only), each step's seconds in forward and loss, zero_grad and backward,
    optimizer step, and the tracker's ``log`` are written into it (`phase_breakdown`)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x.shape[0]
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    clock = time.perf_counter
    tracker: HighFrequencyTracker | None = None
    for first in range(0, steps, chunk):
        sync()
        t0 = time.perf_counter()
        if writer is not None and tracker is None:
            tracker = HighFrequencyTracker(model, SAMPLING_FREQUENCY, writer=writer)
        for step in range(first, min(first + chunk, steps)):
            lo = (step * batch) % (n - batch)
            t_fwd = clock()
            loss = nn.functional.cross_entropy(model(x[lo : lo + batch]), y[lo : lo + batch])
            t_bwd = clock()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t_opt = clock()
            opt.step()
            t_log = clock()
            if tracker is not None:
                tracker.log(step, loss.detach())
            if phases is not None:
                phases[step] = (t_bwd - t_fwd, t_opt - t_bwd, t_log - t_opt, clock() - t_log)
        if tracker is not None and first + chunk >= steps:
            tracker.close()  # flushing included
        sync()
        yield time.perf_counter() - t0


def _interleaved_pair(
    make: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    steps: int,
    chunk: int,
    phases: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, float]:
    """(untracked s, tracked s) of two identical runs trained in alternating chunks of `chunk` steps.

    Two copies of the same model (same seed, same batches) take turns, `chunk` steps each, in ABBA
    order: the speed of a shared VM drifts by tens of percent within seconds (back-to-back runs of
    800 steps gave pair overheads from -20% to +48%), and a drift then slows both runs alike.
    `phases`: (untracked, tracked) (steps, 4) arrays for each step's phase timings (`_chunks`).
    """
    torch.manual_seed(0)
    base_model = make().to(x.device)
    torch.manual_seed(0)
    tracked_model = make().to(x.device)
    base_phases, tracked_phases = phases if phases is not None else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        base = _chunks(base_model, x, y, batch, steps, chunk, None, base_phases)
        tracked = _chunks(tracked_model, x, y, batch, steps, chunk, f"{tmp}/m", tracked_phases)
        base_s = tracked_s = 0.0
        for i in range(-(-steps // chunk)):
            if i % 2:
                tracked_s += next(tracked)
                base_s += next(base)
            else:
                base_s += next(base)
                tracked_s += next(tracked)
    return base_s, tracked_s


#: Pairs for the MLP (about 5 s each): on the 2-core VM single pairs range over +-5 points around
#: the median (e.g. 13.2..25.1% for a median of 17.4% in 5 pairs), and the median of 9 moves less.
MLP_PAIRS = 9

#: Steps per turn of `_interleaved_pair`: 10 measurements, about 0.15 s of the MLP on the 2-core VM.
CHUNK = 50


def bench_overhead(
    batches: tuple[int, ...] = (32, 128), steps: int = 800, repeats: int = 5, device: str = "cpu"
) -> list[OverheadRow]:
    """Time untracked and tracked training for each model and batch, in `repeats` (>= 5) pairs.

    Each pair is an untracked and a tracked run of the same model trained in alternating chunks
    (`_interleaved_pair`); the overhead is the median of the pairs' ratios. The MLP gets at least
    `MLP_PAIRS`: its pairs are short and its target is the tight one.
    """
    rows = []
    x_all, y_all = _synthetic_images(device)
    for name, make in MODELS.items():
        for batch in batches:
            n_steps = steps if name.startswith("mlp") else max(steps // 4, 50)
            _interleaved_pair(make, x_all, y_all, batch, 2 * CHUNK, CHUNK)  # warm-up
            n_pairs = max(repeats, MLP_PAIRS) if name.startswith("mlp") else repeats
            pairs = [_interleaved_pair(make, x_all, y_all, batch, n_steps, CHUNK) for _ in range(n_pairs)]
            measurements = len(range(0, n_steps, SAMPLING_FREQUENCY))
            torch.manual_seed(0)
            floor = _eig_floor(make().to(device), x_all, batch, measurements)
            base, tracked = (list(t) for t in zip(*pairs, strict=True))
            rows.append(OverheadRow(name, device, batch, n_steps, base, tracked, floor))
    return rows


def report_overhead(rows: list[OverheadRow]) -> str:
    lines = [
        f"tracking overhead (sampling_frequency={SAMPLING_FREQUENCY}, flush and close included; median of "
        "paired runs; targets: MLP 784-256-128-10 at batch 128 on CPU <= 15%, CUDA <= 1%):"
    ]
    for r in rows:
        lo, hi = r.spread
        lines.append(
            f"  {r.model:20s} {r.device:4s} batch {r.batch:4d}: untracked {np.median(r.base_s):6.2f} s, "
            f"tracked {np.median(r.tracked_s):6.2f} s -> overhead {100 * r.overhead:5.1f}% "
            f"(pairs {100 * lo:.1f}..{100 * hi:.1f}%, n={len(r.base_s)}); eig floor {100 * r.floor:5.1f}%; "
            f"overhead/floor {r.ratio:4.2f}x"
        )
    return "\n".join(lines)


@dataclass
class PhaseRow:
    """Where a measurement's cost lands in the training loop, in microseconds per measurement
    (`SAMPLING_FREQUENCY` steps), tracked minus untracked (`phase_breakdown`).

    Attributes:
        step_us: the untracked step (median).
        forward_us: the measured step's forward, hooks armed (median excess).
        log_us: ``log`` at the measured step: grad norm, bookkeeping (median; flushes excluded).
        arm_us: ``log`` at the step before, which registers the hooks (median).
        other_us: every other phase's median excess over the untracked run (the steps between
            measurements, and the measured step's backward and optimizer step).
        flush_us: what the medians leave out: the flushes (a batch's eigensolves and its Parquet
            part, every `FLUSH_EVERY` measurements, inside a measured step's ``log``) and any stall
            of the VM; the mean's excess over the medians.
        total_us: the mean excess (forward to log, every step). The tracker's construction and
            ``close`` fall outside the steps: `bench_overhead`'s totals include them.
    """

    batch: int
    steps: int
    step_us: float
    forward_us: float
    log_us: float
    arm_us: float
    other_us: float
    flush_us: float
    total_us: float


def phase_breakdown(base: np.ndarray, tracked: np.ndarray, batch: int) -> PhaseRow:
    """Split the tracker's cost by phase from per-step timings of an untracked and a tracked run.

    Args:
        base, tracked: (steps, 4) seconds per step in forward, backward, optimizer step and ``log``
            (`_chunks`'s ``phases``), step 0 first; a step s is measured when s % f == 0, f =
            `SAMPLING_FREQUENCY`, its hooks armed by ``log`` at s - 1.
        batch: the batch size (reported).
    """
    f = SAMPLING_FREQUENCY
    # (f, 4) medians over the steps of each residue: robust to the flushes, which land on a few
    # measured steps, and to the VM's brief stalls.
    med_b = np.array([np.median(base[r::f], axis=0) for r in range(f)])
    med_t = np.array([np.median(tracked[r::f], axis=0) for r in range(f)])
    excess = med_t - med_b
    forward, log, arm = excess[0, 0], excess[0, 3], excess[f - 1, 3]
    medians = excess.sum()
    total = f * (tracked.sum(axis=1).mean() - base.sum(axis=1).mean())
    us = 1e6
    return PhaseRow(
        batch=batch,
        steps=len(base),
        step_us=float(np.median(base.sum(axis=1))) * us,
        forward_us=float(forward) * us,
        log_us=float(log) * us,
        arm_us=float(arm) * us,
        other_us=float(medians - forward - log - arm) * us,
        flush_us=float(total - medians) * us,
        total_us=float(total) * us,
    )


def bench_phases(batch: int = 128, steps: int = 3000, chunk: int | None = None) -> PhaseRow:
    """Time the MLP's phases, untracked and tracked, in alternating chunks of `chunk` steps (default
    `CHUNK`; `_interleaved_pair`'s ABBA turns: with chunks of 250 steps the VM's drift left the steps
    between measurements 193 us *faster* tracked in one run); the first chunk of each is a warm-up
    and is left out."""
    chunk = CHUNK if chunk is None else chunk
    x, y = _synthetic_images("cpu")
    base, tracked = np.zeros((steps, 4)), np.zeros((steps, 4))
    _interleaved_pair(mlp_784_256_128_10, x, y, batch, steps, chunk, (base, tracked))
    return phase_breakdown(base[chunk:], tracked[chunk:], batch)


def report_phases(r: PhaseRow) -> str:
    share = 100 / (SAMPLING_FREQUENCY * r.step_us)
    return (
        f"  where it goes, mlp 784-256-128-10 batch {r.batch} ({r.steps} steps a run, us per measurement "
        f"beside {SAMPLING_FREQUENCY} untracked steps of {r.step_us:.0f} us): armed forward "
        f"{r.forward_us:.0f}, log at the measured step {r.log_us:.0f}, arming {r.arm_us:.0f}, other "
        f"phases {r.other_us:.0f}, flushes {r.flush_us:.0f}; total {r.total_us:.0f} "
        f"({share * r.total_us:.1f}% of training)"
    )
