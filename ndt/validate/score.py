"""Scoring detectors against the benchmark's truth windows: pure functions on events and windows.

The rules, for one run and one series:

- an event **hits** a truth window when its *peak step* lies in the window (inclusive). The peak, not
  the [start, end] span: a long span would hit any window it overlaps, so a detector that flags half
  the run would score; the peak is the one step a detector points a researcher at.
- a run **is hit** when at least ``min_hits`` distinct windows are hit.
- a **false alarm** is a transition event whose peak is after the first 10% of the run's steps
  (``burn_in``) and in no truth window, in runs and controls alike (in a control every such event is
  one).
- events of kind ``init_escape`` (``Jumps.init_escape``) are counted apart (``n_init_escape``), never as
  hits nor false alarms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ndt.detect import Detector, Jumps, get_detector
from ndt.detect.events import JumpEvent

#: Events before this fraction of a run's steps are neither hits' rivals nor false alarms.
BURN_IN = 0.10
#: Pass criteria: share of (non-control) runs hit, mean false alarms per run (runs and controls).
PASS_HIT_RATE = 0.80
PASS_FALSE_ALARMS = 1.0
#: The hit rate must hold with the detector's threshold multiplied by each of these.
THRESHOLD_FACTORS = (0.5, 2.0)


@dataclass(frozen=True)
class RunScore:
    """The score of one run's events.

    Attributes:
        windows_hit: indices of the truth windows hit (sorted).
        hit: at least ``min_hits`` windows hit.
        false_alarms: transition events after the burn-in outside every window.
        n_events: transition events (all of them).
        n_init_escape: init_escape events (reported only).
    """

    windows_hit: tuple[int, ...]
    hit: bool
    false_alarms: int
    n_events: int
    n_init_escape: int


def in_window(step: int, windows: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of the (inclusive) windows containing `step`."""
    return [i for i, (a, b) in enumerate(windows) if a <= step <= b]


def score_events(
    events: Sequence[JumpEvent],
    windows: Sequence[tuple[int, int]],
    n_steps: int,
    min_hits: int,
    *,
    burn_in: float = BURN_IN,
) -> RunScore:
    """Score one run's events against its truth windows (rules in the module docstring).

    Args:
        events: the detector's events; those of kind "init_escape" are counted apart.
        windows: (start, end) inclusive step windows, one per truth step (empty for a control).
        n_steps: the run's length in steps (the burn-in is ``burn_in * n_steps``).
        min_hits: windows that must be hit for the run to be hit (a run with none is never hit).
        burn_in: fraction of the steps in which an unmatched event is not a false alarm.
    """
    hit: set[int] = set()
    false_alarms = n_trans = n_init = 0
    for e in events:
        if e.kind == "init_escape":
            n_init += 1
            continue
        n_trans += 1
        where = in_window(e.peak_step, windows)
        if where:
            hit.update(where)
        elif e.peak_step > burn_in * n_steps:
            false_alarms += 1
    return RunScore(
        windows_hit=tuple(sorted(hit)),
        hit=bool(windows) and len(hit) >= min_hits,
        false_alarms=false_alarms,
        n_events=n_trans,
        n_init_escape=n_init,
    )


def all_events(jumps: Jumps) -> list[JumpEvent]:
    """Transitions and init-escape events of one detection, sorted by peak step."""
    return sorted([*jumps.events, *jumps.init_escape], key=lambda e: e.peak_step)


def detect(detector: Detector, series: Any) -> Jumps:
    """Run `detector` on a pd.Series indexed by step."""
    return detector.detect(series.to_numpy(dtype=np.float64), series.index.to_numpy())


def score_case(
    runs: Sequence[Any], detector: str | Detector, metric: str, *, layer: str | None = None, **params: Any
) -> dict[str, Any]:
    """Score one (detector, metric) pair on a case's runs and controls.

    Args:
        runs: `ndt.validate.cases.CaseRun` objects (runs and controls mixed; ``control`` tells which).
        detector: a name in `ndt.detect.DETECTORS` (with `params`) or a detector object.
        metric: a metric column, or "loss" for the loss-only baseline (the training-loss series).
        layer: the layer whose series is scored (default: each run's named layer; ignored for "loss").

    Returns:
        dict with ``hit_rate`` (share of non-control runs hit), ``false_alarms`` (mean per run over runs
        and controls), ``false_alarms_runs``, ``false_alarms_controls`` (means over each group; NaN when
        a group is empty), ``n_runs``, ``n_controls``, ``events`` (mean transition events per run),
        ``init_escape`` (mean init-escape events per run) and ``per_run`` (list of (seed, control,
        `RunScore`)).
    """
    det = get_detector(detector, **params)
    per_run = []
    for r in runs:
        jumps = detect(det, r.series(metric, None if metric == "loss" else layer))
        per_run.append((r.seed, r.control, score_events(all_events(jumps), r.windows, r.n_steps, r.min_hits)))
    main = [s for _, c, s in per_run if not c]
    ctrl = [s for _, c, s in per_run if c]
    everyone = main + ctrl

    def mean(xs: Sequence[float]) -> float:
        return float(np.mean(xs)) if len(xs) else float("nan")

    return {
        "hit_rate": mean([s.hit for s in main]),
        "false_alarms": mean([s.false_alarms for s in everyone]),
        "false_alarms_runs": mean([s.false_alarms for s in main]),
        "false_alarms_controls": mean([s.false_alarms for s in ctrl]),
        "events": mean([s.n_events for s in everyone]),
        "init_escape": mean([s.n_init_escape for s in everyone]),
        "n_runs": len(main),
        "n_controls": len(ctrl),
        "per_run": per_run,
    }


def false_alarms_all_layers(
    runs: Sequence[Any], detector: str | Detector, metric: str, **params: Any
) -> float:
    """Mean false alarms per (run, layer) over every measured layer of every run and control.

    Truth windows are the run's own (they are the case's, whatever the layer).
    """
    det = get_detector(detector, **params)
    counts = []
    for r in runs:
        for layer in r.layers:
            jumps = detect(det, r.series(metric, layer))
            counts.append(score_events(all_events(jumps), r.windows, r.n_steps, r.min_hits).false_alarms)
    return float(np.mean(counts)) if counts else float("nan")


def with_threshold_factor(name: str, factor: float, **params: Any) -> Detector:
    """Detector `name` with its ``threshold`` field multiplied by `factor` (other params as given).

    Raises:
        TypeError: the detector has no ``threshold`` field.
    """
    det = get_detector(name, **params)
    base = getattr(det, "threshold", None)
    if base is None:
        raise TypeError(f"detector {name!r} has no threshold field to scale")
    return replace(det, threshold=base * factor)  # type: ignore[type-var]


def robustness(
    runs: Sequence[Any], name: str, metric: str, factors: Sequence[float] = THRESHOLD_FACTORS, **params: Any
) -> dict[float, float]:
    """Hit rate of detector `name` on `metric` with its threshold scaled by each of `factors`."""
    return {
        f: score_case(runs, with_threshold_factor(name, f, **params), metric)["hit_rate"] for f in factors
    }


def passes(hit_rate: float, false_alarms: float, robust_hit_rates: Sequence[float]) -> bool:
    """The pass rule: hit rate >= 80%, <= 1 false alarm per run, hit rate >= 80% at half and double threshold."""
    rates = [hit_rate, *robust_hit_rates]
    return all(np.isfinite(r) and r >= PASS_HIT_RATE for r in rates) and false_alarms <= PASS_FALSE_ALARMS
