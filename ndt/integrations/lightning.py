"""`DimensionalityCallback` for PyTorch Lightning 2.x: ndt in ``Trainer.fit`` (``pip install "ndt[lightning]"``).

Example::

    from lightning.pytorch import Trainer
    from ndt.integrations.lightning import DimensionalityCallback

    ndt_cb = DimensionalityCallback(sampling_frequency=5, writer="runs/ndt")
    Trainer(max_steps=2000, callbacks=[ndt_cb]).fit(model, train_loader)
    ndt_cb.get_results()                    # one row per (step, layer), as the manual loop's
    ndt_cb.detect_jumps("stable_rank")

Contract:

- The tracker is built in ``on_train_start`` on the LightningModule (layer names are its own, e.g.
  ``net.0``; no strategy wrapper prefix), after any checkpoint has been restored.
- A row's ``step`` is the 0-based optimizer step, ``trainer.global_step - 1`` after it (what the manual
  loop's ``for step in range(...)`` calls it); gradient accumulation and several optimizers are counted
  by ``global_step`` (see `ndt.integrations._core`). ``epoch`` is ``trainer.current_epoch``; ``loss``
  is the step's training loss from ``training_step``'s output (a tensor, or a dict with ``"loss"``),
  summed over the accumulated micro-batches (Lightning has already divided each by their number).
- Closed in ``on_train_end`` and ``on_exception``: the rows reach disk either way.
- Resume: ``Trainer.fit(ckpt_path=...)`` restores the callback's state (run id, seconds spent); rows of
  the steps the resumed run redoes are dropped first, so none is doubled or missing. Rows are flushed
  whenever a checkpoint is written, before it is.
- Only global rank 0 measures (its own batch, or the probe), unless ``all_ranks=True``: then every rank
  measures together (`ndt.measure.distributed`; a DDP strategy) and rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from ndt.integrations._core import TrackedSteps, TrackerAccess, loss_of
from ndt.measure.tracker import RowSink
from ndt.storage.parquet import MetricsWriter


class DimensionalityCallback(TrackerAccess, pl.Callback):
    """Measure every layer's dimensionality during ``Trainer.fit`` (see the module docstring).

    Args:
        sampling_frequency: measure at optimizer steps that are multiples of this.
        probe: a fixed batch measured in eval mode at each measured step (a tensor, or a tuple whose
            first element is the input); None measures the training forward of the measured step.
        writer: directory for the Parquet parts, a `MetricsWriter`, or None (rows kept in memory).
        loggers: `ndt.integrations.loggers` adapters that also receive every row.
        all_ranks: measure on every rank together instead of on global rank 0 alone.
        tracker_kwargs: passed to `HighFrequencyTracker` (layers, metrics, run_id, arch, dataset,
            seed, center, sequence_reduction, flush_every, background).
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
        super().__init__()
        self.core = TrackedSteps(
            sampling_frequency,
            probe,
            writer,
            all_ranks=all_ranks,
            loggers=loggers,
            loss_reduction="sum",
            tracker_kwargs=tracker_kwargs,
        )

    # ---------------------------------------------------------------- Lightning hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        measures = self.core.all_ranks or trainer.is_global_zero
        self.core.start(pl_module, trainer.global_step, measures)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.core.before_batch(trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.core.after_batch(trainer.global_step, trainer.current_epoch, loss_of(outputs))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.core.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.core.close()

    def state_dict(self) -> dict[str, Any]:
        # Called while a checkpoint is assembled, before it is written: rows first, so that resuming
        # from this checkpoint never leaves a gap.
        self.core.flush()
        return self.core.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.restored = dict(state_dict)
