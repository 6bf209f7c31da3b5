"""Jump detectors: pure functions from a metric series (sampled at training steps) to `Jumps`.

The bottom of the package: it imports nothing else of ndt, so the tracker, the tables and the reports
all use it. Each detector is chosen by name from `DETECTORS`:

- ``study``: the study's smoothed-gradient z > 2 detector, exactly (`ndt.detect.study`); it reproduces
  the paper's appendix.
- ``robust``: level shifts against a robust noise scale (`ndt.detect.robust`).
- ``changepoint``: transitions as fast stretches of a penalised piecewise-linear fit, in training
  steps, with the escape from initialisation set apart (`ndt.detect.changepoint`).

`DEFAULT_DETECTOR` names the one used wherever no detector is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ndt.detect.changepoint import ChangepointDetector, detect_jumps_changepoint
from ndt.detect.events import EventKind, Jump, JumpEvent, Jumps, rank_events
from ndt.detect.robust import RobustJumpDetector, detect_jumps_robust
from ndt.detect.study import JumpDetector, detect_jumps


class Detector(Protocol):
    """Anything with ``detect(values, steps) -> Jumps``."""

    def detect(
        self, values: np.ndarray | Sequence[float], steps: np.ndarray | Sequence[int] | None = None
    ) -> Jumps: ...


#: name -> detector class (called with keyword parameters, e.g. ``threshold=...``).
DETECTORS: dict[str, Callable[..., Detector]] = {
    "study": JumpDetector,
    "robust": RobustJumpDetector,
    "changepoint": ChangepointDetector,
}

#: The detector used wherever none is named.
#: "changepoint" passes the benchmark of known transitions (`make validate`: cases A and B, with
#: participation_ratio) where "study" and "robust" find none; see README "What a jump means".
DEFAULT_DETECTOR = "changepoint"


def get_detector(name: str | Detector | None = None, **params: Any) -> Detector:
    """The detector called `name` (default `DEFAULT_DETECTOR`) with `params`; a detector object passes through.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name is None:
        name = DEFAULT_DETECTOR
    if not isinstance(name, str):
        if params:
            raise ValueError("parameters are given with a detector name, not with a detector object")
        return name
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](**params)


__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "ChangepointDetector",
    "Detector",
    "EventKind",
    "Jump",
    "JumpDetector",
    "JumpEvent",
    "Jumps",
    "RobustJumpDetector",
    "detect_jumps",
    "detect_jumps_changepoint",
    "detect_jumps_robust",
    "get_detector",
    "rank_events",
]
