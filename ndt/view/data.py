"""What the view shows, read from a results folder: incremental per-run caches and JSON-ready payloads.

A *results folder* is either one sweep (a directory of run directories, `ndt.storage.layout`) or a
directory of sweeps (``results/``); `Results` finds which. Every payload is a plain dict of lists and
numbers (non-finite floats become None, since JSON has no NaN).

Reading is incremental, because the page polls every few seconds while runs train:

- `RunRows` keeps the rows of one run's metric store part by part. `RunRows.refresh` lists the
  part files and reads only those it has not read yet; a part it read before that changed or vanished
  (a resumed run rewrites the parts past its checkpoint) makes it read the whole store again, once.
- A run whose status is done (its COMPLETE marker, `ndt.running.status`) is frozen after one last
  read: its directory is not listed again while it stays done.
- Derived series (the layer x step matrix, the layer-mean series and its events) are cached per run
  and metric until the run's rows change.

The status of every run is `ndt.running.status.sweep_status`'s (done / skipped / running / failed /
missing, the same rules as ``python -m ndt.status``). Events are the default detector's
(`ndt.detect.get_detector()`) on the layer-mean series of the chosen metric, the series the tables and
``ndt.investigate`` use; they are ranked as ``ndt.investigate jump=K`` ranks them (`ndt.detect.rank_events`:
largest |peak magnitude| first, so a fall ranks by its size like a rise).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndt.aggregate.summaries import DEFAULT_METRIC, check_metric, layer_mean_series
from ndt.detect import DEFAULT_DETECTOR, Detector, JumpEvent, get_detector, rank_events
from ndt.running.status import DEFAULT_STALE_AFTER_S, MULTIRUN_YAML, STATES, RunStatus, sweep_status
from ndt.storage.layout import LOG_FILE, METRICS_DIR, RUN_JSON, parse_run_name, read_run_json
from ndt.storage.parquet import list_parts, read_metrics
from ndt.storage.schema import METRIC_COLUMNS

#: Columns the view reads from each part (the run-identity columns are constant within a run).
READ_COLUMNS: tuple[str, ...] = ("step", "layer", "layer_index", "loss", "grad_norm", *METRIC_COLUMNS)
#: Points of a tile's sparkline at most (a 400-measurement series is thinned to this many).
SPARK_POINTS = 120
#: The investigation reports of a run: ``<run>/investigate/<before>-<after>/{report.html,summary.json}``
#: (`ndt.report.investigation`; its package imports the training code, so the names are repeated here
#: and tests check them against it).
INVESTIGATE_DIR = "investigate"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
#: Order in which a pair tile shows the state of its seeds: the first one present names the tile.
TILE_STATE_ORDER = ("failed", "running", "missing", "skipped", "done")


def finite_list(values: Iterable[float] | np.ndarray) -> list[float | None]:
    """Floats as a JSON-ready list: NaN and infinities become None."""
    return [v if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


def _json_number(value: Any) -> Any:
    """A run.json number for JSON: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def jsonable(value: Any) -> Any:
    """`value` (run.json content) with non-finite floats replaced by None, all the way down."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return _json_number(value)


def thin(n: int, most: int = SPARK_POINTS) -> np.ndarray:
    """Indices of at most `most` evenly spread samples of a length-`n` series, first and last kept."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def event_dict(event: JumpEvent, rank: int | None = None) -> dict[str, Any]:
    """One event for the page: steps, size (metric units), peak z and magnitude, kind, rank."""
    return {
        "rank": rank,
        "kind": event.kind,
        "start_step": event.start_step,
        "peak_step": event.peak_step,
        "end_step": event.end_step,
        "size": _json_number(float(event.size)),
        # A jump over a background that does not move has z = inf (`ndt.detect.changepoint`): JSON
        # has no infinity, and null would read as missing, so the page gets the symbol.
        "peak_z": "∞" if math.isinf(event.peak_z) and event.peak_z > 0 else _json_number(float(event.peak_z)),
        "peak_magnitude": _json_number(float(event.peak_magnitude)),
    }


def detect_events(
    detector: Detector, steps: np.ndarray, values: np.ndarray
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The detector's (transitions ranked as ``ndt.investigate`` ranks them, initial escapes) on a series.

    Args:
        detector: a `Detector`.
        steps: (m,) steps, increasing.
        values: (m,) finite values.

    Returns:
        (events, init_escape): lists of `event_dict`; events carry their rank (1 = largest |peak magnitude|).
    """
    if steps.size < 3:
        return [], []
    try:
        jumps = detector.detect(values, steps)
    except ValueError:  # a detector that refuses this series: the run is still shown, without events
        return [], []
    events = [event_dict(e, rank) for rank, e in enumerate(rank_events(jumps), start=1)]
    events.sort(key=lambda e: e["start_step"])
    return events, [event_dict(e) for e in jumps.init_escape]


@dataclass
class ReadCounters:
    """How much reading the caches did (the page's live updates are tested against these)."""

    parts_read: int = 0  # part files read
    full_rereads: int = 0  # stores read again from the start because a part read before changed
    listings: int = 0  # metric directories listed


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class RunRows:
    """The metric rows of one run, read part by part (see the module docstring).

    Args:
        run_dir: the run directory.
        counters: shared reading counters.
    """

    def __init__(self, run_dir: Path, counters: ReadCounters) -> None:
        self.run_dir = run_dir
        self.counters = counters
        self.frozen = False  # the run was done at the last refresh: its parts are final
        self.version = 0  # incremented whenever the rows change
        self._parts: dict[str, tuple[int, int]] = {}  # part name -> (size, mtime_ns) when read
        self._frames: list[pd.DataFrame] = []
        self._frame: pd.DataFrame | None = None
        self._derived: dict[tuple[str, ...], Any] = {}

    def refresh(self, done: bool) -> bool:
        """Read the parts that are new since the last refresh; True when the rows changed.

        Args:
            done: the run is done (COMPLETE marker): read what remains, then stop listing its parts.
        """
        if self.frozen and done:
            return False
        self.frozen = False
        metrics = self.run_dir / METRICS_DIR
        self.counters.listings += 1
        parts = list_parts(metrics) if metrics.is_dir() else []
        now = {p.name: _signature(p) for p in parts}
        changed = any(now.get(name) != sig for name, sig in self._parts.items())
        if changed:  # a resumed run rewrote or removed parts past its checkpoint: start over
            self.counters.full_rereads += 1
            self._parts, self._frames = {}, []
        new = [p for p in parts if p.name not in self._parts and now[p.name] is not None]
        for part in new:
            try:
                frame = read_metrics(part, columns=READ_COLUMNS)
            except (OSError, ValueError):
                continue  # vanished or rewritten since it was listed: read at the next refresh
            self.counters.parts_read += 1
            self._frames.append(frame)
            self._parts[part.name] = now[part.name]  # type: ignore[assignment]
        self.frozen = done
        if changed or new:
            self.version += 1
            self._frame = None
            self._derived = {}
            return True
        return False

    @property
    def frame(self) -> pd.DataFrame:
        """Every row read, sorted by step then layer index (columns `READ_COLUMNS`)."""
        if self._frame is None:
            if self._frames:
                df = pd.concat(self._frames, ignore_index=True)
                self._frame = df.sort_values(["step", "layer_index"], kind="stable").reset_index(drop=True)
            else:
                self._frame = pd.DataFrame({c: [] for c in READ_COLUMNS})
        return self._frame

    @property
    def n_parts(self) -> int:
        """Part files read."""
        return len(self._parts)

    def steps(self) -> np.ndarray:
        """(S,) distinct measured steps, increasing."""
        return np.unique(self.frame["step"].to_numpy(dtype=np.int64))

    def layers(self) -> list[str]:
        """Layer names in layer-index order."""
        df = self.frame
        if df.empty:
            return []
        by_index = df.drop_duplicates("layer_index").sort_values("layer_index")
        return [str(v) for v in by_index["layer"]]

    def matrix(self, metric: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The (L, S) matrix of `metric`: layers (in layer-index order) by steps; NaN where not measured.

        Returns:
            (steps (S,), layer names (L,), values (L, S)).
        """
        key = ("matrix", metric)
        if key not in self._derived:
            df = self.frame
            steps = self.steps()
            index = np.unique(df["layer_index"].to_numpy(dtype=np.int64))
            out = np.full((index.size, steps.size), np.nan)
            rows = np.searchsorted(index, df["layer_index"].to_numpy(dtype=np.int64))
            cols = np.searchsorted(steps, df["step"].to_numpy(dtype=np.int64))
            out[rows, cols] = df[metric].to_numpy(dtype=np.float64)
            self._derived[key] = (steps, self.layers(), out)
        result: tuple[np.ndarray, list[str], np.ndarray] = self._derived[key]
        return result

    def mean_series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The layer-mean series of `metric` (`ndt.aggregate.summaries.layer_mean_series`): (steps, means)."""
        key = ("mean", metric)
        if key not in self._derived:
            df = self.frame
            # With the layer column, as the tables and ndt.investigate call it: a step must hold every
            # distinct layer, not as many rows as the busiest step.
            self._derived[key] = layer_mean_series(
                df["step"].to_numpy(dtype=np.int64),
                df[metric].to_numpy(dtype=np.float64),
                df["layer"].to_numpy(),
            )
        result: tuple[np.ndarray, np.ndarray] = self._derived[key]
        return result

    def layer_series(self, metric: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """One layer's series of `metric` (layer = position in `layers()`), finite samples only."""
        steps, _, values = self.matrix(metric)
        row = values[layer]
        keep = np.isfinite(row)
        return steps[keep], row[keep]

    def events(self, metric: str, detector: Detector) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """`detect_events` on the layer-mean series of `metric` (cached until the rows change)."""
        key = ("events", metric)
        if key not in self._derived:
            steps, values = self.mean_series(metric)
            self._derived[key] = detect_events(detector, steps, values)
        result: tuple[list[dict[str, Any]], list[dict[str, Any]]] = self._derived[key]
        return result

    def per_step(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """A per-step column (loss, grad_norm: the same on every layer's row): (steps, values)."""
        df = self.frame.drop_duplicates("step")
        return df["step"].to_numpy(dtype=np.int64), df[column].to_numpy(dtype=np.float64)


@dataclass
class _RecordCache:
    signature: tuple[int, int] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _planned_steps(record: dict[str, Any]) -> int | None:
    """Optimizer steps the run plans (run.json's resolved config: trainer.max_steps), if known."""
    trainer = (record.get("config") or {}).get("trainer") or {}
    value = trainer.get("max_steps") if isinstance(trainer, dict) else None
    return int(value) if isinstance(value, int | float) and value > 0 else None


class SweepView:
    """One sweep directory: its runs' status, records and rows, refreshed on demand.

    Args:
        sweep_dir: the sweep directory.
        name: the sweep's name on the page.
        counters: shared reading counters.
        detector: the detector whose events are shown.
        stale_after_s: passed to `ndt.running.status.sweep_status`.
    """

    def __init__(
        self,
        sweep_dir: Path,
        name: str,
        counters: ReadCounters,
        detector: Detector,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.sweep_dir = sweep_dir
        self.name = name
        self.counters = counters
        self.detector = detector
        self.stale_after_s = stale_after_s
        self.status: dict[str, RunStatus] = {}
        self.expected: tuple[str, ...] | None = None
        self.rows: dict[str, RunRows] = {}
        self._records: dict[str, _RecordCache] = {}
        self.version = 0
        self._last_key: Any = None

    def refresh(self, now: float | None = None) -> bool:
        """Re-read the status of every run and the new rows of the runs not done; True when anything changed."""
        status = sweep_status(self.sweep_dir, stale_after_s=self.stale_after_s, now=now)
        self.status = {r.name: r for r in status.runs}
        self.expected = status.expected
        for run in status.runs:
            if run.state == "missing":
                continue
            self._record(run.name)
            rows = self.rows.get(run.name)
            if rows is None:
                rows = self.rows[run.name] = RunRows(self.sweep_dir / run.name, self.counters)
            rows.refresh(done=run.state == "done")
        for gone in set(self.rows) - set(self.status):
            del self.rows[gone]
        # Heartbeat ages change at every refresh; only what the page shows counts as a change.
        key = tuple(
            (r.name, r.state, r.reason, self.rows[r.name].version if r.name in self.rows else -1,
             self._records.get(r.name, _RecordCache()).signature)
            for r in status.runs
        )  # fmt: skip
        if key != self._last_key:
            self._last_key = key
            self.version += 1
            return True
        return False

    def _record(self, name: str) -> dict[str, Any]:
        """run.json of a run (re-read only when the file changed); {} when absent or unreadable."""
        cache = self._records.setdefault(name, _RecordCache())
        sig = _signature(self.sweep_dir / name / RUN_JSON)
        if sig != cache.signature:
            cache.signature = sig
            try:
                cache.record, cache.error = read_run_json(self.sweep_dir / name), None
            except FileNotFoundError:
                cache.record, cache.error = {}, None
            except (OSError, ValueError) as err:
                cache.record, cache.error = {}, str(err)
        return cache.record

    def run_summary(self, name: str, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
        """One run of the grid: identity, state, progress, accuracy, sparkline and events.

        Keys: name, arch, dataset, seed, family, state, reason, stale, heartbeat_age_s, measurements,
        last_step, planned_steps, progress (0..1 or None when unknown), final_accuracy, spark ({steps,
        values}, thinned to `SPARK_POINTS`), events and init_escape (`event_dict` lists).
        """
        from ndt.models.registry import family_or_unknown

        status = self.status[name]
        record = self._record(name) if status.state != "missing" else {}
        arch, dataset, seed = parse_run_name(name)
        arch = str(record.get("arch") or arch)
        dataset = str(record.get("dataset") or dataset)
        seed = record.get("seed", seed)
        rows = self.rows.get(name)
        planned = _planned_steps(record)
        out: dict[str, Any] = {
            "name": name,
            "arch": arch,
            "dataset": dataset,
            "seed": seed,
            "family": str(record.get("family") or family_or_unknown(arch)),
            "state": status.state,
            "reason": status.reason,
            "stale": status.stale,
            "heartbeat_age_s": status.heartbeat_age_s,
            "measurements": 0,
            "last_step": None,
            "planned_steps": planned,
            "progress": 1.0 if status.state == "done" else None,
            "final_accuracy": _json_number(record.get("final_accuracy")),
            "spark": {"steps": [], "values": []},
            "events": [],
            "init_escape": [],
        }
        if rows is None or rows.frame.empty:
            return out
        steps, values = rows.mean_series(metric)
        all_steps = rows.steps()
        out["measurements"] = int(all_steps.size)
        out["last_step"] = int(all_steps[-1])
        if status.state != "done" and planned:
            out["progress"] = min(1.0, (int(all_steps[-1]) + 1) / planned)
        keep = thin(steps.size)
        out["spark"] = {"steps": steps[keep].tolist(), "values": finite_list(values[keep])}
        out["events"], out["init_escape"] = rows.events(metric, self.detector)
        return out

    def grid(self, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
        """The sweep grid: one tile per (arch, dataset) pair, each with its runs (one per seed).

        Keys: sweep, metric, detector, version, counts ({state: n} over runs), expected (runs its
        multirun.yaml expects, or None), families, datasets, archs (sorted by family then name), tiles
        (arch, dataset, family, state: the first of `TILE_STATE_ORDER` among its runs, runs: `run_summary`
        dicts sorted by seed).
        """
        check_metric(metric)
        runs = [self.run_summary(n, metric) for n in sorted(self.status)]
        counts = dict.fromkeys(STATES, 0)
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in runs:
            counts[run["state"]] += 1
            pairs.setdefault((run["arch"], run["dataset"]), []).append(run)
        tiles = []
        for (arch, dataset), members in sorted(pairs.items()):
            members.sort(key=lambda r: (r["seed"] is None, r["seed"] if r["seed"] is not None else 0))
            states = {r["state"] for r in members}
            tiles.append(
                {
                    "arch": arch,
                    "dataset": dataset,
                    "family": members[0]["family"],
                    "state": next(s for s in TILE_STATE_ORDER if s in states),
                    "runs": members,
                }
            )
        families = sorted({t["family"] for t in tiles})
        archs = sorted({(t["family"], t["arch"]) for t in tiles})
        return {
            "sweep": self.name,
            "metric": metric,
            "detector": detector_name(self.detector),
            "version": self.version,
            "counts": counts,
            "expected": None if self.expected is None else len(self.expected),
            "families": families,
            "datasets": sorted({t["dataset"] for t in tiles}),
            "archs": [a for _, a in archs],
            "tiles": tiles,
        }

    def run_view(self, name: str, metric: str, results_root: Path, command_dir: Path) -> dict[str, Any]:
        """Everything the run page draws.

        Args:
            name: the run directory's name (a run of this sweep).
            metric: a metric column.
            results_root: the folder the server serves (report links are relative to it).
            command_dir: how the run directory is spelt in the suggested ``ndt.investigate`` commands.

        Returns:
            `run_summary`'s keys plus: metric, metrics (those with a finite value), steps (S,), layers
            (L,), matrix (L lists of S values), mean ({steps, values}), loss and grad_norm ({steps,
            values}), events (each with report: a link relative to the served root, or None, and command),
            record (run.json without its config), config (the resolved config, or None), record_error,
            version.

        Raises:
            KeyError: no such run.
        """
        check_metric(metric)
        if name not in self.status:
            raise KeyError(name)
        out = self.run_summary(name, metric)
        record = dict(self._record(name)) if out["state"] != "missing" else {}
        config = record.pop("config", None)
        rows = self.rows.get(name)
        out.update(
            metric=metric,
            metrics=[],
            steps=[],
            layers=[],
            matrix=[],
            mean={"steps": [], "values": []},
            loss={"steps": [], "values": []},
            grad_norm={"steps": [], "values": []},
            record=jsonable(record),
            config=config,
            record_error=self._records.get(name, _RecordCache()).error,
            version=rows.version if rows is not None else 0,
        )
        if rows is None or rows.frame.empty:
            return out
        df = rows.frame
        out["metrics"] = [m for m in METRIC_COLUMNS if np.isfinite(df[m].to_numpy(dtype=np.float64)).any()]
        steps, layers, matrix = rows.matrix(metric)
        out["steps"], out["layers"] = steps.tolist(), layers
        out["matrix"] = [finite_list(row) for row in matrix]
        mean_steps, mean = rows.mean_series(metric)
        out["mean"] = {"steps": mean_steps.tolist(), "values": finite_list(mean)}
        for column in ("loss", "grad_norm"):
            s, v = rows.per_step(column)
            out[column] = {"steps": s.tolist(), "values": finite_list(v)}
        reports = find_reports(self.sweep_dir / name)
        run_rel = (self.sweep_dir / name).relative_to(results_root).as_posix()
        detector = detector_name(self.detector)
        events = []
        for event in out["events"]:
            found = reports.get((metric, detector, event["start_step"], event["end_step"]))
            events.append(
                {
                    **event,
                    "report": None if found is None else f"{run_rel}/{INVESTIGATE_DIR}/{found}/{REPORT_FILE}",
                    "command": investigate_command(command_dir / name, event["rank"], metric, detector),
                }
            )
        out["events"] = events
        return out

    def compare(self, names: Sequence[str], metric: str, layer: int | None, band: bool) -> dict[str, Any]:
        """The series of several runs, for one chart.

        Args:
            names: runs of this sweep.
            metric: a metric column.
            layer: a layer position (0 = first measured layer) or None for the layer mean.
            band: also group the runs by (arch, dataset) and give each group with two or more runs its
                mean and min-max band over the steps every member measured (`seed_band`).

        Returns:
            {metric, layer, series: [{name, arch, dataset, seed, layers, steps, values}], bands: [{arch,
            dataset, runs, steps, mean, low, high}]}.

        Raises:
            KeyError: a name that is not a run of this sweep.
        """
        check_metric(metric)
        unknown = [n for n in names if n not in self.status]
        if unknown:
            raise KeyError(", ".join(unknown))
        series = []
        for name in names:
            arch, dataset, seed = parse_run_name(name)
            rows = self.rows.get(name)
            steps, values = np.zeros(0, dtype=np.int64), np.zeros(0)
            layers = rows.layers() if rows is not None else []
            if rows is not None and not rows.frame.empty:
                if layer is None:
                    steps, values = rows.mean_series(metric)
                elif 0 <= layer < len(rows.layers()):
                    steps, values = rows.layer_series(metric, layer)
            series.append(
                {"name": name, "arch": arch, "dataset": dataset, "seed": seed, "layers": layers,
                 "steps": steps.tolist(), "values": finite_list(values)}
            )  # fmt: skip
        bands = []
        if band:
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for s in series:
                groups.setdefault((s["arch"], s["dataset"]), []).append(s)
            for (arch, dataset), members in sorted(groups.items()):
                if len(members) < 2:
                    continue
                steps, mean, low, high = seed_band(
                    [np.asarray(m["steps"], dtype=np.int64) for m in members],
                    [np.asarray(m["values"], dtype=np.float64) for m in members],
                )
                bands.append(
                    {"arch": arch, "dataset": dataset, "runs": [m["name"] for m in members],
                     "steps": steps.tolist(), "mean": finite_list(mean), "low": finite_list(low),
                     "high": finite_list(high)}
                )  # fmt: skip
        return {"metric": metric, "layer": layer, "series": series, "bands": bands}


def seed_band(
    steps: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and min-max band of several series on the steps all of them measured.

    Args:
        steps: k arrays of steps (each increasing; None values in `values` are NaN and left out).
        values: k arrays of values, each as long as its steps.

    Returns:
        (steps (m,), mean (m,), low (m,), high (m,)): over the k series at each common step, ignoring
        NaN (a step where every series is NaN gives NaN).
    """
    common = steps[0]
    for s in steps[1:]:
        common = np.intersect1d(common, s)
    stack = np.full((len(steps), common.size), np.nan)
    for i, (s, v) in enumerate(zip(steps, values, strict=True)):
        stack[i] = v[np.searchsorted(s, common)] if common.size else stack[i]
    with warnings.catch_warnings():
        # "Mean of empty slice" / "All-NaN slice": a step where every series is NaN is NaN, on purpose.
        warnings.simplefilter("ignore", RuntimeWarning)
        return common, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def detector_name(detector: Detector) -> str:
    """The registry name of a detector object (`ndt.detect.DETECTORS`), else its class name."""
    from ndt.detect import DETECTORS

    for name, cls in DETECTORS.items():
        if isinstance(cls, type) and isinstance(detector, cls):
            return name
    return type(detector).__name__


def investigate_command(run_dir: Path, rank: int, metric: str, detector: str) -> str:
    """The ``python -m ndt.investigate`` command that writes the report on jump `rank` of a run."""
    return f"python -m ndt.investigate {run_dir} jump={rank} metric={metric} detector={detector}"


def find_reports(run_dir: Path) -> dict[tuple[str, str, int, int], str]:
    """The investigation reports of a run, by what they investigated.

    Reads each ``investigate/<label>/summary.json`` (written by ``ndt.investigate`` next to its
    report.html) and keys the report by (metric, detector, event start step, event end step); reports on
    a step (``step=N``) rather than a jump, or on one layer's own series (``layer=``), are left out.

    Returns:
        {(metric, detector, start_step, end_step): label}, label the directory name ``<before>-<after>``.
    """
    out: dict[tuple[str, str, int, int], str] = {}
    root = run_dir / INVESTIGATE_DIR
    if not root.is_dir():
        return out
    for summary in sorted(root.glob(f"*/{SUMMARY_FILE}")):
        if not (summary.parent / REPORT_FILE).is_file():
            continue
        try:
            data = json.loads(summary.read_text())
            selection, event = data["selection"], data["event"]
            if event is None or selection.get("layer") is not None:
                continue  # a step, or one layer's own series: the page shows layer-mean events
            key = (str(selection["metric"]), str(selection["detector"]), int(event["start_step"]),
                   int(event["end_step"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a report being written, or not one of ours
        out[key] = summary.parent.name
    return out


def looks_like_sweep(path: Path) -> bool:
    """Whether `path` is a sweep directory: a multirun.yaml, or a child holding a run's files.

    The run files are those `ndt.running.status` recognises a run directory by (run.json, run.log,
    Hydra's .hydra/), so a results root (whose children are sweeps) is not taken for a sweep.
    """
    if (path / MULTIRUN_YAML).is_file():
        return True
    try:
        children = [c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return False
    return any((c / f).exists() for c in children for f in (RUN_JSON, LOG_FILE, ".hydra"))


class Results:
    """The folder the view serves: one sweep, or a directory of sweeps, refreshed at most every `min_interval_s`.

    Args:
        root: a sweep directory or a directory of sweep directories.
        stale_after_s: a running run whose heartbeat is older than this is failed (`ndt.running.status`).
        detector: the detector whose events are shown: a name of `ndt.detect.DETECTORS` or a detector
            object (default `ndt.detect.DEFAULT_DETECTOR`).
        min_interval_s: requests closer together than this share one refresh.

    Raises:
        FileNotFoundError: `root` is not a directory.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        detector: str | Detector | None = None,
        min_interval_s: float = 0.5,
    ) -> None:
        self.root = Path(root).resolve()
        self.display_root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no results folder at {root}: give a sweep directory or results/")
        self.stale_after_s = stale_after_s
        self.detector = get_detector(DEFAULT_DETECTOR if detector is None else detector)
        self.min_interval_s = min_interval_s
        self.counters = ReadCounters()
        self.sweeps: dict[str, SweepView] = {}
        self.single = False  # the root is itself a sweep
        self._lock = threading.RLock()
        self._last_discovery = -math.inf
        self._last_refresh: dict[str, float] = {}

    def _discover(self) -> None:
        if looks_like_sweep(self.root):
            self.single = True
            found = {self.root.name: self.root}
        else:
            self.single = False
            found = {
                p.name: p
                for p in sorted(self.root.iterdir())
                if not p.name.startswith(".") and p.is_dir() and looks_like_sweep(p)
            }
        for name in set(self.sweeps) - set(found):
            del self.sweeps[name]
        for name, path in found.items():
            if name not in self.sweeps:
                self.sweeps[name] = SweepView(path, name, self.counters, self.detector, self.stale_after_s)

    def refresh(self, force: bool = False, only: str | None = None) -> None:
        """Find the sweeps, then refresh each (or only the sweep `only`, the one a page is showing).

        What was refreshed less than `min_interval_s` ago is left as it is unless `force`: several pages
        polling together share one refresh.
        """
        with self._lock:
            now = time.monotonic()
            if force or now - self._last_discovery >= self.min_interval_s:
                self._discover()
                self._last_discovery = now
            for name, sweep in self.sweeps.items():
                if only is not None and name != only:
                    continue
                if force or now - self._last_refresh.get(name, -math.inf) >= self.min_interval_s:
                    sweep.refresh()
                    self._last_refresh[name] = time.monotonic()

    def sweep(self, name: str) -> SweepView:
        """The sweep called `name`.

        Raises:
            KeyError: no such sweep.
        """
        return self.sweeps[name]

    def command_dir(self, sweep: SweepView) -> Path:
        """The sweep directory as the user spelt the results folder (for suggested commands)."""
        return self.display_root if self.single else self.display_root / sweep.name

    def index(self) -> dict[str, Any]:
        """{root, sweeps: [{name, counts, runs}], detector, default_metric, metrics, counters}."""
        return {
            "root": str(self.display_root),
            "sweeps": [
                {"name": s.name, "counts": _counts(s.status.values()), "runs": len(s.status)}
                for s in self.sweeps.values()
            ],
            "detector": detector_name(self.detector),
            "default_metric": DEFAULT_METRIC,
            "metrics": list(METRIC_COLUMNS),
            "counters": vars(self.counters).copy(),
        }


def _counts(runs: Iterable[RunStatus]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for run in runs:
        counts[run.state] += 1
    return counts
