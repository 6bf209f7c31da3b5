"""HighFrequencyTracker: per-layer dimensionality every N steps, streamed to Parquet, with jumps.

Usage (the study's example)::

    tracker = HighFrequencyTracker(model, sampling_frequency=5)
    for epoch in range(num_epochs):
        for batch in dataloader:
            loss = train_step(batch)
            tracker.log(step, loss.item())
    jumps = tracker.detect_jumps(metric="stable_rank")

What happens at a measured step (a multiple of ``sampling_frequency``):

1. Activations. Without a probe: forward hooks, armed only for the forward that precedes a
   measured step, reduce each layer output to (n, k) and form its float64 Gram statistics right there
   (no copy of the activations is kept, so in-place ops later cannot alter them). With a probe: at
   `log` the model runs the probe in eval mode under ``no_grad``, then returns to its previous mode.
   What the row of step s measured (`steps_done_at`): with a probe, the weights after update s
   (s + 1 optimizer steps done); without one, the training forward of step s, i.e. the weights
   before update s (s steps done), on step s's batch, in train mode.
2. One transfer: all Gram statistics, loss and gradient norm are packed into one float64 buffer per
   device (a Python-float loss is written there by a fill kernel, not copied from the host); on CUDA
   it is copied asynchronously into a pinned host buffer from a bounded pool of reused ones, and the
   worker thread waits for the copy, so the training thread never waits (`ndt.measure.transfer`;
   a model spread over several devices makes one copy per device, into one host buffer). A model on
   the CPU solved inline skips this step: its Grams are host tensors already and are kept as they are.
3. Spectra are solved in batches of `flush_every` measurements (one LAPACK call per Gram shape and
   thread, `ndt.measure.spectrum.eigvalsh_batched`; every metric vectorised over the batch), then
   the rows go to a `MetricsWriter` and reach disk as one closed Parquet part. On CPU this happens inline (a second thread would only compete for the same
   cores: torch's own second thread spins between operations); on CUDA on the worker thread. Solving
   each measurement at once, while its Grams are in cache, was measured and is slower: limiting
   OpenBLAS to one thread costs ~0.4 ms after torch work, once per solve.

Between measured steps the hooks return at once: no copies, no synchronisation. At measured steps
the training thread does not synchronise with a device either (on CUDA, on the worker path), except
where a measurement's own shape depends on the data (``tokens`` with padding; layers above
`exact_max_size`, whose estimator runs on the host).

What reaches disk: `close()` (or leaving the ``with`` block) writes every row. A tracker that is
garbage-collected without it, or still open when the interpreter exits, is closed then (a finaliser and
an ``atexit`` hook; the worker thread holds only a weak reference, so it never keeps a tracker alive).
Lost on SIGKILL or a power loss: the rows not yet in a part, at most `flush_every` measurements (on the
worker path also those still queued for it, at most `PINNED_BUFFERS` more); `ndt.run` recomputes them on
resume. `flush(wait=False)` asks the worker to write a part without waiting for it; `durable_step`
says how far the rows on disk reach.

Under torchrun (a DDP or FSDP2 model, every rank calling `log`), step 1 ends with one all-reduce
across the ranks and only rank 0 goes on to steps 2 and 3; see `ndt.measure.distributed`. Loggers
(`RowSink`s) receive each batch of rows in step 3, right after the writer.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import queue
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from ndt.detect import Detector, Jumps, get_detector
from ndt.measure.capture import (
    MAX_ROWS,
    ActivationCapture,
    ConvReduction,
    HookPoint,
    LayerSelector,
    PaddingMask,
    SequenceReduction,
)
from ndt.measure.distributed import DistributedContext
from ndt.measure.estimate import EXACT_MAX_SIZE
from ndt.measure.series import layer_mean_series
from ndt.measure.spectrum import (
    DERIVED_COLUMNS,
    GramStats,
    flat_size,
    metrics_from_solved,
    solve_spectra,
    validate_metric_names,
    with_derived_columns,
)
from ndt.measure.transfer import PINNED_BUFFERS, BufferPool, Staged, stage
from ndt.storage.parquet import FLUSH_EVERY, MetricsWriter
from ndt.storage.schema import DEFAULT_METRIC, METRIC_COLUMNS

log = logging.getLogger(__name__)


def _is_compiled(model: nn.Module) -> bool:
    """Whether `model` or a submodule is a ``torch.compile`` wrapper (an ``OptimizedModule``)."""
    return any(hasattr(m, "_orig_mod") for m in model.modules())


def steps_done_at(step: int, probe: bool) -> int:
    """Optimizer steps done when the row of `step` was measured: the one meaning of a row's step.

    With a probe, `log(step)` measures after update `step`: step + 1 steps done. Without one, the row
    holds the training forward of step `step`, which ran before its update: step steps done.
    """
    return step + 1 if probe else step


_DRAIN = "drain"  # worker-queue request: solve whatever is buffered now
_STOP = "stop"  # worker-queue request: exit


@dataclass(frozen=True)
class _FlushRequest:
    """Worker-queue request: solve and write a part, then set `durable_step` to `upto`."""

    upto: int  # every step logged before the request is < upto


class RowSink(Protocol):
    """Something that also receives the rows (a TensorBoard/W&B/MLflow adapter, `ndt.integrations.loggers`).

    `log_rows` gets the columns of one batch of rows as `MetricsWriter.append` does, right after they
    were handed to the writer; it must not raise (the tracker warns once and drops a sink that does).
    """

    def log_rows(self, columns: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Measurement:
    """One measurement waiting for its spectra.

    Its values are on the host from the start (``flats``, ``scalars``: a CPU measurement solved
    inline), or on their way there through ``staged`` until `HighFrequencyTracker._land` reads
    them into those fields.
    """

    step: int
    epoch: int
    wall_time: float
    layers: list[str]
    layer_index: np.ndarray  # (L,) int16
    n_samples: np.ndarray  # (L,) int32
    n_features: np.ndarray  # (L,) int32
    sizes: list[int]  # Gram side m of each layer
    sample_side: list[bool]  # whether each layer's Gram is A A^T
    staged: Staged | None  # host float64 on its way: each layer's GramStats.pieces(), then loss, grad_norm
    flats: list[np.ndarray] | None = None  # (L,) each layer's statistics, `GramStats.pieces` layout
    scalars: np.ndarray | None = None  # (2,) float64: loss, grad norm


def _host_float(v: float | torch.Tensor | None) -> float:
    """A loss or grad norm held on the host (a number, or a CPU tensor) as a float; NaN for None."""
    if v is None:
        return math.nan
    if isinstance(v, torch.Tensor):
        # Through numpy, which raises on a device tensor, so that this read can never wait for one;
        # cast first only where numpy has no such dtype (bfloat16): a cast costs ~25 us more.
        v = v.detach()
        return float((v.to(torch.float64) if v.dtype == torch.bfloat16 else v).numpy().item())
    return float(v)


class HighFrequencyTracker:
    """Measure the dimensionality of every layer's representations during training.

    Args:
        model: the network being trained.
        sampling_frequency: measure at steps that are multiples of this (the study: 5).
        layers: which modules; see `ndt.measure.capture.select_layers` (default: every Linear/Conv
            output and each MultiheadAttention output).
        probe: a fixed batch (a tensor, a tuple/list whose first element is the input, or a dict of
            keyword inputs, as Hugging Face models take) measured in eval mode under no_grad at each
            measured step, after that step's update; None measures the training forward that
            preceded the step, before its update (no extra forward; see `steps_done_at`).
        metrics: names from `ndt.measure.spectrum.METRICS`; the other metric columns are left null.
        writer: a directory for the Parquet parts, a `MetricsWriter`, or None (rows kept in memory).
        run_id, arch, dataset, seed: identifiers written on every row (arch defaults to the model's
            class name, run_id to a fresh unique id).
        center: centre activations before the decomposition (the study did not); done on the
            activations, on their device.
        sequence_reduction: how (B, S, F) outputs become matrices; see `ndt.measure.capture`.
        conv_reduction: how (B, C, H, W) outputs become matrices: ``positions`` (every spatial
            position a row) or ``spatial_mean`` (the study's).
        max_rows: most rows a ``positions`` measurement keeps (fixed positions).
        exact_max_size: layers whose measured matrix has min(n, k) above this are estimated
            matrix-free (`ndt.measure.estimate`: bounded time and memory, within a few percent); None
            decomposes every layer exactly.
        hook_point: ``pre`` (each module's output, the study's) or ``post`` (after the nonlinearity
            that follows it; see `ndt.measure.capture`).
        padding_mask: ``"auto"`` (the model's declared mask, or an ``attention_mask=`` keyword), a
            callable of the model's inputs giving (B, S) bool, True at padding, or None (unmasked:
            the study's).
        flush_every: measurements buffered before a Parquet part is written.
        background: solve spectra on a worker thread; default: on CUDA only.
        elapsed: seconds the run already spent before this tracker (a resumed run), added to wall_time.
        loggers: `RowSink`s that receive every row too (TensorBoard, W&B, MLflow); Parquet stays the
            source of truth. They are closed with the tracker.
        distributed: measure with the other ranks of torch.distributed (see `ndt.measure.distributed`):
            None: when a process group of more than one process is initialised; False: this process
            alone, with no collectives.

    Use it as a context manager, or call `close()`, so the last rows reach disk.
    """

    def __init__(
        self,
        model: nn.Module,
        sampling_frequency: int = 5,
        layers: LayerSelector = None,
        probe: torch.Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
        metrics: Sequence[str] = METRIC_COLUMNS,
        writer: str | os.PathLike[str] | MetricsWriter | None = None,
        *,
        run_id: str | None = None,
        arch: str | None = None,
        dataset: str = "",
        seed: int | None = None,
        center: bool = False,
        sequence_reduction: SequenceReduction | str = "token_mean",
        conv_reduction: ConvReduction | str = "positions",
        max_rows: int = MAX_ROWS,
        exact_max_size: int | None = EXACT_MAX_SIZE,
        hook_point: HookPoint | str = "pre",
        padding_mask: PaddingMask | str = "auto",
        flush_every: int = FLUSH_EVERY,
        background: bool | None = None,
        elapsed: float = 0.0,
        loggers: Sequence[RowSink] = (),
        distributed: bool | None = None,
    ) -> None:
        if sampling_frequency < 1:
            raise ValueError(
                f"sampling_frequency must be a positive number of steps, got {sampling_frequency}"
            )
        self.dist = DistributedContext.detect(model, distributed)
        model = self.dist.inner  # hooks, probe and gradients on the inner module (names without ``module.``)
        self.model = model
        self.sampling_frequency = int(sampling_frequency)
        self.metrics = validate_metric_names(metrics)
        self.center = center
        self.run_info = {
            "run_id": run_id or f"{arch or type(model).__name__}__{uuid.uuid4().hex[:8]}",
            "arch": arch or type(model).__name__,
            "dataset": dataset,
            "seed": seed,
        }
        if not self.dist.is_writer:
            writer = None  # only rank 0 writes; the others keep nothing
        self.writer = writer if isinstance(writer, MetricsWriter) else MetricsWriter(writer, flush_every)
        self.loggers = list(loggers) if self.dist.is_writer else []
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.probe = self._probe_input(probe, device)
        self.capture = ActivationCapture(
            model,
            layers,
            sequence_reduction=sequence_reduction,
            conv_reduction=conv_reduction,
            max_rows=max_rows,
            hook_point=hook_point,
            padding_mask=padding_mask,
            # centred on the activations (exact), where the Gram's rank-one correction would cancel;
            # under torchrun without a probe, summable uncentred statistics (centred once reduced)
            transform=self.dist.transform(
                probe=self.probe is not None, center=center, exact_max_size=exact_max_size
            ),
            grad_enabled_only=self.probe is None,
            # hooks registered only for the forwards measured; a compiled model keeps its hooks (its
            # graphs would be recompiled at every change)
            lazy=not _is_compiled(model),
        ).attach()
        self._layer_index = {name: i for i, name in enumerate(self.capture.layer_names)}
        # Armed for the first forward: the first logged step is usually 0, a measured step.
        self.capture.enabled = self.probe is None
        self.epoch = 0
        self.n_measurements = 0
        self._last_step: int | None = None
        self._t0 = time.perf_counter() - elapsed
        self._warned_nonfinite: set[str] = set()
        self._warned_missing = False
        self.flush_every = flush_every
        self._pending: list[_Measurement] = []  # measured, spectra not yet solved
        self.background = device.type == "cuda" if background is None else background
        self._worker: _Worker | None = None  # started at the first background measurement
        self._pool: BufferPool | None = None  # host buffers of staged measurements (made when needed)
        #: Every measurement of a step < this has its rows written (`flush`); 0 until a flush.
        self.durable_step = 0
        self.closed = False
        _OPEN_TRACKERS.add(self)  # closed at interpreter exit if still open

    # ------------------------------------------------------------------ public API

    @property
    def layer_names(self) -> list[str]:
        """The measured layers, in model order (their position is the row's ``layer_index``)."""
        return list(self.capture.layer_names)

    def is_measured_step(self, step: int) -> bool:
        """Whether `log(step)` takes a measurement."""
        return step % self.sampling_frequency == 0

    def log(
        self,
        step: int,
        loss: float | torch.Tensor | None = None,
        *,
        epoch: int | None = None,
        grad_norm: float | torch.Tensor | None = None,
    ) -> bool:
        """Record training step `step` (call once per optimizer step, after it).

        Args:
            step: the optimizer step just taken (0-based in the study).
            loss: the step's loss; a tensor stays on its device until the measurement's one transfer.
            epoch: current epoch; remembered for later calls that omit it.
            grad_norm: global gradient norm; default: computed from the parameters' ``.grad`` when the
                step is measured (NaN when the gradients were already cleared).

        Returns:
            True when this step was measured.
        """
        if self.closed:
            raise RuntimeError("this tracker is closed; create a new HighFrequencyTracker to keep measuring")
        self._raise_worker_error()
        if epoch is not None:
            self.epoch = int(epoch)
        self._last_step = step
        measured = self.is_measured_step(step)
        if measured:
            self._measure(step, loss, grad_norm)
        # Arm the hooks for the next forward only when the next step (step + 1) is measured. Most
        # steps have nothing to clear or change: they return here after a few attribute reads.
        arm = self.probe is None and self.is_measured_step(step + 1)
        cap = self.capture
        if measured or arm or cap.enabled or cap.activations:
            cap.clear()
            cap.enabled = arm
        return measured

    def prepare(self, step: int) -> None:
        """Arm the hooks for the training forward of optimizer step `step` (before that forward).

        `log` arms step + 1 itself; a framework callback whose step numbers may skip (several
        optimizers, gradient accumulation) calls this before each batch instead.
        """
        self.capture.enabled = self.probe is None and self.is_measured_step(step)

    def measure_now(self, step: int, loss: float | torch.Tensor | None = None) -> None:
        """Measure at `step` regardless of the sampling frequency (needs a probe)."""
        if self.probe is None:
            raise ValueError("measure_now needs a probe: without one there is no forward to measure")
        self._measure(step, loss, None)

    def flush(self, wait: bool = True) -> None:
        """Finish pending spectra and write every buffered row to disk, then advance `durable_step`.

        Args:
            wait: False on the worker path: ask the worker to do it after the measurements it already
                holds, and return at once (`durable_step` advances when it is done; an error it hits
                is raised by a later call). On the inline path the flush is done either way.
        """
        upto = 0 if self._last_step is None else self._last_step + 1
        w = self._worker
        if not wait and w is not None and threading.current_thread() is not w.thread:
            self._raise_worker_error()
            w.queue.put(_FlushRequest(upto))
            return
        self._drain()
        self.writer.flush()
        self.durable_step = max(self.durable_step, upto)

    @property
    def pool(self) -> BufferPool | None:
        """The host buffers of staged measurements (None until a measurement needed one)."""
        return self._pool

    def get_results(self) -> pd.DataFrame:
        """All rows so far: one per (step, layer), columns as in `ndt.storage.schema`, then the derived
        ones (`ndt.measure.spectrum.DERIVED_COLUMNS`: ``pr_eigen_corrected``)."""
        self._drain()
        return with_derived_columns(self.writer.read())

    def series(self, metric: str = DEFAULT_METRIC, layer: str | None = None) -> pd.Series:
        """A metric over steps: the mean over measured layers (the study's), or one layer's.

        The layer mean is `ndt.measure.series.layer_mean_series`: a step where a layer is NaN or
        missing is dropped (one warning names them), so the mean is over the same layers at every step.
        One layer's series drops its NaN steps the same way.

        Returns:
            Series indexed by step.
        """
        if metric not in DERIVED_COLUMNS:
            validate_metric_names([metric])
        df = self.get_results()
        if layer is not None:
            if layer not in self._layer_index:
                raise KeyError(f"layer {layer!r} is not measured; measured layers: {self.layer_names}")
            df = df[df["layer"] == layer]
        # One layer's series drops its NaN steps (one warning names them) as the layer mean does, and
        # as ndt.investigate layer= and ndt.view do: the detectors take only finite series.
        steps, values = layer_mean_series(
            df["step"].to_numpy(),
            df[metric].to_numpy(),
            df["layer"].to_numpy(),
            what=metric if layer is None else f"{metric} of {layer}",
        )
        return pd.Series(values, index=pd.Index(steps, name="step"), name=metric)

    def detect_jumps(
        self, metric: str = DEFAULT_METRIC, layer: str | None = None, detector: str | Detector | None = None
    ) -> Jumps:
        """Jumps of `metric` on the layer-mean series (default) or one layer's, sorted by step.

        Args:
            metric: a metric column (default `ndt.storage.schema.DEFAULT_METRIC`, the series `series`
                returns, the tables use and ``ndt.investigate`` ranks).
            layer: one measured layer; None for the mean over layers.
            detector: a name from `ndt.detect.DETECTORS` (default `ndt.detect.DEFAULT_DETECTOR`) or a
                detector object.
        """
        s = self.series(metric, layer)
        return get_detector(detector).detect(s.to_numpy(), s.index.to_numpy())

    def close(self) -> None:
        """Finish pending work, remove the hooks and flush every row to disk (idempotent)."""
        if self.closed:
            return
        try:
            err = self._stop_worker()
            if err is None:
                self._solve_pending()
            else:
                raise RuntimeError(f"measurement failed on the spectra worker: {err}") from err
        finally:
            self.capture.remove()
            self.writer.close()
            for sink in list(self.loggers):  # a failing one removes itself
                self._to_sink(sink, "close")
            self.closed = True
            _OPEN_TRACKERS.discard(self)

    def __enter__(self) -> HighFrequencyTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort: a tracker dropped without close() still leaves its rows on disk. (It can run on
        # the worker thread, when the worker held the last reference for an instant: see _stop_worker.)
        if not getattr(self, "closed", True):
            with contextlib.suppress(Exception):  # never raise from a finaliser
                self.close()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _probe_input(
        probe: torch.Tensor | Sequence[Any] | Mapping[str, Any] | None, device: torch.device
    ) -> torch.Tensor | dict[str, Any] | None:
        if probe is None:
            return None
        if isinstance(probe, Mapping):  # keyword inputs (input_ids, attention_mask, ...)
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in probe.items()}
        x = probe[0] if isinstance(probe, tuple | list) else probe
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"probe must be a tensor or (inputs, targets); got {type(x).__name__}")
        return x.to(device)

    def _run_probe(self) -> None:
        if not self.dist.runs_probe():
            return
        was_training = self.model.training
        self.capture.clear()
        self.capture.enabled = self.dist.is_writer  # other ranks only take part in FSDP's gathers
        try:
            self.model.eval()
            with torch.no_grad():
                if isinstance(self.probe, dict):
                    self.model(**self.probe)
                else:
                    self.model(self.probe)
        finally:
            self.capture.enabled = False
            self.model.train(was_training)

    def _grad_norm(self) -> float | torch.Tensor | None:
        """The global gradient norm: a float when every gradient is on the host, else a tensor on the
        first gradient's device (read with the measurement's one transfer: no wait here)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return None
        # What clip_grad_norm_ computes, without its per-call grouping by device and dtype.
        norms = list(torch._foreach_norm(grads))
        if all(n.device.type == "cpu" for n in norms):
            # One read per parameter tensor instead of two more ops and a read: ~80 us less per
            # measurement of a 6-tensor MLP. Summed in float64 (the per-tensor norms are in the
            # gradients' dtype, as clip_grad_norm_'s).
            return math.sqrt(math.fsum(_host_float(n) ** 2 for n in norms))
        # The moves only matter for a model split across devices (skipped on one).
        device = norms[0].device
        if any(n.device != device for n in norms):
            norms = [n.to(device) for n in norms]
        return torch.linalg.vector_norm(torch.stack(norms))

    def _measure(
        self, step: int, loss: float | torch.Tensor | None, grad_norm: float | torch.Tensor | None
    ) -> None:
        wall_time = time.perf_counter() - self._t0
        for what, v in (("loss", loss), ("grad_norm", grad_norm)):
            if isinstance(v, torch.Tensor) and v.numel() != 1:
                raise ValueError(
                    f"log({what}=...) takes one number per step, got a tensor of shape {tuple(v.shape)}; "
                    f"pass its mean (e.g. {what}.mean()) or leave it out"
                )
        if self.probe is not None:
            self._run_probe()
        stats: dict[str, GramStats] = dict(self.capture.activations)
        if self.dist.active:
            # Every rank is here at the same step: one all-reduce, then only rank 0 goes on.
            probe = self.probe is not None
            names = [n for n in self.capture.layer_names if n in stats]
            # The caller's grad norm squared as it came (a number, or a tensor on its device): `reduce`
            # writes it into the buffer on the device without a blocking copy of a host tensor.
            grad_sq = (
                self.dist.grad_sq_contribution(self.model)
                if grad_norm is None
                else grad_norm**2 / self.dist.world_size
            )
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
            stats, loss, grad_norm = self.dist.reduce(
                stats, names, loss, grad_sq, device, with_stats=not probe, center=self.center
            )
            if not self.dist.is_writer:
                self.n_measurements += 1
                return
        if not stats:
            if not self._warned_missing:
                warnings.warn(
                    f"step {step}: no activations were captured, so it is not measured. Call log() once "
                    "per optimizer step with consecutive step numbers (the hooks are armed for step + 1), "
                    "or pass a probe batch.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned_missing = True
            return
        if grad_norm is None:
            grad_norm = self._grad_norm()
        names = [n for n in self.capture.layer_names if n in stats]
        ordered = [stats[n] for n in names]
        pieces = [s.pieces() for s in ordered]
        on_host = all(p.device.type == "cpu" for ps in pieces for p in ps) and all(
            not isinstance(v, torch.Tensor) or v.device.type == "cpu" for v in (loss, grad_norm)
        )
        if self.background or not on_host:
            staged = self._stage(
                [*(p for ps in pieces for p in ps), *self._scalars(loss, grad_norm, ordered)]
            )
            flats, scalars = None, None
        else:
            # On the host already, solved on this thread: the Grams themselves are the values (each
            # a tensor of its own, which nothing else holds); no copy until the solve's one stack.
            # Loss and grad norm are read now (host tensors, through numpy: nothing here can wait
            # for a device), so that the caller's tensors may change; a grad norm the tracker
            # computed is a float already (`_grad_norm`).
            staged = None
            flats = [(ps[0] if len(ps) == 1 else torch.cat(ps)).numpy() for ps in pieces]
            scalars = np.array([_host_float(loss), _host_float(grad_norm)])
        m = _Measurement(
            step=int(step),
            epoch=self.epoch,
            wall_time=wall_time,
            layers=names,
            layer_index=np.array([self._layer_index[n] for n in names], dtype=np.int16),
            n_samples=np.array([s.n_samples for s in ordered], dtype=np.int32),
            n_features=np.array([s.n_features for s in ordered], dtype=np.int32),
            sizes=[s.size for s in ordered],
            sample_side=[s.sample_side for s in ordered],
            staged=staged,
            flats=flats,
            scalars=scalars,
        )
        self.n_measurements += 1
        if self.background:
            self._submit(m)
        else:
            self._pending.append(m)
            if len(self._pending) >= self.flush_every:
                self._solve_pending()

    @staticmethod
    def _scalars(loss: Any, grad_norm: Any, stats: list[GramStats]) -> list[torch.Tensor]:
        """Loss and grad norm as (1,) float64 tensors on a device, to follow the layers' pieces."""
        device = stats[-1].gram.device

        def scalar(v: Any) -> torch.Tensor:
            if isinstance(v, torch.Tensor):  # stays where it is: no copy, no wait
                return v.detach().reshape(1).to(torch.float64)
            # A Python number: written on the device by a fill kernel (the value travels as a kernel
            # argument). torch.tensor([v], device=...) would copy it from pageable host memory, which
            # blocks the host until the device has caught up.
            return torch.full((1,), math.nan if v is None else float(v), dtype=torch.float64, device=device)

        return [scalar(loss), scalar(grad_norm)]

    def _stage(self, pieces: list[torch.Tensor]) -> Staged:
        """Start a measurement's one transfer to the host (see `ndt.measure.transfer`), into a buffer
        of the bounded pool: the worker path waits for the worker to free one when all are in use; the
        inline path reads its own pending measurements to free them."""
        if self._pool is None:
            self._pool = BufferPool(PINNED_BUFFERS, pin=any(p.device.type == "cuda" for p in pieces))
        if self.background:
            return stage(pieces, self._pool, on_wait=self._check_worker)
        return stage(pieces, self._pool, reclaim=self._land_pending)

    def _land(self, m: _Measurement) -> tuple[list[np.ndarray], np.ndarray]:
        """A measurement's values on the host (waits for its copies; frees its pool buffer): each
        layer's statistics, and (2,) loss and grad norm."""
        if m.flats is None:
            assert m.staged is not None
            flat = m.staged.land()
            flats, offset = [], 0
            for size, side in zip(m.sizes, m.sample_side, strict=True):
                length = flat_size(size, side)
                flats.append(flat[offset : offset + length])
                offset += length
            m.flats, m.scalars = flats, flat[offset : offset + 2]
            m.staged = None
        assert m.scalars is not None  # set with flats
        return m.flats, m.scalars

    def _land_pending(self) -> int:
        """Land every pending measurement still holding a pool buffer; return how many there were."""
        held = [m for m in self._pending if m.staged is not None and m.staged.buffer is not None]
        for m in held:
            self._land(m)
        return len(held)

    def _check_worker(self) -> None:
        """Raise when the worker failed or is gone (called while waiting for it to free a buffer)."""
        self._raise_worker_error()
        w = self._worker
        if w is not None and not w.thread.is_alive():
            raise RuntimeError("the spectra worker stopped; no measurement can be taken")

    def _solve_pending(self) -> None:
        """Solve the buffered measurements' spectra in one batch (one LAPACK call per Gram shape), evaluate
        every metric of the batch at once, write their rows, flush a part."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        landed = [self._land(m) for m in batch]
        flats = [f for layer_flats, _ in landed for f in layer_flats]
        scalars = np.array([sc for _, sc in landed])  # (B, 2): loss, grad norm
        solved = solve_spectra(
            flats,
            [s for m in batch for s in m.sizes],
            np.concatenate([m.n_samples for m in batch]),
            np.concatenate([m.n_features for m in batch]),
            center=self.center,
            sample_sides=[side for m in batch for side in m.sample_side],
        )
        del flats
        n_layers = [len(m.sizes) for m in batch]
        n_samples = [m.n_samples for m in batch]
        n_features = [m.n_features for m in batch]
        values, finite = metrics_from_solved(solved, self.metrics)
        layers = np.concatenate([np.asarray(m.layers, dtype=object) for m in batch])
        steps = np.repeat([m.step for m in batch], n_layers)
        for name, step in zip(layers[~finite], steps[~finite], strict=True):
            if name not in self._warned_nonfinite:
                self._warned_nonfinite.add(name)
                warnings.warn(
                    f"layer {name!r} has NaN/Inf activations at step {step}: its metrics are NaN there "
                    "(further occurrences in this layer are not reported); training goes on",
                    RuntimeWarning,
                    stacklevel=2,
                )
        not_computed = np.full(len(layers), None, dtype=object)  # written as null
        columns = {
            **self.run_info,
            "step": steps,
            "epoch": np.repeat([m.epoch for m in batch], n_layers),
            "layer": layers,
            "layer_index": np.concatenate([m.layer_index for m in batch]),
            "n_samples": np.concatenate(n_samples),
            "n_features": np.concatenate(n_features),
            "loss": np.repeat(scalars[:, 0], n_layers),
            "grad_norm": np.repeat(scalars[:, 1], n_layers),
            **{name: values.get(name, not_computed) for name in METRIC_COLUMNS},
            "wall_time": np.repeat([m.wall_time for m in batch], n_layers),
        }
        self.writer.append(columns, measurements=len(batch))
        for sink in list(self.loggers):
            self._to_sink(sink, "log_rows", columns)

    def _to_sink(self, sink: RowSink, method: str, *args: Any) -> None:
        """Call a logger; one that fails is warned about once and dropped: training goes on."""
        if sink not in self.loggers:
            return
        try:
            getattr(sink, method)(*args)
        except Exception as e:
            self.loggers.remove(sink)
            warnings.warn(
                f"logger {type(sink).__name__} failed ({type(e).__name__}: {e}); it receives no more rows. "
                "The Parquet rows are unaffected.",
                RuntimeWarning,
                stacklevel=2,
            )

    # Worker thread (CUDA by default). What is in flight is bounded by the pool: each queued
    # measurement holds one of its PINNED_BUFFERS host buffers until the worker lands it.

    def _submit(self, m: _Measurement) -> None:
        if self._worker is None:
            self._worker = _Worker(self)
        self._worker.queue.put(m)

    def _stop_worker(self) -> BaseException | None:
        """End the worker; every measurement it was given is then solved or in `_pending`.

        Returns:
            The error the worker hit and has not yet reported, or None.
        """
        w = self._worker
        if w is None:
            return None
        if threading.current_thread() is w.thread:
            w.stop_now = True  # finalised on the worker itself: it stops after the current item
        else:
            w.queue.put(_STOP)
            w.thread.join()
        while True:  # what it did not take (it stopped early)
            try:
                m = w.queue.get_nowait()
            except queue.Empty:
                break
            w.queue.task_done()
            if isinstance(m, _Measurement):
                w.orphans.append(m)
        # Orphans: measurements the worker could not hand over (its weak reference was already cleared
        # by the garbage collector while this tracker was being finalised). They follow `_pending`.
        self._pending.extend(w.orphans)
        w.orphans.clear()
        self._worker = None
        return w.error

    def _drain(self) -> None:
        """Solve and write every measurement taken so far."""
        w = self._worker
        if w is not None and threading.current_thread() is not w.thread:
            w.queue.put(_DRAIN)
            w.queue.join()
        else:
            self._solve_pending()
        self._raise_worker_error()

    def _raise_worker_error(self) -> None:
        if self._worker is not None and self._worker.error is not None:
            err, self._worker.error = self._worker.error, None
            raise RuntimeError(f"measurement failed on the spectra worker: {err}") from err


class _Worker:
    """The spectra worker thread and what it shares with its tracker.

    It holds the tracker only through a weak reference (and strongly only while handling one item), so
    a tracker dropped without `close()` is still garbage-collected, and its finaliser flushes the rows.
    """

    def __init__(self, tracker: HighFrequencyTracker) -> None:
        # Measurements are bounded by the pool (PINNED_BUFFERS); the margin is for requests.
        self.queue: queue.Queue[_Measurement | _FlushRequest | str] = queue.Queue(maxsize=PINNED_BUFFERS + 48)
        self.error: BaseException | None = None
        self.orphans: list[_Measurement] = []  # taken while the tracker was being finalised
        self.stop_now = False
        self._tracker = weakref.ref(tracker)
        self.thread = threading.Thread(target=self._run, name="ndt-spectra", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            m = self.queue.get()
            try:
                if m == _STOP:
                    return
                if self.error is not None:
                    # Keep consuming, so that _drain's join() returns and a training thread waiting for
                    # a buffer gets one; the error is re-raised on that thread.
                    if isinstance(m, _Measurement) and m.staged is not None:
                        m.staged.release()
                    continue
                tracker = self._tracker()
                if tracker is None:  # being finalised: its close() solves these
                    if isinstance(m, _Measurement):
                        self.orphans.append(m)
                    continue
                try:
                    if m == _DRAIN:
                        tracker._solve_pending()
                    elif isinstance(m, _FlushRequest):
                        tracker._solve_pending()
                        tracker.writer.flush()
                        tracker.durable_step = max(tracker.durable_step, m.upto)
                    elif isinstance(m, _Measurement):
                        tracker._land(m)  # at once: its pool buffer is free for the next measurement
                        tracker._pending.append(m)
                        if len(tracker._pending) >= tracker.flush_every:
                            tracker._solve_pending()
                finally:
                    del tracker  # may be the last reference: its finaliser then runs here (stop_now)
            except BaseException as e:
                self.error = e
            finally:
                self.queue.task_done()
            if self.stop_now:
                return


#: Trackers not yet closed; `_close_open_trackers` closes them when the interpreter exits.
_OPEN_TRACKERS: weakref.WeakSet[HighFrequencyTracker] = weakref.WeakSet()


@atexit.register
def _close_open_trackers() -> None:
    # atexit runs before daemon threads are stopped, so the worker can still finish its queue.
    for tracker in list(_OPEN_TRACKERS):
        with contextlib.suppress(Exception):  # nothing to report to at exit; write what can be written
            tracker.close()
