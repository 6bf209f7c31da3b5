"""`build_model`: an architecture name and a dataset in, an initialised `nn.Module` out."""

from __future__ import annotations

from ndt.data.spec import DatasetSpec, Encoding, dataset_spec
from ndt.models.cnn import CNN
from ndt.models.gpt import GPT2LM  # imports transformers only when a GPT2LM is built
from ndt.models.mlp import MLP
from ndt.models.registry import (
    ArchModel,
    CNNArch,
    GPT2Arch,
    MLPArch,
    ModelInfo,
    ResNetArch,
    TransformerArch,
    ViTArch,
    arch_spec,
    check_compatible,
)
from ndt.models.transformer import Transformer
from ndt.models.vision import ResNet18, ViT


def build_model(arch: str, dataset: str | DatasetSpec, *, encoding: Encoding | None = None) -> ArchModel:
    """Build architecture `arch` for `dataset`'s inputs, with PyTorch's default initialisation.

    Seed the global RNG before calling for reproducible weights. The result carries a `ModelInfo`
    (see `describe`).

    Args:
        arch: one of `ARCH_NAMES` or `EXTENDED_ARCH_NAMES`, e.g. "cnn_deep", "resnet18", "gpt2_mini".
        dataset: a dataset name (resolved by `ndt.data.spec.dataset_spec`) or a `DatasetSpec`.
        encoding: text encoding ("embedding" or "raw_ids") when `dataset` is a name; None for
            the dataset's default.

    Returns:
        A model mapping a batch of `spec.input_shape` examples to (B, spec.num_classes) logits; a
        language model (family "lm") maps (B, S) token ids to (B, S, vocab) next-token logits.

    Raises:
        ValueError: unknown architecture or dataset, or an encoding that does not apply.
        IncompatiblePairError: the pair is undefined (a CNN, ResNet or ViT on text, a language model
            on classes).
        ImportError: a GPT-2 model without ``transformers`` installed (``pip install 'ndt[hf]'``).
    """
    spec = _resolve_spec(dataset, encoding)
    cfg = arch_spec(arch)
    check_compatible(arch, spec)
    vocab_size = _vocab_size(spec)
    model: ArchModel
    if isinstance(cfg, MLPArch):
        model = MLP(spec.num_inputs, cfg.hidden, spec.num_classes, vocab_size=vocab_size)
    elif isinstance(cfg, CNNArch):
        model = CNN(spec.input_shape, cfg.channels, spec.num_classes)
    elif isinstance(cfg, TransformerArch):
        model = Transformer(
            spec.num_inputs, cfg.d_model, cfg.nhead, cfg.num_layers, spec.num_classes, vocab_size=vocab_size
        )
    elif isinstance(cfg, ResNetArch):
        model = ResNet18(spec.input_shape, cfg, spec.num_classes)
    elif isinstance(cfg, ViTArch):
        model = ViT(spec.input_shape, cfg, spec.num_classes)
    elif isinstance(cfg, GPT2Arch):
        assert vocab_size is not None  # check_compatible: a language model gets a next-token dataset
        model = GPT2LM(vocab_size, spec.num_inputs, cfg.n_layer, cfg.n_embd, cfg.n_head)
    else:  # pragma: no cover - every registry entry type has a branch above
        raise TypeError(f"no builder for {type(cfg).__name__}")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.info = ModelInfo(arch=arch, family=cfg.family, depth=cfg.depth, width=cfg.width, params=params)
    return model


def _resolve_spec(dataset: str | DatasetSpec, encoding: Encoding | None) -> DatasetSpec:
    """Return the spec of `dataset`; `encoding` may only restate a given spec's own encoding."""
    if isinstance(dataset, str):
        return dataset_spec(dataset, encoding)
    if encoding is not None and encoding != dataset.encoding:
        raise ValueError(
            f"encoding={encoding!r} conflicts with the given DatasetSpec (encoding {dataset.encoding!r}); "
            "pass a dataset name to choose the encoding"
        )
    return dataset


def _vocab_size(spec: DatasetSpec) -> int | None:
    """Vocabulary size when inputs are token ids to embed, else None (numeric inputs)."""
    if spec.encoding != "embedding":
        return None
    if spec.vocab_size is None:
        raise ValueError(f"dataset {spec.name!r} uses encoding 'embedding' but its spec has no vocab_size")
    return spec.vocab_size
