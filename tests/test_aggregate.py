"""Aggregation: per-run summaries, table builders and renderers by hand, and the golden fixture sweep."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ndt import tables as tables_cli
from ndt.aggregate import build, render, summaries
from ndt.aggregate.bench import bench_aggregate
from ndt.aggregate.report import make_tables
from ndt.aggregate.summaries import PER_RUN_COLUMNS, layer_mean_series, summarize_series

FIXTURES = Path(__file__).parent / "fixtures"
SWEEP = FIXTURES / "sweep_small"
EXPECTED = FIXTURES / "sweep_small_expected"


def study_flagged(x: np.ndarray, sigma: float = 3.0) -> list[int]:
    """The study detector's flagged indices written out by hand (no numpy.gradient, no scipy)."""
    m = len(x)
    g = [x[1] - x[0]] + [(x[i + 1] - x[i - 1]) / 2 for i in range(1, m - 1)] + [x[-1] - x[-2]]
    radius = int(4 * sigma + 0.5)
    w = [math.exp(-0.5 * (j / sigma) ** 2) for j in range(-radius, radius + 1)]
    w = [v / sum(w) for v in w]
    padded = list(np.pad(np.array(g), radius, mode="symmetric"))  # scipy's "reflect"
    gs = [sum(w[j] * padded[i + j] for j in range(2 * radius + 1)) for i in range(m)]
    mean = sum(gs) / m
    std = math.sqrt(sum((v - mean) ** 2 for v in gs) / m)
    return [i for i in range(m) if (gs[i] - mean) / (std + 1e-10) > 2]


# ---------------------------------------------------------------- per-run summaries


def test_layer_mean_series_drops_steps_where_a_layer_is_nan_or_missing() -> None:
    # Three layers; step 10 has a NaN in layer b, step 20 is all NaN, step 30 lacks layer c's row.
    steps = np.array([0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 40, 40, 40])
    layers = np.array(list("abcabcabcababc"))
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 8.0, np.nan, np.nan, np.nan, 5.0, 7.0, 3.0, 3.0, 6.0])
    with pytest.warns(RuntimeWarning, match=r"3 step\(s\) dropped .*\(steps 10, 20, 30\)"):
        s, v = layer_mean_series(steps, values, layers)
    np.testing.assert_array_equal(s, [0, 40])  # a mean over a and c at step 10 would be another series
    np.testing.assert_array_equal(v, [2.0, 4.0])
    # Without the layer column, the fullest step sets the count; a metric never computed: no series.
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert layer_mean_series(steps, values)[0].tolist() == [0, 40]
    assert layer_mean_series(steps, np.full(steps.size, np.nan))[0].size == 0


def test_summary_of_a_planted_step() -> None:
    x = np.r_[np.full(30, 5.0), np.full(31, 8.0)]  # one step between indices 29 and 30
    steps = np.arange(61) * 10
    row = summarize_series(steps, x)
    flagged = study_flagged(x)
    assert row["jumps"] == len(flagged) and row["jumps"] > 0
    assert flagged == list(range(flagged[0], flagged[-1] + 1))  # contiguous: one transition
    assert row["events"] == 1
    assert row["robust_events"] == 1
    assert row["max_jump_step"] in (290, 300)  # the bump of the gradient is symmetric about 29.5
    assert row["fit_ok"] and set(row) == set(summaries.SERIES_COLUMNS)


def test_summary_of_a_noiseless_logistic() -> None:
    steps = np.arange(0, 1000, 5)
    x = 12.0 / (1 + np.exp(-7.0 * (steps / 995 - 0.45)))
    row = summarize_series(steps, x)
    assert row["r2"] == pytest.approx(1.0, abs=1e-10)
    assert row["d_max"] == pytest.approx(12.0, rel=1e-6)
    assert row["alpha"] == pytest.approx(7.0 / 995, rel=1e-6)
    assert row["t0"] == pytest.approx(0.45 * 995, rel=1e-6)
    assert row["bound_flags"] == "" and row["robust_events"] == 0


# ---------------------------------------------------------------- builders


def test_bootstrap_ci_by_hand() -> None:
    assert build.bootstrap_ci([4.0] * 5) == (4.0, 4.0)
    # Fewer than 5 units: no interval (a 2-value bootstrap gives [min, max], about 50% coverage).
    for few in ([1.0], [1.0, np.nan], [0.0, 1.0], [3.0, 0.0, 7.0], [1.0, 2.0, 3.0, np.nan, 4.0]):
        assert all(math.isnan(v) for v in build.bootstrap_ci(few))
    # Allowed down to 2: resample means 0, 0.5, 1; expanded to t_1 the tails are ~0, so [min, max].
    assert build.bootstrap_ci([0.0, 1.0], min_units=2) == (0.0, 1.0)
    a = build.bootstrap_ci(np.arange(20.0), random_state=1)
    assert a == build.bootstrap_ci(np.arange(20.0), random_state=1)
    # mean 9.5, SD 5.92, SE 1.32; t_19 = 2.093 x sqrt(20/19): about 9.5 -/+ 2.83 = (6.67, 12.33)
    assert a[0] == pytest.approx(6.67, abs=0.4) and a[1] == pytest.approx(12.33, abs=0.4)


def test_expanded_tail_by_hand() -> None:
    # k = 5: t_4(0.975) = 2.7764, x sqrt(5/4) = 3.1041, normal tail 0.000954
    assert build.expanded_tail(5) == pytest.approx(0.000954, abs=2e-6)
    # k = 20: t_19(0.975) = 2.0930, x sqrt(20/19) = 2.1474, normal tail 0.01588
    assert build.expanded_tail(20) == pytest.approx(0.01588, abs=2e-5)
    assert build.expanded_tail(100_000) == pytest.approx(0.025, abs=1e-4)  # the plain percentile


def test_cluster_bootstrap_resamples_pairs_by_hand() -> None:
    # Pair A: four runs of 10; pairs B-E: one run of 0 each. Pooled mean 40 / 8 = 5.
    values = [10.0] * 4 + [0.0] * 4
    pairs = ["A"] * 4 + ["B", "C", "D", "E"]
    # 5 clusters, tails at 0.0954%. No A among 5 draws: (4/5)^5 = 33% -> low = 0. Every draw A:
    # (1/5)^5 = 0.03% < 0.0954%, but >= 4 A: 0.67% -> high = (4 x 4 x 10) / (4 x 4 + 1) = 160/17.
    assert build.bootstrap_ci(values, clusters=pairs) == (0.0, pytest.approx(160 / 17))
    # Run by run (8 units, tails 0.574%) an all-zero resample has (1/2)^8 = 0.39%: low is above 0.
    assert build.bootstrap_ci(values)[0] > 0.0
    with pytest.raises(ValueError, match="one label per value"):
        build.bootstrap_ci(values, clusters=pairs[:3])


@pytest.mark.slow
def test_interval_covers_the_true_mean_95_percent_of_the_time() -> None:
    # 2,000 simulated sweeps of 20 (arch, dataset) pairs x 3 seeds; jump counts are Poisson around a
    # pair's mean, pair means Gamma(4, 0.5) around the true family mean 2.
    rng = np.random.default_rng(2024)
    n_sweeps, n_pairs, seeds, true_mean = 2000, 20, 3, 2.0
    pairs = np.repeat(np.arange(n_pairs), seeds)
    covered = {"clustered": 0, "runs": 0}
    for i in range(n_sweeps):
        counts = rng.poisson(np.repeat(rng.gamma(4.0, 0.5, size=n_pairs), seeds)).astype(np.float64)
        for name, clusters in (("clustered", pairs), ("runs", None)):
            low, high = build.bootstrap_ci(counts, clusters=clusters, n_resamples=2000, random_state=i)
            covered[name] += low <= true_mean <= high
    assert 0.93 <= covered["clustered"] / n_sweeps <= 0.97
    # Resampling runs as if independent ignores the pair effect: the interval is too narrow.
    assert covered["runs"] / n_sweeps < 0.90


def per_run_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    base = {c: None for c in PER_RUN_COLUMNS} | {"status": "complete", "bound_flags": "", "fit_ok": True}
    return summaries.per_run_frame([base | r for r in rows])


HAND_RUNS = [
    # family comes from the metadata: "mlp_odd" is filed as cnn on purpose
    dict(
        run="a__d__s0",
        arch="mlp_a",
        dataset="d",
        seed=0,
        family="mlp",
        jumps=4,
        events=2,
        robust_events=1,
        r2=0.9,
    ),
    dict(
        run="a__d__s1",
        arch="mlp_a",
        dataset="d",
        seed=1,
        family="mlp",
        jumps=0,
        events=0,
        robust_events=0,
        r2=0.5,
    ),
    dict(
        run="b__d__s0",
        arch="mlp_odd",
        dataset="d",
        seed=0,
        family="cnn",
        jumps=6,
        events=3,
        robust_events=2,
        r2=0.95,
    ),
    dict(
        run="c__e__s0",
        arch="tr_c",
        dataset="e",
        seed=0,
        family="transformer",
        jumps=1,
        events=1,
        robust_events=0,
    ),
    dict(run="d__e__s0", arch="mlp_a", dataset="e", seed=0, family="mlp", status="failed", error="boom"),
]


def test_family_table_by_hand() -> None:
    df = per_run_frame([r | {"n_measurements": 10, "n_rows": 30} for r in HAND_RUNS])
    fam = build.family_table(df).set_index("family")
    assert list(fam.index) == ["mlp", "cnn", "transformer", "all"]
    assert fam.loc["mlp", "runs"] == 2  # the failed mlp run is not counted
    assert (fam.loc["mlp", "jumps_mean"], fam.loc["mlp", "jumps_max"]) == (2.0, 4)
    assert (fam.loc["mlp", "events_mean"], fam.loc["mlp", "events_max"]) == (1.0, 2)
    assert fam.loc["mlp", "pct_runs_with_jumps"] == 50.0
    assert fam.loc["cnn", "jumps_mean"] == 6.0 and fam.loc["cnn", "robust_max"] == 2
    assert fam.loc["transformer", "pct_runs_with_robust"] == 0.0
    assert fam.loc["all", "runs"] == 4 and fam.loc["all", "jumps_mean"] == pytest.approx(11 / 4)
    assert fam.loc["all", "pct_runs_with_jumps"] == 75.0
    # mlp_a/d has two seeds: interval columns appear beside the means, but every row here has fewer
    # than 5 (arch, dataset) pairs, so none has an interval
    assert {"jumps_mean_ci_low", "jumps_mean_ci_high"} <= set(fam.columns)
    assert fam["jumps_mean_ci_low"].isna().all() and fam["jumps_mean_ci_high"].isna().all()


def test_families_are_ordered_as_the_registry_then_alphabetically() -> None:
    from typing import get_args

    from ndt.models.registry import Family

    assert get_args(Family) == build.FAMILY_ORDER  # one order: the tables' is written out, not imported
    got = build.ordered_families(["vit", "legacy_x", "lm", "mlp", "resnet", "a_imported", "cnn", "mlp"])
    assert got == ["mlp", "cnn", "resnet", "vit", "lm", "a_imported", "legacy_x"]


def test_single_seed_tables_have_no_intervals() -> None:
    df = per_run_frame([HAND_RUNS[0], *HAND_RUNS[2:]])
    assert not any(c.endswith("_ci_low") for c in build.family_table(df).columns)
    assert not any(c.endswith("_ci_low") for c in build.target_table(df, ["mlp_a/d"]).columns)


def test_summary_target_and_incomplete_tables_by_hand() -> None:
    df = per_run_frame([r | {"n_measurements": 10, "n_rows": 30} for r in HAND_RUNS])
    summary = dict(build.summary_table(df, "participation_ratio").itertuples(index=False))
    assert summary["Experiments (complete runs)"] == "4"
    assert summary["Runs not complete (listed separately)"] == "1"
    assert summary["Unique architectures"] == "3" and summary["Datasets"] == "2"
    assert summary["Total measurements (runs x measurements)"] == "40"
    assert summary["Mean R^2 of the growth fit"] == "0.7833"  # (0.9 + 0.5 + 0.95) / 3; one fit has no R^2
    assert summary["Experiments with R^2 > 0.8"] == "2"
    assert summary["Experiments with R^2 > 0.8 (%)"] == "50.0"
    targets = build.target_table(df, ["mlp_a/d", "mlp_a/e", "x/y"]).set_index(["arch", "dataset"])
    assert targets.loc[("mlp_a", "d"), "runs"] == 2 and targets.loc[("mlp_a", "d"), "jumps"] == 2.0
    assert targets.loc[("mlp_a", "d"), "r2"] == pytest.approx(0.7)
    assert targets.loc[("mlp_a", "e"), "status"] == "not complete"
    assert targets.loc[("x", "y"), "status"] == "missing"
    incomplete = build.incomplete_table(df)
    assert incomplete[["run", "status", "error"]].values.tolist() == [["d__e__s0", "failed", "boom"]]
    with pytest.raises(ValueError, match="arch/dataset"):
        build.parse_targets(["cnn_deep"])


# ---------------------------------------------------------------- renderers


def test_renderers_by_hand() -> None:
    df = pd.DataFrame(
        {
            "name": ["a_b", "c|d"],
            "n": pd.array([3, None], dtype="Int64"),
            "x": [0.5, 1234.56],
            "x_ci_low": [0.25, np.nan],
            "x_ci_high": [0.75, np.nan],
            "pct_y": [12.345, 100.0],
        }
    )
    assert (
        render.to_csv(df)
        == "name,n,x,x_ci_low,x_ci_high,pct_y\na_b,3,0.5,0.25,0.75,12.345\nc|d,,1234.56,,,100\n"
    )
    assert render.to_markdown(df) == (
        "| name | n | x | % y |\n"
        "|:--|--:|--:|--:|\n"
        "| a_b | 3 | 0.5 [0.25, 0.75] | 12.3 |\n"
        "| c\\|d | - | 1235 | 100.0 |\n"
    )
    assert render.to_latex(df) == (
        "\\begin{tabular}{lrrr}\n\\toprule\n"
        "name & n & x & \\% y \\\\\n\\midrule\n"
        "a\\_b & 3 & 0.5 [0.25, 0.75] & 12.3 \\\\\n"
        "c|d & - & 1235 & 100.0 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
    )
    assert render.to_latex(df.head(0), "T_1", "tab:t").startswith(
        "\\begin{table}[htbp]\n\\centering\n\\caption{T\\_1}\n\\label{tab:t}\n"
    )
    assert [render.format_float(v) for v in (0.0204082, 12.3456, 0.000123456, -2.0)] == [
        "0.02041",
        "12.35",
        "0.000123",
        "-2",
    ]


# ---------------------------------------------------------------- the fixture sweep


@pytest.fixture(scope="module")
def fixture_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    make_tables(SWEEP, out, figures=False, workers=1)
    return out


def test_tables_equal_the_committed_expected_files(fixture_tables: Path) -> None:
    expected = sorted(p.name for p in EXPECTED.iterdir())
    assert sorted(p.name for p in fixture_tables.iterdir()) == expected
    for name in expected:
        got, want = (fixture_tables / name).read_bytes(), (EXPECTED / name).read_bytes()
        assert got == want, f"{name} differs from {EXPECTED / name} (see make_sweep_small.py --expected)"


def test_fixture_numbers_by_hand(fixture_tables: Path) -> None:
    per_run = pd.read_csv(fixture_tables / "per_run.csv").set_index("run")
    deep = per_run.loc["cnn_deep__fashion_mnist__s0"]  # 20 / (1 + exp(-10 (t - 0.4))), t = step / 490
    assert deep.r2 == 1 and deep.d_max == 20 and deep.t0 == pytest.approx(196) and deep.a == 10
    assert deep.alpha == pytest.approx(10 / 490, rel=1e-5)
    plain = per_run.loc["mlp_narrow__mnist__s2"]  # 10 / (1 + exp(-6 (t - 0.5)))
    assert (plain.r2, plain.d_max, plain.a, plain.t0) == (1, 10, 6, 245)
    for run in ("mlp_narrow__mnist__s0", "mlp_narrow__mnist__s1", "transformer_shallow__mnist__s0"):
        assert per_run.loc[run, "events"] == 1 and per_run.loc[run, "robust_events"] == 1  # one planted step
    assert per_run.loc["cnn_shallow__cifar10__s0", "bound_flags"] == "t0"  # midpoint at 1.2 > 1
    assert not per_run.loc["transformer_medium__ag_news__s0", "fit_ok"]  # two points
    assert per_run.loc["transformer_medium__ag_news__s0", "n_rows"] == 6
    statuses = per_run.loc[per_run.status != "complete", "status"].to_dict()
    assert statuses == {
        "cnn_medium__mnist__s0": "running",
        "cnn_shallow__ag_news__s0": "skipped",
        "mlp_wide__mnist__s0": "failed",
    }
    a3 = pd.read_csv(fixture_tables / "A3_targets.csv").set_index("arch")
    assert a3.loc["mlp_narrow", "runs"] == 3 and a3.loc["mlp_narrow", "jumps"] == 2  # (3 + 3 + 0) / 3
    assert np.isnan(a3.loc["mlp_narrow", "jumps_ci_low"])  # 3 seeds: too few for an interval
    a2 = pd.read_csv(fixture_tables / "A2_jumps_by_family.csv").set_index("family")
    # "all": 5 pairs (jump means 0, 3, 2, 3, 0); tails 0.0954% reach the extremes of the pair means
    assert (a2.loc["all", "jumps_mean_ci_low"], a2.loc["all", "jumps_mean_ci_high"]) == (0, 3)
    assert np.isnan(a2.loc["mlp", "jumps_mean_ci_low"])  # one pair
    assert a3.loc["mlp_narrow", "final_accuracy"] == pytest.approx(0.95)
    # The default detector on the designed series: one transition per planted step (s0, s1 of
    # mlp_narrow, transformer_shallow), none on the smooth logistics; each of the 3 layers (s - 1, s,
    # s + 1) has the step too. The steps lie mid-run, after the first 10%: no escape from initialisation.
    planted = {"mlp_narrow__mnist__s0", "mlp_narrow__mnist__s1", "transformer_shallow__mnist__s0"}
    done = per_run[per_run.status == "complete"]
    assert done["transitions"].to_dict() == {r: int(r in planted) for r in done.index}
    assert done["layer_transitions"].to_dict() == {r: 3 * int(r in planted) for r in done.index}
    assert done["init_escape_step"].isna().all()
    a2c = pd.read_csv(fixture_tables / "A2c_transitions_by_family.csv").set_index("family")
    assert a2c.loc["mlp", "transitions_mean"] == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3
    assert a2c.loc["cnn", "transitions_mean"] == 0 and a2c.loc["transformer", "transitions_mean"] == 0.5
    assert a2c.loc["all", "layer_transitions_mean"] == pytest.approx(9 / 7, rel=1e-5)  # CSV: 6 digits


def test_unmarked_and_unreadable_runs_are_listed(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(SWEEP / "cnn_deep__fashion_mnist__s0", sweep / "cnn_deep__fashion_mnist__s0")
    shutil.copytree(SWEEP / "mlp_narrow__mnist__s0", sweep / "mlp_narrow__mnist__s0")
    (sweep / "cnn_deep__fashion_mnist__s0" / "COMPLETE").unlink()
    part = next((sweep / "mlp_narrow__mnist__s0" / "metrics").glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    df = summaries.collect_sweep(sweep, workers=1).set_index("run")
    assert df.loc["cnn_deep__fashion_mnist__s0", "status"] == "unmarked"
    assert df.loc["mlp_narrow__mnist__s0", "status"] == "unreadable"
    assert df.loc["mlp_narrow__mnist__s0", "error"] != ""


def test_worker_processes_give_the_same_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    serial = summaries.collect_sweep(SWEEP, workers=1)
    monkeypatch.setattr(summaries, "MIN_RUNS_FOR_WORKERS", 1)
    parallel = summaries.collect_sweep(SWEEP, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_other_metric_and_bad_metric() -> None:
    df = summaries.collect_sweep(SWEEP, "stable_rank", workers=1).set_index("run")
    # stable_rank = participation_ratio / 2 in the fixture: Dmax halves, the shape does not
    assert df.loc["cnn_deep__fashion_mnist__s0", "d_max"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="unknown metric"):
        summaries.collect_sweep(SWEEP, "accuracy")


def test_cli_writes_tables_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    assert tables_cli.main([str(SWEEP), "--out", str(out), "--targets", "cnn_deep/fashion_mnist"]) == 0
    printed = capsys.readouterr().out
    assert (
        "7 complete run(s) analysed" in printed
        and "not analysed: mlp_wide__mnist__s0 (status failed" in printed
    )
    assert (out / "A2_jumps_by_family.tex").is_file() and (out / "per_run.csv").is_file()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["cnn_deep__fashion_mnist__s0.png", "families.png"]
    assert all((out / "figures" / p).stat().st_size > 1000 for p in pngs)


def test_bench_runs_on_a_tiny_sweep() -> None:
    seconds = bench_aggregate(n_runs=3, n_measurements=30, n_layers=2, workers=1)
    assert 0 < seconds < 30


def test_bench_aggregate_runs_on_a_small_sweep() -> None:
    # Speed is reported by `make bench`, never asserted here; this only checks the bench works.
    assert bench_aggregate(n_runs=3, n_measurements=40, n_layers=2) > 0


def test_runs_the_multirun_yaml_expects_without_a_run_json_are_listed_as_missing(tmp_path: Path) -> None:
    # The fixture sweep's three mlp_narrow/mnist seeds, and a multirun.yaml that expects seeds 0..3:
    # mlp_narrow__mnist__s3 never started. ndt.status and ndt.view call it missing; the tables must
    # list it too, not drop it.
    from omegaconf import OmegaConf

    from ndt.running.status import sweep_status

    sweep = tmp_path / "sweep"
    for seed in range(3):
        shutil.copytree(SWEEP / f"mlp_narrow__mnist__s{seed}", sweep / f"mlp_narrow__mnist__s{seed}")
    hydra = {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": {}},
        "overrides": {"task": ["arch=mlp_narrow", "dataset=mnist", "++seed=0,1,2,3"]},
    }
    OmegaConf.save(OmegaConf.create({"seed": 0, "hydra": hydra}), sweep / "multirun.yaml")
    assert [r.name for r in sweep_status(sweep).runs if r.state == "missing"] == ["mlp_narrow__mnist__s3"]
    per_run = summaries.collect_sweep(sweep, workers=1)
    assert per_run["run"].tolist() == [f"mlp_narrow__mnist__s{s}" for s in range(4)]
    missing = per_run.set_index("run").loc["mlp_narrow__mnist__s3"]
    assert (missing.status, missing.arch, missing.dataset, missing.seed, missing.family) == (
        "missing",
        "mlp_narrow",
        "mnist",
        3,
        "mlp",
    )
    incomplete = build.incomplete_table(per_run)
    assert incomplete[["run", "status"]].values.tolist() == [["mlp_narrow__mnist__s3", "missing"]]
    summary = dict(build.summary_table(per_run, "participation_ratio").values.tolist())
    assert summary["Experiments (complete runs)"] == "3"
    assert summary["Runs not complete (listed separately)"] == "1"
