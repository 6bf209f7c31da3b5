"""HighFrequencyTracker: the study's usage example, measured steps, probe mode, NaN handling."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ndt import HighFrequencyTracker, read_metrics
from ndt.measure.spectrum import compute_metrics
from ndt.storage.schema import COLUMNS


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def batches(n: int, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 4, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 20, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


def test_study_usage_example_runs_as_written(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    dataloader = batches(30)
    num_epochs = 2

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    # --- the study's example, as written ---
    tracker = HighFrequencyTracker(model, sampling_frequency=5)
    step = 0
    for epoch in range(num_epochs):  # noqa: B007 - the study's example, verbatim
        for batch in dataloader:
            loss = train_step(batch)
            tracker.log(step, loss.item())
            step += 1
    jumps = tracker.detect_jumps(metric="stable_rank")
    # ---
    assert [j.step for j in jumps] == sorted(j.step for j in jumps)
    df = tracker.get_results()
    assert list(df.columns) == [*COLUMNS, "pr_eigen_corrected"]  # the schema's, then the derived one
    assert sorted(df.step.unique()) == list(range(0, 60, 5))
    assert df.groupby("step").size().eq(3).all()
    assert set(df.layer) == {"0", "2", "4"}
    tracker.close()


def test_measures_the_training_forward_of_that_step() -> None:
    model = make_model()
    data = batches(6)
    seen: dict[int, torch.Tensor] = {}
    with HighFrequencyTracker(model, sampling_frequency=5) as tracker:
        for step, (x, y) in enumerate(data):
            seen[step] = model[0](x).detach()  # what layer "0" outputs on this batch, before the update
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            grad_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
            tracker.log(step, loss)
            if step == 5:
                want_grad_norm = grad_norm
            model.zero_grad()
        df = tracker.get_results()
    row = df[(df.step == 5) & (df.layer == "0")].iloc[0]
    want = compute_metrics(seen[5])
    assert row.stable_rank == pytest.approx(want["stable_rank"], rel=1e-9)
    assert row.participation_ratio == pytest.approx(want["participation_ratio"], rel=1e-9)
    assert row.grad_norm == pytest.approx(want_grad_norm, rel=1e-6)
    assert (row.n_samples, row.n_features) == (32, 16)


def test_probe_mode_measures_in_eval_under_no_grad_and_restores_mode(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(20, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    probe = torch.randn(10, 20)
    modes: list[tuple[bool, bool]] = []
    model[2].register_forward_hook(lambda m, i, o: modes.append((m.training, torch.is_grad_enabled())))
    with HighFrequencyTracker(model, sampling_frequency=2, probe=(probe, None), writer=tmp_path / "m") as t:
        for step in range(5):
            model(torch.randn(3, 20)).sum().backward()
            t.log(step, 0.0, epoch=1)
            assert model.training
    df = read_metrics(tmp_path / "m")
    assert sorted(df.step.unique()) == [0, 2, 4]
    assert (df.n_samples == 10).all() and (df.epoch == 1).all()
    # training forwards (train, grad) interleaved with probe forwards (eval, no grad)
    assert modes.count((False, False)) == 3 and modes.count((True, True)) == 5
    # eval-mode probe: dropout off, so layer "2" equals a deterministic eval forward
    model.eval()
    want = compute_metrics(model[2](model[0](probe)).detach())
    got = df[(df.step == 4) & (df.layer == "2")].iloc[0]
    assert got.stable_rank == pytest.approx(want["stable_rank"], rel=1e-9)


def test_nan_activations_give_nan_rows_one_warning_and_training_goes_on() -> None:
    model = make_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with HighFrequencyTracker(model, sampling_frequency=1) as tracker:
            for step in range(4):
                x = torch.randn(8, 20)
                if step in (1, 2):
                    x[0, 0] = float("nan")
                model(x).sum().backward()
                tracker.log(step, 0.0)
            df = tracker.get_results()
    nan_warnings = [w for w in caught if "NaN/Inf" in str(w.message)]
    assert len(nan_warnings) == 3  # once per layer ("0", "2", "4"), not once per step
    assert df[df.step.isin([1, 2])].stable_rank.isna().all()
    assert df[df.step.isin([0, 3])].stable_rank.notna().all()


def test_metric_subset_leaves_other_columns_null() -> None:
    model = make_model()
    with HighFrequencyTracker(model, sampling_frequency=1, metrics=["stable_rank"]) as t:
        model(torch.randn(8, 20))
        t.log(0)
        df = t.get_results()
    assert df.stable_rank.notna().all() and df.participation_ratio.isna().all()
    with pytest.raises(ValueError, match="unknown metric"):
        HighFrequencyTracker(make_model(), metrics=["rank"])


def test_hooks_removed_on_close_and_writer_flushed(tmp_path: Path) -> None:
    model = make_model()
    t = HighFrequencyTracker(model, sampling_frequency=1, writer=tmp_path / "m", flush_every=100)
    model(torch.randn(8, 20))
    t.log(0, 1.0)
    assert not list((tmp_path / "m").glob("part-*"))  # buffered
    t.close()
    assert len(read_metrics(tmp_path / "m")) == 3
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    with pytest.raises(RuntimeError, match="closed"):
        t.log(1)


def test_unmeasurable_step_warns_once() -> None:
    model = make_model()
    with HighFrequencyTracker(model, sampling_frequency=5) as t:
        model(torch.randn(4, 20))
        t.log(3)  # arms for step 4, not 10
        model(torch.randn(4, 20))
        with pytest.warns(RuntimeWarning, match="consecutive"):
            t.log(10)
        assert t.get_results().empty


def test_layer_mean_series_and_one_layer() -> None:
    model = make_model()
    with HighFrequencyTracker(model, sampling_frequency=1) as t:
        for step in range(6):
            model(torch.randn(16, 20)).sum().backward()
            t.log(step)
        df = t.get_results()
        mean = t.series("participation_ratio")
        np.testing.assert_allclose(mean.to_numpy(), df.groupby("step").participation_ratio.mean().to_numpy())
        assert len(t.detect_jumps("stable_rank", layer="2").z) == 6
        with pytest.raises(KeyError, match="measured layers"):
            t.series("stable_rank", layer="9")


def test_a_nan_layer_drops_its_step_from_the_layer_mean_with_one_warning() -> None:
    # Layer "1" is NaN at step 2 only (its weight is poisoned for that forward); layer "0" never is.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    x = torch.randn(16, 6)
    with HighFrequencyTracker(model, sampling_frequency=1, probe=x) as t:
        for step in range(4):
            with torch.no_grad():
                model[1].weight[0, 0] = float("nan") if step == 2 else 0.5
            t.log(step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the NaN-activation warning is tested elsewhere
            df = t.get_results()
        assert df[(df.step == 2) & (df.layer == "0")].stable_rank.notna().all()  # one layer only
        with pytest.warns(RuntimeWarning, match=r"1 step\(s\) dropped .*\(steps 2\)") as caught:
            mean = t.series("stable_rank")
        assert len([w for w in caught if "dropped" in str(w.message)]) == 1
    assert mean.index.tolist() == [0, 1, 3]  # step 2 is not a mean over layer "0" alone
    by_hand = df[df.step != 2].pivot(index="step", columns="layer", values="stable_rank").mean(axis=1)
    np.testing.assert_allclose(mean.to_numpy(), by_hand.to_numpy(), rtol=1e-12)


class PaddedText(nn.Module):
    """Embedding -> per-token Linear -> masked mean -> fc; declares its padding (id 0), float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 6, padding_idx=0)
        self.ff = nn.Linear(6, 10)
        self.fc = nn.Linear(10, 3)
        self.double()

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor:
        return x == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.tanh(self.ff(self.embed(x)))
        keep = (x != 0).unsqueeze(-1).to(f.dtype)
        return self.fc((f * keep).sum(1) / keep.sum(1))


SEQS = [[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14], [15], [16, 17, 18]]


@pytest.mark.parametrize("reduction", ["token_mean", "tokens"])
@pytest.mark.parametrize("with_probe", [True, False])
def test_padding_never_enters_a_measurement(reduction: str, with_probe: bool) -> None:
    model = PaddedText()
    ids = torch.tensor([s + [0] * (8 - len(s)) for s in SEQS])  # 40 positions, 16 of them tokens
    with torch.no_grad():  # each sequence alone, no padding, through the module by hand
        per_seq = [model.ff(model.embed(torch.tensor(s))) for s in SEQS]
    want_matrix = torch.cat(per_seq) if reduction == "tokens" else torch.stack([t.mean(0) for t in per_seq])
    want = compute_metrics(want_matrix)
    probe = ids if with_probe else None
    with HighFrequencyTracker(
        model, sampling_frequency=1, probe=probe, layers=["ff"], sequence_reduction=reduction
    ) as t:
        if not with_probe:
            model(ids).sum().backward()  # the training forward is measured
        t.log(0)
        row = t.get_results().iloc[0]
    assert row.n_samples == (16 if reduction == "tokens" else 5)
    for name in ("stable_rank", "participation_ratio", "pr_eigen", "effective_rank"):
        assert row[name] == pytest.approx(want[name], rel=1e-9), name


def test_conv_rows_are_positions_by_default_and_spatial_means_on_request() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 3))
    probe = torch.randn(4, 1, 6, 6)
    shapes = {}
    for reduction in ("positions", "spatial_mean"):
        with HighFrequencyTracker(model, sampling_frequency=1, probe=probe, conv_reduction=reduction) as t:
            t.log(0)
            row = t.get_results().query("layer == '0'").iloc[0]
        shapes[reduction] = (row.n_samples, row.n_features)
    assert shapes == {"positions": (4 * 36, 8), "spatial_mean": (4, 8)}


def test_inline_cpu_rows_match_the_svd_of_each_training_forward(tmp_path: Path) -> None:
    """The CPU path keeps each forward's Grams as they are and solves a flush of them at once (split
    over threads when there are enough: layers of side >= 32 here). Every row must be the metrics of
    its own forward, computed apart by compute_metrics; the loss column is the value at log time,
    even though the caller overwrites its loss tensor in place afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 36))
    x_all = torch.randn(12, 64, 48, generator=torch.Generator().manual_seed(3))
    expected: list[dict[str, dict[str, float]]] = []
    loss = torch.zeros(())
    with HighFrequencyTracker(model, 1, writer=tmp_path / "m", flush_every=10) as tracker:
        for step, x in enumerate(x_all):
            with torch.no_grad():
                acts = {"0": model[0](x), "2": model[2](model[1](model[0](x)))}
            expected.append(compute_metrics(acts))
            with torch.enable_grad():
                model(x)
            loss.fill_(float(step) + 0.5)
            tracker.log(step, loss, grad_norm=2.0 * step)
            loss.fill_(-1.0)  # the caller reuses its tensor: the row keeps what it was at log time
            with torch.no_grad():  # the weights move, so every step measures other activations
                for p in model.parameters():
                    p.mul_(0.9).add_(0.01)
    rows = read_metrics(tmp_path / "m").sort_values(["step", "layer_index"])
    assert len(rows) == 24
    for step in range(12):
        for layer in ("0", "2"):
            row = rows[(rows["step"] == step) & (rows["layer"] == layer)].iloc[0]
            for metric, value in expected[step][layer].items():
                assert row[metric] == pytest.approx(value, rel=1e-9, abs=1e-9), (step, layer, metric)
            assert row["loss"] == step + 0.5
            assert row["grad_norm"] == 2.0 * step


def test_a_bfloat16_loss_is_recorded_and_a_per_sample_loss_is_refused(tmp_path: Path) -> None:
    """log() reads a host loss as one number: a bfloat16 tensor (numpy has no bfloat16) keeps its
    value; a per-sample loss vector is refused at the measured step with the fix named, and the rows
    already written stay readable."""
    model = make_model()
    ((x, _y),) = batches(1)
    with HighFrequencyTracker(model, 1, writer=tmp_path / "m", flush_every=1) as tracker:
        model(x)
        tracker.log(0, torch.tensor(1.5, dtype=torch.bfloat16))  # 1.5 is exact in bfloat16
        model(x)
        with pytest.raises(ValueError, match=r"shape \(32,\).*loss\.mean\(\)"):
            tracker.log(1, torch.ones(32))
    rows = read_metrics(tmp_path / "m")
    assert set(rows["step"]) == {0}
    assert (rows["loss"] == 1.5).all()


def test_series_and_detect_jumps_default_to_the_one_default_metric() -> None:
    # tracker.detect_jumps() used to default to stable_rank while tracker.series(), the tables,
    # ndt.investigate and ndt.view use participation_ratio: jumps of another series than series().
    import inspect

    from ndt.integrations._core import TrackerAccess
    from ndt.storage.schema import DEFAULT_METRIC

    assert DEFAULT_METRIC == "participation_ratio"
    for fn in (HighFrequencyTracker.series, HighFrequencyTracker.detect_jumps, TrackerAccess.detect_jumps):
        assert inspect.signature(fn).parameters["metric"].default == DEFAULT_METRIC, fn.__qualname__


def test_one_layers_series_drops_its_nan_steps_like_the_layer_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of two layers at steps 0, 5, 10, 15 with layer "0" NaN at step 10 (a non-finite batch):
    # series(layer="0") drops step 10 with a warning instead of handing the detector a NaN, so that
    # detect_jumps(layer="0") runs, as ndt.investigate layer=0 and ndt.view do.
    import pandas as pd

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    tracker = HighFrequencyTracker(model, sampling_frequency=5)
    rows = pd.DataFrame(
        {
            "step": [0, 0, 5, 5, 10, 10, 15, 15],
            "layer": ["0", "2"] * 4,
            "participation_ratio": [1.0, 2.0, 1.5, 2.5, math.nan, 3.0, 2.5, 3.5],
        }
    )
    monkeypatch.setattr(tracker, "get_results", lambda: rows)
    with pytest.warns(RuntimeWarning, match=r"participation_ratio of 0: 1 step\(s\) dropped .*steps 10\)"):
        own = tracker.series("participation_ratio", layer="0")
    assert own.to_dict() == {0: 1.0, 5: 1.5, 15: 2.5}
    assert tracker.series("participation_ratio", layer="2").to_dict() == {0: 2.0, 5: 2.5, 10: 3.0, 15: 3.5}
    with pytest.warns(RuntimeWarning):
        tracker.detect_jumps(layer="0")  # a finite series: no ValueError
    tracker.close()
