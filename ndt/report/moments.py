"""Which two moments of a run to compare: around a ranked jump event, or around a given step (pure).

Steps here are **measurement steps**, as in the Parquet rows: the row of step s was taken at optimizer
step s; with a probe after its update (the weights after s + 1 optimizer steps), without a probe on its
training forward, before its update (after s steps). `ndt.measure.tracker.steps_done_at` is that one
definition; `Moments.steps_done` applies it.

- **A jump** (``jump=K``): the jump detector runs on the run's layer-mean series (the series the tables
  use) and its events are ranked by peak magnitude, largest first (rank 1). For an event whose flagged
  measurements span [start, end], *before* is the measurement just before ``start`` (start - f, clipped
  to the first measurement) and *after* is the measurement just after ``end`` (end + f, clipped to the
  last one). Why one sample beyond each end: the detector's gradient at index i is the central
  difference x[i+1] - x[i-1], so a flagged run [a, b] describes the change from x[a-1] to x[b+1]; those
  two samples are the last one at the old level and the first one at the new level.
- **A step** (``step=N``): N is a training step of the run (0 .. max_steps - 1), rounded to the nearest
  measured step s (ties go to the earlier one); *before* is the measurement just before s (s - f) and
  *after* is s, so that the pair brackets the change into step s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ndt.detect import DEFAULT_DETECTOR, DETECTORS, JumpEvent, Jumps, get_detector, rank_events
from ndt.measure.tracker import steps_done_at
from ndt.report.options import InvestigationError


@dataclass(frozen=True)
class Moments:
    """The two measurement steps to compare, and why these.

    Attributes:
        before: measurement step of the earlier state.
        after: measurement step of the later state (> before).
        kind: "jump" (chosen from a ranked event) or "step" (chosen by step=N).
        n_events: number of events in the series.
        note: how the moments were derived, in one sentence (for the report).
        rank: the event's rank by peak magnitude (1 = largest); None for kind "step".
        event: the jump event; None for kind "step".
        requested_step: N of step=N (None for kind "jump").
        probe: whether the run measured a probe (after each step's update) or its training batches
            (before it); decides `steps_done`.
    """

    before: int
    after: int
    kind: Literal["jump", "step"]
    n_events: int
    note: str
    rank: int | None = None
    event: JumpEvent | None = None
    requested_step: int | None = None
    probe: bool = True

    @property
    def steps_done(self) -> tuple[int, int]:
        """Optimizer steps done at (before, after) measurements (`steps_done_at`: s + 1 with a probe, s without)."""
        return steps_done_at(self.before, self.probe), steps_done_at(self.after, self.probe)

    @property
    def label(self) -> str:
        """``<before>-<after>``: the name of the output directory."""
        return f"{self.before}-{self.after}"


def detect(values: np.ndarray, steps: np.ndarray, detector: str) -> Jumps:
    """Run the named detector (`ndt.detect.DETECTORS`) on one series.

    Args:
        values: (m,) layer-mean metric.
        steps: (m,) measurement steps.
        detector: a detector name.
    """
    return get_detector(detector).detect(values, steps)


def _describe_steps(steps: np.ndarray) -> str:
    """``0..295 (every 5)``: the measured steps, for error messages."""
    gaps = np.unique(np.diff(steps))
    every = f" (every {int(gaps[0])})" if gaps.size == 1 else ""
    return f"{int(steps[0])}..{int(steps[-1])}{every}"


def moments_for_event(steps: np.ndarray, event: JumpEvent, rank: int, n_events: int) -> Moments:
    """The measurements just before and just after an event's flagged span (see the module docstring).

    Args:
        steps: (m,) measurement steps of the series the event was detected on.
        event: one of its events.
        rank: the event's rank by peak magnitude.
        n_events: number of events of the series.
    """
    m = steps.size
    before = int(steps[max(event.start_index - 1, 0)])
    after = int(steps[min(event.end_index + 1, m - 1)])
    return Moments(
        before=before,
        after=after,
        kind="jump",
        rank=rank,
        n_events=n_events,
        event=event,
        note=(
            f"jump {rank} of {n_events} (by peak magnitude): flagged steps {event.start_step}..{event.end_step}; "
            f"compared from {'the first measurement' if event.start_index == 0 else 'the measurement before them'} "
            f"({before}) to {'the last measurement' if event.end_index + 1 >= m else 'the one after them'} ({after})"
        ),
    )


def moments_for_step(steps: np.ndarray, step: int, max_steps: int, n_events: int = 0) -> Moments:
    """The measurement at (or nearest to) `step` and the one before it.

    Args:
        steps: (m,) measurement steps, increasing.
        step: a training step of the run.
        max_steps: optimizer steps of the run (training steps are 0..max_steps - 1).
        n_events: number of jump events of the series (reported only).

    Raises:
        InvestigationError: `step` is outside the run, or rounds to the first measurement (nothing
            earlier to compare with).
    """
    if not 0 <= step < max_steps:
        raise InvestigationError(
            f"step={step} is outside the run: its training steps are 0..{max_steps - 1} "
            f"(measured steps {_describe_steps(steps)})"
        )
    i = int(np.argmin(np.abs(steps - step)))  # argmin takes the first minimum: ties go to the earlier step
    if i == 0:
        raise InvestigationError(
            f"step={step} is the first measurement (step {int(steps[0])}): there is no earlier one to compare "
            f"with; choose a later step (measured steps {_describe_steps(steps)})"
        )
    at = int(steps[i])
    rounded = "" if at == step else f" (step {step} rounded to the nearest measured step)"
    return Moments(
        before=int(steps[i - 1]),
        after=at,
        kind="step",
        n_events=n_events,
        requested_step=step,
        note=f"step {at}{rounded}, compared with the measurement before it ({int(steps[i - 1])})",
    )


def choose_moments(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    max_steps: int,
    jump: int | None = 1,
    step: int | None = None,
    detector: str = DEFAULT_DETECTOR,
    series: str = "the series",
    probe: bool = True,
) -> tuple[Moments, Jumps]:
    """Pick the moments for ``jump=K`` or ``step=N`` on one layer-mean series.

    Args:
        steps: (m,) measurement steps, increasing.
        values: (m,) layer-mean metric.
        max_steps: optimizer steps of the run.
        jump: rank of the event to investigate (used when `step` is None).
        step: a training step to investigate instead.
        detector: a name from `ndt.detect.DETECTORS`.
        series: what the series is, for messages (e.g. "the layer-mean participation_ratio").
        probe: whether the run measured a probe (see `Moments.probe`).

    Returns:
        (moments, the detector's jumps on the series).

    Raises:
        InvestigationError: no such jump (or none at all: the message suggests step=N), or a step
            outside the run.
    """
    s = np.asarray(steps, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    if s.size < 2:
        raise InvestigationError(f"{series} has {s.size} measurement(s); comparing needs at least two")
    jumps = detect(x, s, detector)
    events = rank_events(jumps)
    if step is not None:
        return replace(moments_for_step(s, step, max_steps, len(events)), probe=probe), jumps
    rank = 1 if jump is None else jump
    if not events:
        raise InvestigationError(
            f"{series} has no jump (detector={detector}); investigate a moment with step=N instead "
            f"(measured steps {_describe_steps(s)}), or try "
            f"another detector= ({', '.join(d for d in DETECTORS if d != detector)}) or another metric=..."
        )
    if not 1 <= rank <= len(events):
        listed = "; ".join(
            f"jump={r}: steps {e.start_step}..{e.end_step}, magnitude {e.peak_magnitude:.3g}, z {e.peak_z:.2f}"
            for r, e in enumerate(events, start=1)
        )
        raise InvestigationError(
            f"jump={rank} does not exist: {series} has {len(events)} jump event(s) (detector={detector}): {listed}"
        )
    return replace(moments_for_event(s, events[rank - 1], rank, len(events)), probe=probe), jumps
