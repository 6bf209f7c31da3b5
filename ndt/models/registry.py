"""The one place that defines the study's architectures: family, widths, depth.

Each architecture name (a `conf/arch/` option name and the `arch` column of result rows) maps to a
small frozen dataclass. Depth and width are properties derived from the widths stored here, so they
are never written down twice. `describe()` reads them back from a built model.

`ARCHS` holds the study's 15; `EXTENDED_ARCHS` the architectures beyond the study (issue 13's
``+sweep=extended``), e.g. ``gpt2_mini`` (family "lm": a causal language model for next-token
datasets). `arch_spec` knows both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import fmean
from types import MappingProxyType
from typing import ClassVar, Literal

from torch import nn

from ndt.data.spec import DatasetSpec

Family = Literal["mlp", "cnn", "transformer", "lm"]


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


ArchSpec = MLPArch | CNNArch | TransformerArch | GPT2Arch

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

#: Architectures beyond the study (issue 13), trained by ``+sweep=extended``; not in the study's tables.
EXTENDED_ARCHS: Mapping[str, ArchSpec] = MappingProxyType(
    {
        # 4 blocks of width 256 (4 heads of 64), 4.46M parameters with AG News' 5,002-token vocabulary
        # and 64 positions: the smallest GPT-2 shape with a few layers to compare and heads of GPT-2's
        # own width (64), cheap enough for a 2,000-step run on a 2-core CPU (see ndt.models.gpt).
        "gpt2_mini": GPT2Arch(n_layer=4, n_embd=256, n_head=4),
    }
)


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
    return (*ARCH_NAMES, *EXTENDED_ARCHS)


def arch_family(arch: str) -> Family:
    """Return the family ("mlp", "cnn", "transformer" or "lm") of `arch`."""
    return arch_spec(arch).family


def check_compatible(arch: str, spec: DatasetSpec) -> None:
    """Raise if `arch` cannot be built for `spec`'s inputs.

    Raises:
        ValueError: unknown architecture.
        IncompatiblePairError: a CNN on a non-image dataset (its convs need a 2-D grid); a language
            model on a classification dataset, or a classifier on a next-token dataset.
    """
    family = arch_family(arch)
    if (family == "lm") != (spec.task == "next_token"):
        needs = "a next-token dataset (e.g. ag_news_lm)" if family == "lm" else "a classification dataset"
        raise IncompatiblePairError(
            f"{arch} ({family}) needs {needs}; {spec.name} is a {spec.task.replace('_', '-')} dataset."
        )
    if family == "cnn" and spec.modality != "image":
        raise IncompatiblePairError(
            f"{arch} needs image input; {spec.name} is {spec.modality}: CNNs are for images only. "
            f"Choose an mlp_* or transformer_* architecture for {spec.name}."
        )


@dataclass(frozen=True)
class ModelInfo:
    """What the study reports about a built model.

    Attributes:
        arch: architecture name, e.g. "cnn_deep".
        family: "mlp", "cnn", "transformer" or "lm".
        depth: mlp: hidden layers; cnn: conv layers + 1; transformer: encoder layers; lm: blocks.
        width: mlp: mean hidden width; cnn: mean channels; transformer and lm: d_model.
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
