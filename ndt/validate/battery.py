"""The validity battery of the jump detectors: planted transitions and null series, seeded.

Five classes of synthetic series, each of ``n_series`` series of ``length`` samples:

- **planted**: TAP-like growth ``D / (1 + exp(-a (t - t0)))`` with D ~ U(5, 30), a ~ U(3, 10),
  t0 ~ U(0.3, 0.7) (t in [0, 1]), Gaussian noise of SD ``sd = f D`` with f ~ U(0.005, 0.02), and 1 to 3
  upward steps of height U(4, 10) sd, at least ``edge`` samples from either end and ``min_gap``
  apart. A planted step at index p (x[p:] raised) is recalled when a detection lies within
  ``tolerance`` samples of p.
- **sigmoid**: a flat level with unit white noise and 1 or 2 smooth logistic transitions (rise or fall
  at random) of height U(6, 15) noise SDs and 10%-90% width U(4, 40) samples; one is recalled by a
  detection within max(``tolerance``, width / 2) of its midpoint. Transitions in training runs look
  like this, not like steps.
- **collapse**: the sigmoid class after a leading collapse from U(20, 40) noise SDs above the level
  (midpoint U(5, 15) samples, width U(4, 12)): the escape from initialisation. Its later rises and
  falls are scored as in sigmoid; a detection of the collapse is a false detection: the escape is not
  a transition.
- **noise** (null): white Gaussian noise around a random level; no transition.
- **drift** (null): the same growth as planted plus a slow sinusoid (amplitude 0.1 D, 0.5 to 2
  periods per series) and the same noise; smooth, no transition.

A detection is one event (its peak index): the study's detector flags runs of consecutive indices, and
each run is one transition in its own account; the ``flagged`` columns also give its per-index count.
The targets the project ships: recall >= 0.75 on planted, and <= 2 false detections per 1,000 samples
on each null class. ``python -m ndt.validate.battery`` prints the table for every detector and exits
1 when `robust` misses a target (its targets are on planted, noise and drift; sigmoid and collapse
are reported for every detector, with no target yet).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ndt.analysis.growth import tap_curve
from ndt.detect.changepoint import detect_jumps_changepoint
from ndt.detect.robust import detect_jumps_robust
from ndt.detect.study import detect_jumps

#: A detector for the battery: (m,) series -> (detections as event peak indices, flagged index count).
BatteryDetector = Callable[[np.ndarray], tuple[np.ndarray, int]]

RECALL_TARGET = 0.75
FALSE_PER_1000_TARGET = 2.0
NULL_CLASSES = ("noise", "drift")
#: Classes with planted transitions: generator(rng, cfg) -> (series, positions, tolerances).
PLANTED_CLASSES = ("planted", "sigmoid", "collapse")


@dataclass(frozen=True)
class BatteryConfig:
    """Sizes and seed of the battery.

    Attributes:
        n_series: series per class.
        length: samples per series (400, as the study's measurement count per run).
        seed: seed of the numpy Generator that draws every series.
        tolerance: a detection within this many samples of a planted step recalls it.
        edge: planted steps lie at least this many samples from either end.
        min_gap: planted steps in one series are at least this many samples apart.
        step_sd: planted step heights, in noise SDs (low, high).
    """

    n_series: int = 200
    length: int = 400
    seed: int = 0
    tolerance: int = 5
    edge: int = 20
    min_gap: int = 40
    step_sd: tuple[float, float] = (4.0, 10.0)


def _growth(rng: np.random.Generator, length: int) -> tuple[np.ndarray, float, float]:
    """(length,) logistic growth curve, its D and a noise SD drawn for it."""
    t = np.linspace(0.0, 1.0, length)
    d_max, a, t0 = rng.uniform(5, 30), rng.uniform(3, 10), rng.uniform(0.3, 0.7)
    return tap_curve(t, d_max, a, t0), d_max, rng.uniform(0.005, 0.02) * d_max


def planted_series(rng: np.random.Generator, cfg: BatteryConfig) -> tuple[np.ndarray, np.ndarray]:
    """One planted series and the indices of its steps (sorted), shapes (length,) and (k,)."""
    base, _, sd = _growth(rng, cfg.length)
    k = int(rng.integers(1, 4))
    candidates = np.arange(cfg.edge, cfg.length - cfg.edge)
    while True:  # rejection sampling of well-separated positions; a few draws at most
        pos = np.sort(rng.choice(candidates, size=k, replace=False))
        if k == 1 or np.diff(pos).min() >= cfg.min_gap:
            break
    x = base + rng.normal(0.0, sd, cfg.length)
    for p in pos:
        x[p:] += rng.uniform(*cfg.step_sd) * sd
    return x, pos


def _sigmoids(
    rng: np.random.Generator, cfg: BatteryConfig, lo: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(length,) sum of 1 or 2 logistic transitions after index `lo`, their midpoints and tolerances."""
    i = np.arange(cfg.length, dtype=np.float64)
    k = int(rng.integers(1, 3))
    widths = rng.uniform(4, 40, size=k)
    margin = cfg.edge + int(widths.max())
    while True:  # well-separated midpoints, a few draws at most
        mids = np.sort(rng.uniform(lo + margin, cfg.length - margin, size=k))
        if k == 1 or np.diff(mids).min() >= cfg.min_gap + widths.sum():
            break
    x = np.zeros(cfg.length)
    for mid, width in zip(mids, widths, strict=True):
        height = rng.uniform(6, 15) * rng.choice([-1.0, 1.0])
        x += height / (1 + np.exp(-2 * np.log(9) / width * (i - mid)))  # 10%-90% span = width
    tol = np.maximum(cfg.tolerance, widths / 2)
    return x, np.round(mids).astype(np.int64), tol


def sigmoid_series(rng: np.random.Generator, cfg: BatteryConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sigmoid-class series, its transition midpoints and their tolerances, shapes (length,), (k,), (k,)."""
    x, mids, tol = _sigmoids(rng, cfg, 0)
    return rng.uniform(-5, 5) + x + rng.normal(0.0, 1.0, cfg.length), mids, tol


def collapse_series(
    rng: np.random.Generator, cfg: BatteryConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A collapse-class series and its later transitions' midpoints and tolerances (the collapse is none)."""
    i = np.arange(cfg.length, dtype=np.float64)
    mid, width = rng.uniform(5, 15), rng.uniform(4, 12)
    collapse = rng.uniform(20, 40) * (1 - 1 / (1 + np.exp(-2 * np.log(9) / width * (i - mid))))
    x, mids, tol = _sigmoids(rng, cfg, int(np.ceil(mid + width)))
    return rng.uniform(-5, 5) + collapse + x + rng.normal(0.0, 1.0, cfg.length), mids, tol


def null_series(rng: np.random.Generator, cfg: BatteryConfig, kind: str) -> np.ndarray:
    """One (length,) null series of `kind` ("noise" or "drift")."""
    if kind == "noise":
        return rng.uniform(-5, 5) + rng.normal(0.0, 1.0, cfg.length)
    if kind == "drift":
        base, d_max, sd = _growth(rng, cfg.length)
        t = np.linspace(0.0, 1.0, cfg.length)
        wave = 0.1 * d_max * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
        return base + wave + rng.normal(0.0, sd, cfg.length)
    raise ValueError(f"unknown null class {kind!r}; choose one of {NULL_CLASSES}")


def study_detector(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The study's detector as a battery detector (event peaks; flagged index count)."""
    res = detect_jumps(x)
    return np.array([e.peak_index for e in res.events], dtype=np.int64), len(res)


def robust_detector(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The robust detector as a battery detector (one jump per event)."""
    res = detect_jumps_robust(x)
    return np.array([j.index for j in res], dtype=np.int64), len(res)


def changepoint_detector(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The changepoint detector as a battery detector (transition peaks; the escape is not counted)."""
    res = detect_jumps_changepoint(x)
    return np.array([e.peak_index for e in res.events], dtype=np.int64), len(res.events)


DETECTORS: Mapping[str, BatteryDetector] = {
    "study": study_detector,
    "robust": robust_detector,
    "changepoint": changepoint_detector,
}


def run_battery(
    detectors: Mapping[str, BatteryDetector] = DETECTORS, cfg: BatteryConfig | None = None
) -> pd.DataFrame:
    """Score detectors on the battery; every detector sees the same series.

    Args:
        detectors: {name: detector}.
        cfg: battery sizes and seed (default `BatteryConfig()`).

    Returns:
        One row per (detector, class) with columns detector, series_class, n_series, samples, planted,
        detections, recalled, recall (NaN for nulls), false_detections, false_per_1000, flagged_per_1000.
    """
    cfg = cfg or BatteryConfig()
    rng = np.random.default_rng(cfg.seed)
    steps = [planted_series(rng, cfg) for _ in range(cfg.n_series)]
    nulls = {kind: [null_series(rng, cfg, kind) for _ in range(cfg.n_series)] for kind in NULL_CLASSES}
    # Drawn after the original classes, so that those stay the series they always were for a seed.
    sig = [sigmoid_series(rng, cfg) for _ in range(cfg.n_series)]
    col = [collapse_series(rng, cfg) for _ in range(cfg.n_series)]
    planted: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        "planted": [(x, pos, np.full(pos.size, float(cfg.tolerance))) for x, pos in steps],
        "sigmoid": sig,
        "collapse": col,
    }
    rows = []
    samples = cfg.n_series * cfg.length
    for name, detect in detectors.items():
        for kind, series in planted.items():
            n_det = n_rec = n_false = n_flag = n_planted = 0
            for x, pos, tol in series:
                found, flagged = detect(x)
                # (k, d) distances between planted transitions and detections
                close = np.abs(pos[:, None] - found[None, :]) <= tol[:, None]
                n_planted += pos.size
                n_rec += int(close.any(axis=1).sum())
                # unmatched detections are false, the collapse reported as a transition among them
                n_false += int((~close.any(axis=0)).sum())
                n_det += found.size
                n_flag += flagged
            rows.append(_row(name, kind, cfg, samples, n_planted, n_det, n_rec, n_false, n_flag))
        for kind, nseries in nulls.items():
            results = [detect(x) for x in nseries]
            n_det = sum(found.size for found, _ in results)
            n_flag = sum(flagged for _, flagged in results)
            rows.append(_row(name, kind, cfg, samples, 0, n_det, 0, n_det, n_flag))
    return pd.DataFrame(rows)


def _row(
    name: str,
    kind: str,
    cfg: BatteryConfig,
    samples: int,
    planted: int,
    det: int,
    rec: int,
    false: int,
    flag: int,
) -> dict[str, object]:
    return {
        "detector": name,
        "series_class": kind,
        "n_series": cfg.n_series,
        "samples": samples,
        "planted": planted,
        "detections": det,
        "recalled": rec,
        "recall": rec / planted if planted else float("nan"),
        "false_detections": false,
        "false_per_1000": 1000.0 * false / samples,
        "flagged_per_1000": 1000.0 * flag / samples,
    }


def failures(results: pd.DataFrame, detector: str = "robust") -> list[str]:
    """The targets `detector` misses in `run_battery`'s results (empty when it passes).

    Args:
        results: `run_battery` output.
        detector: detector name to check.

    Returns:
        One message per missed target.
    """
    rows = results[results.detector == detector].set_index("series_class")
    missed = []
    recall = float(rows.loc["planted", "recall"])
    if not recall >= RECALL_TARGET:
        missed.append(f"{detector}: recall {recall:.3f} < {RECALL_TARGET}")
    for kind in NULL_CLASSES:
        rate = float(rows.loc[kind, "false_per_1000"])
        if rate > FALSE_PER_1000_TARGET:
            missed.append(f"{detector}: {rate:.2f} false detections per 1,000 {kind} samples > 2")
    return missed


def main(argv: Sequence[str] | None = None) -> int:
    """Print the battery table for every detector; 1 when robust misses a target, else 0."""
    parser = argparse.ArgumentParser(
        prog="python -m ndt.validate.battery", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n-series", type=int, default=BatteryConfig.n_series, help="series per class")
    parser.add_argument("--seed", type=int, default=BatteryConfig.seed, help="battery seed")
    args = parser.parse_args(argv)
    results = run_battery(cfg=BatteryConfig(n_series=args.n_series, seed=args.seed))
    cols = [
        "detector",
        "series_class",
        "planted",
        "detections",
        "recall",
        "false_per_1000",
        "flagged_per_1000",
    ]
    print(results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    missed = failures(results)
    for line in missed:
        print(f"FAIL {line}")
    if not missed:
        print(
            f"robust passes: recall >= {RECALL_TARGET}, <= {FALSE_PER_1000_TARGET:g} false detections per "
            "1,000 null samples"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
