"""Causal tests (ndt.analysis.causal) on a network with a planted change in one layer.

The fixture: a 6 -> 32 -> 32 -> 3 network (ReLU after the first layer only). Its *before* state
writes layer "2"'s output into a fixed 3-dimensional subspace; *after* differs from it only in layer
"2"'s weights, which add one direction d (orthogonal to that subspace) that the readout relies on.
The labels are the after-model's own predictions, so after is right on every probe example and
before is not. Known by construction: only layer "2" changed; d is the direction the change added;
layer "0" is identical in both states.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ndt.analysis import causal
from ndt.models.build import build_model
from ndt.models.pooling import PAD_ID

WIDTH = 32


def planted() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    """(before, after, x, y, d): see the module docstring."""
    g = torch.Generator().manual_seed(0)
    before = nn.Sequential(
        nn.Linear(6, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 3)
    ).double()
    q, _ = torch.linalg.qr(torch.randn(WIDTH, 4, generator=g, dtype=torch.float64))
    basis, d = q[:, :3], q[:, 3]  # (32, 3) the before-subspace, (32,) the planted direction
    with torch.no_grad():
        before[0].weight.copy_(torch.randn(WIDTH, 6, generator=g, dtype=torch.float64))
        before[2].weight.copy_(basis @ torch.randn(3, WIDTH, generator=g, dtype=torch.float64))
        before[2].bias.zero_()
        readout = 0.1 * torch.randn(3, WIDTH, generator=g, dtype=torch.float64)
        readout[0] += 3.0 * d  # class 0 reads the planted direction
        readout[1] -= 3.0 * d
        before[3].weight.copy_(readout)
        before[3].bias.zero_()
    after = copy.deepcopy(before)
    with torch.no_grad():
        after[2].weight.add_(torch.outer(d, torch.randn(WIDTH, generator=g, dtype=torch.float64)))
    x = torch.randn(600, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = after(x).argmax(dim=1)
    return before, after, x, y, d.numpy()


LAYERS = ["0", "2", "3"]


def test_behaviour_by_hand() -> None:
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2, dtype=torch.float64))
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    beh = causal.behaviour(model, x, y)
    # logits = x: predictions 0, 1, 0 -> one of three right; per class: class 0 has 1 of 2, class 1 0 of 1
    assert beh.accuracy == pytest.approx(1 / 3)
    np.testing.assert_allclose(beh.class_accuracy, [0.5, 0.0])
    lse = np.log(np.exp(x.numpy()).sum(axis=1))
    assert beh.loss == pytest.approx(float(np.mean(lse - x.numpy()[[0, 1, 2], [0, 0, 1]])))


def test_patching_names_the_changed_layer() -> None:
    before, after, x, y, _ = planted()
    table = causal.patch_outputs(before, after, x, y, LAYERS).set_index("layer")
    # Layer 0 is identical in both states: patching it changes nothing.
    assert table.loc["0", "share_after"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["0", "share_own_weights"] == pytest.approx(0.0, abs=1e-9)
    # Layer 2's output (and its own weights) from before give exactly the before-model.
    assert table.loc["2", "share_after"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc["2", "share_before"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc["2", "share_own_weights"] == pytest.approx(1.0, abs=1e-9)
    # The readout is downstream: its output patch also gives before, its own weights did not change.
    assert table.loc["3", "share_after"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc["3", "share_own_weights"] == pytest.approx(0.0, abs=1e-9)
    assert causal.localise(table.reset_index()) == "2"
    assert table.attrs["acc_after"] == 1.0 and table.attrs["acc_before"] < 0.9


def test_added_direction_is_the_planted_one() -> None:
    before, after, x, _, d = planted()
    out_b, out_a = causal.layer_outputs(before, x, ["2"]), causal.layer_outputs(after, x, ["2"])
    dirs = causal.added_directions(out_b["2"].numpy(), out_a["2"].numpy(), k=1)
    assert dirs.shape == (1, WIDTH)
    assert abs(float(dirs[0] @ d)) == pytest.approx(1.0, abs=1e-6)


def test_ablating_the_planted_direction_is_far_above_random_and_an_unchanged_layer_is_not() -> None:
    before, after, x, y, _ = planted()
    table = causal.causal_table(before, after, x, y, LAYERS, k=1, n_random=20, seed=0).set_index("layer")
    assert table.loc["2", "ablation_z"] > 10
    assert table.loc["2", "ablation_effect"] > 0.5  # nats: the readout loses its main direction
    assert abs(table.loc["0", "ablation_z"]) < causal.Z_SIGNIFICANT
    assert causal.layer_verdict(table.loc["2"]).startswith("effect")
    assert causal.layer_verdict(table.loc["0"]).startswith("no effect")


def test_no_event_control_says_no_effect() -> None:
    _, after, x, y, _ = planted()
    same = copy.deepcopy(after)
    control = causal.causal_table(same, after, x, y, LAYERS, k=1, n_random=20, seed=1).set_index("layer")
    assert control["share_after"].isna().all()  # nothing changed, nothing to explain
    for layer in LAYERS:
        assert causal.layer_verdict(control.loc[layer]).startswith("no effect")


def test_mean_ablation_by_hand() -> None:
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    d = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    got = causal.mean_ablate(out, d, torch.tensor([2.0], dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), [[2.0, 2.0], [2.0, 4.0]])
    conv = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    conv[0, 0] = 5.0  # channel 0 everywhere 5
    got = causal.mean_ablate(conv, d, torch.tensor([1.0], dtype=torch.float64))
    assert torch.equal(got[0, 0], torch.ones(2, 2, dtype=torch.float64)) and torch.equal(
        got[0, 1], conv[0, 1]
    )


def test_random_directions_are_orthonormal_and_seeded() -> None:
    a = causal.random_directions(10, 3, np.random.default_rng(5))
    b = causal.random_directions(10, 3, np.random.default_rng(5))
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(a, b)


def test_bad_input() -> None:
    before, after, x, y, _ = planted()
    with pytest.raises(KeyError, match="no module named 'nope'"):
        causal.patch_outputs(before, after, x, y, ["nope"])
    with pytest.raises(ValueError, match=r"k must be in 1\.\.32"):
        causal.added_directions(np.zeros((5, 32)), np.zeros((5, 32)), k=0)
    with pytest.raises(ValueError, match="n_random must be >= 2"):
        causal.ablate_directions(after, x, y, "2", np.eye(WIDTH)[:1], n_random=1)


def test_verdict_compares_the_effect_with_the_control_not_the_z_score() -> None:
    """Hand-made rows: the event's ablation costs 0.30 nats (z 100); the control's only 0.02 but with a
    larger z (200, a learned direction in an ordinary stretch): the event still matters more."""
    event = pd.Series(
        {"share_own_weights": 0.9, "total_change": 0.4, "ablation_z": 100.0, "ablation_effect": 0.30, "k": 1}
    )
    control = pd.Series(
        {"share_own_weights": 0.2, "total_change": 0.1, "ablation_z": 200.0, "ablation_effect": 0.02, "k": 1}
    )
    assert "; more than an ordinary stretch" in causal.layer_verdict(event, control)
    weak = pd.Series(
        {"share_own_weights": 0.9, "total_change": 0.4, "ablation_z": 300.0, "ablation_effect": 0.01, "k": 1}
    )
    assert "not more than an ordinary stretch" in causal.layer_verdict(weak, control)


def test_causal_table_runs_the_forwards_it_says_and_reports_progress() -> None:
    """Counted by hand for 3 layers with parameters and 5 draws: `before` runs once to be observed and
    once per layer (after's output patched in): 4; `after` runs once to be observed, twice per layer
    (before's output, before's own weights) and 1 + 5 times per layer for the ablations: 1 + 6 + 18 = 25."""
    before, after, x, y, _ = planted()
    calls = {"before": 0, "after": 0}
    for name, model in (("before", before), ("after", after)):
        model.register_forward_pre_hook(lambda *_a, name=name: calls.__setitem__(name, calls[name] + 1))
    seen: list[tuple[int, int]] = []
    causal.causal_table(
        before, after, x, y, LAYERS, k=1, n_random=5, progress=lambda d, t: seen.append((d, t))
    )
    assert calls == {"before": 4, "after": 25}
    assert causal.causal_forwards(len(LAYERS), 5) == 29
    # in forwards: both observed (2), each layer patched (3 each), each ablated (1 + 5 each)
    assert seen == [(2, 29), (5, 29), (8, 29), (11, 29), (17, 29), (23, 29), (29, 29)]


def test_base_and_interventions_run_the_same_kernels() -> None:
    """The study's transformer (nn.TransformerEncoder) in eval mode takes PyTorch's fused fast path in a
    block none of whose modules has a hook, and each intervention hooks one layer: unless the causal
    forwards turn the fast path off, a patch of layer 0 with its own output runs block 1 fused while
    the base forward (hooks in both blocks) does not, and the loss moves by the kernels' rounding
    (~5e-9 nats). Patching two identical models with their identical outputs must give the base loss
    exactly."""
    torch.manual_seed(0)
    model = build_model("transformer_shallow", "ag_news")
    x = torch.randint(1, 100, (16, 100))
    x[:, 80:] = PAD_ID  # padded tail: the masked fast path
    y = torch.randint(0, 4, (16,))
    names = ["encoder.layers.0.linear1", "encoder.layers.1.linear2"]
    table = causal.patch_outputs(model, copy.deepcopy(model), x, y, names)
    assert (table["loss_after_patched"] == table.attrs["loss_after"]).all()
    assert (table["loss_before_patched"] == table.attrs["loss_before"]).all()
