"""Token handling shared by the text models (AG News with `encoding="embedding"`)."""

from __future__ import annotations

import torch

#: Token id of padding in AG News sequences (vocabulary {PAD: 0, UNK: 1, ...}, see ndt.data.spec).
PAD_ID = 0


def masked_mean(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over the kept tokens of each example.

    Args:
        h: (B, S, E) token vectors.
        keep: (B, S) bool, True for tokens that count.

    Returns:
        (B, E) mean of the kept vectors; a row with no kept token gives zeros (the count is
        clamped to 1 so an all-PAD example yields no NaN).
    """
    weights = keep.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
