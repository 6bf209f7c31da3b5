"""Transformer encoder classifiers: tokens -> positional parameter -> encoder -> mean -> fc.

Module and parameter names (the `layer` column of result rows):
    input_proj                    nn.Linear from one token's values to d (numeric input only)
    embed                         nn.Embedding(vocab, d) (text with encoding "embedding" only)
    pos_embedding                 (S, d) learned positional parameter, randn init
    encoder.layers.{i}.self_attn  nn.MultiheadAttention of layer i (its forward returns a tuple)
    encoder.layers.{i}.linear1    feed-forward d -> 4d of layer i
    encoder.layers.{i}.linear2    feed-forward 4d -> d of layer i
    fc                            output nn.Linear(d, C) on the token mean

Numeric input (images, AG News raw ids) of n values is cut into S tokens of n / S values, with S
the divisor of n closest to 16 (ties: the smaller S, i.e. fewer and wider tokens): 784 -> 16 x 49,
100 -> 20 x 5. Token ids (encoding "embedding") are embedded one token per position (S = 100)
straight to width d: the embedding already is a learned projection, so no `input_proj` follows it.
PAD positions are masked out of attention keys and of the final mean; the model declares that mask
(`padding_mask`) and its post-activation functions (`post_activations`: the ReLU after each
``linear1``) for `ndt.measure.capture`, so measurements leave PAD out and can read post-activation.

Forward hooks work in eval mode under `torch.no_grad()` too: PyTorch skips the fused encoder-layer
fast path (which would bypass `linear1`/`linear2`) when any submodule has a hook.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ndt.models.pooling import PAD_ID, masked_mean
from ndt.models.registry import ArchModel

#: Preferred number of tokens when cutting a flat numeric input into a sequence.
TARGET_TOKENS = 16


def num_tokens(num_inputs: int, target: int = TARGET_TOKENS) -> int:
    """Return the divisor of `num_inputs` closest to `target`; ties go to the smaller divisor.

    Example: num_tokens(784) == 16, num_tokens(100) == 20, num_tokens(126) == 14 (14 and 18 tie).
    """
    divisors = [s for s in range(1, num_inputs + 1) if num_inputs % s == 0]
    return min(divisors, key=lambda s: (abs(s - target), s))


class Transformer(ArchModel):
    """Post-norm Transformer encoder classifier (ReLU, dropout 0.1, feed-forward width 4d).

    Args:
        num_inputs: values per example (784 for 1x28x28, 100 for AG News).
        d_model: token width d.
        nhead: attention heads.
        num_layers: encoder layers.
        num_classes: output size C.
        vocab_size: if given, inputs are token ids, embedded one per position (S = num_inputs).
    """

    def __init__(
        self,
        num_inputs: int,
        d_model: int,
        nhead: int,
        num_layers: int,
        num_classes: int,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.input_proj: nn.Linear | None = None
        self.embed: nn.Embedding | None = None
        if vocab_size is None:
            self.seq_len = num_tokens(num_inputs)
            self.input_proj = nn.Linear(num_inputs // self.seq_len, d_model)
        else:
            self.seq_len = num_inputs
            self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.pos_embedding = nn.Parameter(torch.randn(self.seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=4 * d_model, batch_first=True)
        # Nested tensors would change activation shapes seen by hooks; the study ran without them.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, num_classes)

    def token_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) bool, True at the positions the model attends to and pools: the non-PAD tokens.

        An all-PAD example would mask every key (softmax of all -inf is NaN): such rows attend to, and
        pool, their first position instead.

        Args:
            x: (B, S) long token ids (embedding input only).
        """
        keep = x != PAD_ID  # (B, S)
        empty = ~keep.any(dim=1, keepdim=True)  # (B, 1)
        first = torch.zeros_like(keep)
        first[:, 0] = True
        return keep | (empty & first)

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, S) bool, True at the positions the model ignores (for `ndt.measure.capture`); None for
        numeric input, which has no padding."""
        return None if self.embed is None else ~self.token_mask(x)

    def post_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: the nonlinearity applied to its output}: each feed-forward ``linear1`` feeds a ReLU
        (``nn.TransformerEncoderLayer``'s ``activation``, applied functionally)."""
        return {
            f"encoder.layers.{i}.linear1": layer.activation for i, layer in enumerate(self.encoder.layers)
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: numeric input (B, 1, 28, 28) or (B, 784), or (B, 100) float raw ids; with an
                embedding, (B, 100) long token ids (0 = PAD).

        Returns:
            (B, C) logits.
        """
        if self.embed is not None:
            keep = self.token_mask(x)
            h = self.embed(x) + self.pos_embedding  # (B, S, d)
            h = self.encoder(h, src_key_padding_mask=~keep)
            return self.fc(masked_mean(h, keep))
        assert self.input_proj is not None  # exactly one of embed / input_proj exists
        tokens = x.reshape(x.shape[0], self.seq_len, -1)  # (B, S, n / S); images flatten row-major
        h = self.input_proj(tokens) + self.pos_embedding  # (B, S, d)
        h = self.encoder(h)
        return self.fc(h.mean(dim=1))
