"""GPT-2-style causal language models from Hugging Face ``transformers`` (``pip install 'ndt[hf]'``).

Built from a ``GPT2Config`` with random init: nothing is downloaded. ``transformers`` is imported
when a model is built, never when ``ndt`` or ``ndt.models`` is imported.

- `GPT2LM` (arch ``gpt2_mini``): the registry's language model for a next-token dataset
  (``ag_news_lm``): token ids (B, S) in, next-token logits (B, S, V) out.
- `gpt2_small`: true GPT-2 small (the default ``GPT2Config``: 12 blocks, width 768, 12 heads,
  vocabulary 50,257, 1,024 positions; 124,439,808 parameters with the tied output layer), as a raw
  ``GPT2LMHeadModel``, for the benchmarks.

Module names of `GPT2LM` (the `layer` column of result rows), the same as in a raw
``GPT2LMHeadModel``; the tracker's default selection (`ndt.measure.capture`) measures the starred ones:
    transformer.wte                   token embedding (V, d), tied to lm_head
    transformer.wpe                   position embedding (S, d)
    transformer.h.{i}.attn          * attention block output (B, S, d): the heads' mix after the
                                      output projection c_proj (the module returns (output, weights))
    transformer.h.{i}.attn.c_attn     query, key and value side by side (B, S, 3d): not measured, a
                                      concatenation of three different things
    transformer.h.{i}.attn.c_proj     the attention's output projection: the attn site itself before
                                      the residual dropout (equal in eval mode), so not measured twice
    transformer.h.{i}.mlp.c_fc      * the MLP's hidden layer (B, S, 4d), before its GELU
                                      (``hook_point=post`` reads it after the GELU: declared below)
    transformer.h.{i}.mlp.c_proj    * MLP block output (B, S, d) (before the residual dropout)
    lm_head                         * next-token logits (B, S, V), nn.Linear tied to wte

so each block gives three rows, as the study's Transformer does (self_attn, linear1, linear2). The
linear layers of GPT-2 are ``transformers.pytorch_utils.Conv1D`` (a Linear with its weight stored
transposed), not ``nn.Linear``.

Padding: texts are PAD-ed at the end and attention is causal, so no real position ever attends to a
padding position: the model runs without an ``attention_mask`` (the logits of real positions are the
same) and declares its padding (`GPT2LM.padding_mask`, PAD = 0) so that measurements leave it out. The
loss ignores padded targets (`ndt.models.objective`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ndt.models.pooling import PAD_ID
from ndt.models.registry import ArchModel

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

#: Dropout of GPT-2 (embeddings, attention weights, residual branches), kept: the study's
#: Transformer trains with dropout 0.1 too.
DROPOUT = 0.1


def require_transformers() -> Any:
    """Import ``transformers``, or raise an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the GPT-2 models (arch gpt2_mini, ndt.models.gpt) need Hugging Face transformers: "
            "pip install 'ndt[hf]'"
        ) from e
    return transformers


def gpt2_config(**overrides: Any) -> GPT2Config:
    """A ``GPT2Config``: GPT-2 small's defaults, then `overrides` (e.g. ``n_layer=4``).

    No key-value cache (training never generates) and no BOS/EOS ids (50,256 is outside a small
    vocabulary; ndt's vocabularies have none).
    """
    transformers = require_transformers()
    defaults: dict[str, Any] = {"use_cache": False, "bos_token_id": None, "eos_token_id": None}
    return transformers.GPT2Config(**{**defaults, **overrides})


def gpt2_small(device: torch.device | str | None = None, **overrides: Any) -> GPT2LMHeadModel:
    """True GPT-2 small with random init (no download), as a raw ``GPT2LMHeadModel``.

    12 blocks, width 768, 12 heads, vocabulary 50,257, 1,024 positions: 124,439,808 parameters (the
    output layer is tied to the token embedding). Seed torch's RNG first for reproducible weights.

    Args:
        device: where to create the parameters (``"meta"``: shapes only, no memory, no init cost).
        overrides: ``GPT2Config`` fields to change (e.g. ``attn_implementation="eager"``).

    Returns:
        A ``GPT2LMHeadModel``; ``model(input_ids=ids)`` returns a ``ModelOutput`` whose ``logits`` are
        (B, S, 50257).
    """
    transformers = require_transformers()
    config = gpt2_config(**overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return transformers.GPT2LMHeadModel(config)


class GPT2LM(ArchModel):
    """A GPT-2 causal language model on token ids: (B, S) ids in, (B, S, V) next-token logits out.

    Args:
        vocab_size: V (PAD = 0 included).
        n_positions: the longest sequence S.
        n_layer: transformer blocks.
        n_embd: token width d (feed-forward 4d).
        n_head: attention heads.
        config_overrides: other ``GPT2Config`` fields.

    Raises:
        ImportError: transformers is not installed (the message says ``pip install 'ndt[hf]'``).
    """

    def __init__(
        self,
        vocab_size: int,
        n_positions: int,
        n_layer: int,
        n_embd: int,
        n_head: int,
        **config_overrides: Any,
    ) -> None:
        super().__init__()
        transformers = require_transformers()
        config = gpt2_config(
            vocab_size=vocab_size,
            n_positions=n_positions,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            resid_pdrop=DROPOUT,
            embd_pdrop=DROPOUT,
            attn_pdrop=DROPOUT,
            **config_overrides,
        )
        hf = transformers.GPT2LMHeadModel(config)  # GPT-2's init (N(0, 0.02), scaled residual projections)
        # Its two parts as our own children, so that layer names are a raw GPT2LMHeadModel's
        # (transformer.h.0.attn, lm_head); lm_head's weight stays the embedding's (tied).
        self.transformer = hf.transformer
        self.lm_head = hf.lm_head
        self.config = config
        self.seq_len = n_positions

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) bool, True at PAD positions (for `ndt.measure.capture`)."""
        return x == PAD_ID

    def post_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """{layer: the nonlinearity applied to its output}: each MLP's ``c_fc`` feeds its GELU."""
        return {f"transformer.h.{i}.mlp.c_fc": block.mlp.act for i, block in enumerate(self.transformer.h)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits.

        Args:
            x: (B, S) int64 token ids, PAD (0) only after each text's end, S <= n_positions.

        Returns:
            (B, S, V) logits; position t scores the token at t + 1.
        """
        hidden = self.transformer(input_ids=x).last_hidden_state  # (B, S, d)
        return self.lm_head(hidden)
