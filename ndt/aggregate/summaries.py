"""One summary row per run of a sweep: the layer-mean series, its growth fit, and the detectors' events.

`summarize_series` is the pure core (arrays in, a dict of numbers out). `summarize_run` adds the I/O of
one run directory (run.json and the Parquet store), and `collect_sweep` maps it over a sweep, in worker
processes when the sweep is large, into the per-run DataFrame every table is built from.

A per-run row (`PER_RUN_COLUMNS`, in that order):

==================== ====================================================================================
run                  run directory name (``<arch>__<dataset>__s<seed>``)
arch, dataset, seed  from run.json (seed null when unknown, e.g. imported legacy runs)
protocol             the run's measurement protocol (run.json config ``protocol.name``; "study" when absent,
                     as for runs made before protocols existed and imported legacy runs)
family               from run.json's ``family`` (the run's metadata, not its name); "unknown" if absent
depth, width, params from run.json
final_accuracy       from run.json
status               run.json's status; "unmarked" when it says complete without the COMPLETE marker,
                     "empty" when complete without metric rows, "unreadable" when the rows cannot be read
n_measurements       distinct steps measured
n_layers             distinct layers measured
n_rows               metric rows (per-layer snapshots)
jumps                the study's count: indices flagged by `ndt.detect.study.detect_jumps`
events               maximal runs of consecutive flagged indices (transitions)
robust_events        jumps of `ndt.detect.robust.detect_jumps_robust` (one per event)
transitions          transitions of the default detector (`ndt.detect.DEFAULT_DETECTOR`) on the layer-mean
                     series, both directions, the escape from initialisation not counted
layer_transitions    the default detector's transitions summed over every layer's own series
layers_with_transitions  layers with at least one transition of their own
init_escape_step     peak step of the escape from initialisation on the layer-mean series (null if none)
first_transition_step  start step of the first transition on the layer-mean series (null if none)
max_jump_magnitude   largest smoothed gradient among the study's jumps (metric units per sample)
max_jump_z           z-score of that jump
max_jump_step        training step of that jump
r2, alpha, a, t0,    the TAP growth fit (`ndt.analysis.growth.fit_tap`): alpha per step, t0 in steps
d_max
fit_ok               whether the fit converged
bound_flags          parameters that ended on a bound, joined with "+" ("" when none)
fit_message          why the fit failed ("" when it did not)
error                run.json's error, or why the run could not be read
==================== ====================================================================================

Numbers are NaN for runs that are not analysed (status other than "complete").
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndt.analysis.growth import GrowthFit, fit_tap
from ndt.detect import Jumps, detect_jumps, detect_jumps_robust, get_detector
from ndt.measure.series import layer_mean_series
from ndt.storage.layout import METRICS_DIR, is_complete, iter_run_dirs, parse_run_name, read_run_json
from ndt.storage.parquet import read_metrics
from ndt.storage.schema import DEFAULT_METRIC, METRIC_COLUMNS

PER_RUN_COLUMNS: tuple[str, ...] = (
    "run",
    "arch",
    "dataset",
    "seed",
    "protocol",
    "family",
    "depth",
    "width",
    "params",
    "final_accuracy",
    "status",
    "n_measurements",
    "n_layers",
    "n_rows",
    "jumps",
    "events",
    "robust_events",
    "transitions",
    "layer_transitions",
    "layers_with_transitions",
    "init_escape_step",
    "first_transition_step",
    "max_jump_magnitude",
    "max_jump_z",
    "max_jump_step",
    "r2",
    "alpha",
    "a",
    "t0",
    "d_max",
    "fit_ok",
    "bound_flags",
    "fit_message",
    "error",
)

#: Columns produced by `summarize_series`.
SERIES_COLUMNS: tuple[str, ...] = PER_RUN_COLUMNS[
    PER_RUN_COLUMNS.index("jumps") : PER_RUN_COLUMNS.index("error")
]

_INT_COLUMNS = (
    "seed",
    "depth",
    "params",
    "n_measurements",
    "n_layers",
    "n_rows",
    "jumps",
    "events",
    "robust_events",
    "transitions",
    "layer_transitions",
    "layers_with_transitions",
    "init_escape_step",
    "first_transition_step",
    "max_jump_step",
)
_FLOAT_COLUMNS = (
    "width",
    "final_accuracy",
    "max_jump_magnitude",
    "max_jump_z",
    "r2",
    "alpha",
    "a",
    "t0",
    "d_max",
)
_BOOL_COLUMNS = ("fit_ok",)
#: pandas dtype of every per-run column: nullable ints and booleans keep "unknown" distinct from 0/False;
#: everything else is text.
PER_RUN_DTYPES: dict[str, str] = {
    col: "Int64"
    if col in _INT_COLUMNS
    else "float64"
    if col in _FLOAT_COLUMNS
    else "boolean"
    if col in _BOOL_COLUMNS
    else "object"
    for col in PER_RUN_COLUMNS
}

#: Sweeps with fewer runs than this are summarised in-process: starting workers would cost more.
MIN_RUNS_FOR_WORKERS = 64


def check_metric(metric: str) -> None:
    """Raise ValueError unless `metric` is a metric column of the schema."""
    if metric not in METRIC_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_COLUMNS)}")


def analyse_series(steps: np.ndarray, values: np.ndarray) -> tuple[GrowthFit, Jumps, Jumps]:
    """The TAP growth fit and both detectors' jumps of one series: (fit, study, robust)."""
    return fit_tap(steps, values), detect_jumps(values, steps), detect_jumps_robust(values, steps)


def layer_transitions(layer_series: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """The default detector's transitions per layer: {layer: count}, from {layer: (steps, values)}.

    Non-finite values of a layer (its activations were not finite there) are left out of that layer's
    own series; a layer with fewer than two finite values has no transition.
    """
    detector = get_detector()
    out = {}
    for name, (steps, values) in layer_series.items():
        ok = np.isfinite(values)
        out[name] = len(detector.detect(values[ok], steps[ok]).events) if ok.sum() >= 2 else 0
    return out


def summarize_series(
    steps: np.ndarray,
    values: np.ndarray,
    layer_series: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Growth fit and the detectors on one layer-mean series (and the default detector on each layer).

    Args:
        steps: (m,) training steps, increasing.
        values: (m,) layer-mean metric.
        layer_series: {layer: ((m_l,) steps, (m_l,) values)} of each layer's own series; None leaves the
            per-layer columns null.

    Returns:
        {column: value} for `SERIES_COLUMNS`.
    """
    fit, study, robust = analyse_series(steps, values)
    default = get_detector().detect(values, steps)
    per_layer = None if layer_series is None else layer_transitions(layer_series)
    top = max(study, key=lambda j: j.magnitude, default=None)
    return {
        "jumps": len(study),
        "events": len(study.events),
        "robust_events": len(robust),
        "transitions": len(default.events),
        "layer_transitions": None if per_layer is None else sum(per_layer.values()),
        "layers_with_transitions": None if per_layer is None else sum(n > 0 for n in per_layer.values()),
        "init_escape_step": default.init_escape[0].peak_step if default.init_escape else None,
        "first_transition_step": default.events[0].start_step if default.events else None,
        "max_jump_magnitude": top.magnitude if top else math.nan,
        "max_jump_z": top.z_score if top else math.nan,
        "max_jump_step": top.step if top else None,
        "r2": fit.r2,
        "alpha": fit.alpha,
        "a": fit.a,
        "t0": fit.t0,
        "d_max": fit.d_max,
        "fit_ok": fit.ok,
        "bound_flags": "+".join(fit.bound_flags),
        "fit_message": fit.message,
    }


def read_series(
    run_dir: str | os.PathLike[str], metric: str = DEFAULT_METRIC
) -> tuple[np.ndarray, np.ndarray]:
    """Read one run's layer-mean series of `metric` (see `layer_mean_series`).

    Returns:
        (steps, means), both (m,).
    """
    return _frame_series(read_metrics(Path(run_dir) / METRICS_DIR), metric)


def _frame_series(df: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    return layer_mean_series(
        df["step"].to_numpy(), df[metric].to_numpy(), df["layer"].to_numpy(), what=metric
    )


def run_protocol(record: dict[str, Any]) -> str:
    """The measurement protocol a run record names (``config.protocol.name``); "study" when it names none."""
    config = record.get("config")
    protocol = config.get("protocol") if isinstance(config, dict) else None
    name = protocol.get("name") if isinstance(protocol, dict) else None
    return str(name) if name else "study"


def summarize_run(run_dir: str | os.PathLike[str], metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """The per-run row of one run directory (columns: `PER_RUN_COLUMNS`).

    Never raises for a bad run: the problem goes into ``status`` and ``error`` so that the run is listed.
    """
    path = Path(run_dir)
    rec = read_run_json(path)
    arch, dataset, _ = parse_run_name(path.name)
    row: dict[str, Any] = dict.fromkeys(PER_RUN_COLUMNS)
    row.update(
        run=path.name,
        arch=rec.get("arch") or arch,
        dataset=rec.get("dataset") or dataset,
        seed=rec.get("seed"),
        protocol=run_protocol(rec),
        family=rec.get("family") or "unknown",
        depth=rec.get("depth"),
        width=rec.get("width"),
        params=rec.get("params"),
        final_accuracy=rec.get("final_accuracy"),
        status=str(rec.get("status", "unknown")),
        error=rec.get("error") or "",
        bound_flags="",
        fit_message="",
    )
    if row["status"] != "complete":
        return row
    if not is_complete(path):
        row.update(status="unmarked", error="run.json says complete but the COMPLETE marker is missing")
        return row
    try:
        df = read_metrics(path / METRICS_DIR)
    except Exception as err:  # any unreadable store is reported, not fatal to the whole sweep
        row.update(status="unreadable", error=f"{type(err).__name__}: {err}")
        return row
    if df.empty:
        row.update(status="empty", error="no metric rows")
        return row
    steps, values = _frame_series(df, metric)
    row.update(
        n_measurements=int(df["step"].nunique()),
        n_layers=int(df["layer"].nunique()),
        n_rows=len(df),
    )
    by_layer = {
        str(name): (g["step"].to_numpy(), g[metric].to_numpy(dtype=np.float64))
        for name, g in df.sort_values("step", kind="stable").groupby("layer", sort=False, observed=True)
    }
    row.update(summarize_series(steps, values, by_layer))
    return row


#: The error of a run the sweep's multirun.yaml expects and that has no run.json.
MISSING_RUN_ERROR = (
    "multirun.yaml expects this run and it has no run.json (never started, or its directory was removed)"
)


def missing_run_row(name: str) -> dict[str, Any]:
    """The per-run row of an expected run without a run.json: status ``missing``, the rest from its name.

    ``<arch>__<dataset>__s<seed>`` gives arch, dataset and seed; the family comes from the architecture
    registry ("unknown" for a name it does not know).
    """
    from ndt.models.registry import family_or_unknown

    arch, dataset, seed = parse_run_name(name)
    row: dict[str, Any] = dict.fromkeys(PER_RUN_COLUMNS)
    row.update(
        run=name,
        arch=arch,
        dataset=dataset,
        seed=seed,
        family=family_or_unknown(arch),
        status="missing",
        error=MISSING_RUN_ERROR,
        bound_flags="",
        fit_message="",
    )
    return row


def _summarize_many(run_dirs: Sequence[str], metric: str) -> list[dict[str, Any]]:
    return [summarize_run(d, metric) for d in run_dirs]


def per_run_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows of `summarize_run` as the typed per-run DataFrame, sorted by run name."""
    df = pd.DataFrame(list(rows), columns=list(PER_RUN_COLUMNS))
    for col, dtype in PER_RUN_DTYPES.items():
        df[col] = df[col].fillna("").astype(str) if dtype == "object" else df[col].astype(dtype)
    return df.sort_values("run", kind="stable").reset_index(drop=True)


def collect_sweep(
    sweep_dir: str | os.PathLike[str], metric: str = DEFAULT_METRIC, workers: int | None = None
) -> pd.DataFrame:
    """Summarise every run of a sweep directory.

    Args:
        sweep_dir: directory of run directories (each with a run.json).
        metric: metric column averaged over layers into the series.
        workers: worker processes; None = one per CPU (at most 8); 1 = in this process. Sweeps with fewer
            than `MIN_RUNS_FOR_WORKERS` runs, and platforms without fork, are summarised in this process;
            the result is the same either way.

    Returns:
        The per-run DataFrame (`PER_RUN_COLUMNS`), one row per run, complete or not, and one (status
        ``missing``) per run the sweep's multirun.yaml expects that has no run.json, as ``ndt.status``
        and ``ndt.view`` count them.
    """
    from ndt.running.status import expected_runs

    check_metric(metric)
    dirs = [str(d) for d in iter_run_dirs(sweep_dir)]
    found = {Path(d).name for d in dirs}
    missing = [missing_run_row(n) for n in expected_runs(Path(sweep_dir)) or () if n not in found]
    n_workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    # Without fork, in-process too: spawn would re-import __main__ in every worker (scripts without a
    # main guard break) and torch with it (seconds per worker): not worth it for a job that takes
    # seconds per 1,000 runs.
    if (
        n_workers <= 1
        or len(dirs) < MIN_RUNS_FOR_WORKERS
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return per_run_frame(_summarize_many(dirs, metric) + missing)
    # Interleaved chunks, a few per worker: one task per run would spend its time on pickling.
    n_chunks = n_workers * 4
    chunks = [dirs[i::n_chunks] for i in range(n_chunks)]
    # fork: workers inherit the imported modules for free; Arrow registers at-fork handlers that give
    # the child fresh thread pools, so reading Parquet in the workers is safe.
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        results = pool.map(_summarize_many, chunks, [metric] * len(chunks))
        rows = [row for chunk in results for row in chunk]
    return per_run_frame(rows + missing)
