"""ActivationCapture on MLP, CNN and Transformer-encoder models; hooks removed afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ndt.measure.capture import ActivationCapture, reduce_output
from ndt.models import build_model


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.LazyLinear(2)
    )


class Encoder(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.input_proj = nn.Linear(5, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.input_proj(x)).mean(dim=1))


def test_mlp_captures_linear_pre_activations() -> None:
    model = mlp()
    x = torch.randn(7, 12)
    with ActivationCapture(model) as cap:
        model(x)
    assert cap.layer_names == ["1", "3"]
    torch.testing.assert_close(cap.activations["1"], model[1](x))  # before the ReLU
    assert cap.activations["3"].shape == (7, 3)
    assert n_hooks(model) == 0


def test_cnn_spatial_mean() -> None:
    model = cnn()
    x = torch.randn(5, 1, 6, 6)
    model(x)  # materialise the lazy layer
    with ActivationCapture(model, conv_reduction="spatial_mean") as cap:  # the study's choice
        model(x)
    assert cap.layer_names == ["0", "2", "4"]
    torch.testing.assert_close(cap.activations["0"], model[0](x).mean(dim=(2, 3)))
    assert cap.activations["2"].shape == (5, 6)
    assert n_hooks(model) == 0


@pytest.mark.parametrize("reduction", ["spatial_mean", "positions"])
def test_conv_bench_times_the_matrices_the_capture_measures(reduction: str) -> None:
    # `ndt.bench conv` times the hooks' work on recorded layer outputs; it must be the capture's work
    from ndt.bench.conv import _layer_outputs

    model = build_model("cnn_shallow", "mnist").eval()
    x = torch.randn(4, 1, 28, 28)
    with ActivationCapture(model, conv_reduction=reduction) as cap, torch.no_grad():
        model(x)
    recorded = _layer_outputs(model, x)
    assert len(recorded) == len(cap.layer_names) and n_hooks(model) == 0
    for name, (module, out) in zip(cap.layer_names, recorded, strict=True):
        assert module is cap.modules[name]
        torch.testing.assert_close(
            reduce_output(out, module, conv_reduction=reduction), cap.activations[name]
        )


@pytest.mark.parametrize("training", [True, False])
def test_transformer_layers_including_attention_tuples(training: bool) -> None:
    model = Encoder().train(training)
    with ActivationCapture(model) as cap, torch.set_grad_enabled(training):
        model(torch.randn(3, 4, 5))
    expected = ["input_proj"]
    for i in range(2):
        expected += [
            f"encoder.layers.{i}.self_attn",
            f"encoder.layers.{i}.linear1",
            f"encoder.layers.{i}.linear2",
        ]
    expected.append("fc")
    assert cap.layer_names == expected  # out_proj (never called by MHA's forward) is not selected
    assert set(cap.activations) == set(expected)  # every hook fired, also in eval under no_grad
    assert cap.activations["encoder.layers.0.linear1"].shape == (3, 32)  # token mean of (3, 4, 32)
    assert n_hooks(model) == 0


def test_sequence_reductions() -> None:
    lin = nn.Linear(2, 2)
    x = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(reduce_output(x, lin, "token_mean"), x.mean(1))
    assert reduce_output(x, lin, "tokens").shape == (6, 4)
    torch.testing.assert_close(reduce_output(x, lin, "feature_mean"), x.mean(2))
    mha = nn.MultiheadAttention(4, 2, batch_first=False)
    y = torch.randn(3, 2, 4)  # (S, B, F)
    torch.testing.assert_close(reduce_output((y, None), mha, "token_mean"), y.mean(0))


def test_layer_selection_and_errors() -> None:
    model = mlp()
    assert ActivationCapture(model, layers=["3"]).layer_names == ["3"]
    assert ActivationCapture(model, layers=lambda n, m: isinstance(m, nn.ReLU)).layer_names == ["2"]
    with pytest.raises(KeyError, match="available"):
        ActivationCapture(model, layers=["nope"])
    with pytest.raises(ValueError, match="no layers selected"):
        ActivationCapture(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="sequence_reduction"):
        ActivationCapture(model, sequence_reduction="max")


def test_hooks_removed_when_forward_raises() -> None:
    model = mlp()
    with pytest.raises(RuntimeError), ActivationCapture(model):
        model(torch.randn(2, 5))  # wrong width
    assert n_hooks(model) == 0


# -- per-position conv measurements ------------------------------------------------------------------


def test_per_position_rows_are_every_position_when_few() -> None:
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1))
    x = torch.randn(4, 2, 5, 5)
    with ActivationCapture(conv) as cap:
        out = conv(x).detach()
    # (B, C, H, W) -> (B*H*W, C): row b*25 + h*5 + w is out[b, :, h, w]
    want = torch.stack([out[b, :, h, w] for b in range(4) for h in range(5) for w in range(5)])
    torch.testing.assert_close(cap.activations["0"], want)


def test_per_position_subsample_is_fixed_bounded_and_leaves_the_rng_alone() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    x = torch.randn(6, 1, 10, 10)  # 600 rows
    full = conv(x).detach().permute(0, 2, 3, 1).reshape(-1, 4)
    rng = torch.get_rng_state()
    with ActivationCapture(conv, max_rows=50) as cap:
        conv(x)
        first = cap.activations["0"]
        conv(x)
        second = cap.activations["0"]
    assert torch.equal(torch.get_rng_state(), rng)  # dropout and data order are not disturbed
    assert first.shape == (50, 4)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # the same positions every time
    # every kept row is one of the full rows, each at most once, in b-major order
    dist = torch.cdist(first.double(), full.double())
    idx = dist.argmin(dim=1)
    assert torch.all(dist.min(dim=1).values < 1e-6)
    assert torch.all(idx[1:] > idx[:-1])


@pytest.mark.parametrize(("bias", "rank"), [(True, 10), (False, 9)])
def test_first_conv_per_position_has_the_rank_the_kernel_allows(bias: bool, rank: int) -> None:
    # One input channel, 3x3 kernel, 16 outputs: each position's output is W p + b with p its 9-value
    # patch, so per-position rows span min(16, 9 + bias) dimensions. With circular padding every patch
    # value averages to the image mean m over positions: the spatial mean is m W 1 + b, rank <= 2.
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, padding_mode="circular", bias=bias)).double()
    x = torch.rand(64, 1, 12, 12, dtype=torch.float64)
    with ActivationCapture(conv) as cap:
        conv(x)
    per_position = cap.activations["0"].numpy()
    with ActivationCapture(conv, conv_reduction="spatial_mean") as cap:
        conv(x)
    spatial = cap.activations["0"].numpy()
    assert per_position.shape == (4096, 16) and spatial.shape == (64, 16)
    assert np.linalg.matrix_rank(per_position, tol=1e-8) == rank
    assert np.linalg.matrix_rank(spatial, tol=1e-8) == (2 if bias else 1)


# -- hook point ------------------------------------------------------------------------------------


def test_post_activation_on_a_sequential_mlp_is_relu_of_the_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 5), nn.Dropout(0.0), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)
    )
    x = torch.randn(9, 6)
    with ActivationCapture(model, hook_point="post") as cap:
        model(x)
    assert cap.post_source == {"0": "module:2", "3": "module:4", "5": "none"}
    pre0 = x @ model[0].weight.T + model[0].bias
    torch.testing.assert_close(cap.activations["0"], torch.clamp(pre0, min=0))  # relu by hand
    pre3 = torch.clamp(pre0, min=0) @ model[3].weight.T + model[3].bias
    torch.testing.assert_close(cap.activations["3"], torch.tanh(pre3))
    torch.testing.assert_close(cap.activations["5"], model(x))  # nothing follows the output layer


def test_post_activation_declared_by_ndt_models() -> None:
    torch.manual_seed(0)
    mlp_model = build_model("mlp_narrow", "mnist")
    x = torch.randn(7, 1, 28, 28)
    with ActivationCapture(mlp_model, hook_point="post") as cap:
        mlp_model(x)
    assert cap.post_source["hidden.0"] == "declared" and cap.post_source["fc"] == "none"
    torch.testing.assert_close(
        cap.activations["hidden.0"], torch.clamp(mlp_model.hidden[0](x.flatten(1)), min=0)
    )
    cnn_model = build_model("cnn_shallow", "mnist")
    with ActivationCapture(cnn_model, ["conv.0"], hook_point="post") as cap:
        cnn_model(x[:2])
    pre = cnn_model.conv[0](x[:2])  # (2, 32, 28, 28): 1,568 positions, all kept
    want = torch.clamp(pre, min=0).permute(0, 2, 3, 1).reshape(-1, 32)
    torch.testing.assert_close(cap.activations["conv.0"], want)


def test_a_shared_activation_module_is_refused_under_post() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with pytest.raises(ValueError, match="same activation module"):
        ActivationCapture(model, hook_point="post")
    with pytest.raises(ValueError, match="hook_point"):
        ActivationCapture(model, hook_point="after")
    with pytest.raises(ValueError, match="conv_reduction"):
        ActivationCapture(model, conv_reduction="pixels")


# -- padding -----------------------------------------------------------------------------------------


class TinyText(nn.Module):
    """Embedding -> self-attention (PAD keys masked) -> per-token Linear -> masked mean -> fc, float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ff = nn.Linear(8, 12)
        self.fc = nn.Linear(12, 3)
        self.double()

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor:
        return x == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x == 0
        h = self.embed(x)
        a, _ = self.attn(h, h, h, key_padding_mask=pad)
        f = self.ff(a)
        keep = (~pad).unsqueeze(-1).to(f.dtype)
        return self.fc((f * keep).sum(1) / keep.sum(1))


#: Three sequences of lengths 5, 2, 7, padded with 0 to length 9.
SEQUENCES = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]


def padded() -> torch.Tensor:
    return torch.tensor([s + [0] * (9 - len(s)) for s in SEQUENCES])


def unpadded_reference(model: TinyText) -> dict[str, dict[str, torch.Tensor]]:
    """Each sequence run alone, without padding, straight through the modules: (tokens, token means)."""
    out: dict[str, dict[str, list[torch.Tensor]]] = {
        "tokens": {"attn": [], "ff": []},
        "token_mean": {"attn": [], "ff": []},
    }
    with torch.no_grad():
        for s in SEQUENCES:
            h = model.embed(torch.tensor([s]))
            a = model.attn(h, h, h)[0][0]  # (L, 8)
            f = model.ff(a)  # (L, 12)
            for name, t in (("attn", a), ("ff", f)):
                out["tokens"][name].append(t)
                out["token_mean"][name].append(t.mean(dim=0, keepdim=True))
    return {r: {n: torch.cat(v) for n, v in d.items()} for r, d in out.items()}


@pytest.mark.parametrize("reduction", ["token_mean", "tokens"])
@pytest.mark.parametrize("training", [False, True])
def test_masked_measurement_of_a_padded_batch_equals_the_unpadded_one(reduction: str, training: bool) -> None:
    model = TinyText().train(training)  # no dropout: train and eval forwards compute the same
    want = unpadded_reference(model)[reduction]
    with (
        ActivationCapture(model, ["attn", "ff"], sequence_reduction=reduction) as cap,
        torch.set_grad_enabled(training),
    ):
        model(padded())
    for name in ("attn", "ff"):
        torch.testing.assert_close(cap.activations[name], want[name], rtol=1e-10, atol=1e-12)
    with ActivationCapture(model, ["ff"], sequence_reduction=reduction, padding_mask=None) as cap:
        model(padded())
    assert cap.activations["ff"].shape[0] == (3 if reduction == "token_mean" else 27)  # unmasked: PAD in


def test_hugging_face_attention_mask_keyword_masks_the_measurement() -> None:
    class Keyworded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 4)
            self.lin = nn.Linear(4, 6)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            return self.lin(self.embed(input_ids))

    model = Keyworded()
    ids = padded()
    attention_mask = (ids != 0).long()
    with ActivationCapture(model, ["lin"]) as cap:
        out = model(ids, attention_mask=attention_mask)
    w = attention_mask.unsqueeze(-1).float()
    torch.testing.assert_close(cap.activations["lin"], (out * w).sum(1) / w.sum(1))
    with ActivationCapture(model, ["lin"]) as cap:
        out = model(ids)  # no mask given: every position
    torch.testing.assert_close(cap.activations["lin"], out.mean(1))


def test_ndt_transformer_declares_its_padding() -> None:
    torch.manual_seed(0)
    model = build_model("transformer_shallow", "ag_news", encoding="embedding").eval()
    x = torch.randint(2, 100, (4, 100))
    for i, length in enumerate((100, 60, 7, 0)):  # the last is all PAD: the model keeps position 0
        x[i, length:] = 0
    raw: dict[str, torch.Tensor] = {}
    layer = dict(model.named_modules())["encoder.layers.0.linear2"]
    layer.register_forward_hook(lambda m, i, o: raw.__setitem__("out", o.detach()))
    with ActivationCapture(model, ["encoder.layers.0.linear2"]) as cap, torch.no_grad():
        model(x)
    keep = x != 0
    keep[3, 0] = True
    w = keep.unsqueeze(-1).float()
    torch.testing.assert_close(
        cap.activations["encoder.layers.0.linear2"], (raw["out"] * w).sum(1) / w.sum(1)
    )


def test_lazy_capture_registers_hooks_only_while_enabled() -> None:
    """lazy=True: a disabled capture leaves no hook on any module (an unmeasured forward runs bare);
    enabling registers them again and the next forward is captured."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    cap = ActivationCapture(model, lazy=True).attach()
    assert cap.attached and hooks() > 0
    cap.enabled = False
    assert hooks() == 0 and cap.attached
    model(x)
    assert cap.activations == {}
    cap.enabled = True
    assert hooks() > 0
    model(x)
    assert set(cap.activations) == {"0", "2"}
    torch.testing.assert_close(cap.activations["0"], model[0](x))
    cap.remove()
    cap.enabled = True  # removed: enabling does not bring the hooks back
    assert hooks() == 0 and not cap.attached


def test_tracker_leaves_unmeasured_forwards_without_hooks(tmp_path) -> None:
    from ndt.measure.tracker import HighFrequencyTracker

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    n_hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with HighFrequencyTracker(model, 5, writer=tmp_path / "m") as tracker:
        assert n_hooks() > 0  # armed for step 0's forward
        model(torch.randn(6, 4)).sum().backward()
        tracker.log(0)
        assert n_hooks() == 0  # step 1 is not measured
        for step in range(1, 4):
            model(torch.randn(6, 4))
            tracker.log(step)
            assert n_hooks() == 0  # steps 2-4 are not measured either
        model(torch.randn(6, 4))
        tracker.log(4)
        assert n_hooks() > 0  # armed again for step 5's forward
        model(torch.randn(6, 4)).sum().backward()
        tracker.log(5)
        rows = tracker.get_results()
    assert sorted(rows["step"].unique()) == [0, 5]


def test_auto_padding_registers_root_hooks_only_where_an_attention_mask_can_arrive() -> None:
    """padding_mask="auto" looks for ``attention_mask=``: a Sequential's forward(input) cannot take it,
    so no root hook is registered; a forward with **kwargs may, so both root hooks are."""

    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return self.fc(x)

    seq = nn.Sequential(nn.Linear(3, 2))
    with ActivationCapture(seq):
        assert len(seq._forward_pre_hooks) == 0 and len(seq._forward_hooks) == 0
    kw = Keywords()
    with ActivationCapture(kw):
        assert len(kw._forward_pre_hooks) == 1 and len(kw._forward_hooks) == 1
