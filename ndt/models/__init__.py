"""The study's 15 architectures and the extended ones, selected by name.

`build_model(arch, dataset)` builds one; `describe(model)` returns its family, depth, width and
parameter count; `ARCHS` (the study's 15) and `EXTENDED_ARCHS` (ResNet-18, ViT, gpt2_mini) in
`registry` are the single definition of every architecture's shape. Module names per family are
documented in `mlp`, `cnn`, `transformer`, `vision` and `gpt`; the output layer is `fc` in all of them
but the ViT (torchvision's `heads.head`) and the language model (`lm_head`).
"""

from ndt.models.build import build_model
from ndt.models.registry import (
    ARCH_NAMES,
    ARCHS,
    EXTENDED_ARCH_NAMES,
    EXTENDED_ARCHS,
    IncompatiblePairError,
    ModelInfo,
    arch_family,
    check_compatible,
    describe,
)

__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "EXTENDED_ARCHS",
    "EXTENDED_ARCH_NAMES",
    "IncompatiblePairError",
    "ModelInfo",
    "arch_family",
    "build_model",
    "check_compatible",
    "describe",
]
