"""Parquet round trip, crash safety, refusal to mix runs, and resume truncation."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ndt.storage.parquet import MetricsWriter, list_parts, read_metrics
from ndt.storage.schema import COLUMNS, METRIC_COLUMNS


def measurement(step: int, n_layers: int = 3) -> dict[str, object]:
    return {
        "run_id": "mlp__digits__s0",
        "arch": "mlp",
        "dataset": "digits",
        "seed": 0,
        "step": step,
        "epoch": step // 10,
        "layer": np.array([f"l{i}" for i in range(n_layers)], dtype=object),
        "layer_index": np.arange(n_layers, dtype=np.int16),
        "n_samples": 160,
        "n_features": np.array([32, 16, 10][:n_layers]),
        "loss": 1.0 / (step + 1),
        "grad_norm": 0.5,
        **{m: np.arange(n_layers) + step + k / 10 for k, m in enumerate(METRIC_COLUMNS)},
        "wall_time": step * 0.01,
    }


def test_round_trip_gives_exactly_the_rows_written(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "m", flush_every=3)
    for step in range(0, 50, 5):
        w.append(measurement(step))
    w.close()
    df = read_metrics(tmp_path / "m")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 10 * 3 and len(list_parts(tmp_path / "m")) == 4  # 3+3+3 then 1 on close
    row = df[(df.step == 25) & (df.layer == "l2")].iloc[0]
    assert (row.run_id, row.arch, row.dataset, row.seed, row.epoch) == (
        "mlp__digits__s0",
        "mlp",
        "digits",
        0,
        2,
    )
    assert (row.layer_index, row.n_samples, row.n_features) == (2, 160, 10)
    assert row.loss == 1 / 26 and row.stable_rank == 27.0 and row.effective_rank == 27.5
    assert df.step.dtype == np.int64 and df.layer_index.dtype == np.int16 and df.epoch.dtype == np.int32
    # plain pandas reads the same store
    plain = pd.read_parquet(tmp_path / "m").sort_values(["step", "layer_index"]).reset_index(drop=True)
    np.testing.assert_array_equal(plain["stable_rank"].to_numpy(), df["stable_rank"].to_numpy())


def test_nan_stays_nan_and_missing_metric_is_null(tmp_path: Path) -> None:
    m = measurement(0)
    m["stable_rank"] = np.array([np.nan, 1.0, 2.0])
    m["pr_eigen"] = np.full(3, None, dtype=object)
    w = MetricsWriter(tmp_path / "m")
    w.append(m)
    w.close()
    import pyarrow.dataset as ds

    t = ds.dataset(tmp_path / "m").to_table()
    assert t["stable_rank"].null_count == 0 and np.isnan(t["stable_rank"].to_numpy()[0])
    assert t["pr_eigen"].null_count == 3


def test_memory_writer_and_pending_rows_are_readable() -> None:
    w = MetricsWriter(None, flush_every=2)
    for step in (0, 5, 10):
        w.append(measurement(step))
    assert sorted(w.read().step.unique()) == [0, 5, 10]  # two flushed, one pending


def test_existing_store_is_refused_not_mixed(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "m")
    w.append(measurement(0))
    w.close()
    with pytest.raises(FileExistsError, match="resume"):
        MetricsWriter(tmp_path / "m")
    assert len(read_metrics(tmp_path / "m")) == 3  # nothing lost


def test_resume_truncates_rows_after_the_checkpoint(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "m", flush_every=2)
    for step in range(0, 40, 5):
        w.append(measurement(step))
    w.close()
    (tmp_path / "m" / ".part-00009.parquet.tmp").write_bytes(b"half a file")  # a crash mid-write
    w = MetricsWriter(tmp_path / "m", flush_every=2, resume_after_step=12)
    for step in range(15, 40, 5):
        w.append(measurement(step))
    w.close()
    df = read_metrics(tmp_path / "m")
    assert df.groupby(["step", "layer"]).size().eq(1).all()
    assert sorted(df.step.unique()) == list(range(0, 40, 5))
    assert not list((tmp_path / "m").glob(".*.tmp"))


def test_append_validates_lengths() -> None:
    m = measurement(0)
    m["n_features"] = np.array([1, 2])
    with pytest.raises(ValueError, match="share one length"):
        MetricsWriter(None).append(m)


def test_hard_crash_mid_run_leaves_readable_data(tmp_path: Path) -> None:
    """A real training process killed by SIGKILL: every flushed part reads back, whole measurements only."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from torch import nn
        from ndt import HighFrequencyTracker
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = HighFrequencyTracker(model, sampling_frequency=1, writer={str(tmp_path / "m")!r}, flush_every=4)
        for step in range(1000):
            x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            tracker.log(step, loss.item())
            if step == 41:
                os.kill(os.getpid(), signal.SIGKILL)  # no close(), no finalisers
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    df = read_metrics(tmp_path / "m")
    # 42 measurements logged, flushed in pieces of 4: the first 40 are on disk, the tail of 2 is lost.
    assert sorted(df.step.unique()) == list(range(40))
    assert df.groupby("step").size().eq(2).all()
    assert df[list(METRIC_COLUMNS)].notna().all().all()
