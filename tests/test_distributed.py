"""The tracker under torchrun (2 processes, gloo on CPU): DDP and FSDP2 give the single process's rows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dist_tracker_script as script
import pandas as pd
import pytest
import torch
from torch import nn

from ndt.measure.tracker import HighFrequencyTracker
from ndt.storage.parquet import read_metrics

HERE = Path(__file__).resolve().parent
COMPARED = ["step", "layer", "layer_index", "n_samples", "n_features", "loss", "grad_norm",
            "stable_rank", "participation_ratio", "cumulative_energy_90", "nuclear_norm_ratio",
            "pr_eigen", "effective_rank"]  # fmt: skip

needs_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_fsdp2() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``torchrun --nproc_per_node=2`` launch of the script's four cases."""
    if not has_fsdp2():
        pytest.skip("this torch has no FSDP2 fully_shard")
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(HERE / "dist_tracker_script.py"), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def single_process_rows(with_probe: bool) -> pd.DataFrame:
    """The same model, data and optimizer in one process on the whole global batch."""
    model = script.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=script.LR)
    x, y = script.data()
    b = script.GLOBAL_BATCH
    with HighFrequencyTracker(model, 5, probe=script.probe() if with_probe else None) as tracker:
        for step in range(script.STEPS):
            loss = nn.functional.cross_entropy(
                model(x[step * b : (step + 1) * b]), y[step * b : (step + 1) * b]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.log(step, loss.detach())
        return tracker.get_results()


@needs_gloo
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("probe", ["probe", "batch"])
def test_torchrun_gives_one_row_per_step_and_layer_with_the_single_process_values(
    torchrun_out: Path, mode: str, probe: str
) -> None:
    tmp_path = torchrun_out / f"{mode}_{probe}"
    rows = read_metrics(tmp_path / "metrics")
    counts = rows.groupby(["step", "layer"]).size()
    assert (counts == 1).all() and len(counts) == 3 * 2  # steps 0, 5, 10 x 2 layers
    for rank in (0, 1):
        assert (tmp_path / f"layers_rank{rank}.txt").read_text().split() == ["0", "2"]  # no "module." prefix
    want = single_process_rows(probe == "probe")
    if probe == "batch":
        assert set(rows["n_samples"]) == {script.GLOBAL_BATCH}  # the global batch, not one rank's half
    # Same float64 statistics up to the float32 training's rounding (ranks average gradients in
    # another order than one process sums them).
    pd.testing.assert_frame_equal(
        rows[COMPARED].reset_index(drop=True), want[COMPARED].reset_index(drop=True),
        check_exact=False, rtol=1e-5, atol=1e-7,
    )  # fmt: skip


def test_single_process_tracker_needs_no_process_group() -> None:
    from ndt.measure.distributed import DistributedContext

    ctx = DistributedContext.detect(nn.Linear(2, 2))
    assert not ctx.active and ctx.is_writer and ctx.world_size == 1
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedContext.detect(nn.Linear(2, 2), enabled=True)


@needs_gloo
@pytest.mark.slow
def test_runner_trains_with_ddp_under_torchrun_like_one_process(tmp_path: Path, compose_cfg: Any) -> None:
    from ndt.running.train import run_dir_for, run_experiment
    from ndt.storage.layout import read_run_json

    tiny = ["trainer.max_steps=20", "trainer.checkpoint.every=10", "trainer.progress=log"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "ndt.run", "trainer.strategy=ddp", *tiny, f"paths.results_dir={tmp_path / 'ddp'}",
           f"paths.data_dir={tmp_path / 'data'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    cfg = compose_cfg(*tiny)  # the same experiment, one process
    assert run_experiment(cfg)["status"] == "complete"
    ddp_dir = tmp_path / "ddp" / "single" / run_dir_for(cfg).name
    assert read_run_json(ddp_dir)["status"] == "complete"
    # Both ranks completed; only rank 0 says so (before, each rank printed this line).
    said = [ln for ln in done.stdout.splitlines() if ln.startswith("complete: ")]
    assert said == [f"complete: {ddp_dir.resolve()}"], done.stdout[-2000:]
    got, want = read_metrics(ddp_dir / "metrics"), read_metrics(run_dir_for(cfg) / "metrics")
    assert (got.groupby(["step", "layer"]).size() == 1).all()
    # The global batch split over 2 ranks, gradients averaged: one process's numbers up to rounding.
    pd.testing.assert_frame_equal(
        got[COMPARED].reset_index(drop=True), want[COMPARED].reset_index(drop=True),
        check_exact=False, rtol=1e-5, atol=1e-7,
    )  # fmt: skip
