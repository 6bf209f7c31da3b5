"""TensorBoard, W&B (offline) and MLflow (local sqlite store) receive the rows, read back by each tool's own reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import import_extra
from torch import nn

from ndt.measure.tracker import HighFrequencyTracker

STEPS = 40


def tracked_run(loggers: list[Any], tmp_path: Path, steps: int = STEPS) -> pd.DataFrame:
    """A manual loop with the adapters attached; returns the Parquet rows (the truth)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    with HighFrequencyTracker(
        model, 5, writer=tmp_path / "metrics", loggers=loggers, flush_every=3
    ) as tracker:
        for step in range(steps):
            loss = nn.functional.cross_entropy(model(x[:16] + 0.1 * step), y[:16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.log(step, loss.detach())
    return tracker.get_results()


def expected_scalars(rows: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    """{key: {step: value}} computed from the Parquet rows: per layer and the layer mean."""
    out = {f"ndt/{metric}/mean": rows.groupby("step")[metric].mean().to_dict()}
    for layer, part in rows.groupby("layer"):
        out[f"ndt/{metric}/{layer}"] = dict(zip(part["step"], part[metric], strict=True))
    return out


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files_hold_the_rows(tmp_path: Path) -> None:
    import_extra("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ndt.integrations.loggers import TensorBoardLogger

    rows = tracked_run([TensorBoardLogger(tmp_path / "tb", heatmap_every=4, layers=["0"])], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for key, want in expected_scalars(rows, "stable_rank").items():
        if key.endswith("/2"):
            assert key not in tags["scalars"]  # only the chosen layer "0" gets per-layer scalars
            continue
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(got) == sorted(want)
        np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-6)
    # heatmaps: every 4 measurements (8 measurements: after the 4th and 8th), one per metric
    heat = acc.Images("ndt/heatmap/stable_rank")
    assert len(heat) >= 2 and heat[-1].step == 35
    assert heat[-1].height == 2 * 6 and heat[-1].width == 8 * 6  # 2 layers x 8 steps, 6 px cells
    assert "ndt/events/stable_rank/text_summary" in tags["tensors"]


# ----------------------------------------------------------------------------- W&B


def read_wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The history rows of an offline ``.wandb`` file: a LevelDB-style log of protobuf Records.

    Layout: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
    ``crc32c (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last) | payload``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    history = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            history.append(
                {("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in rec.history.item}
            )
    return history


@pytest.mark.slow
def test_wandb_offline_run_holds_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = import_extra("wandb", "wandb")
    from ndt.integrations.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = tracked_run([WandbLogger(project="ndt-test", dir=str(tmp_path))], tmp_path)
    assert wandb.run is None  # the adapter made the run, so it finished it
    wandb.teardown()  # waits for the wandb-core service to write out the run file (seen racing otherwise)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = read_wandb_history(run_file)
    by_step: dict[int, dict[str, Any]] = {}
    for h in history:
        if "ndt/step" in h:
            by_step.setdefault(int(h["ndt/step"]), {}).update(h)
    for key, want in expected_scalars(rows, "participation_ratio").items():
        got = {s: v[key] for s, v in by_step.items() if key in v}
        assert sorted(got) == sorted(want), key
        np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-9)


# ----------------------------------------------------------------------------- MLflow


@pytest.mark.slow
def test_mlflow_local_store_holds_the_rows(tmp_path: Path) -> None:
    mlflow = import_extra("mlflow", "mlflow")
    from ndt.integrations.loggers import MlflowLogger

    # A local sqlite store: MLflow 3 refuses new file stores unless MLFLOW_ALLOW_FILE_STORE is set.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MlflowLogger(
        tracking_uri=uri,
        experiment="ndt-test",
        run_name="tiny",
        heatmap_every=8,
        artifact_location=tmp_path / "art",
    )
    rows = tracked_run([logger], tmp_path)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    for key, want in expected_scalars(rows, "effective_rank").items():
        if not key.endswith("/mean"):
            assert key not in run.data.metrics  # heatmaps replace per-layer scalars
            continue
        got = {m.step: m.value for m in client.get_metric_history(logger.run_id, key)}
        assert sorted(got) == sorted(want)
        np.testing.assert_allclose(
            [got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-12
        )
    artifacts = {a.path for a in client.list_artifacts(logger.run_id, "ndt/heatmap/effective_rank")}
    assert "ndt/heatmap/effective_rank/step_00000035.png" in artifacts
    assert (tmp_path / "art").is_dir()  # artifacts stay with the store, not in the working directory


# ----------------------------------------------------------------------------- robustness, imports


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def log_rows(self, columns: object) -> None:
        self.calls += 1
        raise ConnectionError("dashboard down")

    def close(self) -> None:
        raise AssertionError("a dropped logger is not closed")


def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    broken = Broken()
    with pytest.warns(RuntimeWarning, match="dashboard down") as caught:
        rows = tracked_run([broken], tmp_path)
    assert len([w for w in caught if "dashboard down" in str(w.message)]) == 1
    assert broken.calls == 1
    assert sorted(rows["step"].unique()) == list(range(0, STEPS, 5))  # Parquet unaffected


def test_heatmap_image_is_layers_by_steps() -> None:
    from ndt.integrations.loggers import heatmap_image

    img = heatmap_image(np.array([[0.0, 1.0, np.nan], [2.0, 3.0, 4.0]]), cell=2)
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert (img[0:2, 4:6] == 128).all()  # NaN is grey
    assert not (img[0, 0] == img[2, 4]).all()  # min and max get different colours


def test_unknown_logger_name_is_refused(tmp_path: Path) -> None:
    from ndt.integrations.loggers import make_loggers

    with pytest.raises(ValueError, match=r"unknown tracker.loggers \['tensorbord'\]; choose from"):
        make_loggers(["tensorbord"], tmp_path)


def test_import_ndt_imports_no_framework() -> None:
    code = (
        "import sys, ndt, ndt.integrations, ndt.integrations.loggers, ndt.measure.distributed\n"
        "heavy = ['lightning', 'pytorch_lightning', 'transformers', 'tensorboard', 'wandb', 'mlflow',"
        " 'torch.utils.tensorboard']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_hydra_runner_writes_tensorboard_beside_the_run(compose_cfg: Any) -> None:
    import_extra("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ndt.running.train import experiment_signature, run_dir_for, run_experiment
    from ndt.storage.parquet import read_metrics

    cfg = compose_cfg("trainer.max_steps=20", "trainer.checkpoint.every=10", "tracker.loggers=[tensorboard]")
    assert run_experiment(cfg)["status"] == "complete"
    run_dir = run_dir_for(cfg)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    want = read_metrics(run_dir / "metrics").groupby("step")["stable_rank"].mean()
    got = {e.step: e.value for e in acc.Scalars("ndt/stable_rank/mean")}
    assert sorted(got) == list(want.index)
    np.testing.assert_allclose([got[s] for s in want.index], want.to_numpy(), rtol=1e-6)
    # Where the rows are also sent is not part of the experiment: a resume may change it.
    assert not any(
        k.startswith("tracker.loggers") for k in experiment_signature({"tracker": {"loggers": ["x"]}})
    )
