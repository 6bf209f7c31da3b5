"""The study's jump detector against hand-worked cases and an independent reimplementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndt.detect.study import JumpDetector, detect_jumps, runs_of_true


def independent_zscores(x: np.ndarray, sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The detector's maths written out by hand: no numpy.gradient, no scipy."""
    m = len(x)
    g = np.empty(m)
    g[0], g[-1] = x[1] - x[0], x[-1] - x[-2]
    for i in range(1, m - 1):
        g[i] = (x[i + 1] - x[i - 1]) / 2
    radius = int(4.0 * sigma + 0.5)  # scipy's default truncate=4.0
    w = np.array([math.exp(-0.5 * (j / sigma) ** 2) for j in range(-radius, radius + 1)])
    w /= w.sum()
    # scipy's mode="reflect" is the half-sample symmetric extension: (c b a | a b c | c b a)
    padded = np.pad(g, radius, mode="symmetric")
    gs = np.array([sum(w[j] * padded[i + j] for j in range(2 * radius + 1)) for i in range(m)])
    mean = sum(gs) / m
    std = math.sqrt(sum((v - mean) ** 2 for v in gs) / m)
    return (gs - mean) / (std + 1e-10), gs


def test_constant_and_linear_series_have_no_jumps() -> None:
    assert len(detect_jumps(np.full(50, 3.0))) == 0
    assert len(detect_jumps(np.linspace(0, 10, 50))) == 0  # constant gradient: z = 0 everywhere


def test_decrease_is_not_a_jump() -> None:
    x = np.r_[np.ones(20), np.zeros(21)]
    assert len(detect_jumps(x)) == 0


def test_step_up_is_one_symmetric_event_with_steps_not_indices() -> None:
    # Step between indices 19 and 20: gradient 0.5 at 19 and 20, so the smoothed bump is symmetric
    # about 19.5 and the flagged indices are a contiguous run symmetric about 19.5.
    x = np.r_[np.zeros(20), np.ones(21)]
    steps = np.arange(41) * 5
    res = detect_jumps(x, steps)
    idx = [j.index for j in res]
    assert idx == list(range(idx[0], idx[-1] + 1))
    assert idx[0] + idx[-1] == 39
    assert [j.step for j in res] == [5 * i for i in idx]
    (event,) = res.events
    assert (event.start_step, event.end_step) == (5 * idx[0], 5 * idx[-1])
    assert event.peak_index in (19, 20) and event.n_indices == len(idx)


def test_matches_independent_implementation_on_noisy_series() -> None:
    rng = np.random.default_rng(7)
    x = np.cumsum(rng.normal(0, 0.1, 400)) + 3 * (np.arange(400) > 150) + 2 * (np.arange(400) > 300)
    z, gs = independent_zscores(x)
    res = detect_jumps(x, np.arange(400) * 5)
    np.testing.assert_allclose(res.z, z, rtol=1e-9, atol=1e-9)
    assert [j.index for j in res] == list(np.flatnonzero(z > 2))
    for j in res:
        assert j.magnitude == pytest.approx(gs[j.index], rel=1e-9)
        assert j.z_score == pytest.approx(z[j.index], rel=1e-9)
    assert [(e.start_index, e.end_index) for e in res.events] == runs_of_true(z > 2)
    assert len(res.events) == 2  # the two planted steps


def test_threshold_is_strict() -> None:
    x = np.r_[np.zeros(20), np.ones(21)]
    z, _ = independent_zscores(x)
    at_peak = float(z.max())
    assert len(JumpDetector(threshold=at_peak).detect(x)) == 0
    assert len(JumpDetector(threshold=at_peak - 1e-6).detect(x)) >= 1


def test_runs_of_true() -> None:
    assert runs_of_true(np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], bool)) == [(1, 2), (4, 4), (7, 9)]
    assert runs_of_true(np.zeros(3, bool)) == []


def test_short_and_bad_series() -> None:
    assert len(detect_jumps([1.0])) == 0
    with pytest.raises(ValueError, match="non-finite"):
        detect_jumps([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="one step per value"):
        detect_jumps([0.0, 1.0, 2.0], steps=[0, 5])


def test_frames() -> None:
    res = detect_jumps(np.r_[np.zeros(20), np.ones(21)])
    assert list(res.to_frame().columns) == ["index", "step", "magnitude", "z_score"]
    assert len(res.events_frame()) == 1


def test_rank_events_orders_by_absolute_peak_magnitude_then_start() -> None:
    # Hand-made events: a small rise (0.1), a fall (-0.3) and a rise of the same size later (0.3).
    # By |magnitude|: the fall and the later rise tie at 0.3 (the earlier first), then the small rise.
    from ndt.detect import JumpEvent, Jumps, rank_events

    def event(start: int, magnitude: float) -> JumpEvent:
        return JumpEvent(start // 5, start // 5, start, start, start // 5, start, 3.0, magnitude, 1)

    jumps = Jumps(events=(event(600, 0.1), event(1400, -0.3), event(2000, 0.3)))
    assert [e.start_step for e in rank_events(jumps)] == [1400, 2000, 600]
