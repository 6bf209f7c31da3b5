"""ActivationCapture on MLP, CNN and Transformer-encoder models; hooks removed afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ndt.measure.capture import ActivationCapture, reduce_output


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
    with ActivationCapture(model) as cap:
        model(x)
    assert cap.layer_names == ["0", "2", "4"]
    torch.testing.assert_close(cap.activations["0"], model[0](x).mean(dim=(2, 3)))
    assert cap.activations["2"].shape == (5, 6)
    assert n_hooks(model) == 0


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
