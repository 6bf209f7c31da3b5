"""The one definition of a model's loss and accuracy, for both tasks (`ndt.data.spec.Task`).

The task is read from the shapes, so every caller (training, evaluation, the causal probe) uses the
same code without being told which task it runs:

- classification: logits (B, C), targets (B,) -> mean cross-entropy over the B examples; accuracy =
  share of examples whose argmax is the target (top-1).
- next token: logits (B, S, V), targets (B, S) with `IGNORE_INDEX` at padding -> token-level
  cross-entropy: the sum over the valid positions divided by their number (every token weighs the
  same, whatever the length of its text); accuracy = share of valid positions whose argmax is the
  next token. No valid position gives loss 0 (not PyTorch's NaN), so a batch of one-word texts cannot
  end a run.

Nothing here moves a value to the host: losses and counts stay 0-d tensors on the logits' device.
"""

from __future__ import annotations

import torch
from torch import nn

from ndt.data.spec import IGNORE_INDEX


def token_view(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits and (N,) targets: classification as given, next-token positions flattened.

    Args:
        logits: (B, C) or (B, S, V).
        targets: (B,) or (B, S) int64, `IGNORE_INDEX` at positions that do not count.

    Raises:
        ValueError: shapes that fit neither task.
    """
    if logits.ndim == 2 and targets.ndim == 1 and len(logits) == len(targets):
        return logits, targets
    if logits.ndim == 3 and tuple(targets.shape) == tuple(logits.shape[:2]):
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    raise ValueError(
        f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} fit neither classification "
        "((B, C) and (B,)) nor next-token prediction ((B, S, V) and (B, S))"
    )


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats (a 0-d tensor with grad), see the module docstring.

    Args:
        logits: (B, C) or (B, S, V).
        targets: (B,) or (B, S) int64.
    """
    if logits.ndim == 2:
        return nn.functional.cross_entropy(logits, targets)  # exactly the study's loss
    flat, flat_targets = token_view(logits, targets)
    total = nn.functional.cross_entropy(flat, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (flat_targets != IGNORE_INDEX).sum().clamp(min=1)


def correct_and_count(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct predictions, positions that count), two 0-d int64 tensors; accuracy is their ratio.

    Args:
        logits: (B, C) or (B, S, V).
        targets: (B,) or (B, S) int64.
    """
    flat, flat_targets = token_view(logits, targets)
    valid = flat_targets != IGNORE_INDEX
    return ((flat.argmax(dim=-1) == flat_targets) & valid).sum(), valid.sum()
