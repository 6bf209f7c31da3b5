"""CNNs: `[conv.{i} -> ReLU -> MaxPool 2] x n -> flatten -> fc`.

Module names (the `layer` column of result rows):
    conv.{i}  i-th nn.Conv2d (3x3, padding 1), input side first (i = 0 .. n-1)
    fc        output nn.Linear from the flattened last feature map to the classes

The head is a plain flatten of the last pooled map (no global pooling): on 28x28 input the maps
shrink 28 -> 14 -> 7 -> 3 -> 1, and this head is the variant that reproduces the study's parameter
counts exactly (50,186 / 104,202 / 390,410). ReLU and pooling are functional so `conv.{i}` numbering
stays contiguous; forward hooks on `conv.{i}` see pre-activation, pre-pool outputs, and
`post_activations` declares the ReLU for post-activation (pre-pool) measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ndt.models.registry import ArchModel


class CNN(ArchModel):
    """Convolutional image classifier.

    Args:
        input_shape: (channels, height, width) of one image, e.g. (1, 28, 28).
        channels: output channels of each conv, input side first.
        num_classes: output size C.
    """

    def __init__(self, input_shape: tuple[int, ...], channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs a (channels, height, width) input shape, got {input_shape}")
        self.input_shape = tuple(input_shape)
        in_channels, height, width = input_shape
        self.conv = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in pairwise([in_channels, *channels])
        )
        # 3x3 convs with padding 1 keep the size; each MaxPool2d(2) floors it by half.
        for _ in channels:
            height, width = height // 2, width // 2
        self.fc = nn.Linear(channels[-1] * height * width, num_classes)

    def post_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: the nonlinearity applied to its output}: a ReLU after every conv (before pooling)."""
        return {f"conv.{i}": F.relu for i in range(len(self.conv))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: (B, 1, 28, 28) images, or the same flattened to (B, 784).

        Returns:
            (B, C) logits.
        """
        h = x.reshape(x.shape[0], *self.input_shape)
        for conv in self.conv:
            h = F.max_pool2d(F.relu(conv(h)), kernel_size=2)
        return self.fc(h.flatten(1))
