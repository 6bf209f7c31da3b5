"""The study's 15 architectures, selected by name.

`build_model(arch, dataset)` builds one; `describe(model)` returns its family, depth, width and
parameter count; `ARCHS` (in `registry`) is the single definition of every architecture's shape.
Module names per family are documented in `mlp`, `cnn` and `transformer`; the output layer is `fc`
in all of them.
"""

from ndt.models.build import build_model
from ndt.models.registry import (
    ARCH_NAMES,
    ARCHS,
    IncompatiblePairError,
    ModelInfo,
    arch_family,
    check_compatible,
    describe,
)

__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "IncompatiblePairError",
    "ModelInfo",
    "arch_family",
    "build_model",
    "check_compatible",
    "describe",
]
