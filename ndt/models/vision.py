"""The extended vision architectures: torchvision's ResNet-18 and VisionTransformer, adapted to small images.

Both are torchvision's own classes (subclassed only to carry ndt's `ModelInfo` and to accept the
datasets' inputs), so module names are torchvision's and a state dict loads into the plain
torchvision model of the same shape.

**ResNet-18** (`ResNet18`): ``torchvision.models.resnet18(weights=None, num_classes=C)`` with the usual
CIFAR stem: ``conv1`` is a 3x3 convolution, stride 1, padding 1, from the dataset's channels (1 or 3)
instead of ImageNet's 7x7 stride-2 conv from 3 channels, and the stem's max-pool is removed
(``nn.Identity``). On 28x28 the stages run at 28, 14, 7 and 4 pixels; on 32x32 at 32, 16, 8, 4; the
global average pool makes the head independent of the size. Module names (the `layer` column):

    conv1                          stem conv, 3x3 stride 1
    layer{s}.{b}.conv1, .conv2     the two 3x3 convs of block b (0, 1) of stage s (1..4)
    layer{s}.0.downsample.0        1x1 stride-2 projection of the shortcut (stages 2..4)
    fc                             output nn.Linear(512, C)

Every conv is followed by a BatchNorm before its ReLU, so ``hook_point=post`` finds no nonlinearity
to read (a hook cannot apply the BatchNorm without updating its running statistics): each conv is
then measured at its own output, as under ``pre``.

**ViT** (`ViT`): ``torchvision.models.VisionTransformer`` for a square image of side 28 or 32 from the
dataset spec; with a one-channel dataset the patch embedding ``conv_proj`` takes one channel instead
of torchvision's fixed three (re-initialised exactly as torchvision initialises it). Module names:

    conv_proj                                      patch embedding, Conv2d(C_in, d, p, stride p)
    encoder.layers.encoder_layer_{i}.self_attention nn.MultiheadAttention of layer i (need_weights=False)
    encoder.layers.encoder_layer_{i}.mlp.0         MLP d -> mlp_dim (GELU follows: ``post`` reads it)
    encoder.layers.encoder_layer_{i}.mlp.3         MLP mlp_dim -> d
    heads.head                                     output nn.Linear(d, C) on the class token

torchvision initialises ``heads.head`` to zeros: its output is all zero until the first update (the
tracker measures after each step's update, so it never sees that).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from ndt.models.registry import ArchModel, ResNetArch, ViTArch

#: Input channels of torchvision's VisionTransformer patch embedding (fixed there).
TORCHVISION_VIT_CHANNELS = 3


def _image_shape(input_shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """(channels, height, width) of `input_shape`, or a clear error for a non-image shape."""
    if len(input_shape) != 3:
        raise ValueError(f"{what} needs a (channels, height, width) input shape, got {input_shape}")
    c, h, w = input_shape
    return int(c), int(h), int(w)


class ResNet18(ResNet, ArchModel):
    """torchvision's ResNet-18 with the CIFAR stem, for (C, H, W) images (see the module docstring).

    Args:
        input_shape: (channels, height, width) of one image, e.g. (1, 28, 28) or (3, 32, 32).
        arch: the registry entry (blocks per stage; torchvision's 64/128/256/512 channels).
        num_classes: output size C.
    """

    def __init__(self, input_shape: tuple[int, ...], arch: ResNetArch, num_classes: int) -> None:
        # torchvision.models.resnet18(weights=None, num_classes=C) is exactly ResNet(BasicBlock, [2, 2, 2, 2], C).
        super().__init__(BasicBlock, list(arch.blocks), num_classes=num_classes)
        in_channels, _, _ = _image_shape(input_shape, "ResNet18")
        self.input_shape = tuple(input_shape)
        # The CIFAR stem: on 28-32 pixel images the ImageNet stem (7x7 stride 2, then a stride-2
        # max-pool) would leave 7-8 pixels for the first stage. He init as torchvision's own convs.
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: (B, C, H, W) images, or the same flattened to (B, C * H * W).

        Returns:
            (B, num_classes) logits.
        """
        return super().forward(x.reshape(x.shape[0], *self.input_shape))


class ViT(VisionTransformer, ArchModel):
    """torchvision's VisionTransformer for square (C, S, S) images (see the module docstring).

    Dropout and attention dropout are torchvision's defaults (0.0).

    Args:
        input_shape: (channels, side, side) of one image; the side must be a multiple of the patch size.
        arch: the registry entry (patch size, layers, heads, widths).
        num_classes: output size C.
    """

    def __init__(self, input_shape: tuple[int, ...], arch: ViTArch, num_classes: int) -> None:
        in_channels, height, width = _image_shape(input_shape, "ViT")
        if height != width or height % arch.patch_size:
            raise ValueError(
                f"ViT needs square images whose side is a multiple of patch_size={arch.patch_size}; "
                f"got {height}x{width}"
            )
        super().__init__(
            image_size=height,
            patch_size=arch.patch_size,
            num_layers=arch.num_layers,
            num_heads=arch.num_heads,
            hidden_dim=arch.hidden_dim,
            mlp_dim=arch.mlp_dim,
            num_classes=num_classes,
        )
        self.input_shape = tuple(input_shape)
        if in_channels != TORCHVISION_VIT_CHANNELS:
            # Rebuild the patch embedding for this dataset's channels and initialise it as
            # VisionTransformer.__init__ does (truncated normal, std 1/sqrt(fan_in), zero bias).
            proj = nn.Conv2d(
                in_channels, arch.hidden_dim, kernel_size=arch.patch_size, stride=arch.patch_size
            )
            nn.init.trunc_normal_(proj.weight, std=math.sqrt(1 / (in_channels * arch.patch_size**2)))
            assert proj.bias is not None  # Conv2d's default bias=True
            nn.init.zeros_(proj.bias)
            self.conv_proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: (B, C, S, S) images, or the same flattened to (B, C * S * S).

        Returns:
            (B, num_classes) logits (from the class token).
        """
        return super().forward(x.reshape(x.shape[0], *self.input_shape))
