"""The study's 15 architectures and the extended ones (`EXTENDED_ARCHS`, e.g. gpt2_mini), by name.

`build_model(arch, dataset)` builds one; `describe(model)` returns its family, depth, width and
parameter count; `ARCHS` (in `registry`) is the single definition of every architecture's shape.
Module names per family are documented in `mlp`, `cnn`, `transformer` and `gpt`; the output layer is
`fc` in all of them but the language model's (`lm_head`).
"""

from ndt.models.build import build_model
from ndt.models.registry import (
    ARCH_NAMES,
    ARCHS,
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
    "IncompatiblePairError",
    "ModelInfo",
    "arch_family",
    "build_model",
    "check_compatible",
    "describe",
]
