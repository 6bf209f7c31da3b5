"""The overhead benchmark's per-phase breakdown (`ndt.bench.overhead.phase_breakdown`)."""

from __future__ import annotations

import numpy as np
import pytest

from ndt.bench import overhead


def test_phase_breakdown_by_hand() -> None:
    """20 steps (4 measurements at every 5th step), every phase 1 ms untracked. Tracked adds, by hand:
    200 us to each measured forward, a 100 us log at each measured step, a 40 us log at each step
    before one (arming), 10 us to the backward of steps 2, 7, 12, 17, and one flush of 5 ms on the
    measured step 10. The medians leave the flush out; the mean puts it back: 4 x 200 + 4 x 100 +
    4 x 40 + 4 x 10 + 5,000 = 6,400 us over 20 steps, 1,600 us per measurement, of which the flush
    is 5,000 / 4 = 1,250."""
    f = overhead.SAMPLING_FREQUENCY
    assert f == 5  # the residues below assume it
    base = np.full((20, 4), 1e-3)
    tracked = base.copy()
    tracked[0::5, 0] += 200e-6
    tracked[0::5, 3] += 100e-6
    tracked[4::5, 3] += 40e-6
    tracked[2::5, 1] += 10e-6
    tracked[10, 3] += 5e-3
    r = overhead.phase_breakdown(base, tracked, batch=128)
    assert r.step_us == pytest.approx(4000.0)
    assert r.forward_us == pytest.approx(200.0)
    assert r.log_us == pytest.approx(100.0)
    assert r.arm_us == pytest.approx(40.0)
    assert r.other_us == pytest.approx(10.0)
    assert r.total_us == pytest.approx(1600.0)
    assert r.flush_us == pytest.approx(1250.0)
    assert "flushes 1250" in overhead.report_phases(r)


def test_bench_phases_times_a_real_tracked_run() -> None:
    """A short run of both: the untracked steps are timed, and the tracker's log shows only in the
    tracked one."""
    r = overhead.bench_phases(batch=32, steps=60, chunk=20)
    assert r.steps == 40  # the first chunk is a warm-up
    assert r.step_us > 0
    assert r.log_us > 0 and r.arm_us > 0  # the tracker's log runs only in the tracked run
    assert np.isfinite([r.forward_us, r.other_us, r.flush_us, r.total_us]).all()
