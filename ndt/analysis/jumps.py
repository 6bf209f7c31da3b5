"""Jump detection on a metric series: the study's detector, exactly, as a pure function.

For a series x[0..m-1] sampled at training steps ``steps[0..m-1]``:

1. g  = numpy.gradient(x)                      (per sample, central differences inside)
2. gs = scipy.ndimage.gaussian_filter1d(g, sigma=3, mode="reflect")
3. z  = (gs - mean(gs)) / (std(gs) + 1e-10)    (population std, ddof 0, over the whole series)
4. every index i with z_i > 2 (strict; increases only) is a jump: index i, step = steps[i],
   magnitude gs_i, z_score z_i.

The study counted every flagged index as a jump. Consecutive flagged indices usually describe one
transition, so `detect` also returns **events**: maximal runs of consecutive flagged indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import overload

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

#: Added to the standard deviation so that a constant series gives z = 0, not 0/0.
STD_EPS = 1e-10


@dataclass(frozen=True)
class Jump:
    """One flagged sample.

    Attributes:
        index: position in the series (0-based).
        step: training step of that sample (not the index).
        magnitude: smoothed gradient gs at the index (metric units per sample).
        z_score: standardised smoothed gradient at the index (> threshold).
    """

    index: int
    step: int
    magnitude: float
    z_score: float


@dataclass(frozen=True)
class JumpEvent:
    """A maximal run of consecutive flagged indices: one transition.

    Attributes:
        start_index, end_index: first and last flagged index (inclusive).
        start_step, end_step: their training steps.
        peak_index, peak_step: where z is largest within the run.
        peak_z: the largest z-score in the run.
        peak_magnitude: the largest smoothed gradient in the run.
        n_indices: number of flagged indices in the run.
    """

    start_index: int
    end_index: int
    start_step: int
    end_step: int
    peak_index: int
    peak_step: int
    peak_z: float
    peak_magnitude: float
    n_indices: int


@dataclass(frozen=True)
class Jumps(Sequence[Jump]):
    """The jumps of one series, sorted by step, with their events; behaves as a list of `Jump`.

    Attributes:
        jumps: flagged samples sorted by step (the study's count is ``len(jumps)``).
        events: maximal runs of consecutive flagged indices, sorted by step.
        z: (m,) z-scores of the whole series (for plots and thresholds of your own).
        smoothed_gradient: (m,) gs.
    """

    jumps: tuple[Jump, ...] = ()
    events: tuple[JumpEvent, ...] = ()
    z: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    smoothed_gradient: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @overload
    def __getitem__(self, i: int) -> Jump: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Jump]: ...
    def __getitem__(self, i: int | slice) -> Jump | Sequence[Jump]:
        return self.jumps[i]

    def __len__(self) -> int:
        return len(self.jumps)

    def __iter__(self) -> Iterator[Jump]:
        return iter(self.jumps)

    def to_frame(self) -> pd.DataFrame:
        """One row per jump: index, step, magnitude, z_score."""
        return pd.DataFrame(
            [asdict(j) for j in self.jumps], columns=["index", "step", "magnitude", "z_score"]
        )

    def events_frame(self) -> pd.DataFrame:
        """One row per event (columns as the `JumpEvent` fields)."""
        cols = list(JumpEvent.__dataclass_fields__)
        return pd.DataFrame([asdict(e) for e in self.events], columns=cols)


def study_zscores(values: np.ndarray, sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The study's smoothed-gradient z-scores of a series.

    Args:
        values: (m,) finite series, m >= 2.
        sigma: Gaussian smoothing width in samples.

    Returns:
        (z, gs), both (m,).
    """
    g = np.gradient(np.asarray(values, dtype=np.float64))
    gs = gaussian_filter1d(g, sigma=sigma, mode="reflect")
    z = (gs - gs.mean()) / (gs.std() + STD_EPS)
    return z, gs


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool array as (start, end) inclusive index pairs."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _as_series(
    values: np.ndarray | Sequence[float], steps: np.ndarray | Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"a jump series must be 1-D, got shape {x.shape}")
    s = np.arange(x.size, dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    if s.shape != x.shape:
        raise ValueError(
            f"steps has shape {s.shape} but the series has shape {x.shape}; give one step per value"
        )
    if not np.isfinite(x).all():
        bad = s[~np.isfinite(x)]
        raise ValueError(
            f"the series has {bad.size} non-finite value(s) (first at step {bad[0]}); the detector needs a "
            "finite series: drop or interpolate those samples, or choose a layer that stayed finite"
        )
    return x, s


def detect_jumps(
    values: np.ndarray | Sequence[float],
    steps: np.ndarray | Sequence[int] | None = None,
    *,
    sigma: float = 3.0,
    threshold: float = 2.0,
) -> Jumps:
    """Run the study's detector on one series.

    Args:
        values: (m,) finite metric values, one per measurement.
        steps: (m,) training step of each value; default 0..m-1.
        sigma: Gaussian smoothing width, in samples (the study: 3).
        threshold: a sample is a jump when z > threshold (strict; the study: 2).

    Returns:
        `Jumps`: the flagged samples sorted by step, and their events. Series shorter than 2
        samples have no gradient and give no jumps.
    """
    x, s = _as_series(values, steps)
    if x.size < 2:
        return Jumps(z=np.zeros(x.size), smoothed_gradient=np.zeros(x.size))
    z, gs = study_zscores(x, sigma=sigma)
    flagged = z > threshold
    jumps = tuple(
        Jump(index=int(i), step=int(s[i]), magnitude=float(gs[i]), z_score=float(z[i]))
        for i in np.flatnonzero(flagged)
    )
    events = []
    for a, b in runs_of_true(flagged):
        peak = a + int(np.argmax(z[a : b + 1]))
        events.append(
            JumpEvent(
                start_index=a,
                end_index=b,
                start_step=int(s[a]),
                end_step=int(s[b]),
                peak_index=peak,
                peak_step=int(s[peak]),
                peak_z=float(z[peak]),
                peak_magnitude=float(gs[a : b + 1].max()),
                n_indices=b - a + 1,
            )
        )
    return Jumps(
        jumps=tuple(sorted(jumps, key=lambda j: j.step)),
        events=tuple(sorted(events, key=lambda e: e.start_step)),
        z=z,
        smoothed_gradient=gs,
    )


@dataclass(frozen=True)
class JumpDetector:
    """The study's jump detector with its parameters (see the module docstring).

    Example:
        >>> JumpDetector().detect([0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 5]).events[0].peak_index
        7
    """

    sigma: float = 3.0
    threshold: float = 2.0

    def detect(
        self, values: np.ndarray | Sequence[float], steps: np.ndarray | Sequence[int] | None = None
    ) -> Jumps:
        """Detect the jumps of one series; see `detect_jumps`."""
        return detect_jumps(values, steps, sigma=self.sigma, threshold=self.threshold)
