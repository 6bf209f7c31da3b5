"""The changepoint detector on hand-made series with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ndt.detect import DETECTORS, ChangepointDetector, get_detector
from ndt.detect.changepoint import detect_jumps_changepoint, optimal_partition


def sigmoid(steps: np.ndarray, mid: float, width: float, height: float) -> np.ndarray:
    """A logistic rise of `height` centred at step `mid`; `width` = its 10%-90% span in steps."""
    rate = 2 * np.log(9) / width  # logistic 10%-90% span is 2 ln 9 / rate
    return height / (1 + np.exp(-rate * (steps - mid)))


def test_registered_by_name() -> None:
    assert DETECTORS["changepoint"] is ChangepointDetector
    assert isinstance(get_detector("changepoint", threshold=6.0), ChangepointDetector)


def test_clean_step_is_one_event_at_the_step_with_its_height() -> None:
    steps = np.arange(300) * 10
    rng = np.random.default_rng(0)
    x = np.where(np.arange(300) >= 180, 2.5, 0.0) + rng.normal(0, 0.05, 300)
    res = detect_jumps_changepoint(x, steps)
    (ev,) = res.events
    assert ev.peak_index == 180 and ev.peak_step == 1800  # the first sample at the new level
    assert ev.size == pytest.approx(2.5, abs=0.05)
    assert ev.kind == "transition" and ev.direction == 1
    assert ev.start_step < 1800 <= ev.end_step
    assert [j.step for j in res.jumps] == [1800]
    assert res.init_escape == ()


def test_sigmoid_peak_at_its_midpoint() -> None:
    steps = np.arange(0, 3000, 5)
    x = 1.0 + sigmoid(steps, mid=1400, width=200, height=3.0)
    (ev,) = detect_jumps_changepoint(x, steps).events
    # the peak is the middle of the fastest fitted piece: within a quarter of the 10-90% span
    assert abs(ev.peak_step - 1400) <= 50
    # start and end bracket the rise; the size is most of its height (the flanks' tails lie outside)
    assert ev.start_step < 1300 and ev.end_step > 1500
    assert 0.85 * 3.0 <= ev.size <= 3.0


def staircase(steps: np.ndarray) -> np.ndarray:
    """A collapse from 12 to 1 at the start, then rises of 0.8 at step 450 and 0.6 at step 1200."""
    collapse = 11.0 * (1 - sigmoid(steps, mid=40, width=50, height=1.0))
    return 1.0 + collapse + sigmoid(steps, 450, 100, 0.8) + sigmoid(steps, 1200, 300, 0.6)


def test_staircase_after_collapse_escape_apart_and_two_rises() -> None:
    steps = np.arange(0, 3000, 5)
    res = detect_jumps_changepoint(staircase(steps), steps)
    (esc,) = res.init_escape
    assert esc.kind == "init_escape" and esc.start_step == 0 and esc.size == pytest.approx(-11, abs=0.3)
    assert [e.kind for e in res.events] == ["transition", "transition"]
    first, second = res.events
    assert abs(first.peak_step - 450) <= 40 and abs(second.peak_step - 1200) <= 100
    assert first.size == pytest.approx(0.8, abs=0.12) and second.size == pytest.approx(0.6, abs=0.1)
    assert len(res.jumps) == 2  # the escape is not a jump


def test_early_rise_is_an_escape_too() -> None:
    steps = np.arange(0, 2000, 5)
    x = sigmoid(steps, 30, 40, 5.0) + sigmoid(steps, 1000, 100, 1.0)
    res = detect_jumps_changepoint(x, steps)
    assert len(res.init_escape) == 1 and res.init_escape[0].size > 4.5
    assert [round(e.size, 1) for e in res.events] == [1.0]


def test_noise_and_linear_drift_have_no_events() -> None:
    rng = np.random.default_rng(1)
    steps = np.arange(0, 4000, 10)
    for seed in range(5):
        noise = np.random.default_rng(seed).normal(3.0, 0.2, steps.size)
        assert detect_jumps_changepoint(noise, steps).events == ()
    drift = 2.0 + 0.001 * steps + rng.normal(0, 0.05, steps.size)
    res = detect_jumps_changepoint(drift, steps)
    assert res.events == () and res.init_escape == ()
    assert detect_jumps_changepoint(0.001 * steps, steps).events == ()  # noiseless drift too


def test_fall_and_direction() -> None:
    steps = np.arange(0, 3000, 5)
    x = 5.0 - sigmoid(steps, 1500, 100, 2.0)
    (ev,) = detect_jumps_changepoint(x, steps).events
    assert ev.direction == -1 and ev.size == pytest.approx(-2.0, abs=0.3)
    assert detect_jumps_changepoint(x, steps, direction="up").events == ()
    assert len(detect_jumps_changepoint(x, steps, direction="down").events) == 1


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_spacing_5_and_50_steps_give_the_same_events(noise: float) -> None:
    found = []
    for every in (5, 50):
        steps = np.arange(0, 3000, every)
        x = staircase(steps) + np.random.default_rng(2).normal(0, noise, steps.size)
        found.append(detect_jumps_changepoint(x, steps))
    fine, coarse = found
    assert len(fine.events) == len(coarse.events) == 2
    assert len(fine.init_escape) == len(coarse.init_escape) == 1
    for a, b in zip(fine.events, coarse.events, strict=True):
        # within the coarser spacing, plus the resolution of one fitted piece at the peak
        assert abs(a.peak_step - b.peak_step) <= 2 * 50 + 0.1 * (a.end_step - a.start_step)
        assert a.size == pytest.approx(b.size, rel=0.2)


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.03, 0.05])
@pytest.mark.parametrize("thr", [1.5, 3.0, 6.0])
def test_halving_the_threshold_never_removes_an_event(noise: float, thr: float) -> None:
    steps = np.arange(0, 3000, 5)
    rng = np.random.default_rng(3)
    x = staircase(steps) + 0.4 * sigmoid(steps, 2200, 60, 1.0) + rng.normal(0, noise, steps.size)
    found = detect_jumps_changepoint(x, steps, threshold=thr).events
    lower = detect_jumps_changepoint(x, steps, threshold=thr / 2).events
    for e in found:
        assert any(f.start_step <= e.peak_step <= f.end_step for f in lower), e


def test_invalid_input_errors_and_short_series() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        detect_jumps_changepoint([0.0, 1.0, np.nan, 2.0] * 5)
    with pytest.raises(ValueError, match="steps has shape"):
        detect_jumps_changepoint(np.zeros(20), np.arange(19))
    with pytest.raises(ValueError, match="increase strictly"):
        detect_jumps_changepoint(np.zeros(20), np.r_[np.arange(10), np.arange(10)])
    with pytest.raises(ValueError, match="direction"):
        detect_jumps_changepoint(np.zeros(20), direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        detect_jumps_changepoint(np.zeros(20), threshold=0)
    short = detect_jumps_changepoint([0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
    assert short.events == () and short.init_escape == () and short.z.shape == (6,)
    assert detect_jumps_changepoint(np.full(50, 2.0)).events == ()


def test_optimal_partition_finds_the_kinks_of_a_polyline() -> None:
    t = np.linspace(0.0, 1.0, 101)
    y = np.interp(t, [0.0, 0.3, 0.6, 1.0], [0.0, 0.0, 1.0, 1.0])  # kinks at 0.3 and 0.6
    starts = optimal_partition(t, y, penalty=1e-4, min_duration=0.05)
    assert starts[0] == 0 and len(starts) == 3
    assert abs(t[starts[1]] - 0.3) <= 0.02 and abs(t[starts[2]] - 0.6) <= 0.02


@pytest.mark.slow
def test_deep_linear_staircase_modes_found_and_control_quiet() -> None:
    """Case A of the benchmark: the hidden layer's PR collapses, then rises as modes 2 and 3 are learnt.

    The truth windows come from the run's own mode strengths (``ndt.validate.truth``), not from the
    detector; the control (rank-1 target) has only the collapse.
    """
    from ndt.validate.cases import run_case
    from ndt.validate.score import score_events

    for seed in (0, 1):
        for control in (False, True):
            run = run_case("A", seed, control)
            series = run.series("participation_ratio")
            res = detect_jumps_changepoint(series.to_numpy(), series.index.to_numpy())
            assert len(res.init_escape) == 1 and res.init_escape[0].size < 0  # the collapse, apart
            score = score_events([*res.events, *res.init_escape], run.windows, run.n_steps, run.min_hits)
            assert score.false_alarms == 0
            if control:
                assert score.n_events == 0
            else:
                assert score.hit and {1, 2} <= set(score.windows_hit)  # modes 2 and 3
