"""ReLU MLPs: `[embed ->] hidden.0 -> ... -> hidden.{n-1} -> fc`.

Module names (the `layer` column of result rows):
    embed       nn.Embedding (text with encoding "embedding" only), mean-pooled over non-PAD tokens
    hidden.{i}  i-th hidden nn.Linear, input side first (i = 0 .. depth-1)
    fc          output nn.Linear to the classes

ReLU is applied functionally so the names above stay contiguous (a Sequential of Linear and ReLU
would number the Linears 0, 2, 4, ...); forward hooks on `hidden.{i}` see pre-activation outputs, and
`post_activations` declares the ReLU for post-activation measurements (`ndt.measure.capture`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ndt.models.pooling import PAD_ID, masked_mean
from ndt.models.registry import ArchModel

#: Width of the learned token embedding feeding the MLP on text. 64 lies inside the range of the
#: study's hidden widths (24 to 512), so the first hidden layer neither squeezes nor inflates it much,
#: and one value for all MLPs keeps the embedding table (5,002 x 64 = 320k params) identical across them.
EMBED_DIM = 64


class MLP(ArchModel):
    """Fully connected ReLU classifier.

    Args:
        num_inputs: values per example when the input is numeric (784 for 1x28x28, 100 for raw ids).
        hidden: hidden widths, input side first.
        num_classes: output size C.
        vocab_size: if given, inputs are token ids; a bag of embeddings (mean of the non-PAD
            token vectors) replaces the flat input.
        embed_dim: embedding width when `vocab_size` is given.
    """

    def __init__(
        self,
        num_inputs: int,
        hidden: Sequence[int],
        num_classes: int,
        vocab_size: int | None = None,
        embed_dim: int = EMBED_DIM,
    ) -> None:
        super().__init__()
        self.embed: nn.Embedding | None = None
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        widths = [embed_dim if self.embed is not None else num_inputs, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.fc = nn.Linear(widths[-1], num_classes)

    def post_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: the nonlinearity applied to its output}: a ReLU after every hidden layer."""
        return {f"hidden.{i}": F.relu for i in range(len(self.hidden))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: numeric input (B, 1, 28, 28) or (B, 784), or (B, 100) float raw ids; with an
                embedding, (B, S) long token ids (0 = PAD).

        Returns:
            (B, C) logits.
        """
        # Numeric input is flattened (images arrive as (B, 1, 28, 28)); token ids are bagged.
        h = x.flatten(1) if self.embed is None else masked_mean(self.embed(x), x != PAD_ID)  # (B, in)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.fc(h)
