"""The result types every jump detector returns, and the helpers they share.

A detector (`ndt.detect.DETECTORS`) turns one metric series, sampled at training steps, into `Jumps`:
the flagged samples (`Jump`), the transitions they form (`JumpEvent`, in ``Jumps.events``), and, set
apart, the escape from initialisation (``Jumps.init_escape``), which is not counted as a transition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, overload

import numpy as np
import pandas as pd

EventKind = Literal["transition", "init_escape"]


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
        size: signed change of the metric across the event, in metric units (value one sample after
            the event minus the value one sample before it, clipped to the series).
        kind: "transition", or "init_escape" for the escape from initialisation (see the detector).
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
    size: float = math.nan
    kind: EventKind = "transition"

    @property
    def direction(self) -> int:
        """+1 for a rise of the metric, -1 for a fall, 0 when the size is unknown or zero."""
        return int(np.sign(self.size)) if math.isfinite(self.size) else 0


@dataclass(frozen=True)
class Jumps(Sequence[Jump]):
    """The jumps of one series, sorted by step, with their events; behaves as a list of `Jump`.

    Attributes:
        jumps: flagged samples sorted by step (the study's count is ``len(jumps)``).
        events: the transitions, sorted by step (the escape from initialisation is not among them).
        init_escape: events recognised as the escape from initialisation (kind "init_escape"); empty
            for detectors that do not recognise it (the study's).
        z: (m,) z-scores of the whole series (for plots and thresholds of your own).
        smoothed_gradient: (m,) gs.
    """

    jumps: tuple[Jump, ...] = ()
    events: tuple[JumpEvent, ...] = ()
    init_escape: tuple[JumpEvent, ...] = ()
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


def event_size(x: np.ndarray, start_index: int, end_index: int) -> float:
    """Signed change of `x` across an event: x[end + 1] - x[start - 1], clipped to the series."""
    return float(x[min(end_index + 1, x.size - 1)] - x[max(start_index - 1, 0)])


def rank_events(jumps: Jumps) -> list[JumpEvent]:
    """Transitions by |peak magnitude|, largest first (rank 1 = index 0); ties go to the earlier event.

    The one ranking behind ``ndt.investigate jump=K`` and the ranks and commands `ndt.view` shows. A
    detector's peak magnitude is signed where the metric falls (the change-point detector's speed), so
    a fall ranks by its size like a rise. The escape from initialisation (``jumps.init_escape``) is not
    among them.
    """
    return sorted(jumps.events, key=lambda e: (-abs(e.peak_magnitude), e.start_step))


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool array as (start, end) inclusive index pairs."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def as_series(
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
