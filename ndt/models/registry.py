"""The one place that defines the study's architectures: family, widths, depth.

Each architecture name (a `conf/arch/` option name and the `arch` column of result rows) maps to a
small frozen dataclass. Depth and width are properties derived from the widths stored here, so they
are never written down twice. `describe()` reads them back from a built model.

`ARCHS` holds the study's 15 in the order of its tables (tables, sweeps and golden files rely on
it); `EXTENDED_ARCHS` holds the architectures added since (issue 13's ``+sweep=extended``:
torchvision's ResNet-18 and ViT, and ``gpt2_mini``, family "lm", a causal language model for
next-token datasets), which `arch_spec`, `arch_family`, `check_compatible` and `build_model` accept alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import fmean
from types import MappingProxyType
from typing import ClassVar, Literal

from torch import nn

from ndt.data.spec import DatasetSpec

Family = Literal["mlp", "cnn", "transformer", "resnet", "vit", "lm"]


@dataclass(frozen=True)
class MLPArch:
    """A ReLU MLP: input -> hidden[0] -> ... -> hidden[-1] -> classes.

    Attributes:
        hidden: width of each hidden Linear layer, input side first.
    """

    hidden: tuple[int, ...]
    family: ClassVar[Family] = "mlp"

    @property
    def depth(self) -> int:
        """Number of hidden layers (the output layer is not counted)."""
        return len(self.hidden)

    @property
    def width(self) -> float:
        """Mean hidden width, in units."""
        return fmean(self.hidden)


@dataclass(frozen=True)
class CNNArch:
    """A stack of [Conv3x3 pad 1 -> ReLU -> MaxPool 2] blocks, then flatten -> Linear(classes).

    Attributes:
        channels: output channels of each conv, input side first.
    """

    channels: tuple[int, ...]
    family: ClassVar[Family] = "cnn"

    @property
    def depth(self) -> int:
        """Conv layers plus the output Linear, as the study counted."""
        return len(self.channels) + 1

    @property
    def width(self) -> float:
        """Mean number of conv channels."""
        return fmean(self.channels)


@dataclass(frozen=True)
class TransformerArch:
    """A post-norm Transformer encoder classifier (feed-forward width 4 * d_model).

    Attributes:
        d_model: token width d.
        nhead: attention heads per layer.
        num_layers: encoder layers.
    """

    d_model: int
    nhead: int
    num_layers: int
    family: ClassVar[Family] = "transformer"

    @property
    def depth(self) -> int:
        """Number of encoder layers."""
        return self.num_layers

    @property
    def width(self) -> float:
        """Token width d."""
        return float(self.d_model)


@dataclass(frozen=True)
class ResNetArch:
    """torchvision's ResNet of BasicBlocks with the CIFAR stem (`ndt.models.vision.ResNet18`).

    Depth counts the weighted layers on the main path, the convention that names ResNet-18: the stem
    conv, two 3x3 convs per block and the output Linear (the 1x1 shortcut projections are not counted).

    Attributes:
        blocks: BasicBlocks in each of the four stages, input side first.
    """

    blocks: tuple[int, int, int, int]
    family: ClassVar[Family] = "resnet"
    #: Output channels of the stem and of each stage's convs (fixed in torchvision's ResNet).
    STEM_CHANNELS: ClassVar[int] = 64
    STAGE_CHANNELS: ClassVar[tuple[int, int, int, int]] = (64, 128, 256, 512)

    @property
    def depth(self) -> int:
        """Stem conv + 2 convs per block + the output Linear (18 for blocks (2, 2, 2, 2))."""
        return 1 + 2 * sum(self.blocks) + 1

    @property
    def width(self) -> float:
        """Mean output channels of the main-path convs (stem and block convs; 3904 / 17 for ResNet-18)."""
        convs = [self.STEM_CHANNELS] + [
            c for c, n in zip(self.STAGE_CHANNELS, self.blocks, strict=True) for _ in range(2 * n)
        ]
        return fmean(convs)


@dataclass(frozen=True)
class ViTArch:
    """torchvision's VisionTransformer (pre-norm, GELU MLP, class token) (`ndt.models.vision.ViT`).

    Attributes:
        patch_size: side of the square patches, in pixels.
        num_layers: encoder layers.
        num_heads: attention heads per layer.
        hidden_dim: token width d.
        mlp_dim: MLP hidden width.
    """

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    family: ClassVar[Family] = "vit"

    @property
    def depth(self) -> int:
        """Number of encoder layers (as for the study's transformers)."""
        return self.num_layers

    @property
    def width(self) -> float:
        """Token width d (as for the study's transformers)."""
        return float(self.hidden_dim)


@dataclass(frozen=True)
class GPT2Arch:
    """A GPT-2-style causal language model (Hugging Face ``GPT2LMHeadModel``, random init).

    The vocabulary and the context length (``n_positions``) come from the dataset's spec; the
    feed-forward width is 4 * n_embd and the output layer is tied to the token embedding, as in GPT-2.

    Attributes:
        n_layer: transformer blocks.
        n_embd: token width d.
        n_head: attention heads per block.
    """

    n_layer: int
    n_embd: int
    n_head: int
    family: ClassVar[Family] = "lm"

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.n_layer

    @property
    def width(self) -> float:
        """Token width d."""
        return float(self.n_embd)


ArchSpec = MLPArch | CNNArch | TransformerArch | ResNetArch | ViTArch | GPT2Arch

#: The study's 15 architectures, in the order of its tables.
ARCHS: Mapping[str, ArchSpec] = MappingProxyType(
    {
        "mlp_shallow_2": MLPArch(hidden=(128, 64)),
        "mlp_medium_5": MLPArch(hidden=(64, 64, 64, 64, 32)),
        "mlp_deep_10": MLPArch(hidden=(32,) * 10),
        "mlp_verydeep_15": MLPArch(hidden=(24,) * 15),
        "mlp_narrow": MLPArch(hidden=(32, 32, 32, 32)),
        "mlp_medium": MLPArch(hidden=(128, 128, 64, 64)),
        "mlp_wide": MLPArch(hidden=(256, 256, 128, 128)),
        "mlp_verywide": MLPArch(hidden=(512, 512, 256, 256)),
        "cnn_shallow": CNNArch(channels=(32, 64)),
        "cnn_medium": CNNArch(channels=(32, 64, 128)),
        "cnn_deep": CNNArch(channels=(32, 64, 128, 256)),
        "transformer_shallow": TransformerArch(d_model=128, nhead=4, num_layers=2),
        "transformer_medium": TransformerArch(d_model=128, nhead=4, num_layers=4),
        "transformer_deep": TransformerArch(d_model=128, nhead=4, num_layers=6),
        "transformer_narrow": TransformerArch(d_model=64, nhead=4, num_layers=4),
    }
)

ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)

#: Architectures beyond the study's (issue 13), kept apart so that `ARCHS` stays the study's 15.
EXTENDED_ARCHS: Mapping[str, ArchSpec] = MappingProxyType(
    {
        # torchvision.models.resnet18 (2 BasicBlocks per stage), CIFAR stem: 11.2M parameters.
        "resnet18": ResNetArch(blocks=(2, 2, 2, 2)),
        # ViT-Tiny's width (d 192, 3 heads of 64, MLP 4d = 768) at half its depth (6 of 12 layers):
        # the smallest standard ViT shape, made shallower so that a run of the study's protocol (2,000
        # steps at batch 32) trains on a 2-core CPU in about 15-20 minutes (~0.45 s a step at 28x28,
        # ~0.55 s at 32x32; ResNet-18 takes ~1.3 s). Patches of 4 pixels, the usual choice for
        # CIFAR-size images: 7x7 = 49 tokens at 28x28, 8x8 = 64 at 32x32, plus the class token.
        # 2.7M parameters.
        "vit_small": ViTArch(patch_size=4, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768),
        # 4 blocks of width 256 (4 heads of 64), 4.46M parameters with AG News' 5,002-token vocabulary
        # and 64 positions: the smallest GPT-2 shape with a few layers to compare and heads of GPT-2's
        # own width (64), cheap enough for a 2,000-step run on a 2-core CPU (see ndt.models.gpt).
        "gpt2_mini": GPT2Arch(n_layer=4, n_embd=256, n_head=4),
    }
)

EXTENDED_ARCH_NAMES: tuple[str, ...] = tuple(EXTENDED_ARCHS)

#: Families whose models need a 2-D image grid.
IMAGE_FAMILIES: tuple[Family, ...] = ("cnn", "resnet", "vit")


class IncompatiblePairError(ValueError):
    """An (architecture, dataset) pair the study does not define, e.g. a CNN on text."""


def arch_spec(arch: str) -> ArchSpec:
    """Return the registry entry of `arch`.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if arch in ARCHS:
        return ARCHS[arch]
    if arch in EXTENDED_ARCHS:
        return EXTENDED_ARCHS[arch]
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(known_arch_names())}")


def known_arch_names() -> tuple[str, ...]:
    """Every architecture `arch_spec` accepts: the study's 15, then the extended ones."""
    return (*ARCH_NAMES, *EXTENDED_ARCH_NAMES)


def is_known_arch(arch: object) -> bool:
    """Whether `arch` names a study or an extended architecture."""
    return arch in ARCHS or arch in EXTENDED_ARCHS


def arch_family(arch: str) -> Family:
    """Return the family ("mlp", "cnn", "transformer", "resnet", "vit" or "lm") of `arch`."""
    return arch_spec(arch).family


def family_or_unknown(arch: str) -> str:
    """`arch_family`, or "unknown" for a name the registry does not know (runs read from disk)."""
    try:
        return str(arch_family(arch))
    except (KeyError, ValueError):
        return "unknown"


def check_compatible(arch: str, spec: DatasetSpec) -> None:
    """Raise if `arch` cannot be built for `spec`'s inputs.

    Raises:
        ValueError: unknown architecture.
        IncompatiblePairError: a CNN, ResNet or ViT on a non-image dataset (their convs need a 2-D
            grid); a language model on a classification dataset, or a classifier on a next-token dataset.
    """
    family = arch_family(arch)
    if (family == "lm") != (spec.task == "next_token"):
        needs = "a next-token dataset (e.g. ag_news_lm)" if family == "lm" else "a classification dataset"
        raise IncompatiblePairError(
            f"{arch} ({family}) needs {needs}; {spec.name} is a {spec.task.replace('_', '-')} dataset."
        )
    if family in IMAGE_FAMILIES and spec.modality != "image":
        kind = {"cnn": "CNNs", "resnet": "ResNets", "vit": "ViTs"}.get(family, f"{family} models")
        raise IncompatiblePairError(
            f"{arch} needs image input; {spec.name} is {spec.modality}: {kind} are for images only. "
            f"Choose an mlp_* or transformer_* architecture for {spec.name}."
        )


@dataclass(frozen=True)
class ModelInfo:
    """What the study reports about a built model.

    Attributes:
        arch: architecture name, e.g. "cnn_deep".
        family: "mlp", "cnn", "transformer", "resnet", "vit" or "lm".
        depth: mlp: hidden layers; cnn: conv layers + 1; transformer, vit: encoder layers; resnet:
            main-path convs + 1 (18 for ResNet-18); lm: blocks.
        width: mlp: mean hidden width; cnn, resnet: mean conv channels; transformer, vit, lm: d_model.
        params: trainable parameter count at build time.
    """

    arch: str
    family: Family
    depth: int
    width: float
    params: int


class ArchModel(nn.Module):
    """Base of every model `build_model` returns: carries the `ModelInfo` that `describe` reads."""

    # Set by build_model once the parameters exist (params is counted from the built model).
    info: ModelInfo | None = None


def describe(model: nn.Module) -> ModelInfo:
    """Return the family, depth, width and parameter count of a model built by `build_model`.

    Raises:
        TypeError: `model` was not built by `build_model`.
    """
    info = model.info if isinstance(model, ArchModel) else None
    if info is None:
        raise TypeError(f"{type(model).__name__} was not built by ndt.models.build_model; no ModelInfo")
    return info
