"""The robust jump detector on hand-made series, and the validity battery's targets."""

from __future__ import annotations

import numpy as np
import pytest

from ndt.detect.robust import RobustJumpDetector, detect_jumps_robust, hampel_filter, local_step_fit, mad_sd
from ndt.detect.study import Jumps
from ndt.validate import battery


def test_local_step_fit_without_trend_is_a_difference_of_window_means() -> None:
    # degree 0: h[b] = mean(x[b:b+w]) - mean(x[b-w:b]), variance factor 1/w + 1/w
    x = np.array([1.0, 4.0, 2.0, 8.0, 5.0, 7.0, 3.0, 6.0, 9.0, 0.0])
    h, v = local_step_fit(x, window=2, min_side=2, degree=0)
    assert h[4] == pytest.approx((5 + 7) / 2 - (2 + 8) / 2)
    assert h[2] == pytest.approx((2 + 8) / 2 - (1 + 4) / 2)
    assert v[4] == pytest.approx(1.0)
    assert h[1] == 0 and v[1] == np.inf  # one sample on the left: no fit
    assert h[9] == 0 and v[9] == np.inf


def test_local_step_fit_recovers_a_step_on_a_line_and_ignores_curvature() -> None:
    i = np.arange(60, dtype=float)
    x = 0.3 * i + 2.5 * (i >= 30)
    h, _ = local_step_fit(x, window=8, degree=1)
    assert h[30] == pytest.approx(2.5)
    assert abs(h[15]) < 1e-9  # a line alone gives no shift
    quad = 0.01 * (i - 20) ** 2
    h2, _ = local_step_fit(quad, window=8, degree=2)
    assert np.abs(h2[3:-3]).max() < 1e-9  # a quadratic is absorbed, edges included


def test_noiseless_step_is_one_jump_at_its_index_with_its_height() -> None:
    x = np.r_[np.full(40, 5.0), np.full(40, 8.0)]
    res = detect_jumps_robust(x, np.arange(80) * 10)
    assert isinstance(res, Jumps)
    (jump,) = res.jumps
    assert (jump.index, jump.step) == (40, 400)  # the first sample at the new level
    assert jump.magnitude == pytest.approx(3.0)
    assert len(res.events) == 1 and res.events[0].peak_index == 40
    assert res.z.shape == (80,) and res.smoothed_gradient.shape == (80,)


def test_step_in_noise_is_found_within_a_sample() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 400) + 6.0 * (np.arange(400) >= 250)
    (jump,) = detect_jumps_robust(x).jumps
    assert abs(jump.index - 250) <= 1


def test_single_spike_and_decrease_are_not_jumps() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 300)
    x[150] += 15.0  # one outlier: not a level shift
    assert len(detect_jumps_robust(x)) == 0
    down = np.r_[np.full(50, 8.0), np.full(50, 5.0)] + rng.normal(0, 0.2, 100)
    assert len(detect_jumps_robust(down)) == 0  # increases only, as the study
    (jump,) = detect_jumps_robust(down, direction="down").jumps
    assert jump.index == 50 and jump.magnitude == pytest.approx(-3.0, abs=0.3)
    assert len(RobustJumpDetector(direction="both").detect(down)) == 1


def test_smooth_growth_and_short_series_have_no_jumps() -> None:
    t = np.linspace(0, 1, 400)
    assert len(detect_jumps_robust(20 / (1 + np.exp(-8 * (t - 0.5))))) == 0
    assert len(detect_jumps_robust(np.linspace(0, 10, 100))) == 0
    assert len(detect_jumps_robust([1.0, 5.0, 9.0])) == 0


def test_min_effect_size_suppresses_negligible_shifts() -> None:
    x = np.r_[np.zeros(40), np.full(40, 1e-3)] + np.linspace(0, 10, 80)  # shift 1e-4 of the range
    assert len(detect_jumps_robust(x)) == 0
    assert len(detect_jumps_robust(x, min_rel_effect=0.0)) == 1


def test_hampel_and_mad_by_hand() -> None:
    assert mad_sd(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(1.4826 * 1.0)
    x = np.array([1.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(hampel_filter(x, window=3), np.ones(7))
    step = np.r_[np.zeros(5), np.ones(5)]
    np.testing.assert_array_equal(hampel_filter(step, window=3), step)  # a step survives


def test_battery_robust_passes_study_does_not_and_changepoint_finds_sigmoids() -> None:
    results = battery.run_battery(cfg=battery.BatteryConfig(n_series=40, seed=1))
    assert battery.failures(results, "robust") == []
    study_noise = results[(results.detector == "study") & (results.series_class == "noise")]
    assert float(study_noise["false_per_1000"].iloc[0]) > battery.FALSE_PER_1000_TARGET
    planted = results[results.series_class == "planted"]
    assert (planted["planted"] > 40).all() and planted["recall"].between(0, 1).all()
    # Smooth transitions: the changepoint detector finds them (and keeps the escape apart) where the
    # window-based detectors do not; it stays quiet on both null classes.
    rows = results.set_index(["detector", "series_class"])
    for kind in ("sigmoid", "collapse"):
        assert rows.loc[("changepoint", kind), "recall"] >= 0.8
        assert rows.loc[("robust", kind), "recall"] < 0.2
        assert rows.loc[("changepoint", kind), "false_per_1000"] <= battery.FALSE_PER_1000_TARGET
    for kind in battery.NULL_CLASSES:
        assert rows.loc[("changepoint", kind), "false_per_1000"] <= battery.FALSE_PER_1000_TARGET


def test_battery_entry_point_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert battery.main(["--n-series", "30"]) == 0
    out = capsys.readouterr().out
    assert "robust passes" in out and "study" in out
