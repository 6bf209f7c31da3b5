"""Forward every measurement to TensorBoard, W&B or MLflow, with compact keys. Parquet stays the truth.

Pass adapters to a tracker or a callback (``loggers=[TensorBoardLogger("runs/tb")]``), or name them in
the Hydra runner (``tracker.loggers=[tensorboard]``). What each one receives, per measurement:

- ``ndt/<metric>/mean``: the layer mean of each metric (the study's series);
- ``ndt/<metric>/<layer>``: one scalar per chosen layer (``layers=None``: every layer; ``[]``: none);
- with ``heatmap_every=N``: instead of per-layer scalars (unless layers are named), every N
  measurements one layer x step image per metric (``ndt/heatmap/<metric>``), the answer to the key
  explosion of one scalar per layer per metric;
- at the end, the jumps of each metric's layer mean (`ndt.detect`): a marker scalar
  ``ndt/events/<metric>`` (the event's size at its peak step) and a text listing them.

The tracker hands rows over in batches, when it solves their spectra (every ``flush_every``
measurements, and at flush/close), so a dashboard lags by at most one batch. An adapter never stops
training: its first error is warned about and it stops logging (`RowSink` contract).

The frameworks are imported when an adapter is created, never by importing this module.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ndt.detect import Detector, Jumps, get_detector
from ndt.storage.schema import METRIC_COLUMNS

PREFIX = "ndt"
MEAN = "mean"  # the layer-mean key's last part


def _missing(extra: str, package: str) -> ImportError:
    return ImportError(f"this logger needs {package}: pip install 'ndt[{extra}]'")


def heatmap_image(values: np.ndarray, cell: int = 6) -> np.ndarray:
    """A (layers, steps) array as an RGB image (viridis, min-max scaled; NaN grey), layer 0 on top.

    Returns:
        (layers * cell, steps * cell, 3) uint8 array, each value a cell x cell square.
    """
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    lo = float(v[finite].min()) if finite.any() else 0.0
    hi = float(v[finite].max()) if finite.any() else 1.0
    scaled = np.where(finite, (v - lo) / (hi - lo) if hi > lo else 0.5, 0.0)
    rgb = colormaps["viridis"](scaled)[..., :3]
    rgb[~finite] = 0.5
    img = (rgb * 255).round().astype(np.uint8)
    return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)


class MeasurementLogger:
    """The shared part of every adapter: keys, layer means, heatmaps, events; a `RowSink`.

    Args:
        layers: layers sent as one scalar each: None all (default without heatmaps), [] none
            (default with heatmaps), or names.
        metrics: metric columns to send (default: every computed one).
        heatmap_every: send a layer x step heatmap per metric every this many measurements.
        detector: detector for the end-of-run events (a name or object; None: the default detector).
        events: send the events at close.
    """

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        heatmap_every: int | None = None,
        detector: str | Detector | None = None,
        events: bool = True,
    ) -> None:
        if heatmap_every is not None and heatmap_every < 1:
            raise ValueError(f"heatmap_every must be a positive number of measurements, got {heatmap_every}")
        if metrics is not None and (unknown := [m for m in metrics if m not in METRIC_COLUMNS]):
            raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(METRIC_COLUMNS)}")
        self.layers = None if layers is None else list(layers)
        if self.layers is None and heatmap_every is not None:
            self.layers = []
        self.metrics = None if metrics is None else list(metrics)
        self.heatmap_every = heatmap_every
        self.detector = detector
        self.send_events = events
        self.failed = False
        # {metric: {step: {layer_index: value}}} and {layer_index: name}: for heatmaps and events.
        self._history: dict[str, dict[int, dict[int, float]]] = {}
        self._layer_names: dict[int, str] = {}
        self._measurements = 0
        self._last_heatmap = 0

    # ---------------------------------------------------------------- RowSink

    def log_rows(self, columns: Mapping[str, Any]) -> None:
        """Send one batch of rows (the columns `MetricsWriter.append` got)."""
        self._guard(self._log_rows, columns)

    def close(self) -> None:
        """Send the last heatmaps and the events, then close the backend."""
        self._guard(self._finish)
        self._guard(self._close)

    def _guard(self, fn: Any, *args: Any) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as e:  # a dashboard must never stop training
            self.failed = True
            warnings.warn(
                f"{type(self).__name__} failed ({type(e).__name__}: {e}); it logs nothing more. The Parquet "
                "rows are unaffected.",
                RuntimeWarning,
                stacklevel=3,
            )

    # ---------------------------------------------------------------- what is sent

    def _metric_names(self, columns: Mapping[str, Any]) -> list[str]:
        names = self.metrics or list(METRIC_COLUMNS)
        return [m for m in names if np.asarray(columns[m]).dtype != object]  # object: not computed (null)

    def _log_rows(self, columns: Mapping[str, Any]) -> None:
        steps = np.asarray(columns["step"], dtype=np.int64)
        layers = np.asarray(columns["layer"], dtype=object)
        index = np.asarray(columns["layer_index"], dtype=np.int64)
        for i, name in zip(index, layers, strict=True):
            self._layer_names.setdefault(int(i), str(name))
        metrics = self._metric_names(columns)
        chosen = None if self.layers is None else set(self.layers)
        for step in np.unique(steps):  # in step order
            rows = steps == step
            scalars: dict[str, float] = {}
            for metric in metrics:
                values = np.asarray(columns[metric], dtype=np.float64)[rows]
                scalars[f"{PREFIX}/{metric}/{MEAN}"] = float(np.mean(values))
                per_step = self._history.setdefault(metric, {}).setdefault(int(step), {})
                for i, name, v in zip(index[rows], layers[rows], values, strict=True):
                    per_step[int(i)] = float(v)
                    if chosen is None or name in chosen:
                        scalars[f"{PREFIX}/{metric}/{name}"] = float(v)
            self._scalars(int(step), scalars)
            self._measurements += 1
        if self.heatmap_every and self._measurements - self._last_heatmap >= self.heatmap_every:
            self._heatmaps()
        self._flush()

    def _heatmaps(self) -> None:
        if not self._history:
            return
        self._last_heatmap = self._measurements
        for metric, by_step in self._history.items():
            steps = sorted(by_step)
            order = sorted(self._layer_names)
            grid = np.full((len(order), len(steps)), np.nan)
            for j, s in enumerate(steps):
                for r, i in enumerate(order):
                    grid[r, j] = by_step[s].get(i, np.nan)
            self._image(f"{PREFIX}/heatmap/{metric}", steps[-1], heatmap_image(grid))

    def events(self) -> dict[str, Jumps]:
        """The jumps of each metric's layer mean over what was logged (what `close` sends)."""
        detector = get_detector(self.detector)
        out = {}
        for metric, by_step in self._history.items():
            steps = np.array(sorted(by_step), dtype=np.int64)
            means = np.array([np.mean(list(by_step[s].values())) for s in steps])
            out[metric] = detector.detect(means, steps)
        return out

    def _finish(self) -> None:
        if self.heatmap_every and self._measurements > self._last_heatmap:
            self._heatmaps()
        if not self.send_events:
            return
        for metric, jumps in self.events().items():
            lines = [f"{len(jumps.events)} event(s) in the layer mean of {metric}:"]
            for e in jumps.events:
                self._scalars(e.peak_step, {f"{PREFIX}/events/{metric}": float(e.size)})
                lines.append(
                    f"- steps {e.start_step}-{e.end_step}, peak at {e.peak_step} (z {e.peak_z:.1f}), "
                    f"size {e.size:+.4g}, {e.kind}"
                )
            self._text(f"{PREFIX}/events/{metric}", "\n".join(lines))
        self._flush()

    # ---------------------------------------------------------------- backend (one per framework)

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def _image(self, key: str, step: int, image: np.ndarray) -> None:
        raise NotImplementedError

    def _text(self, key: str, text: str) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def _close(self) -> None:
        pass


class TensorBoardLogger(MeasurementLogger):
    """Event files readable by ``tensorboard --logdir`` (``pip install 'ndt[tensorboard]'``).

    Args:
        log_dir: where the event files go, or a ``torch.utils.tensorboard.SummaryWriter`` to share
            (left open at close: it is yours).
        purge_step: a resumed run's first step: events at and after it from the earlier attempt are
            hidden by TensorBoard (they are redone).
        **kwargs: as `MeasurementLogger`.
    """

    def __init__(
        self, log_dir: str | os.PathLike[str] | Any, *, purge_step: int | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise _missing("tensorboard", "tensorboard") from e
        self._own = isinstance(log_dir, str | os.PathLike)
        self.writer: Any = SummaryWriter(str(log_dir), purge_step=purge_step) if self._own else log_dir

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)

    def _image(self, key: str, step: int, image: np.ndarray) -> None:
        self.writer.add_image(key, image, global_step=step, dataformats="HWC")

    def _text(self, key: str, text: str) -> None:
        self.writer.add_text(key, text)

    def _flush(self) -> None:
        self.writer.flush()

    def _close(self) -> None:
        if self._own:
            self.writer.close()
        else:
            self.writer.flush()


class WandbLogger(MeasurementLogger):
    """W&B (``pip install 'ndt[wandb]'``); works offline (``WANDB_MODE=offline``).

    Every ndt key is plotted against its own x-axis ``ndt/step`` (``define_metric``), so rows that
    arrive after the training loop has logged later steps are kept, not dropped as out of order.

    Args:
        run: a ``wandb`` run to log into (left open at close); None: ``wandb.run`` if there is one,
            else a new run from ``wandb.init(**init_kwargs)``, finished at close.
        **kwargs: `MeasurementLogger` options, then ``wandb.init`` arguments.
    """

    def __init__(self, run: Any = None, **kwargs: Any) -> None:
        own = {
            k: kwargs.pop(k)
            for k in ("layers", "metrics", "heatmap_every", "detector", "events")
            if k in kwargs
        }
        super().__init__(**own)
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "wandb") from e
        self._wandb = wandb
        self._own = run is None and wandb.run is None
        self.run = run or wandb.run or wandb.init(**kwargs)
        self.run.define_metric(f"{PREFIX}/step")
        self.run.define_metric(f"{PREFIX}/*", step_metric=f"{PREFIX}/step")

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({f"{PREFIX}/step": step, **scalars})

    def _image(self, key: str, step: int, image: np.ndarray) -> None:
        self.run.log({f"{PREFIX}/step": step, key: self._wandb.Image(image)})

    def _text(self, key: str, text: str) -> None:
        self.run.log({key + "_text": self._wandb.Html(f"<pre>{text}</pre>")})
        self.run.summary[key + "_text"] = text

    def _close(self) -> None:
        if self._own:
            self.run.finish()


class MlflowLogger(MeasurementLogger):
    """MLflow (``pip install 'ndt[mlflow]'``): metrics with their step, heatmaps and events as artifacts.

    Args:
        run_id: the MLflow run to log into; None: the active run (``mlflow.start_run``) if any,
            else a new run in `experiment`, terminated at close.
        tracking_uri: e.g. ``sqlite:///mlflow.db`` or ``http://host:5000``; None: MLflow's default
            (``MLFLOW_TRACKING_URI``).
        experiment: experiment name for a new run (created if absent).
        run_name: name of a new run.
        artifact_location: where a new experiment keeps artifacts (heatmaps, events); None: MLflow's
            default, ``./mlruns`` under the current directory for a database store.
        **kwargs: as `MeasurementLogger`.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        artifact_location: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            import mlflow
            from mlflow.entities import Metric
        except ImportError as e:
            raise _missing("mlflow", "mlflow") from e
        self._metric = Metric
        self.client = mlflow.MlflowClient(tracking_uri)
        active = mlflow.active_run() if run_id is None and tracking_uri is None else None
        self._own = run_id is None and active is None
        if run_id is None and active is not None:
            run_id = active.info.run_id
        if run_id is None:
            name = experiment or "ndt"
            found = self.client.get_experiment_by_name(name)
            location = None if artifact_location is None else Path(artifact_location).resolve().as_uri()
            exp_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(name, artifact_location=location)
            )
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id: str = run_id

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in scalars.items()]
        for lo in range(0, len(metrics), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=metrics[lo : lo + 1000])

    def _image(self, key: str, step: int, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, f"{key}/step_{step:08d}.png")

    def _text(self, key: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{key}.txt")

    def _close(self) -> None:
        if self._own:
            self.client.set_terminated(self.run_id)


#: The names the Hydra runner's ``tracker.loggers`` accepts.
LOGGERS = ("tensorboard", "wandb", "mlflow")


def make_loggers(
    names: Sequence[str], run_dir: str | os.PathLike[str], *, group: str = "", resume_step: int | None = None
) -> list[MeasurementLogger]:
    """The adapters the Hydra runner's ``tracker.loggers`` names, writing beside the run.

    - ``tensorboard``: event files in ``<run_dir>/tensorboard`` (``tensorboard --logdir <sweep dir>``
      shows every run of a sweep, live);
    - ``wandb``: a run named after the run directory, grouped by sweep, files under ``<run_dir>``
      (``WANDB_MODE=offline`` works; ``wandb sync`` uploads later);
    - ``mlflow``: a run in experiment `group` of ``MLFLOW_TRACKING_URI``, by default the file store
      ``sqlite:///<sweep dir>/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///<sweep dir>/mlflow.db``;
      MLflow 3 refuses new file stores), artifacts in ``<sweep dir>/mlartifacts``.

    Raises:
        ValueError: an unknown name (before anything is created).
    """
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown tracker.loggers {unknown}; choose from {list(LOGGERS)}")
    run_dir = Path(run_dir)
    out: list[MeasurementLogger] = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir / "tensorboard", purge_step=resume_step))
        elif name == "wandb":
            out.append(
                WandbLogger(
                    name=run_dir.name, group=group or None, dir=str(run_dir), reinit="finish_previous"
                )
            )
        elif name == "mlflow":
            uri = (
                os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
            )
            out.append(
                MlflowLogger(
                    tracking_uri=uri,
                    experiment=group or "ndt",
                    run_name=run_dir.name,
                    artifact_location=run_dir.parent / "mlartifacts",
                )
            )
    return out
