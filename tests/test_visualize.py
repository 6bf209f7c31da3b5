"""FeatureVisualizer on hand-built models with known answers and on the study's small models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ndt.analysis.visualize import (
    FeatureVisualizer,
    save_attention,
    save_feature_maps,
    save_image_grid,
    save_overlay,
)
from ndt.models import build_model


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_shallow", "mnist")


@pytest.fixture(scope="module")
def transformer() -> nn.Module:
    torch.manual_seed(0)
    return build_model("transformer_shallow", "mnist")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def identity_cam_model() -> nn.Module:
    """1x1 conv with weight 1 (A = x), global mean, logits (mean A, -mean A).

    Grad-CAM by hand: d logit_0 / dA = 1 / (HW) > 0 everywhere, so cam_0 = ReLU(x) / max ReLU(x);
    for class 1 the weight is negative, so cam_1 = ReLU(-x) / max ReLU(-x).
    """
    conv = nn.Conv2d(1, 1, kernel_size=1)
    fc = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def linear_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    return model, model[1].weight.detach().clone()  # (3, 12)


# -- attributions ---------------------------------------------------------------------------------------


def test_grad_cam_hand_model() -> None:
    x = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(3))
    vis = FeatureVisualizer(identity_cam_model())
    for target, sign in ((0, 1.0), (1, -1.0)):
        relu = (sign * x[:, 0]).clamp_min(0).double()
        expected = relu / relu.flatten(1).amax(dim=1)[:, None, None]
        np.testing.assert_allclose(vis.grad_cam(x, target=target), expected.numpy(), atol=1e-6)


def test_grad_cam_shape_matches_input_and_values_in_unit_interval(
    cnn: nn.Module, images: torch.Tensor
) -> None:
    vis = FeatureVisualizer(cnn)
    for layer in (None, "conv.0"):  # default: the last conv, conv.1 (14x14 maps, upsampled)
        cam = vis.grad_cam(images, layer=layer)
        assert cam.shape == (3, 28, 28)
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        peaks = cam.reshape(3, -1).max(axis=1)
        assert all(p == pytest.approx(1.0) or p == 0.0 for p in peaks)
    with pytest.raises(ValueError, match="B, C, H, W"):
        vis.grad_cam(images.flatten(1))


def test_saliency_of_a_linear_model_is_its_weights() -> None:
    model, w = linear_model()
    x = torch.randn(2, 1, 3, 4)
    vis = FeatureVisualizer(model)
    sal = vis.saliency(x, target=[0, 2])
    assert sal.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(sal.reshape(2, 12), w[[0, 2]].abs().numpy(), atol=1e-7)
    np.testing.assert_allclose(
        vis.saliency(x, target=1, absolute=False).reshape(2, 12), w[[1, 1]].numpy(), atol=1e-7
    )
    with pytest.raises(ValueError, match="targets"):
        vis.saliency(x, target=[0, 1, 2])


def test_integrated_gradients_of_a_linear_model_are_exact() -> None:
    # A constant gradient makes every quadrature exact: IG = (x - baseline) * w_target.
    model, w = linear_model()
    x, base = torch.randn(2, 1, 3, 4), torch.full((2, 1, 3, 4), 0.5)
    ig = FeatureVisualizer(model).integrated_gradients(x, target=[2, 0], steps=4, baseline=base)
    expected = (x - base).reshape(2, 12) * w[[2, 0]]
    np.testing.assert_allclose(ig.reshape(2, 12), expected.numpy(), atol=1e-6)


def test_saliency_and_ig_shapes_match_input_and_ig_is_complete(cnn: nn.Module, images: torch.Tensor) -> None:
    vis = FeatureVisualizer(cnn)
    assert vis.saliency(images).shape == images.shape
    assert vis.saliency(images.flatten(1)).shape == (3, 784)  # the CNN also takes flat images
    ig = vis.integrated_gradients(images, steps=64)
    assert ig.shape == images.shape
    # Completeness: attributions sum to f(x) - f(baseline) for the predicted class.
    cnn.eval()
    with torch.no_grad():
        logits, base_logits = cnn(images), cnn(torch.zeros_like(images))
    cnn.train()
    t = logits.argmax(dim=1)
    delta = (logits[torch.arange(3), t] - base_logits[torch.arange(3), t]).double().numpy()
    np.testing.assert_allclose(ig.reshape(3, -1).sum(axis=1), delta, rtol=0.02, atol=1e-4)


# -- inside the network ----------------------------------------------------------------------------------


def test_attention_maps_shapes_rows_and_hand_computation(
    transformer: nn.Module, images: torch.Tensor
) -> None:
    maps = FeatureVisualizer(transformer).attention_maps(images)
    assert list(maps) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    for w in maps.values():
        assert w.shape == (3, 4, 16, 16)  # (B, heads, S, S): 784 values -> 16 tokens of 49
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    # Layer 0 by hand: tokens -> input_proj + positions -> per-head softmax(q k^T / sqrt(d_head)).
    attn = transformer.encoder.layers[0].self_attn
    with torch.no_grad():
        h = transformer.input_proj(images.reshape(3, 16, 49)) + transformer.pos_embedding
        q, k, _ = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k = (t.reshape(3, 16, 4, 32).transpose(1, 2) for t in (q, k))  # (B, heads, S, 32)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1)
    np.testing.assert_allclose(maps["encoder.layers.0.self_attn"], expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="MultiheadAttention"):
        FeatureVisualizer(nn.Linear(2, 2)).attention_maps(torch.ones(1, 2))


def test_feature_maps_are_the_layer_output(cnn: nn.Module, images: torch.Tensor) -> None:
    vis = FeatureVisualizer(cnn)
    maps = vis.feature_maps(images, "conv.0")
    assert maps.shape == (3, 32, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(maps, cnn.conv[0](images).double().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="not \\(B, C, H, W\\)"):
        vis.feature_maps(images, "fc")
    with pytest.raises(KeyError, match="no module"):
        vis.feature_maps(images, "conv.9")


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["cnn_shallow", "transformer_shallow"])
def test_model_is_unchanged_by_visualisation(arch: str, images: torch.Tensor) -> None:
    torch.manual_seed(4)
    model = build_model(arch, "mnist")
    model.fc.eval()  # a mixed-mode model: each module's own flag must come back
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = _hook_count(model)
    model.eval()
    with torch.no_grad():
        before = model(images)
    model.train()
    model.fc.eval()

    vis = FeatureVisualizer(model)
    if arch == "cnn_shallow":
        vis.grad_cam(images)
        vis.saliency(images)
        vis.integrated_gradients(images, steps=2)
        vis.feature_maps(images, "conv.1")
    else:
        vis.attention_maps(images)
        vis.saliency(images)

    assert {n: m.training for n, m in model.named_modules()} == modes
    assert _hook_count(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), before)


# -- PNGs --------------------------------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_writers(cnn: nn.Module, transformer: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    cnn_vis, tr_vis = FeatureVisualizer(cnn), FeatureVisualizer(transformer)
    maps = cnn_vis.feature_maps(images[:1], "conv.0")
    attn = tr_vis.attention_maps(images[:1])
    written = [
        save_feature_maps(maps[0], tmp_path / "maps.png", max_maps=8, title="conv.0"),
        save_attention({n: w[0] for n, w in attn.items()}, tmp_path / "attn.png"),
        save_attention(attn["encoder.layers.0.self_attn"][0], tmp_path / "attn0.png"),
        save_overlay(images, cnn_vis.grad_cam(images), tmp_path / "cam.png"),
        save_overlay(images[0, 0], cnn_vis.saliency(images)[0, 0], tmp_path / "sub" / "sal.png"),
        save_image_grid(np.zeros((2, 4, 4)), tmp_path / "grid.png", titles=["a", "b"]),
    ]
    assert all(_is_png(p) for p in written)
    with pytest.raises(ValueError, match="N, H, W"):
        save_image_grid(np.zeros((4, 4)), tmp_path / "bad.png")
