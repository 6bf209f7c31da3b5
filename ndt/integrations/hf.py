"""`DimensionalityCallback` for Hugging Face ``transformers.Trainer`` (``pip install "ndt[hf]"``).

Example::

    from transformers import Trainer
    from ndt.integrations.hf import DimensionalityCallback

    ndt_cb = DimensionalityCallback(sampling_frequency=5, writer="runs/ndt")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[ndt_cb]).train()
    ndt_cb.get_results()
    ndt_cb.detect_jumps("stable_rank")

Contract (the Lightning callback's):

- Built in ``on_train_begin`` on the Trainer's (unwrapped) model. Default layers: ndt's default
  (Linear and ``Conv1D``, Conv, attention modules measured at their output instead of their own
  projections: see `ndt.measure.capture`) plus every ``transformers`` ``Conv1D`` (GPT-2's linear
  layers, its attention projections included). Modules returning tuples (attention:
  ``(attn_output, attn_weights)``) or ``ModelOutput``s are measured on their first tensor
  (``ndt.measure.capture.reduce_output``); select others by name with ``layers=[...]``.
- A row's ``step`` is the 0-based optimizer step (``state.global_step - 1`` after it); ``epoch`` the
  epoch that step belongs to; ``loss`` the mean of the step's micro-batch losses, read from the
  model output's ``loss`` (HF models return it when given labels; NaN otherwise); ``grad_norm`` the
  gradient norm after clipping, taken in ``on_optimizer_step`` (the Trainer zeroes the gradients before
  ``on_step_end``).
- A probe may be a dict of keyword inputs (``input_ids``, ``attention_mask``): the model is called as
  ``model(**probe)``.
- Closed in ``on_train_end``. (The Trainer has no exception event: a tracker dropped by a crash still
  writes its rows when it is garbage-collected; call ``callback.close()`` in an ``except`` to be sure.)
- Resume: ``trainer.train(resume_from_checkpoint=folder)`` restores ``global_step``; rows of the steps
  redone are dropped, the run id and wall time go on from the rows on disk. Rows are flushed whenever
  the Trainer is about to save a checkpoint.
- Only the world's process zero measures unless ``all_ranks=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.pytorch_utils import Conv1D

from ndt.integrations._core import TrackedSteps, TrackerAccess, loss_of
from ndt.measure.capture import select_layers
from ndt.measure.tracker import RowSink
from ndt.storage.parquet import MetricsWriter


def hf_default_layers(model: nn.Module) -> list[str]:
    """ndt's default layer selection plus ``transformers``' ``Conv1D`` modules, in model order."""
    chosen = set(select_layers(model))
    return [n for n, m in model.named_modules() if n in chosen or isinstance(m, Conv1D)]


class DimensionalityCallback(TrackerAccess, transformers.TrainerCallback):
    """Measure every layer's dimensionality during ``Trainer.train`` (see the module docstring).

    Args: as `ndt.integrations.lightning.DimensionalityCallback`.
    """

    def __init__(
        self,
        sampling_frequency: int = 5,
        probe: Any = None,
        writer: str | os.PathLike[str] | MetricsWriter | None = None,
        *,
        loggers: Sequence[RowSink] = (),
        all_ranks: bool = False,
        **tracker_kwargs: Any,
    ) -> None:
        self.core = TrackedSteps(
            sampling_frequency,
            probe,
            writer,
            all_ranks=all_ranks,
            loggers=loggers,
            loss_reduction="mean",
            tracker_kwargs=tracker_kwargs,
        )
        self._loss_hook: RemovableHandle | None = None
        self._losses: list[torch.Tensor] = []
        self._grad_norm: float | torch.Tensor | None = None

    def close(self) -> None:
        """Finish the tracker and remove every hook (idempotent)."""
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        self.core.close()

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any
    ) -> None:
        if model is None:
            raise ValueError(
                "the Trainer passed no model to on_train_begin; ndt needs it to attach its hooks"
            )
        measures = self.core.all_ranks or state.is_world_process_zero
        if measures and self.core.tracker is None:
            self.core.tracker_kwargs.setdefault("layers", hf_default_layers(model))
        self.core.start(model, state.global_step, measures)
        if self.core.tracker is not None and self._loss_hook is None:
            self._loss_hook = model.register_forward_hook(self._keep_loss)

    def _keep_loss(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        # The training forward's loss (a 0-d tensor kept on its device; no sync here).
        if module.training and torch.is_grad_enabled():
            loss = loss_of(output)
            if loss is not None:
                self._losses.append(loss.detach())

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.core.before_batch(state.global_step)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        tracker = self.core.tracker
        # global_step is incremented after this event: the step being taken is global_step.
        if tracker is not None and tracker.is_measured_step(state.global_step):
            self._grad_norm = tracker._grad_norm()  # after clipping and the step; before zero_grad

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        losses, self._losses = self._losses, []
        loss = torch.stack(losses).mean() if losses else None
        epoch = max(math.ceil(state.epoch or 0) - 1, 0)  # state.epoch = epoch + (batch + 1) / batches
        grad_norm, self._grad_norm = self._grad_norm, None
        self.core.after_batch(state.global_step, epoch, loss, grad_norm)
        if control.should_save:
            self.core.flush()  # the Trainer saves right after this event: rows first

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.close()
