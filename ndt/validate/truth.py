"""Ground truth of the benchmark's cases: pure functions on curves recorded in the same run.

Nothing here comes from a paper: every truth step is the first crossing of a threshold by a quantity
measured during the run itself (a mode strength, a test accuracy, a loss). The papers only say where
to expect them (`saxe_time` is the analytic estimate the tests compare a simulation with).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def first_crossing(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    level: float,
    *,
    above: bool = True,
) -> int | None:
    """The first step whose value reaches `level`.

    Args:
        steps: (m,) increasing training steps.
        values: (m,) the quantity at those steps.
        level: the threshold.
        above: True: first value >= level; False: first value <= level.

    Returns:
        That step, or None when the curve never reaches the level.
    """
    s = np.asarray(steps)
    v = np.asarray(values, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1:
        raise ValueError(f"steps {s.shape} and values {v.shape} must be 1-D of the same length")
    hit = v >= level if above else v <= level
    idx = np.flatnonzero(hit)
    return int(s[idx[0]]) if idx.size else None


def mode_strengths(w1: np.ndarray, w2: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Strength of each target mode in a two-layer linear network: a_i = u_i^T W2 W1 v_i.

    Args:
        w1: (..., h, d_in) first-layer weights (a leading axis for a trajectory is allowed).
        w2: (..., d_out, h) second-layer weights.
        u: (d_out, r) the target's left singular vectors (columns).
        v: (d_in, r) its right singular vectors.

    Returns:
        (..., r) strengths.
    """
    prod = w2 @ w1  # (..., d_out, d_in)
    return np.einsum("or,...oi,ir->...r", u, prod, v)


def staircase_times(
    steps: Sequence[int] | np.ndarray, strengths: np.ndarray, singular_values: Sequence[float]
) -> list[int | None]:
    """Per mode, the first step where its strength reaches half its target singular value.

    Args:
        steps: (m,) steps at which the strengths were recorded.
        strengths: (m, r) mode strengths a_i(t).
        singular_values: (r,) target singular values s_i.

    Returns:
        (r,) first steps with a_i >= s_i / 2 (None for a mode never learnt).
    """
    a = np.asarray(strengths, dtype=np.float64)
    return [first_crossing(steps, a[:, i], s / 2.0) for i, s in enumerate(singular_values)]


def saxe_time(s: float, a0: float, lr: float) -> float:
    """Steps for a balanced mode of a 2-layer linear net to reach half strength under gradient descent.

    With whitened inputs and loss 1/2 E||y - W2 W1 x||^2, a balanced mode follows
    da/dt = 2 lr a (s - a) (per step, continuous-time limit), a logistic with
    a(t) = s / (1 + (s/a0 - 1) e^{-2 s lr t}); it reaches s/2 at t = ln(s/a0 - 1) / (2 s lr), about
    ln(s/a0) / (2 s lr) (Saxe et al. 2014).

    Args:
        s: target singular value.
        a0: initial strength (0 < a0 < s / 2).
        lr: learning rate (per step).
    """
    if not 0 < a0 < s / 2:
        raise ValueError(f"need 0 < a0 < s/2, got a0={a0}, s={s}")
    return math.log(s / a0 - 1.0) / (2.0 * s * lr)


def midpoint_crossing(
    steps: Sequence[int] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    plateau: tuple[float, float] = (0.05, 0.15),
    floor_frac: float = 0.1,
) -> tuple[int | None, float, float]:
    """First step where a falling loss crosses the midpoint between its plateau and its floor.

    The plateau is the median of the loss over the samples in the fractions `plateau` of the curve
    (after the first drop from initialisation, before the transition); the floor is the median over the
    last `floor_frac` of the samples. The crossing is searched after the plateau window. A curve that
    does not fall (floor >= plateau) has no crossing.

    Args:
        steps: (m,) increasing steps.
        loss: (m,) loss at those steps.
        plateau: (start, end) fractions of the samples that define the plateau.
        floor_frac: fraction of the last samples that defines the floor.

    Returns:
        (the first step with loss <= (plateau + floor) / 2 or None, plateau level, floor level).
    """
    s = np.asarray(steps)
    y = np.asarray(loss, dtype=np.float64)
    m = y.size
    p0, p1 = round(plateau[0] * m), max(round(plateau[1] * m), round(plateau[0] * m) + 1)
    n_f = max(1, round(floor_frac * m))
    level_p = float(np.median(y[p0:p1]))
    level_f = float(np.median(y[-n_f:]))
    if not level_f < level_p:
        return None, level_p, level_f
    return first_crossing(s[p1:], y[p1:], (level_p + level_f) / 2.0, above=False), level_p, level_f


def window(t: int, rel: float, min_half_width: int) -> tuple[int, int]:
    """The symmetric hit window t +- max(rel t, min_half_width), in steps (inclusive)."""
    half = max(rel * t, float(min_half_width))
    return math.floor(t - half), math.ceil(t + half)
