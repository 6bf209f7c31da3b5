"""Tests for ndt.models: parameter counts from the study, forward/backward, names, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ndt.data.spec import AG_NEWS_SEQ_LEN, AG_NEWS_VOCAB_SIZE, Encoding, dataset_spec
from ndt.models import (
    ARCH_NAMES,
    IncompatiblePairError,
    arch_family,
    build_model,
    check_compatible,
    describe,
)
from ndt.models.pooling import masked_mean
from ndt.models.transformer import num_tokens

# The study's parameter counts: (28x28 images, 10 classes), (AG News raw_ids: 100 inputs, 4 classes).
# None: the pair is undefined (CNNs are for images only).
STUDY_PARAMS: dict[str, tuple[int, int | None]] = {
    "mlp_shallow_2": (109_386, 21_444),
    "mlp_medium_5": (65_130, 21_156),
    "mlp_deep_10": (34_954, 12_868),
    "mlp_verydeep_15": (27_490, 10_924),
    "mlp_narrow": (28_618, 6_532),
    "mlp_medium": (130_058, 42_116),
    "mlp_wide": (317_450, 141_572),
    "mlp_verywide": (864_266, 512_516),
    "cnn_shallow": (50_186, None),
    "cnn_medium": (104_202, None),
    "cnn_deep": (390_410, None),
    "transformer_shallow": (406_282, 400_388),
    "transformer_medium": (802_826, 796_932),
    "transformer_deep": (1_199_370, 1_193_476),
    "transformer_narrow": (204_810, 201_860),
}

# AG News with encoding "embedding" (vocab 5,002), counted by hand:
EMBEDDING_PARAMS = {
    # Embedding 5002*64 + Linear 64->32 (2,080) + 3 x Linear 32->32 (1,056) + Linear 32->4 (132).
    "mlp_narrow": 5002 * 64 + 2080 + 3 * 1056 + 132,
    # Embedding 5002*128 + pos 100*128 + 2 encoder layers of 198,272 + fc 128*4+4, where one
    # layer = in_proj 3*128*128+384 + out_proj 128*128+128 + linear1 128*512+512
    #       + linear2 512*128+128 + two LayerNorms 2*256.
    "transformer_shallow": 5002 * 128 + 100 * 128 + 2 * 198_272 + 516,
    # d=64: one layer = 12,480 + 4,160 + 16,640 + 16,448 + 256 = 49,984.
    "transformer_narrow": 5002 * 64 + 100 * 64 + 4 * 49_984 + 260,
}

CNNS = [a for a in ARCH_NAMES if arch_family(a) == "cnn"]
NON_CNNS = [a for a in ARCH_NAMES if arch_family(a) != "cnn"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _text_ids(batch: int) -> torch.Tensor:
    """(batch, 100) token ids: random tokens, a PAD tail, and one all-PAD row (the edge case)."""
    ids = torch.randint(1, AG_NEWS_VOCAB_SIZE, (batch, AG_NEWS_SEQ_LEN))
    ids[:, 60:] = 0
    ids[-1] = 0
    return ids


def test_arch_names_are_the_study_table() -> None:
    assert tuple(STUDY_PARAMS) == ARCH_NAMES


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_param_count_images(arch: str) -> None:
    model = build_model(arch, "mnist")
    assert _params(model) == STUDY_PARAMS[arch][0]
    assert describe(model).params == STUDY_PARAMS[arch][0]


@pytest.mark.parametrize("arch", NON_CNNS)
def test_param_count_ag_news_raw_ids(arch: str) -> None:
    assert _params(build_model(arch, "ag_news", encoding="raw_ids")) == STUDY_PARAMS[arch][1]


@pytest.mark.parametrize(("arch", "expected"), EMBEDDING_PARAMS.items())
def test_param_count_ag_news_embedding(arch: str, expected: int) -> None:
    assert _params(build_model(arch, "ag_news", encoding="embedding")) == expected


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_forward_backward_images(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "mnist")
    _check_forward_backward(model, torch.randn(3, 1, 28, 28), num_classes=10)


@pytest.mark.parametrize("encoding", ["raw_ids", "embedding"])
@pytest.mark.parametrize("arch", NON_CNNS)
def test_forward_backward_ag_news(arch: str, encoding: Encoding) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "ag_news", encoding=encoding)
    ids = _text_ids(3)
    x = ids.float() if encoding == "raw_ids" else ids
    _check_forward_backward(model, x, num_classes=4)


def _check_forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    out.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_image_and_flat_input_agree(arch: str) -> None:
    model = build_model(arch, "mnist").eval()  # eval: dropout off, outputs deterministic
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.flatten(1)))


@pytest.mark.parametrize("encoding", ["raw_ids", "embedding"])
@pytest.mark.parametrize("arch", CNNS)
def test_cnn_on_text_is_refused(arch: str, encoding: Encoding) -> None:
    with pytest.raises(IncompatiblePairError, match=r"needs image input; ag_news is text"):
        build_model(arch, "ag_news", encoding=encoding)
    with pytest.raises(ValueError, match="CNNs are for images only"):
        check_compatible(arch, dataset_spec("ag_news"))


@pytest.mark.parametrize(
    ("arch", "family", "depth", "width"),
    [
        ("mlp_narrow", "mlp", 4, 32.0),
        ("mlp_shallow_2", "mlp", 2, 96.0),  # (128 + 64) / 2
        ("mlp_medium_5", "mlp", 5, 57.6),  # (4 * 64 + 32) / 5
        ("cnn_shallow", "cnn", 3, 48.0),  # 2 convs + fc; (32 + 64) / 2
        ("cnn_deep", "cnn", 5, 120.0),  # 4 convs + fc; (32 + 64 + 128 + 256) / 4
        ("transformer_narrow", "transformer", 4, 64.0),
        ("transformer_deep", "transformer", 6, 128.0),
    ],
)
def test_describe(arch: str, family: str, depth: int, width: float) -> None:
    info = describe(build_model(arch, "mnist"))
    assert (info.arch, info.family, info.depth) == (arch, family, depth)
    assert info.width == pytest.approx(width)


def test_describe_rejects_foreign_models() -> None:
    with pytest.raises(TypeError, match="not built by"):
        describe(nn.Linear(2, 2))


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'mlp_huge'.*mlp_narrow.*transformer_narrow"):
        build_model("mlp_huge", "mnist")
    with pytest.raises(ValueError, match="unknown architecture"):
        arch_family("resnet")


def test_encoding_conflicting_with_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="conflicts"):
        build_model("mlp_narrow", dataset_spec("ag_news"), encoding="raw_ids")


@pytest.mark.parametrize(
    ("arch", "dataset", "encoding", "names"),
    [
        ("mlp_narrow", "mnist", None, ["hidden.0", "hidden.3", "fc"]),
        ("mlp_narrow", "ag_news", "embedding", ["embed", "hidden.0", "hidden.3", "fc"]),
        ("cnn_medium", "mnist", None, ["conv.0", "conv.1", "conv.2", "fc"]),
        (
            "transformer_shallow",
            "mnist",
            None,
            [
                "input_proj",
                "encoder.layers.1.self_attn",
                "encoder.layers.1.linear1",
                "encoder.layers.1.linear2",
                "fc",
            ],
        ),
        ("transformer_shallow", "ag_news", "embedding", ["embed", "encoder.layers.0.linear1", "fc"]),
    ],
)
def test_layer_names(arch: str, dataset: str, encoding: Encoding | None, names: list[str]) -> None:
    modules = dict(build_model(arch, dataset, encoding=encoding).named_modules())
    assert set(names) <= set(modules)
    # The Linear/Conv layers are numbered contiguously: no gap from interleaved activations.
    assert "hidden.4" not in modules and "conv.3" not in modules


def test_no_inplace_activations() -> None:
    for arch in ARCH_NAMES:
        for m in build_model(arch, "mnist").modules():
            assert not getattr(m, "inplace", False), (arch, m)


def test_hooks_fire_in_eval_without_grad() -> None:
    """PyTorch's fused encoder fast path would skip linear1; it must stay off once hooks exist."""
    model = build_model("transformer_shallow", "mnist").eval()
    seen: list[tuple[int, ...]] = []
    dict(model.named_modules())["encoder.layers.0.linear1"].register_forward_hook(
        lambda m, i, o: seen.append(tuple(o.shape))
    )
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert seen == [(2, 16, 512)]  # 16 tokens of 49 pixels, feed-forward width 4 * 128


@pytest.mark.parametrize(("n", "expected"), [(784, 16), (100, 20), (126, 14), (16, 16), (7, 7)])
def test_num_tokens(n: int, expected: int) -> None:
    # 126: divisors 14 and 18 are both 2 from 16; the tie goes to the smaller.
    assert num_tokens(n) == expected


def test_masked_mean_ignores_dropped_tokens_and_guards_empty_rows() -> None:
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])  # (B=2, S=3, E=1)
    keep = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(h, keep), torch.tensor([[2.0], [0.0]]))
