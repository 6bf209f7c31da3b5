"""A third jump detector, `changepoint`: transitions as fast stretches of a piecewise-linear fit.

The study's detector standardises the smoothed gradient over the whole series, so one large change (the
escape from initialisation) sets the scale and hides every later transition; `robust` fits a local step
in a window of 12 samples, so a transition spanning tens to hundreds of steps (a sigmoid, not a step)
is absorbed by its trend. This detector models the whole series at once as a piecewise-linear curve
plus noise, and calls a *transition* a stretch where that curve moves much faster than it usually does.
Every length is in training steps (a fraction of the run's span T = steps[-1] - steps[0]), never in
samples, so the same curve sampled every 5 or every 50 steps gives the same events (within the coarser
spacing). For a series x[0..m-1] at strictly increasing steps s[0..m-1]:

1. **Despike** (`ndt.detect.robust.hampel_filter`, 7 samples, 3 robust SDs): an isolated outlier is
   not a transition; a step or a monotone ramp survives a running median unchanged. (Its window is in
   samples on purpose: an outlier is one sample, whatever the spacing.)
2. **Noise scale** sigma: the largest of 1.4826 MAD(second differences) / sqrt(6) (white noise),
   ``noise_lag`` x 1.4826 MAD(x[i + L] - x[i]) / sqrt(2) with L the samples in ``min_segment`` x T
   (correlated noise, SGD's wander, which second differences miss) and ``noise_floor`` x range(x) (so
   that a noiseless full-batch series still has a finite penalty).
3. **Segmentation**: the exact optimal partition of the series into segments, each fitted by its own
   least-squares line in steps, minimising RSS + beta x (number of segments),
   beta = ``threshold`` x sigma^2 x log(m): a BIC-like penalty in units of the noise variance, so
   ``threshold`` is the sensitivity, and halving or doubling it halves or doubles the evidence a new
   segment needs. Segments last at least ``min_segment`` x T steps and 2 samples.
4. **Pieces**: the fit read as a polyline. Neighbouring lines meet at the middle of the sample interval
   between them, unless they differ there by at least sqrt(threshold log m) standard errors: then that
   jump is a piece of its own (a step). Each piece has a duration, a change and a speed (change per
   step; a jump's change is spread over at least ``min_segment`` x T steps, the finest the fit can
   resolve). The *background speed* v_bg is the duration-weighted median |speed| of the whole series.
5. **Bumps**: from the fastest unassigned piece, grow over same-sign neighbours at least
   ``peak_fraction`` as fast as it. A bump touched on both sides by larger (in change) and faster
   same-sign bumps is a valley, a slow creep between two transitions: dropped. One touched on one side
   by such a bump is its shoulder (a sigmoid's flank, a small jump inside a ramp) and joins it, unless
   it lasts longer than that bump (then it is a creep: dropped). Same-sign bumps separated by less
   than ``merge`` x T steps, or by one piece, merge (never beyond ``max_duration`` x T).
6. **Tests**: a bump is a candidate when (a) its fastest piece's speed is at least ``contrast`` x the
   larger of v_bg and the local background (the duration-weighted median |speed| over max(duration,
   ``local_window`` x T) steps on either side: a wiggle on a steady decline is not a transition);
   (b) it lasts at most ``max_duration`` x T steps (a change spread over a quarter of the run is
   growth); (c) |change| >= sqrt(threshold log m) sigma; (d) against the metric's own level v before
   it (dimensionality metrics are ratio scales): |change| >= ``min_rel_level`` x |v| and
   |change| >= ``min_rate`` x |v| x duration / T (it changes the metric by its own level per run, at
   least: "PR fell by 30% within 7% of the run" passes, "12% over a quarter of the run" does not).
7. **Escape from initialisation**: candidates at least ``min_rel_effect`` of the whole range are read in
   time order; the first is the escape when it starts within ``init_plateau`` x T steps of the first
   sample (the series has not yet been stationary that long); each next one of the same sign joins it
   while it starts within ``init_plateau`` x T of the escape's end. A collapse and a rise are treated
   alike. The escape goes to ``Jumps.init_escape`` (kind "init_escape"), not among the transitions;
   candidates inside it are dropped.
8. **Effect size and direction**: a transition must change the metric by at least ``min_rel_effect`` of
   the fitted range after the escape (the escape's range would dwarf every later transition); then
   ``direction`` filters by sign.

Each event: start/end = the first and last sample of its pieces (the segment boundaries around the
change), peak = the sample nearest the middle of its fastest piece (for a step, the first sample at the
new level), size = fitted level at the end minus fitted level at the start, peak_magnitude = the peak
piece's speed (metric units per step), peak_z = the event's mean speed over v_bg. ``Jumps.jumps``
holds one `Jump` per transition (its peak); ``Jumps.z`` the fit's speed per sample over v_bg and
``Jumps.smoothed_gradient`` the fitted line's slope (metric units per step) at each sample.

Why not `ruptures` (installed, 1.1.10)? Its C-backed `KernelCPD` fits piecewise *constant* levels, which
turn a ramp or a linear drift into a staircase of steps; its piecewise-linear costs ("linear",
"clinear") run in Python: `Pelt(model="linear")` takes 1.3 s on 600 samples (50 ms only with
``jump=5``, which puts every boundary on a 5-sample grid and so breaks the spacing invariance), and
"clinear" interpolates between raw samples, so one noisy sample bends a segment. The optimal partition
here is exact, with closed-form segment costs from cumulative sums computed for blocks of 256 segment
ends at once: about 14 ms of CPU for 600 samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from ndt.detect.events import Jump, JumpEvent, Jumps, as_series
from ndt.detect.robust import hampel_filter, mad_sd

Direction = Literal["up", "down", "both"]

#: Fewest samples in a segment: a line needs 2 (it then fits them exactly, which the penalty prices;
#: at 50-step spacing a 100-step ramp has only 2 or 3 samples).
MIN_SEGMENT_SAMPLES = 2
#: Series shorter than this give no events (two minimal segments and a little more).
MIN_SERIES_SAMPLES = 8


@dataclass(frozen=True)
class _Piece:
    """One piece of the fitted polyline: samples a..b, from (t0, v0) to (t1, v1) in steps and metric units.

    ``within``: inside one segment; otherwise the significant jump between two segments, over the
    sample interval from a to b = a + 1. A jump's speed is its change over the larger of that interval
    and ``resolution`` (the shortest segment, in steps): finer than that the fit cannot tell a jump
    from a steep ramp, and a small jump read over one short interval would look like the fastest
    change of the series.
    """

    a: int
    b: int
    t0: float
    t1: float
    v0: float
    v1: float
    within: bool
    resolution: float = 0.0

    @property
    def duration(self) -> float:
        return self.t1 - self.t0

    @property
    def change(self) -> float:
        return self.v1 - self.v0

    @property
    def speed(self) -> float:
        """Change per step; a jump is spread over at least `resolution` steps (the shortest segment)."""
        span = self.duration if self.within else max(self.duration, self.resolution)
        return self.change / span if span > 0 else 0.0


def _segment_sums(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(6, m+1) prefix sums of 1, t, t^2, y, t y, y^2 (index k: samples 0..k-1)."""
    terms = np.vstack([np.ones_like(t), t, t * t, y, t * y, y * y])
    return np.hstack([np.zeros((6, 1)), np.cumsum(terms, axis=1)])


def _line(sums: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line on samples [i, j)."""
    n, st, stt, sy, sty, _ = sums[:, j] - sums[:, i]
    stt_c = stt - st * st / n
    slope = (sty - st * sy / n) / stt_c if stt_c > 0 else 0.0
    return float((sy - slope * st) / n), float(slope)


#: Columns of the segment-cost matrix computed at once (bounds the memory at (m + 1) x this floats).
_COST_BLOCK = 256


def optimal_partition(t: np.ndarray, y: np.ndarray, penalty: float, min_duration: float) -> list[int]:
    """Exact penalised piecewise-linear segmentation (optimal partitioning, Jackson et al. 2005).

    Minimises sum over segments of (RSS of its least-squares line) + penalty per segment, over every
    partition whose segments are long enough. The costs of all segments ending in a block of
    `_COST_BLOCK` samples are computed in one vectorised step; the recursion then does one `argmin`
    per sample.

    Args:
        t: (m,) strictly increasing sample times.
        y: (m,) values.
        penalty: cost of one more segment, in units of y^2.
        min_duration: every segment spans t[last] - t[first] >= this, and holds at least
            `MIN_SEGMENT_SAMPLES` samples.

    Returns:
        Segment starts, beginning with 0 (segment k is [starts[k], starts[k+1]) with m at the end).
    """
    m = t.size
    sums = _segment_sums(t, y)
    best = np.full(m + 1, np.inf)
    best[0] = -penalty
    prev = np.zeros(m + 1, dtype=np.int64)
    # last[j]: the last start i whose segment [i, j) is long enough (in samples and in time)
    ends = np.arange(m + 1)
    by_samples = ends - MIN_SEGMENT_SAMPLES
    by_time = np.searchsorted(t, t[np.clip(ends - 1, 0, m - 1)] - min_duration, side="right") - 1
    last = np.minimum(by_samples, by_time)
    for j0 in range(MIN_SEGMENT_SAMPLES, m + 1, _COST_BLOCK):
        js = np.arange(j0, min(j0 + _COST_BLOCK, m + 1))
        top = int(last[js[-1]]) + 1
        if top <= 0:
            continue
        i = np.arange(top)[:, None]  # (top, 1) starts
        cost = _block_costs(sums, top, js, i)
        for c, j in enumerate(js):
            lim = int(last[j]) + 1
            if lim <= 0:
                continue
            total = best[:lim] + cost[:lim, c]
            k = int(np.argmin(total))
            best[j] = float(total[k]) + penalty
            prev[j] = k
    starts: list[int] = []
    end = m
    while end > 0:
        end = int(prev[end])
        starts.append(end)
    return starts[::-1]


def _block_costs(sums: np.ndarray, top: int, js: np.ndarray, i: np.ndarray) -> np.ndarray:
    """(top, b) RSS of the least-squares line on samples [i, j) for starts i < top and ends j in `js`.

    Pairs with fewer than 2 samples (masked by the caller) give meaningless finite or infinite values.
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        n = np.maximum(js[None, :] - i, 1).astype(np.float64)
        st = sums[1, js][None, :] - sums[1, :top, None]
        sy = sums[3, js][None, :] - sums[3, :top, None]
        stt_c = sums[2, js][None, :] - sums[2, :top, None] - st * st / n
        sty_c = sums[4, js][None, :] - sums[4, :top, None] - st * sy / n
        syy_c = sums[5, js][None, :] - sums[5, :top, None] - sy * sy / n
        return np.maximum(syy_c - sty_c * sty_c / np.maximum(stt_c, 1e-300), 0.0)


def _pieces(
    s: np.ndarray, x: np.ndarray, starts: list[int], min_jump: float, resolution: float
) -> tuple[list[_Piece], np.ndarray, np.ndarray]:
    """The fitted polyline's pieces, the fitted curve (m,) and its slope per sample (m,).

    Between two segments the lines meet at the middle of the sample interval (their mean there) unless
    they differ there by at least `min_jump` times the standard error of that difference in noise
    units (sqrt(4/n1 + 4/n2) for segments of n1 and n2 samples): then the jump is a piece of its own. A small gap between
    two lines is noise of the fit; read as a piece, it would be the "fastest" change of the series
    only because it lasts one sample interval.
    """
    m = x.size
    sf = s.astype(np.float64)
    sums = _segment_sums(sf - sf[0], x)
    bounds = [*starts, m]
    lines = [_line(sums, bounds[k], bounds[k + 1]) for k in range(len(starts))]

    def f(k: int, tt: float) -> float:
        return lines[k][0] + lines[k][1] * (tt - sf[0])

    fit = np.empty(m)
    slope = np.empty(m)
    pieces: list[_Piece] = []
    t0, v0 = sf[0], f(0, sf[0])
    for k in range(len(starts)):
        i, j = bounds[k], bounds[k + 1]
        fit[i:j] = lines[k][0] + lines[k][1] * (sf[i:j] - sf[0])
        slope[i:j] = lines[k][1]
        if j == m:
            pieces.append(_Piece(i, j - 1, t0, sf[-1], v0, f(k, sf[-1]), True))
            break
        tm = 0.5 * (sf[j - 1] + sf[j])
        # a line's value at its segment's end has SD about 2 sigma / sqrt(n) (n samples)
        se = math.sqrt(4.0 / (j - i) + 4.0 / (bounds[k + 2] - j))
        if abs(f(k + 1, tm) - f(k, tm)) >= min_jump * se:
            pieces.append(_Piece(i, j - 1, t0, sf[j - 1], v0, f(k, sf[j - 1]), True))
            jump = _Piece(j - 1, j, sf[j - 1], sf[j], f(k, sf[j - 1]), f(k + 1, sf[j]), False, resolution)
            pieces.append(jump)
            t0, v0 = sf[j], f(k + 1, sf[j])
        else:
            vm = 0.5 * (f(k, tm) + f(k + 1, tm))
            pieces.append(_Piece(i, j - 1, t0, tm, v0, vm, True))
            t0, v0 = tm, vm
    return pieces, fit, slope


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _candidates(
    pieces: list[_Piece], peak_fraction: float, floor_speed: float, longest: float
) -> list[tuple[int, int, int]]:
    """Speed bumps as (first piece, last piece, fastest piece), sorted by time.

    Grows from the fastest unassigned piece over same-sign neighbours at least `peak_fraction` as fast;
    pieces slower than `floor_speed` never seed a bump. A bump touched on both sides by same-sign bumps
    of larger change and at least its speed is a valley (a slow creep between two transitions) and is dropped; one touched on
    one side by a larger one is a shoulder (a fitted sigmoid's flank, or a small jump between two lines
    of one ramp) and joins it, when it lasts no longer than that bump (a longer one is a creep into or
    out of the transition, and is dropped) and the whole lasts at most `longest` steps; the others
    are transitions of their own.
    """
    speed = np.array([abs(p.speed) for p in pieces])
    sign = np.sign([p.change for p in pieces])
    owner = np.full(len(pieces), -1)
    bumps: list[list[int]] = []  # [lo, hi, fastest], in the order grown (fastest first)
    for k in np.argsort(-speed, kind="stable"):
        if owner[k] >= 0 or speed[k] <= floor_speed or sign[k] == 0:
            continue
        lo = hi = int(k)
        cut = peak_fraction * speed[k]
        while lo > 0 and owner[lo - 1] < 0 and sign[lo - 1] == sign[k] and speed[lo - 1] >= cut:
            lo -= 1
        while hi < len(pieces) - 1 and owner[hi + 1] < 0 and sign[hi + 1] == sign[k] and speed[hi + 1] >= cut:
            hi += 1
        owner[lo : hi + 1] = len(bumps)
        bumps.append([lo, hi, int(k)])

    # Each bump against the same-sign bumps that touch it: both larger (in |change|, and at least as
    # fast at their fastest), a valley (the
    # slow creep between two transitions): dropped; one larger, a shoulder of it (a fitted sigmoid's
    # flank, or a small jump between two lines of one ramp): joined to it; neither, a transition.
    def change(n: int) -> float:
        lo, hi, _ = bumps[n]
        return abs(pieces[hi].v1 - pieces[lo].v0)

    target: list[int | None] = []  # None: a peak; -1: a valley; else the bump it is a shoulder of
    for n, (lo, hi, k) in enumerate(bumps):
        larger = [
            int(owner[side])
            for side in (lo - 1, hi + 1)
            if 0 <= side < len(pieces)
            and owner[side] >= 0
            and sign[side] == sign[k]
            and change(int(owner[side])) > change(n)
            and speed[bumps[int(owner[side])][2]] >= speed[k]
        ]
        target.append(None if not larger else (-1 if len(larger) == 2 else larger[0]))
    members: dict[int, list[int]] = {}
    for n in range(len(bumps)):
        root: int | None = n
        seen = set()
        while root is not None and root >= 0 and target[root] is not None and root not in seen:
            seen.add(root)
            root = target[root]
        if root is not None and root >= 0 and target[root] is None:
            members.setdefault(root, []).append(n)

    def duration(lo: int, hi: int) -> float:
        return pieces[hi].t1 - pieces[lo].t0

    out = []
    for root, group in members.items():
        own = duration(bumps[root][0], bumps[root][1])
        # a shoulder longer than the bump it leans on is a creep into or out of it: dropped
        group = [g for g in group if duration(bumps[g][0], bumps[g][1]) <= own]
        lo = min(bumps[g][0] for g in group)
        hi = max(bumps[g][1] for g in group)
        if duration(lo, hi) > longest:
            lo, hi = bumps[root][0], bumps[root][1]
        out.append((lo, hi, bumps[root][2]))
    return sorted(out)


def _merge(
    kept: list[tuple[int, int, int]], pieces: list[_Piece], s: np.ndarray, gap: float, longest: float
) -> list[tuple[int, int, int]]:
    """Merge time-adjacent same-sign events separated by a short stretch that is no event.

    Two kept events (first piece, last piece, fastest piece) of the same sign merge when what lies
    between them lasts at most `gap` steps or is a single piece (one sample interval between two
    segments, whatever the spacing) and the merged event lasts at most `longest` steps. Touching events (nothing between) stay apart: the later-grown one
    is a slower flank that passed the tests on its own.
    """
    merged: list[tuple[int, int, int]] = []
    for c in kept:
        if merged:
            lo, hi, pk = merged[-1]
            same = np.sign(pieces[pk].change) == np.sign(pieces[c[2]].change)
            between = c[0] - hi - 1  # pieces strictly between the two
            short = pieces[c[0]].t0 - pieces[hi].t1 <= gap or between == 1
            fits = pieces[c[1]].t1 - pieces[lo].t0 <= longest
            if same and between > 0 and short and fits:
                fastest = pk if abs(pieces[pk].speed) >= abs(pieces[c[2]].speed) else c[2]
                merged[-1] = (lo, c[1], fastest)
                continue
        merged.append(c)
    return merged


def detect_jumps_changepoint(
    values: np.ndarray | Sequence[float],
    steps: np.ndarray | Sequence[int] | None = None,
    *,
    threshold: float = 3.0,
    direction: Direction = "both",
    min_segment: float = 0.01,
    merge: float = 0.01,
    max_duration: float = 0.25,
    contrast: float = 4.0,
    peak_fraction: float = 0.25,
    min_rel_effect: float = 0.02,
    init_plateau: float = 0.02,
    noise_floor: float = 1e-3,
    noise_lag: float = 1.0,
    local_window: float = 0.05,
    min_rel_level: float = 0.05,
    min_rate: float = 1.0,
) -> Jumps:
    """Detect the transitions of one series (method and field meanings in the module docstring).

    Args:
        values: (m,) finite metric values, one per measurement.
        steps: (m,) strictly increasing training step of each value; default 0..m-1.
        threshold: sensitivity: segment penalty in units of sigma^2 log(m) (step 3); also sets the
            minimum significant size sqrt(2 threshold log m) sigma (step 5).
        direction: "both" (default), "up" (rises only) or "down" (falls only); the escape from
            initialisation is reported whatever its sign.
        min_segment: shortest segment, as a fraction of the run's span in steps.
        merge: same-sign candidates closer than this fraction of the span merge into one event.
        max_duration: longest transition, as a fraction of the span.
        contrast: a transition's fastest piece must be at least this multiple of the background speed
            (the larger of the global and the local one).
        peak_fraction: a transition extends over neighbouring pieces at least this fraction as fast as
            its fastest piece.
        min_rel_effect: smallest |size| as a fraction of the fitted range after the escape (and, for
            the escape, of the whole range).
        init_plateau: a stationary stretch this long (fraction of the span) ends the escape.
        noise_floor: the noise SD is at least this fraction of the series' range.
        noise_lag: weight of the lag-difference (correlated) noise estimate; 0 ignores it.
        local_window: the local background is read over at least this fraction of the span on each
            side of an event; 0 uses the global background only.
        min_rel_level: smallest |size| as a fraction of the metric's level before the event.
        min_rate: smallest |size| / |level before| per fraction of the span the event lasts.

    Returns:
        `Jumps` with the transitions in ``events`` (and one `Jump` per transition) and the escape from
        initialisation in ``init_escape``.

    Raises:
        ValueError: non-finite values, a shape mismatch, steps that do not increase strictly, or a
            parameter out of range.
    """
    x, s = as_series(values, steps)
    _check_params(threshold, direction, min_segment, merge, max_duration, contrast, peak_fraction)
    m = x.size
    if m > 1 and not (np.diff(s) > 0).all():
        raise ValueError("steps must increase strictly (one measurement per step, in order); sort them first")
    empty = Jumps(z=np.zeros(m), smoothed_gradient=np.zeros(m))
    if m < MIN_SERIES_SAMPLES:
        return empty
    clean = hampel_filter(x, 7, 3.0)
    span = float(s[-1] - s[0])
    value_range = float(clean.max() - clean.min())
    if value_range == 0.0:
        return empty
    sigma = max(mad_sd(np.diff(clean, 2)) / math.sqrt(6.0), noise_floor * value_range)
    if noise_lag > 0:
        # Correlated noise (SGD's wander) hides from second differences: its SD at the shortest
        # segment's scale comes from differences over that lag (a constant trend is the median).
        lag = int(np.searchsorted(s, s[0] + min_segment * span))
        lag = max(1, min(lag, m // 4))
        sigma = max(sigma, noise_lag * mad_sd(clean[lag:] - clean[:-lag]) / math.sqrt(2.0))
    log_m = math.log(m)
    # Segment in normalised units (t in [0, 1], y in units of the range): the cumulative sums then
    # keep their precision for nearly noiseless series.
    t = (s - s[0]).astype(np.float64) / span
    y = (clean - clean.mean()) / value_range
    penalty = threshold * (sigma / value_range) ** 2 * log_m
    starts = optimal_partition(t, y, penalty, min_segment)
    min_size = math.sqrt(threshold * log_m) * sigma
    pieces, fit, slope = _pieces(s, clean, starts, min_size, min_segment * span)
    speeds = np.array([abs(p.speed) for p in pieces])
    v_bg = _weighted_median(speeds, np.array([p.duration for p in pieces]))

    def ev_size(ev: tuple[int, int, int]) -> float:
        return pieces[ev[1]].v1 - pieces[ev[0]].v0

    def ev_duration(ev: tuple[int, int, int]) -> float:
        return pieces[ev[1]].t1 - pieces[ev[0]].t0

    piece_t0 = np.array([p.t0 for p in pieces])
    piece_t1 = np.array([p.t1 for p in pieces])

    def local_speed(ev: tuple[int, int, int]) -> float:
        # how fast the series usually moves around the event: the duration-weighted median |speed| of
        # the fit over max(duration, local_window * span) steps on each side (a median, so that another
        # transition or the escape nearby does not count as the background)
        t0, t1 = pieces[ev[0]].t0, pieces[ev[1]].t1
        w = max(t1 - t0, local_window * span)
        left = np.clip(np.minimum(piece_t1, t0) - np.maximum(piece_t0, t0 - w), 0.0, None)
        right = np.clip(np.minimum(piece_t1, t1 + w) - np.maximum(piece_t0, t1), 0.0, None)
        weight = left + right
        return _weighted_median(speeds, weight) if weight.sum() > 0 else 0.0

    def relative(ev: tuple[int, int, int]) -> bool:
        # the change against the metric's own level before it (dimensionality metrics are ratio
        # scales: "PR fell by 30% within 7% of the run"); a level near zero imposes nothing
        change, level = abs(ev_size(ev)), abs(pieces[ev[0]].v0)
        fraction = ev_duration(ev) / span
        return change >= min_rel_level * level and change >= min_rate * level * fraction

    def passes(ev: tuple[int, int, int]) -> bool:
        if not relative(ev):
            return False
        change, duration = abs(ev_size(ev)), ev_duration(ev)
        background = max(v_bg, local_speed(ev)) if local_window > 0 else v_bg
        return (
            abs(pieces[ev[2]].speed) >= contrast * background
            and duration <= max_duration * span
            and change >= min_size
        )

    # A piece slower than the background can only seed a bump that fails the contrast test.
    cands = [c for c in _candidates(pieces, peak_fraction, v_bg, max_duration * span) if passes(c)]
    kept = _merge(cands, pieces, s, merge * span, max_duration * span)

    # The escape chain is read over the events large against the whole range: a small wiggle inside
    # the collapse (a line's overshoot) neither joins nor interrupts it.
    escapes: list[tuple[int, int, int]] = []
    reach = float(s[0]) + init_plateau * span
    for ev in (ev for ev in kept if abs(ev_size(ev)) >= min_rel_effect * value_range):
        if pieces[ev[0]].t0 > reach or (escapes and np.sign(ev_size(ev)) != np.sign(ev_size(escapes[0]))):
            break
        if escapes:  # the escape is one thing: its flanks of one sign become one event
            lo, _, pk = escapes[-1]
            escapes[-1] = (lo, ev[1], ev[2] if speeds[ev[2]] > speeds[pk] else pk)
        else:
            escapes.append(ev)
        reach = pieces[ev[1]].t1 + init_plateau * span
    escape_end = pieces[escapes[-1][1]].b if escapes else 0
    rest = [ev for ev in kept if pieces[ev[0]].a >= escape_end and ev not in escapes]
    after = fit[escape_end:]
    post_range = float(after.max() - after.min())
    wanted = {"up": (1.0,), "down": (-1.0,), "both": (1.0, -1.0)}[direction]
    transitions = [
        ev
        for ev in rest
        if abs(ev_size(ev)) >= min_rel_effect * post_range and float(np.sign(ev_size(ev))) in wanted
    ]

    def event(ev: tuple[int, int, int], kind: Literal["transition", "init_escape"]) -> JumpEvent:
        lo, hi, pk = ev
        a, b, peak = pieces[lo].a, pieces[hi].b, pieces[pk]
        if peak.within:  # the sample nearest the middle of the fastest piece
            mid = 0.5 * (peak.t0 + peak.t1)
            pk_index = min(range(peak.a, peak.b + 1), key=lambda i: abs(float(s[i]) - mid))
        else:  # a jump: the first sample at the new level
            pk_index = peak.b
        mean_speed = abs(ev_size(ev)) / ev_duration(ev)
        return JumpEvent(
            start_index=a,
            end_index=b,
            start_step=int(s[a]),
            end_step=int(s[b]),
            peak_index=pk_index,
            peak_step=int(s[pk_index]),
            peak_z=mean_speed / v_bg if v_bg > 0 else math.inf,
            peak_magnitude=float(peak.speed),
            n_indices=b - a + 1,
            size=float(ev_size(ev)),
            kind=kind,
        )

    events = tuple(event(ev, "transition") for ev in transitions)
    jumps = tuple(
        Jump(index=e.peak_index, step=e.peak_step, magnitude=e.peak_magnitude, z_score=e.peak_z)
        for e in events
    )
    point_speed = np.abs(np.gradient(fit, s.astype(np.float64)))
    z = point_speed / v_bg if v_bg > 0 else np.where(point_speed > 0, np.inf, 0.0)
    return Jumps(
        jumps=jumps,
        events=events,
        init_escape=tuple(event(ev, "init_escape") for ev in escapes),
        z=z,
        smoothed_gradient=slope,
    )


def _check_params(
    threshold: float,
    direction: str,
    min_segment: float,
    merge: float,
    max_duration: float,
    contrast: float,
    peak_fraction: float,
) -> None:
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (a penalty multiplier), got {threshold}")
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
    for name, v in (("min_segment", min_segment), ("merge", merge), ("max_duration", max_duration)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} is a fraction of the run's span in steps, in [0, 1]; got {v}")
    if not contrast >= 1:
        raise ValueError(f"contrast must be >= 1 (a multiple of the background speed), got {contrast}")
    if not 0 < peak_fraction <= 1:
        raise ValueError(f"peak_fraction must be in (0, 1], got {peak_fraction}")


@dataclass(frozen=True)
class ChangepointDetector:
    """`detect_jumps_changepoint` with its parameters fixed (see the module docstring)."""

    threshold: float = 3.0
    direction: Direction = "both"
    min_segment: float = 0.01
    merge: float = 0.01
    max_duration: float = 0.25
    contrast: float = 4.0
    peak_fraction: float = 0.25
    min_rel_effect: float = 0.02
    init_plateau: float = 0.02
    noise_floor: float = 1e-3
    noise_lag: float = 1.0
    local_window: float = 0.05
    min_rel_level: float = 0.05
    min_rate: float = 1.0

    def detect(
        self, values: np.ndarray | Sequence[float], steps: np.ndarray | Sequence[int] | None = None
    ) -> Jumps:
        """Detect the transitions of one series; see `detect_jumps_changepoint`."""
        return detect_jumps_changepoint(
            values, steps, **{f.name: getattr(self, f.name) for f in fields(self)}
        )
