"""The study's TAP growth fit of a metric series, exactly as the study fitted it, as a pure function.

For a series D sampled at training steps ``steps`` (m values):

1. t = steps / max(steps)                                   (so t lies in [0, 1])
2. D(t) = Dmax / (1 + exp(-a (t - t0)))                     (a logistic: the "TAP" growth curve)
3. ``scipy.optimize.curve_fit`` with p0 = [1.2 max D, 5, 0.5],
   bounds = ([max D, 0.1, 0], [2 max D, 50, 1]), maxfev = 10000.
4. Reported: Dmax, a, alpha = a / max(steps) (per step), t0 in steps (t0 * max(steps)),
   R^2 = 1 - SS_res / SS_tot (0 when SS_tot = 0; negative when the curve is worse than the mean),
   and the names of the parameters that ended on a bound.

A fit that cannot run (too few points, non-finite values, max(steps) <= 0, max D <= 0 so the bounds are
empty) or that scipy gives up on is returned with ``ok=False`` and a message, never raised.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

#: Parameter names in curve_fit order (t0 here is in units of t, i.e. a fraction of max(steps)).
PARAM_NAMES: tuple[str, str, str] = ("d_max", "a", "t0")

#: A parameter is "on a bound" when it is within this fraction of its bound interval of the bound.
#: curve_fit's trust-region solver keeps iterates strictly inside the box, so a parameter pushed
#: against a bound stops a hair inside it, never exactly on it.
BOUND_RTOL = 1e-6

#: The study's maxfev.
MAXFEV = 10_000


@dataclass(frozen=True)
class GrowthFit:
    """Result of one TAP fit.

    Attributes:
        ok: True when curve_fit converged; False otherwise (the numeric fields are then NaN).
        message: why the fit failed ("" when ok).
        d_max: Dmax, in metric units.
        a: logistic rate in units of 1 / t (t = step / max step).
        alpha: a / max(steps): the rate per training step.
        t0: midpoint in training steps.
        t0_frac: midpoint as a fraction of max(steps) (the fitted parameter itself).
        r2: coefficient of determination of the fitted curve on the data (may be negative).
        bound_flags: names among ("d_max", "a", "t0") of the parameters that ended on a bound.
        max_step: max(steps), the scale of t.
    """

    ok: bool
    message: str = ""
    d_max: float = math.nan
    a: float = math.nan
    alpha: float = math.nan
    t0: float = math.nan
    t0_frac: float = math.nan
    r2: float = math.nan
    bound_flags: tuple[str, ...] = ()
    max_step: float = math.nan

    def predict(self, steps: np.ndarray | Sequence[float]) -> np.ndarray:
        """The fitted curve at `steps`.

        Args:
            steps: (k,) training steps.

        Returns:
            (k,) values of Dmax / (1 + exp(-a (step / max_step - t0_frac))); NaN when the fit failed.
        """
        s = np.asarray(steps, dtype=np.float64)
        if not self.ok:
            return np.full(s.shape, np.nan)
        return tap_curve(s / self.max_step, self.d_max, self.a, self.t0_frac)


def tap_curve(t: np.ndarray, d_max: float, a: float, t0: float) -> np.ndarray:
    """The TAP logistic D(t) = d_max / (1 + exp(-a (t - t0))).

    Args:
        t: (m,) normalised time in [0, 1].
        d_max, a, t0: curve parameters (t0 in units of t).

    Returns:
        (m,) curve values.
    """
    return d_max / (1.0 + np.exp(-a * (t - t0)))


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """R^2 = 1 - SS_res / SS_tot, with 0 when SS_tot = 0 (a constant series), as the study defined it.

    Args:
        y: (m,) observations.
        y_hat: (m,) predictions.

    Returns:
        R^2; negative when the predictions are worse than the mean of y.
    """
    y = np.asarray(y, dtype=np.float64)
    ss_res = float(np.sum((y - np.asarray(y_hat, dtype=np.float64)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 0.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot


def bounds_hit(
    params: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    names: Sequence[str] = PARAM_NAMES,
    rtol: float = BOUND_RTOL,
) -> tuple[str, ...]:
    """Names of the parameters that lie on (within `rtol` of the interval width of) a bound.

    Args:
        params, lower, upper: (p,) values and their box.
        names: (p,) parameter names.
        rtol: tolerance as a fraction of upper - lower.

    Returns:
        The names of the parameters on a bound, in parameter order.
    """
    flags = []
    for name, p, lo, hi in zip(names, params, lower, upper, strict=True):
        tol = rtol * (hi - lo)
        if p - lo <= tol or hi - p <= tol:
            flags.append(name)
    return tuple(flags)


def fit_tap(
    steps: np.ndarray | Sequence[float], values: np.ndarray | Sequence[float], *, maxfev: int = MAXFEV
) -> GrowthFit:
    """Fit the study's TAP logistic to one series (see the module docstring for the exact recipe).

    Args:
        steps: (m,) training steps of the measurements (max(steps) > 0).
        values: (m,) metric values, e.g. the layer-mean participation ratio.
        maxfev: curve_fit's evaluation budget (the study: 10000).

    Returns:
        `GrowthFit`; ``ok=False`` with a message when the fit cannot be done or does not converge.
    """
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape:
        return GrowthFit(ok=False, message=f"steps {s.shape} and values {y.shape} must be equal 1-D shapes")
    if s.size < len(PARAM_NAMES):
        return GrowthFit(ok=False, message=f"{s.size} point(s): the fit needs at least {len(PARAM_NAMES)}")
    if not (np.isfinite(s).all() and np.isfinite(y).all()):
        return GrowthFit(ok=False, message="non-finite steps or values")
    max_step = float(s.max())
    y_max = float(y.max())
    if max_step <= 0:
        return GrowthFit(ok=False, message=f"max(step) = {max_step:g}: t = step / max(step) is undefined")
    if y_max <= 0:
        # bounds [max D, 2 max D] are then empty or inverted
        return GrowthFit(ok=False, message=f"max D = {y_max:g} <= 0: the study's Dmax bounds are empty")
    t = s / max_step
    lower = (y_max, 0.1, 0.0)
    upper = (2.0 * y_max, 50.0, 1.0)
    try:
        with warnings.catch_warnings():
            # covariance warnings are irrelevant: only the parameters are reported
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(
                tap_curve, t, y, p0=[1.2 * y_max, 5.0, 0.5], bounds=(lower, upper), maxfev=maxfev
            )
    except (RuntimeError, ValueError) as err:
        return GrowthFit(ok=False, message=f"curve_fit failed: {err}", max_step=max_step)
    d_max, a, t0 = (float(v) for v in popt)
    return GrowthFit(
        ok=True,
        d_max=d_max,
        a=a,
        alpha=a / max_step,
        t0=t0 * max_step,
        t0_frac=t0,
        r2=r_squared(y, tap_curve(t, d_max, a, t0)),
        bound_flags=bounds_hit(popt, lower, upper),
        max_step=max_step,
    )
