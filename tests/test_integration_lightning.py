"""The Lightning callback inside a real ``Trainer.fit``: the manual loop's rows, and resume without gaps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import import_extra
from torch import nn

pl = import_extra("lightning.pytorch", "lightning")

from ndt.detect import get_detector  # noqa: E402
from ndt.integrations.lightning import DimensionalityCallback  # noqa: E402
from ndt.measure.tracker import HighFrequencyTracker  # noqa: E402
from ndt.storage.parquet import read_metrics  # noqa: E402

N, BATCH = 80, 8  # 10 batches per epoch
STEPS = 50
COMPARED = ["step", "epoch", "layer", "layer_index", "n_samples", "n_features", "loss", "grad_norm",
            "stable_rank", "participation_ratio", "cumulative_energy_90", "nuclear_norm_ratio",
            "pr_eigen", "effective_rank"]  # fmt: skip


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*data()), batch_size=BATCH, shuffle=False
    )


def trainer(max_steps: int, **kw: object) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,  # type: ignore[arg-type]
    )


def manual_rows(steps: int, probe: torch.Tensor | None = None) -> pd.DataFrame:
    """The hand-written loop on the same module, data order and optimizer."""
    module = TinyModule()
    opt = module.configure_optimizers()
    x, y = data()
    with HighFrequencyTracker(module, 5, probe=probe) as tracker:
        module.train()
        for step in range(steps):
            lo = (step % (N // BATCH)) * BATCH
            loss = nn.functional.cross_entropy(module(x[lo : lo + BATCH]), y[lo : lo + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.log(step, loss.detach(), epoch=step // (N // BATCH))
        return tracker.get_results()


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got, want = got[COMPARED].reset_index(drop=True), want[COMPARED].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, atol=1e-9, check_categorical=False)


@pytest.mark.parametrize("probe", [False, True], ids=["batch", "probe"])
def test_fit_gives_the_manual_loops_rows(probe: bool) -> None:
    p = data()[0][:16] if probe else None
    cb = DimensionalityCallback(sampling_frequency=5, probe=p)
    trainer(STEPS, callbacks=[cb], enable_checkpointing=False).fit(TinyModule(), loader())
    got = cb.get_results()
    assert sorted(got["step"].unique()) == list(range(0, STEPS, 5))
    assert set(got["layer"]) == {"net.0", "net.2"}  # the module's own names
    assert_same_rows(got, manual_rows(STEPS, p))
    assert cb.tracker is not None and cb.tracker.closed  # closed by on_train_end
    # Jumps reachable afterwards: the detector's answer on the layer-mean series of these rows.
    series = got.groupby("step")["stable_rank"].mean()
    want_jumps = get_detector().detect(series.to_numpy(), series.index.to_numpy())
    assert cb.detect_jumps("stable_rank").to_frame().equals(want_jumps.to_frame())


def test_gradient_accumulation_counts_optimizer_steps() -> None:
    cb = DimensionalityCallback(sampling_frequency=5)
    trainer(20, callbacks=[cb], enable_checkpointing=False, accumulate_grad_batches=2).fit(
        TinyModule(), loader()
    )
    got = cb.get_results()
    # 20 optimizer steps over 40 batches: steps 0..19, measured at 0, 5, 10, 15.
    assert sorted(got["step"].unique()) == [0, 5, 10, 15]
    # Step 0's loss is the mean of batches 0 and 1 (Lightning divides each by 2 before we sum them).
    module, (x, y) = TinyModule(), data()
    with torch.no_grad():
        want = (
            sum(nn.functional.cross_entropy(module(x[i : i + BATCH]), y[i : i + BATCH]) for i in (0, BATCH))
            / 2
        )
    assert got[got["step"] == 0]["loss"].iloc[0] == pytest.approx(float(want), rel=1e-6)


class Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt  # a kill, as Lightning sees one


@pytest.mark.slow
def test_resume_from_checkpoint_has_no_duplicate_or_missing_rows(tmp_path: Path) -> None:
    store, ckpts = tmp_path / "metrics", tmp_path / "ckpt"
    every = pl.callbacks.ModelCheckpoint(dirpath=ckpts, every_n_train_steps=20, save_top_k=-1)
    cb = DimensionalityCallback(sampling_frequency=5, writer=store)
    # Killed after optimizer step 27 (global_step 27): the checkpoint at global_step 20 is the last.
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into a graceful shutdown + exit
        trainer(STEPS, callbacks=[cb, every, Crash(27)]).fit(TinyModule(), loader())
    first = read_metrics(store)
    assert first["step"].max() == 25  # rows past the checkpoint reached disk (closed on the exception)
    run_id = str(first["run_id"].iloc[0])

    resumed = DimensionalityCallback(sampling_frequency=5, writer=store)
    every = pl.callbacks.ModelCheckpoint(dirpath=ckpts, every_n_train_steps=20, save_top_k=-1)
    ckpt = sorted(ckpts.glob("*step=20*.ckpt"))
    assert ckpt, list(ckpts.iterdir())
    trainer(STEPS, callbacks=[resumed, every]).fit(TinyModule(), loader(), ckpt_path=ckpt[0])
    rows = read_metrics(store)
    counts = rows.groupby(["step", "layer"]).size()
    assert (counts == 1).all(), counts[counts != 1]
    assert sorted(rows["step"].unique()) == list(range(0, STEPS, 5))
    assert set(rows["run_id"]) == {run_id}  # one run, continued
    # The checkpoint falls on an epoch boundary (20 = 2 x 10 batches): the resumed run sees the same
    # batches, so its rows equal an uninterrupted run's.
    assert_same_rows(rows, manual_rows(STEPS))


class TwoOptimizers(TinyModule):
    """Manual optimization with two optimizers: global_step advances by 2 per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        for opt in self.optimizers():  # type: ignore[union-attr]
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in self.optimizers():  # type: ignore[union-attr]
            opt.step()
        return loss.detach()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[2].parameters(), lr=0.1),
        ]


def test_several_optimizers_step_numbers_follow_global_step() -> None:
    cb = DimensionalityCallback(sampling_frequency=5)
    trainer(40, callbacks=[cb], enable_checkpointing=False).fit(TwoOptimizers(), loader())
    got = cb.get_results()
    # 20 batches, optimizer steps 2b and 2b + 1 in batch b: the measured ones, 0, 5, 10, ..., 35, each
    # fall in one batch, whose forward the hooks were armed for.
    assert sorted(got["step"].unique()) == list(range(0, 40, 5))
    assert (got.groupby(["step", "layer"]).size() == 1).all()
    assert got["loss"].notna().all()
