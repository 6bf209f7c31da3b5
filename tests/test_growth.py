"""The study's TAP growth fit: known parameters, R^2 and bound flags on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ndt.analysis.growth import GrowthFit, bounds_hit, fit_tap, r_squared


def logistic(steps: np.ndarray, d_max: float, a: float, t0: float) -> np.ndarray:
    t = steps / steps.max()
    return d_max / (1 + np.exp(-a * (t - t0)))


def test_recovers_known_parameters_of_a_noiseless_logistic() -> None:
    steps = np.arange(0, 2001, 5)
    fit = fit_tap(steps, logistic(steps, 20.0, 8.0, 0.4))
    assert fit.ok and fit.message == ""
    assert fit.d_max == pytest.approx(20.0, rel=1e-6)
    assert fit.a == pytest.approx(8.0, rel=1e-6)
    assert fit.t0_frac == pytest.approx(0.4, rel=1e-6)
    assert fit.t0 == pytest.approx(800.0, rel=1e-6)  # 0.4 of max(step) = 2000, in steps
    assert fit.alpha == pytest.approx(8.0 / 2000.0, rel=1e-6)  # per step
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.bound_flags == ()
    np.testing.assert_allclose(
        fit.predict([0, 800, 2000]), [20 / (1 + math.exp(3.2)), 10.0, 20 / (1 + math.exp(-4.8))]
    )


def test_r_squared_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0])  # mean 2, SS_tot = 2
    assert r_squared(y, y) == 1.0
    assert r_squared(y, np.array([1.0, 2.0, 4.0])) == pytest.approx(0.5)  # SS_res = 1
    assert r_squared(y, np.array([3.0, 2.0, 1.0])) == pytest.approx(-3.0)  # SS_res = 8: worse than the mean
    assert r_squared(np.full(4, 7.0), np.array([1.0, 2.0, 3.0, 4.0])) == 0.0  # SS_tot = 0


def test_bounds_hit_by_hand() -> None:
    lower, upper = (1.0, 0.1, 0.0), (2.0, 50.0, 1.0)
    assert bounds_hit((1.5, 5.0, 0.5), lower, upper) == ()
    assert bounds_hit((1.0, 5.0, 1.0), lower, upper) == ("d_max", "t0")
    assert bounds_hit((2.0 - 1e-9, 0.1 + 1e-8, 0.5), lower, upper) == ("d_max", "a")  # a hair inside counts
    assert bounds_hit((1.5, 0.2, 0.5), lower, upper) == ()


def test_constant_series_gives_r2_zero_and_flags_bounds() -> None:
    # SS_tot = 0 -> R^2 = 0 by definition. The curve can only be flat with a at its lower bound (0.1)
    # and the midpoint at 0 (then D(t) varies by 5% over t in [0, 1]).
    steps = np.arange(0, 100, 10)
    fit = fit_tap(steps, np.full(10, 3.0))
    assert fit.ok and fit.r2 == 0.0
    assert fit.bound_flags == ("a", "t0")


def test_midpoint_beyond_the_data_ends_on_its_bound() -> None:
    # D = 10 / (1 + exp(-5 (t - 1.2))): still accelerating at t = 1, so the best t0 is past 1, outside
    # the study's bounds; the fit stops at t0 = 1 and says so.
    steps = np.arange(0, 500, 10)
    fit = fit_tap(steps, logistic(steps, 10.0, 5.0, 1.2))
    assert fit.ok and "t0" in fit.bound_flags
    assert fit.t0_frac == pytest.approx(1.0, abs=1e-6) and fit.t0 == pytest.approx(490.0, abs=1e-3)


@pytest.mark.parametrize(
    ("steps", "values", "reason"),
    [
        ([0, 10], [1.0, 2.0], "2 point(s)"),
        ([0, 10, 20], [1.0, float("nan"), 2.0], "non-finite"),
        ([0, 0, 0], [1.0, 2.0, 3.0], "max(step) = 0"),
        ([0, 10, 20], [-1.0, -2.0, -3.0], "max D = -1"),
        ([0, 10, 20], [1.0, 2.0], "must be equal"),
    ],
)
def test_fits_that_cannot_run_are_reported_failed(steps: list[int], values: list[float], reason: str) -> None:
    fit = fit_tap(steps, values)
    assert not fit.ok and reason in fit.message
    assert math.isnan(fit.r2) and math.isnan(fit.d_max) and fit.bound_flags == ()
    assert np.isnan(fit.predict([0, 1])).all()


def test_nonconverging_fit_is_reported_failed() -> None:
    steps = np.arange(0, 500, 10)
    fit = fit_tap(steps, logistic(steps, 10.0, 6.0, 0.5) + np.sin(steps), maxfev=1)
    assert isinstance(fit, GrowthFit) and not fit.ok and fit.message.startswith("curve_fit failed")
