"""What the Lightning and Hugging Face callbacks share: one tracker driven by a framework's step counter.

The frameworks report ``global_step``, the number of optimizer steps taken so far. After a batch whose
optimizer step(s) moved it from g0 to g1, the steps just taken are g0 .. g1 - 1 (0-based, as in the
manual loop's ``for step in range(max_steps)``); the tracker logs the first measured one among them, or
g1 - 1 when none is measured. A batch that took no optimizer step (gradient accumulation) only adds its
loss to the window's. Before each batch the hooks are armed when a step about to be taken is measured
(`HighFrequencyTracker.prepare`), so step numbers that advance by more than one (several optimizers)
still find their activations.

Resume: the rows of steps >= the resumed global step are dropped from the store (the resumed run redoes
them; `MetricsWriter(resume_after_step=...)`), the run id is kept (from the callback's saved state, or
the rows on disk), and wall_time goes on from where the rows stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ndt.detect import Detector, Jumps
from ndt.measure.tracker import HighFrequencyTracker, RowSink
from ndt.storage.parquet import FLUSH_EVERY, MetricsWriter, list_parts, read_metrics
from ndt.storage.schema import DEFAULT_METRIC


class TrackerAccess:
    """What both callbacks expose once training ran: the tracker, its rows and its jumps (via ``core``)."""

    core: TrackedSteps

    @property
    def tracker(self) -> HighFrequencyTracker | None:
        """The tracker (None before training starts and on processes that do not measure)."""
        return self.core.tracker

    def get_results(self) -> pd.DataFrame:
        """All rows so far: one per (step, layer), columns as in `ndt.storage.schema`."""
        return self.core.get_results()

    def detect_jumps(
        self, metric: str = DEFAULT_METRIC, layer: str | None = None, detector: str | Detector | None = None
    ) -> Jumps:
        """Jumps of `metric` (layer mean, or one layer), as `HighFrequencyTracker.detect_jumps`."""
        return self.core.detect_jumps(metric, layer, detector)


class TrackedSteps:
    """One `HighFrequencyTracker` fed by a framework's ``global_step`` (see the module docstring).

    Args:
        sampling_frequency: measure at steps that are multiples of this.
        probe: a fixed batch measured in eval mode at each measured step (tensor, tuple, or dict of
            keyword inputs); None measures the training forward of the measured step.
        writer: directory of the Parquet store, a `MetricsWriter`, or None (rows in memory).
        all_ranks: False: only global rank 0 measures (no collectives); True: every rank measures
            together (`ndt.measure.distributed`), rank 0 writes.
        loggers: `RowSink`s (see `ndt.integrations.loggers`).
        loss_reduction: how the micro-batch losses of one optimizer step combine: "sum" (the framework
            already divided them by the number of micro-batches, as Lightning does) or "mean".
        tracker_kwargs: passed to `HighFrequencyTracker` (layers, metrics, run_id, arch, center, ...).
    """

    def __init__(
        self,
        sampling_frequency: int,
        probe: Any,
        writer: str | os.PathLike[str] | MetricsWriter | None,
        *,
        all_ranks: bool,
        loggers: Sequence[RowSink],
        loss_reduction: str,
        tracker_kwargs: dict[str, Any],
    ) -> None:
        if sampling_frequency < 1:
            raise ValueError(
                f"sampling_frequency must be a positive number of steps, got {sampling_frequency}"
            )
        bad = {"model", "sampling_frequency", "probe", "writer", "loggers", "distributed"} & set(
            tracker_kwargs
        )
        if bad:
            raise TypeError(f"{sorted(bad)} are set by the callback itself; pass them as its own arguments")
        self.sampling_frequency = sampling_frequency
        self.probe = probe
        self.writer = writer
        self.all_ranks = all_ranks
        self.loggers = list(loggers)
        self.loss_reduction = loss_reduction
        self.tracker_kwargs = dict(tracker_kwargs)
        self.tracker: HighFrequencyTracker | None = None
        self.restored: dict[str, Any] | None = None  # the saved state of the run being resumed
        self._seen_step = 0  # global_step after the last batch
        self._stride = 1  # optimizer steps per stepping batch, as last observed
        self._loss_sum: torch.Tensor | float | None = None
        self._loss_count = 0
        self._t_start = time.perf_counter()
        self._elapsed = 0.0

    # ---------------------------------------------------------------- lifecycle

    def start(self, model: nn.Module, global_step: int, measures: bool) -> None:
        """Build the tracker at the start of training (after any checkpoint has been restored)."""
        self._seen_step = int(global_step)
        if not measures or self.tracker is not None:
            return
        kwargs = dict(self.tracker_kwargs)
        writer = self.writer
        resumed = global_step > 0
        if resumed and not isinstance(writer, MetricsWriter) and writer is not None:
            kept = _kept_rows(Path(writer), global_step - 1)
            if self.restored is not None:
                kwargs.setdefault("run_id", self.restored.get("run_id"))
                self._elapsed = float(self.restored.get("elapsed", 0.0))
            elif kept is not None and len(kept):
                kwargs.setdefault("run_id", str(kept["run_id"].iloc[0]))
                self._elapsed = float(kept["wall_time"].max())
        if writer is not None and not isinstance(writer, MetricsWriter):
            flush_every = int(kwargs.get("flush_every", FLUSH_EVERY))
            # A fresh run refuses a store that already holds rows; a resumed one drops the rows of the
            # steps it redoes (global_step onwards).
            writer = MetricsWriter(
                writer, flush_every, resume_after_step=global_step - 1 if resumed else None
            )
        self.tracker = HighFrequencyTracker(
            model,
            self.sampling_frequency,
            probe=self.probe,
            writer=writer,
            loggers=self.loggers,
            distributed=None if self.all_ranks else False,
            elapsed=self._elapsed,
            **kwargs,
        )
        self._t_start = time.perf_counter()

    def before_batch(self, global_step: int) -> None:
        """Arm the hooks when a step this batch may take is measured."""
        if self.tracker is None:
            return
        upcoming = range(global_step, global_step + self._stride)
        self.tracker.prepare(next((s for s in upcoming if self.tracker.is_measured_step(s)), global_step))

    def after_batch(
        self,
        global_step: int,
        epoch: int,
        loss: torch.Tensor | float | None,
        grad_norm: torch.Tensor | float | None = None,
    ) -> bool:
        """Account for one batch; log when it took optimizer step(s). Returns whether it was measured."""
        if self.tracker is None:
            self._seen_step = global_step
            return False
        if loss is not None:
            loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        if global_step == self._seen_step:
            return False  # an accumulation micro-batch: no optimizer step yet
        taken = range(self._seen_step, global_step)
        self._stride = max(len(taken), 1)
        self._seen_step = global_step
        step = next((s for s in taken if self.tracker.is_measured_step(s)), global_step - 1)
        step_loss = self._loss_sum
        if step_loss is not None and self.loss_reduction == "mean":
            step_loss = step_loss / max(self._loss_count, 1)
        self._loss_sum, self._loss_count = None, 0
        measured = self.tracker.log(step, step_loss, epoch=epoch, grad_norm=grad_norm)
        # Armed for the next batch by before_batch (log arms step + 1, which can be wrong here).
        self.tracker.capture.enabled = False
        return measured

    def flush(self) -> None:
        """Rows up to now reach disk (called before a checkpoint is written: resume never leaves a gap)."""
        if self.tracker is not None and not self.tracker.closed:
            self.tracker.flush()

    def close(self) -> None:
        """Finish the tracker: pending rows to disk, hooks removed, loggers closed (idempotent)."""
        if self.tracker is not None:
            self.tracker.close()

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the run id, the seconds spent, the last global step seen."""
        run_id = self.tracker.run_info["run_id"] if self.tracker is not None else None
        return {
            "run_id": run_id,
            "elapsed": self._elapsed + time.perf_counter() - self._t_start,
            "global_step": self._seen_step,
        }

    # ---------------------------------------------------------------- results

    def _require(self) -> HighFrequencyTracker:
        if self.tracker is None:
            raise RuntimeError(
                "no measurements here: training has not started, or this process is not global rank 0 "
                "(pass all_ranks=True to measure on every rank)"
            )
        return self.tracker

    def get_results(self) -> pd.DataFrame:
        return self._require().get_results()

    def detect_jumps(self, metric: str, layer: str | None, detector: str | Detector | None) -> Jumps:
        return self._require().detect_jumps(metric, layer, detector)


def _kept_rows(path: Path, last_kept_step: int) -> pd.DataFrame | None:
    """The rows a resumed run keeps (step <= last_kept_step), or None without a store."""
    if not path.exists() or not list_parts(path):
        return None
    rows = read_metrics(path, columns=["run_id", "step", "wall_time"])
    return rows[rows["step"] <= last_kept_step]


def loss_of(output: Any) -> torch.Tensor | None:
    """The loss in a training step's or a model's output: a tensor, ``out["loss"]`` or ``out.loss``."""
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 0 else None
    value = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return value if isinstance(value, torch.Tensor) and value.ndim == 0 else None
