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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ndt.detect.events import Jump, JumpEvent, Jumps, as_series, event_size, runs_of_true

#: Added to the standard deviation so that a constant series gives z = 0, not 0/0.
STD_EPS = 1e-10


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
    x, s = as_series(values, steps)
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
                size=event_size(x, a, b),
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
