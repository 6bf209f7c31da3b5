"""The smoke sweep end to end through the joblib and submitit_local launchers."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_ndt

from ndt.storage.layout import iter_run_dirs, read_run_json
from ndt.storage.parquet import read_metrics

LAUNCHER_ARGS = {
    "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.num_threads=1"),
    "submitit_local": ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"),
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHER_ARGS))
def test_smoke_sweep_through_launcher(tmp_path: Path, launcher: str) -> None:
    proc = run_ndt(
        "+sweep=smoke", *LAUNCHER_ARGS[launcher], f"paths.results_dir={tmp_path}", "trainer.progress=log"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = list(iter_run_dirs(tmp_path / "smoke"))
    assert sorted(r.name for r in runs) == [
        "cnn_shallow__digits__s0",
        "mlp_narrow__digits__s0",
        "transformer_shallow__digits__s0",
    ]
    for run in runs:
        record = read_run_json(run)
        assert record["status"] == "complete", record.get("error")
        assert read_metrics(run / "metrics").step.nunique() == 8  # 40 steps, every 5
