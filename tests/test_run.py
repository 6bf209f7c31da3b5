"""The runner: one run, idempotent sweeps, failures recorded, and exact resume after a real kill."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, ndt_run_cmd, run_ndt, subprocess_env
from omegaconf import DictConfig

from ndt.running.checkpoint import list_checkpoints
from ndt.running.train import RunConflictError, run_dir_for, run_experiment
from ndt.storage.layout import DONE_MARKER, RUN_KEYS, read_run_json
from ndt.storage.parquet import read_metrics
from ndt.storage.schema import METRIC_COLUMNS

TINY = ("trainer.max_steps=30", "trainer.checkpoint.every=10", "trainer.log_every=10")


def test_single_run_writes_a_complete_self_describing_record(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(*TINY)
    record = run_experiment(cfg)
    run_dir = run_dir_for(cfg)
    assert run_dir.name == "mlp_narrow__digits__s0" and run_dir.parent.name == "single"
    on_disk = read_run_json(run_dir)
    assert on_disk == json.loads(json.dumps(record, default=str))
    assert set(RUN_KEYS) <= set(on_disk) and on_disk["status"] == "complete"
    assert (on_disk["family"], on_disk["depth"], on_disk["width"], on_disk["params"]) == (
        "mlp",
        4,
        32.0,
        28_618,
    )
    assert on_disk["n_measurements"] == 6 and on_disk["device"] == "cpu"
    assert on_disk["config"]["trainer"]["max_steps"] == 30
    assert (run_dir / DONE_MARKER).is_file() and (run_dir / "run.log").is_file()
    assert [s for s, _ in list_checkpoints(run_dir)] == [10, 20, 30]
    df = read_metrics(run_dir / "metrics")
    assert sorted(df.step.unique()) == [0, 5, 10, 15, 20, 25]
    assert (df.n_samples == 160).all() and set(df.run_id) == {"mlp_narrow__digits__s0"}


def test_incompatible_pair_is_recorded_as_skipped(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("arch=cnn_shallow", "dataset=ag_news")
    record = run_experiment(cfg)
    assert record["status"] == "skipped" and "image" in record["error"]
    assert read_run_json(run_dir_for(cfg))["status"] == "skipped"


@pytest.mark.filterwarnings("ignore:layer .* has NaN/Inf activations")
def test_failure_is_recorded_and_nan_loss_fails(compose_cfg: Callable[..., DictConfig]) -> None:
    missing = run_experiment(compose_cfg("dataset=ag_news", *TINY))  # no CSV files under tmp data_dir
    assert missing["status"] == "failed" and "paths.data_dir" in missing["error"]
    diverged = run_experiment(compose_cfg("optim.lr=1e30", "trainer.log_every=1", *TINY))
    assert diverged["status"] == "failed" and "loss is" in diverged["error"]


def test_same_dir_other_experiment_is_refused(compose_cfg: Callable[..., DictConfig]) -> None:
    run_experiment(compose_cfg(*TINY))
    with pytest.raises(RunConflictError, match=r"optim\.lr"):
        run_experiment(compose_cfg("optim.lr=0.01", *TINY))
    assert (
        run_experiment(compose_cfg("trainer.log_every=5", *TINY[:2]))["status"] == "complete"
    )  # logging only


@pytest.mark.slow
def test_tracked_digits_training_learns_and_measures_the_studys_layers(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    expected = {
        "mlp_narrow": {"hidden.0", "hidden.1", "hidden.2", "hidden.3", "fc"},
        "cnn_deep": {"conv.0", "conv.1", "conv.2", "conv.3", "fc"},
        "transformer_shallow": {"input_proj", "fc"}
        | {f"encoder.layers.{i}.{m}" for i in range(2) for m in ("linear1", "linear2", "self_attn")},
    }
    for arch, layers in expected.items():
        cfg = compose_cfg(f"arch={arch}", "trainer.max_steps=200")
        record = run_experiment(cfg)
        assert record["status"] == "complete", record.get("error")
        assert record["final_accuracy"] > 0.5, (arch, record["final_accuracy"])  # chance is 0.1
        df = read_metrics(run_dir_for(cfg) / "metrics")
        assert set(df.layer) == layers
        assert df.groupby("step").size().eq(len(layers)).all() and df.step.nunique() == 40


@pytest.mark.slow
def test_multirun_makes_two_runs_and_the_same_command_skips_them(tmp_path: Path) -> None:
    args = (
        "-m",
        "arch=mlp_narrow,cnn_shallow",
        "dataset=digits",
        "trainer.max_steps=50",
        f"paths.results_dir={tmp_path}",
        "trainer.progress=log",
    )
    first = run_ndt(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted((tmp_path / "single").glob("*__digits__s0"))
    assert [r.name for r in runs] == ["cnn_shallow__digits__s0", "mlp_narrow__digits__s0"]
    assert all(read_run_json(r)["status"] == "complete" for r in runs)
    stamps = {r: (r / "run.json").stat().st_mtime_ns for r in runs}
    second = run_ndt(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sum(ln.startswith("complete: ") for ln in second.stdout.splitlines()) == 2
    assert "skipping" in (runs[0] / "run.log").read_text()
    assert all((r / "run.json").stat().st_mtime_ns == stamps[r] for r in runs)  # untouched


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["wall_time"]).reset_index(drop=True)


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    """SIGKILL mid-run, restart: one row per (step, layer), metrics equal to an uninterrupted run."""
    common = (
        "arch=mlp_narrow",
        "trainer.max_steps=400",
        "trainer.checkpoint.every=50",
        "trainer.progress=log",
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        ndt_run_cmd(*common, f"paths.results_dir={killed}"),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = killed / "single" / "mlp_narrow__digits__s0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(s >= 150 for s, _ in list_checkpoints(run_dir)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: make it longer"
    assert not (run_dir / DONE_MARKER).exists()
    last = max(s for s, _ in list_checkpoints(run_dir))
    assert 150 <= last < 400

    resumed = run_ndt(*common, f"paths.results_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming mlp_narrow__digits__s0 from step_{last:06d}.pt" in (run_dir / "run.log").read_text()
    straight = tmp_path / "straight"
    ok = run_ndt(*common, f"paths.results_dir={straight}")
    assert ok.returncode == 0, ok.stderr[-3000:]

    a = read_metrics(run_dir / "metrics")
    b = read_metrics(straight / "single" / "mlp_narrow__digits__s0" / "metrics")
    assert a.groupby(["step", "layer"]).size().eq(1).all()
    assert sorted(a.step.unique()) == list(range(0, 400, 5))
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b), check_exact=True)
    assert np.isfinite(a[list(METRIC_COLUMNS)].to_numpy()).all()
    assert (
        read_run_json(run_dir)["final_accuracy"]
        == read_run_json(straight / "single" / "mlp_narrow__digits__s0")["final_accuracy"]
    )
