"""The validity benchmark: ground truth on hand cases, scoring on hand-made events, real runs (slow)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ndt.detect import DETECTORS, Jumps
from ndt.detect.events import JumpEvent
from ndt.validate import cases, score, truth
from ndt.validate.cases import CaseRun, StaircaseSpec


def event(peak: int, kind: str = "transition") -> JumpEvent:
    return JumpEvent(
        start_index=0,
        end_index=0,
        start_step=peak - 5,
        end_step=peak + 5,
        peak_index=0,
        peak_step=peak,
        peak_z=5.0,
        peak_magnitude=1.0,
        n_indices=1,
        size=1.0,
        kind=kind,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------ ground truth


def test_first_crossing_finds_the_first_step_at_or_past_the_level() -> None:
    steps = [0, 5, 10, 15, 20]
    assert truth.first_crossing(steps, [0.1, 0.5, 0.89, 0.9, 0.95], 0.9) == 15  # >= counts
    assert truth.first_crossing(steps, [0.1, 0.95, 0.5, 0.9, 0.95], 0.9) == 5  # the first, not the last
    assert truth.first_crossing(steps, [0.1, 0.2, 0.3, 0.4, 0.5], 0.9) is None
    assert truth.first_crossing(steps, [4, 3, 2, 1, 0], 1.5, above=False) == 15
    with pytest.raises(ValueError, match="same length"):
        truth.first_crossing([0, 1], [0.0], 1.0)


def test_staircase_times_on_hand_made_weight_trajectories() -> None:
    # W1(t) = diag(a1(t), a2(t), a3(t)), W2 = I, u = v = I: the strengths are the diagonal. Mode 1 reaches
    # half of s1 = 6 at step 3, mode 2 half of 2 at step 7, mode 3 never reaches half of 0.667.
    n = 10
    a = np.zeros((n, 3))
    a[3:, 0] = 3.0
    a[:3, 0] = [0.0, 1.0, 2.99]
    a[7:, 1] = 1.5
    a[:, 2] = 0.3
    w1 = np.stack([np.diag(r) for r in a])  # (n, 3, 3)
    w2 = np.broadcast_to(np.eye(3), (n, 3, 3))
    strengths = truth.mode_strengths(w1, w2, np.eye(3), np.eye(3))
    np.testing.assert_allclose(strengths, a)
    assert truth.staircase_times(np.arange(n) * 5, strengths, [6.0, 2.0, 0.667]) == [15, 35, None]


def test_mode_strengths_read_u_w2_w1_v_in_a_rotated_basis() -> None:
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    # W2 W1 = U diag(5, 1, 0, 0) V^T split as W1 = diag(...) V^T, W2 = U: strengths 5 and 1.
    w1 = np.diag([5.0, 1.0, 0.0, 0.0]) @ v.T
    np.testing.assert_allclose(truth.mode_strengths(w1, u, u[:, :2], v[:, :2]), [5.0, 1.0], atol=1e-12)


def test_saxe_time_matches_a_gradient_descent_simulation() -> None:
    """A balanced deep-linear net from strength a0 reaches s/2 where ln(s/a0 - 1)/(2 s lr) says.

    Tolerance 3%: the formula is the continuous-time limit; gradient descent with lr s = 0.03 per step
    differs by O(lr s) (measured: under 1%).
    """
    d, a0, lr, svals = 4, 1e-4, 0.01, (3.0, 1.0)
    gen = torch.Generator().manual_seed(0)
    u, v = cases.random_orthogonal(d, gen), cases.random_orthogonal(d, gen)
    x = cases.whitened_gaussian(64, d, gen)
    np.testing.assert_allclose((x.T @ x / 64).numpy(), np.eye(d), atol=1e-12)
    target = u[:, :2] @ torch.diag(torch.tensor(svals, dtype=torch.float64)) @ v[:, :2].T
    model = cases.deep_linear(d, 0.0, gen)
    with torch.no_grad():  # balanced: W1 = sqrt(a0) V^T, W2 = sqrt(a0) U, so W2 W1 = a0 U V^T
        model[0].weight.copy_(math.sqrt(a0) * v.T)
        model[1].weight.copy_(math.sqrt(a0) * u)
    strengths, _ = cases.train_staircase(model, x, x @ target.T, lr, 700, u[:, :2], v[:, :2])
    times = truth.staircase_times(np.arange(700), strengths, svals)
    for t, s in zip(times, svals, strict=True):
        expected = truth.saxe_time(s, a0, lr)  # 171.8 and 460.5 steps
        assert t is not None and abs(t - expected) <= 0.03 * expected, (t, expected)


def test_saxe_time_rejects_a_start_past_half() -> None:
    assert truth.saxe_time(2.0, 0.5, 0.1) == pytest.approx(math.log(3.0) / 0.4)
    with pytest.raises(ValueError, match="a0"):
        truth.saxe_time(2.0, 1.5, 0.1)


def test_midpoint_crossing_on_a_hand_made_loss_curve() -> None:
    # 100 samples every 10 steps: plateau 4 until sample 49, a fall over samples 50..59, then 0.
    fall = [3.5, 3.0, 2.5, 2.1, 1.9, 1.5, 1.0, 0.5, 0.2, 0.0]
    y = np.concatenate([np.full(50, 4.0), fall, np.zeros(40)])
    steps = np.arange(100) * 10
    t, plateau, floor = truth.midpoint_crossing(steps, y)
    assert (plateau, floor) == (4.0, 0.0)
    assert t == 540  # sample 54 (1.9) is the first at or below the midpoint 2.0
    assert truth.midpoint_crossing(steps, np.full(100, 3.0))[0] is None


def test_window_is_relative_with_a_minimum_half_width() -> None:
    assert truth.window(1000, 0.1, 25) == (900, 1100)
    assert truth.window(100, 0.1, 25) == (75, 125)
    assert truth.window(155, 0.1, 25) == (130, 180)


def test_prefix_matching_scores_the_induction_position() -> None:
    n_prefix, n_copy, s = 4, 3, 6  # the model sees 6 positions: copy positions 4 and 5
    offset = torch.tensor([0, 1])
    causal = torch.tril(torch.ones(s, s))
    uniform = causal / causal.sum(dim=-1, keepdim=True)
    att = uniform.expand(2, 2, s, s).clone()  # (B, H, S, S)
    for b, o in enumerate(offset.tolist()):
        for m in range(2):
            att[b, 0, n_prefix + m] = 0.0
            att[b, 0, n_prefix + m, o + m + 1] = 1.0  # head 0: a perfect induction head
    got = cases.prefix_matching(att, offset, n_prefix, n_copy)
    # head 1 is uniform: 1/5 at query 4, 1/6 at query 5
    np.testing.assert_allclose(got.numpy(), [1.0, (1 / 5 + 1 / 6) / 2], rtol=1e-6)


def test_copy_batch_repeats_a_chunk_and_the_control_does_not() -> None:
    spec = cases.CopySpec()
    tokens, offset = cases.copy_batch(spec, 50, torch.Generator().manual_seed(0), control=False)
    for row, o in zip(tokens, offset.tolist(), strict=True):
        assert torch.equal(row[16:], row[o : o + 8])
    ctrl, offset = cases.copy_batch(spec, 50, torch.Generator().manual_seed(0), control=True)
    same = [torch.equal(r[16:], r[o : o + 8]) for r, o in zip(ctrl, offset.tolist(), strict=True)]
    assert not any(same)


# ------------------------------------------------------------------------------------ scoring

WINDOWS = [(100, 200), (400, 500)]


def test_events_in_windows_hit_and_the_rest_after_burn_in_are_false_alarms() -> None:
    s = score.score_events([event(150), event(450)], WINDOWS, 1000, 2)
    assert (s.windows_hit, s.hit, s.false_alarms) == ((0, 1), True, 0)
    s = score.score_events([event(150), event(600)], WINDOWS, 1000, 2)
    assert (s.windows_hit, s.hit, s.false_alarms) == ((0,), False, 1)
    s = score.score_events([event(150), event(600)], WINDOWS, 1000, 1)
    assert s.hit
    # burn-in: the first 10% of 1000 steps; an unmatched event at 100 is not a false alarm, at 101 it is
    assert score.score_events([event(100)], [(400, 500)], 1000, 1).false_alarms == 0
    assert score.score_events([event(101)], [(400, 500)], 1000, 1).false_alarms == 1
    # windows are inclusive at both ends
    assert score.score_events([event(200), event(400)], WINDOWS, 1000, 2).hit


def test_two_events_in_one_window_hit_it_once() -> None:
    s = score.score_events([event(120), event(180)], WINDOWS, 1000, 2)
    assert (s.windows_hit, s.hit, s.false_alarms, s.n_events) == ((0,), False, 0, 2)


def test_init_escape_is_neither_a_hit_nor_a_false_alarm() -> None:
    s = score.score_events(
        [event(150, "init_escape"), event(700, "init_escape"), event(450)], WINDOWS, 1000, 1
    )
    assert (s.windows_hit, s.false_alarms, s.n_events, s.n_init_escape) == ((1,), 0, 1, 2)


def test_a_control_is_never_hit_and_every_late_event_is_a_false_alarm() -> None:
    s = score.score_events([event(50), event(300), event(900)], [], 1000, 1)
    assert (s.hit, s.false_alarms) == (False, 2)


class FixedEvents:
    """A detector returning fixed events per series length (lets score_case be tested by hand)."""

    def __init__(self, by_first_value: dict[float, list[JumpEvent]]) -> None:
        self.by_first_value = by_first_value

    def detect(self, values: np.ndarray, steps: np.ndarray | None = None) -> Jumps:
        evs = self.by_first_value[float(values[0])]
        return Jumps(
            events=tuple(e for e in evs if e.kind == "transition"),
            init_escape=tuple(e for e in evs if e.kind == "init_escape"),
        )


def fake_run(tag: float, control: bool, windows: list[tuple[int, int]], min_hits: int = 1) -> CaseRun:
    steps = np.arange(0, 1000, 10)
    rows = pd.DataFrame(
        {
            "step": np.tile(steps, 2),
            "layer": ["h"] * 100 + ["o"] * 100,
            "layer_index": [0] * 100 + [1] * 100,
            "stable_rank": np.r_[np.full(100, tag), np.full(100, tag + 0.5)],
            "loss": np.tile(np.full(100, tag + 0.25), 2),
        }
    )
    return CaseRun(
        case="X",
        seed=int(tag),
        control=control,
        rows=rows,
        loss=rows[rows.layer == "h"].set_index("step")["loss"],
        truth_steps=[],
        windows=windows,
        layer="h",
        min_hits=min_hits,
        n_steps=1000,
    )


def test_score_case_averages_hits_over_runs_and_false_alarms_over_everyone() -> None:
    runs = [
        fake_run(1.0, False, [(400, 500)]),
        fake_run(2.0, False, [(400, 500)]),
        fake_run(3.0, True, []),
        fake_run(4.0, True, []),
    ]
    det = FixedEvents(
        {
            1.0: [event(450), event(800)],  # hit, 1 false alarm
            2.0: [event(50), event(300, "init_escape")],  # missed, none (burn-in, init escape)
            3.0: [event(600), event(700), event(800)],  # control: 3 false alarms
            4.0: [],
            1.5: [],
            2.5: [],
            3.5: [event(500)],
            4.5: [],  # layer "o": one false alarm over all layers
        }
    )
    got = score.score_case(runs, det, "stable_rank")
    assert got["hit_rate"] == 0.5
    assert got["false_alarms"] == (1 + 0 + 3 + 0) / 4
    assert (got["false_alarms_runs"], got["false_alarms_controls"]) == (0.5, 1.5)
    assert got["init_escape"] == 0.25
    assert (got["n_runs"], got["n_controls"]) == (2, 2)
    assert score.false_alarms_all_layers(runs, det, "stable_rank") == (1 + 0 + 3 + 0 + 1) / 8


def test_loss_pseudo_layer_scores_the_loss_series() -> None:
    runs = [fake_run(1.0, False, [(400, 500)])]
    det = FixedEvents({1.25: [event(420)]})  # the loss series starts at tag + 0.25
    assert score.score_case(runs, det, "loss")["hit_rate"] == 1.0


def test_threshold_factor_scales_every_detectors_threshold() -> None:
    for name in DETECTORS:
        base = DETECTORS[name]().threshold  # type: ignore[attr-defined]
        assert score.with_threshold_factor(name, 0.5).threshold == 0.5 * base  # type: ignore[attr-defined]
        assert score.with_threshold_factor(name, 2.0).threshold == 2.0 * base  # type: ignore[attr-defined]


def test_pass_rule() -> None:
    assert score.passes(0.8, 1.0, [0.8, 1.0])
    assert not score.passes(0.6, 0.0, [1.0, 1.0])  # misses
    assert not score.passes(1.0, 1.2, [1.0, 1.0])  # too many false alarms
    assert not score.passes(1.0, 0.0, [1.0, 0.4])  # not robust to the threshold
    assert not score.passes(float("nan"), 0.0, [1.0, 1.0])


def test_run_case_caches_and_reads_back_without_training(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = replace(StaircaseSpec(), n_steps=60)
    first = cases.run_case("A", 3, False, tmp_path, spec=spec)
    assert len(first.rows) == 2 * 12  # 2 layers x steps 0, 5, ..., 55
    assert first.loss.index.tolist() == list(range(0, 60, 5))

    def no_training(*_: object) -> None:
        raise AssertionError("a cached run was trained again")

    monkeypatch.setitem(cases.CASES, "A", (StaircaseSpec(), no_training))
    again = cases.run_case("A", 3, False, tmp_path, spec=spec)
    pd.testing.assert_frame_equal(again.rows, first.rows)
    assert (again.truth_steps, again.windows, again.layer, again.n_steps) == (
        first.truth_steps,
        first.windows,
        first.layer,
        60,
    )
    with pytest.raises(ValueError, match="unknown case"):
        cases.run_case("Z", 0, False, None)


def test_entry_point_writes_table_and_figure_and_rescoring_reads_the_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ndt.validate import benchmark

    spec, runner = cases.CASES["A"]
    monkeypatch.setitem(cases.CASES, "A", (replace(spec, n_steps=200), runner))
    argv = [
        "--cases",
        "A",
        "--seeds",
        "1",
        "--out",
        str(tmp_path),
        "--detectors",
        "study,robust",
        "--metrics",
        "stable_rank,pr_eigen",
    ]
    assert benchmark.main(argv) == 0
    table = pd.read_csv(tmp_path / "validate.csv")
    assert list(table.columns) == list(benchmark.COLUMNS)
    assert sorted(zip(table.detector, table.metric, strict=True)) == [
        ("robust", "pr_eigen"),
        ("robust", "stable_rank"),
        ("study", "pr_eigen"),
        ("study", "stable_rank"),
    ]
    assert (tmp_path / "case_A.png").stat().st_size > 0
    assert "| case |" in (tmp_path / "validate.md").read_text()

    def no_training(*_: object) -> None:
        raise AssertionError("re-scoring trained a cached run again")

    monkeypatch.setitem(cases.CASES, "A", (replace(spec, n_steps=200), no_training))
    assert benchmark.main([*argv, "--no-figures"]) == 0
    with pytest.raises(SystemExit):
        benchmark.main(["--cases", "Q"])


# ------------------------------------------------------------------------------------ real runs (slow)


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[CaseRun]]:
    """A: 3 seeds + 3 controls, B: 2 + 1, C: 1 + 1: measured 2 min 30 s for the slow tier at a load
    average of about 4 on the 2 cores (C dominates: 75 s to 4 minutes a run, depending on that load)."""
    cache = tmp_path_factory.mktemp("validate_cache")
    plan = {"A": (3, 3), "B": (2, 1), "C": (1, 1)}
    return {
        case: [cases.run_case(case, s, False, cache) for s in range(n)]
        + [cases.run_case(case, s, True, cache) for s in range(n_ctrl)]
        for case, (n, n_ctrl) in plan.items()
    }


@pytest.mark.slow
def test_staircase_truth_lands_where_theory_says(slow_runs: dict[str, list[CaseRun]]) -> None:
    """Mode a reaches s_a/2 near ln(s_a/a0)/(2 s_a lr), a0 = init_std^2 sqrt(hidden) (the SD of u^T W2 W1 v
    at initialisation); 10% tolerance (the random, unbalanced start moves t by a few %)."""
    spec = StaircaseSpec()
    a0 = spec.init_std**2 * math.sqrt(spec.dim)
    for run in slow_runs["A"]:
        svals = spec.singular_values[:1] if run.control else spec.singular_values
        assert len(run.truth_steps) == len(svals)
        for t, s in zip(run.truth_steps, svals, strict=True):
            expected = truth.saxe_time(s, a0, spec.lr)  # about 157, 443, 1246
            assert abs(t - expected) <= 0.10 * expected, (run.seed, s, t, expected)


@pytest.mark.slow
def test_parity_and_copying_have_a_transition_and_controls_do_not(
    slow_runs: dict[str, list[CaseRun]],
) -> None:
    for case in ("B", "C"):
        for run in slow_runs[case]:
            assert (len(run.truth_steps) == 0) == run.control, (case, run.seed, run.truth_steps)
            assert run.layer in run.layers
            assert 400 <= len(run.loss) <= 600  # measurements per run
    for run in slow_runs["C"]:
        # an induction head exists at the end of a run, not of a control (uniform attention gives < 0.1)
        assert (run.info["final_prefix_matching"] > 0.3) == (not run.control), run.info


@pytest.mark.slow
def test_changepoint_detector_passes_staircase_and_parity(slow_runs: dict[str, list[CaseRun]]) -> None:
    if "changepoint" not in DETECTORS:
        pytest.skip("the changepoint detector is not registered in ndt.detect.DETECTORS yet")
    for case in ("A", "B"):
        results = {m: score.score_case(slow_runs[case], "changepoint", m) for m in cases_metrics()}
        passed = {
            m: score.passes(
                r["hit_rate"],
                r["false_alarms"],
                list(score.robustness(slow_runs[case], "changepoint", m).values()),
            )
            for m, r in results.items()
        }
        print(case, {m: (r["hit_rate"], r["false_alarms"]) for m, r in results.items()})
        assert any(passed.values()), f"changepoint passes case {case} on no metric: {results}"


def cases_metrics() -> list[str]:
    from ndt.measure.spectrum import METRICS

    return list(METRICS)
