"""The legacy importer: the study's JSON files into ndt runs, and the tables made from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ndt.aggregate.report import make_tables
from ndt.importers import legacy
from ndt.storage.layout import DONE_MARKER, METRICS_DIR, is_complete, read_run_json
from ndt.storage.parquet import read_metrics
from ndt.storage.schema import COLUMNS

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
RUNS = ("cnn_deep__fashion_mnist__s-", "mlp_narrow__mnist__s-", "transformer_shallow__mnist__s-")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("legacy_sweep")
    report = legacy.import_legacy(LEGACY, dest)
    assert [run.name for _, run in report.converted] == list(RUNS)
    assert [(src.name, reason.split(" (")[0]) for src, reason in report.skipped] == [
        ("notes.txt", "not JSON")
    ]
    return dest


def test_metric_rows_hold_the_files_values(imported: Path) -> None:
    df = read_metrics(imported / "mlp_narrow__mnist__s-" / METRICS_DIR)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 40 * 2  # 40 measurements x 2 layers
    first = df[df.step == 0].set_index("layer")
    # network.0 at step 0: participation_ratio 2, stable_rank 1, effective_rank_90 3, nuclear_norm_ratio 3
    assert first.loc["network.0", "participation_ratio"] == 2.0
    assert first.loc["network.0", "stable_rank"] == 1.0
    assert first.loc["network.0", "cumulative_energy_90"] == 3.0  # renamed from effective_rank_90
    assert first.loc["network.0", "nuclear_norm_ratio"] == 3.0
    assert first.loc["network.2", "participation_ratio"] == 4.0
    assert list(first["layer_index"]) == [0, 1]  # order of appearance
    assert df["pr_eigen"].isna().all() and df["effective_rank"].isna().all()
    assert df["seed"].isna().all() and (df["run_id"] == "mlp_narrow__mnist__s-").all()
    assert (df["n_samples"] == 0).all() and (df["n_features"] == 0).all()
    last = df[df.step == 975].iloc[0]  # measurement 39: step 975, epoch 4, loss 2 - 0.025 * 39
    assert (last.epoch, last.loss, last.participation_ratio) == (4, pytest.approx(1.025), 6.0)
    # elapsed_time 95 s spread over steps 0..975
    assert last.wall_time == pytest.approx(95.0) and df[df.step == 500].wall_time.iloc[0] == pytest.approx(
        95.0 * 500 / 975
    )


def test_missing_metric_is_null(imported: Path) -> None:
    df = read_metrics(imported / "transformer_shallow__mnist__s-" / METRICS_DIR)
    by_layer = df.groupby("layer")["stable_rank"]
    assert by_layer.apply(lambda s: s.isna().all()).to_dict() == {
        "encoder.layers.0": False,
        "encoder.layers.1": True,
    }


def test_run_record(imported: Path) -> None:
    rec = read_run_json(imported / "cnn_deep__fashion_mnist__s-")
    assert is_complete(imported / "cnn_deep__fashion_mnist__s-")
    assert (rec["status"], rec["arch"], rec["dataset"], rec["seed"], rec["family"]) == (
        "complete",
        "cnn_deep",
        "fashion_mnist",
        None,
        "cnn",
    )
    assert (rec["depth"], rec["width"], rec["params"], rec["final_accuracy"]) == (5, 120, 422410, 0.9031)
    assert rec["n_measurements"] == 20 and rec["imported_from"] == "cnn_deep_fashion_mnist.json"
    assert rec["config"]["architecture_params"]["max_width"] == 256


def test_tables_report_the_legacy_numbers(imported: Path, tmp_path: Path) -> None:
    targets = ["mlp_narrow/mnist", "cnn_deep/fashion_mnist", "transformer_shallow/mnist"]
    result = make_tables(imported, tmp_path, targets=targets, figures=False, workers=1)
    per_run = result.per_run.set_index("run")
    assert list(per_run.index) == list(RUNS)
    assert per_run["n_measurements"].tolist() == [20, 40, 20]
    assert per_run["n_rows"].tolist() == [60, 80, 40]
    assert per_run["family"].tolist() == ["cnn", "mlp", "transformer"]
    # mlp: layer mean 3 then 7 from measurement 20: one transition
    assert per_run.loc["mlp_narrow__mnist__s-", "events"] == 1
    assert per_run.loc["mlp_narrow__mnist__s-", "robust_events"] == 1
    # cnn: layer mean 2 + i, a straight line: constant gradient, z = 0, no jumps
    assert per_run.loc["cnn_deep__fashion_mnist__s-", ["jumps", "robust_events"]].tolist() == [0, 0]
    # transformer: constant 5, SS_tot = 0 -> R^2 = 0
    assert per_run.loc["transformer_shallow__mnist__s-", "r2"] == 0.0
    a3 = pd.read_csv(tmp_path / "A3_targets.csv").set_index("arch")
    assert a3.loc["mlp_narrow", ["depth", "width", "params", "final_accuracy", "events"]].tolist() == [
        4,
        32,
        28618,
        0.9512,
        1,
    ]
    assert a3.loc["transformer_shallow", "final_accuracy"] == 0.9688
    a1 = dict(pd.read_csv(tmp_path / "A1_summary.csv").itertuples(index=False))
    assert a1["Experiments (complete runs)"] == "3" and a1["Total measurements (runs x measurements)"] == "80"
    assert a1["Per-layer snapshots (metric rows)"] == "180"


def test_junk_and_malformed_files_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text(json.dumps({"arch_name": "mlp_x", "dataset_name": "d"}))
    (src / "b.json").write_text(json.dumps([1, 2]))
    (src / "c.json").write_text(
        json.dumps({"arch_name": "mlp_x", "dataset_name": "d", "measurements": [{"x": 1}]})
    )
    (src / "d.bin").write_bytes(b"\xff\xfe\x00")
    report = legacy.import_legacy(src, tmp_path / "dest")
    assert report.converted == []
    reasons = {p.name: r for p, r in report.skipped}
    assert "missing key(s) ['measurements']" in reasons["a.json"]
    assert "not an object" in reasons["b.json"] and "measurement 0" in reasons["c.json"]
    assert reasons["d.bin"].startswith("not JSON")
    assert legacy.main([str(src), str(tmp_path / "dest")]) == 1  # nothing converted


def test_cli_existing_runs_overwrite_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    shutil.copytree(LEGACY, src)
    dest = tmp_path / "dest"
    assert legacy.main([str(src), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "converted mlp_narrow_mnist.json -> " in out and "skipped notes.txt: not JSON" in out
    assert "3 converted, 1 skipped" in out
    assert legacy.main([str(src), str(dest)]) == 1  # all exist already
    assert "exists" in capsys.readouterr().out
    (dest / "mlp_narrow__mnist__s-" / DONE_MARKER).unlink()
    assert legacy.main([str(src), str(dest), "--overwrite"]) == 0
    assert is_complete(dest / "mlp_narrow__mnist__s-")
    shutil.copy(src / "mlp_narrow_mnist.json", src / "mlp_narrow_mnist_copy.json")
    report = legacy.import_legacy(src, tmp_path / "dest2")
    assert ("mlp_narrow_mnist_copy.json", "same experiment as mlp_narrow_mnist.json") in [
        (p.name, r) for p, r in report.skipped
    ]


def test_family_from_prefix() -> None:
    assert [
        legacy.family_from_name(a) for a in ("mlp_deep_10", "cnn_medium", "transformer_narrow", "resnet18")
    ] == [
        "mlp",
        "cnn",
        "transformer",
        "unknown",
    ]


def test_legacy_columns_are_pure() -> None:
    rec = json.loads((LEGACY / "cnn_deep_fashion_mnist.json").read_text())
    cols = legacy.legacy_columns(rec, "r")
    assert len(cols["step"]) == 60 and cols["run_id"] == "r"
    # classifier is the third layer: (1 + 0.5 i) * 3 at i = 2 -> 6
    sel = (np.asarray(cols["layer"]) == "classifier") & (np.asarray(cols["step"]) == 100)
    assert np.asarray(cols["participation_ratio"])[sel].tolist() == [6.0]
