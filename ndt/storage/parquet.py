"""Streaming metric rows to Parquet in closed, always-readable pieces.

A metrics store is a directory of part files (``part-00000.parquet``, ``part-00001.parquet``, ...),
each written whole to a hidden temporary name, fsynced and renamed into place (`ndt.storage.durable`), so
a reader never sees a half-written file and a crash, a power loss included, loses at most the rows not
yet flushed. A part that cannot be read (a disk fault, a copy cut short) is named in the error of
`read_metrics` and, when a run resumes, moved aside by `set_aside_unreadable_parts` so that the run
recomputes its rows. ``pandas.read_parquet(path)``
reads the directory; `read_metrics` does too and also checks the schema and sorts the rows.

Rows are buffered as numpy columns and turned into one Arrow table per flush: no per-row Python objects.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ndt.storage.durable import fsync_dir, replace_durably
from ndt.storage.schema import COLUMNS, METRICS_SCHEMA

PART_GLOB = "part-*.parquet"


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The part files of a metrics store, in write order."""
    return sorted(Path(path).glob(PART_GLOB))


def _atomic_write(table: pa.Table, dest: Path) -> None:
    # The temporary's leading dot hides it from pyarrow/pandas readers (their default ignore_prefixes);
    # the rename is atomic and, with the fsyncs, durable: the part appears complete or not at all.
    replace_durably(lambda tmp: pq.write_table(table, tmp, compression="zstd"), dest)


class UnreadablePartError(ValueError):
    """A part file of a metrics store cannot be read as a metrics table; `path` names it."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(
            f"metric part {path} cannot be read ({type(cause).__name__}: {cause}); resuming the run sets "
            "it aside and recomputes its rows"
        )
        self.path = path


def check_part(path: Path) -> None:
    """Read one part whole (footer, schema, every page); raise `UnreadablePartError` if that fails."""
    try:
        pq.read_table(path, schema=METRICS_SCHEMA)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise UnreadablePartError(path, err) from err


def unreadable_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The parts of a store that fail `check_part` (each read whole), in part order."""
    bad = []
    for part in list_parts(path):
        try:
            check_part(part)
        except UnreadablePartError:
            bad.append(part)
    return bad


def set_aside_unreadable_parts(path: str | os.PathLike[str], aside_dir: str | os.PathLike[str]) -> list[Path]:
    """Move every part of a store that fails `check_part` into `aside_dir`.

    Args:
        path: the metrics store.
        aside_dir: where unreadable parts go (created if needed); a name taken there gets a suffix.

    Returns:
        The new paths of the parts moved, in part order (empty when every part reads).
    """
    moved = []
    for part in unreadable_parts(path):
        dest_dir = Path(aside_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / part.name
        n = 1
        while dest.exists():
            dest = dest_dir / f"{part.name}.{n}"
            n += 1
        os.replace(part, dest)
        fsync_dir(part.parent)
        fsync_dir(dest_dir)
        moved.append(dest)
    return moved


def rows_to_table(columns: Mapping[str, Sequence[object] | np.ndarray]) -> pa.Table:
    """Build a schema-conforming table from column arrays (every schema column must be present).

    Raises:
        ValueError: a column is missing or unknown, or the columns differ in length.
    """
    missing = [c for c in COLUMNS if c not in columns]
    extra = [c for c in columns if c not in COLUMNS]
    if missing or extra:
        raise ValueError(
            f"metric rows must have exactly the schema columns; missing {missing}, unknown {extra}"
        )
    # from_pandas stays off: a NaN metric (non-finite activations) stays NaN, while None (a metric not
    # computed) becomes null.
    arrays = [pa.array(columns[f.name], type=f.type) for f in METRICS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=METRICS_SCHEMA)


#: Measurements per Parquet part by default: a crash loses at most this many (the tracker also solves
#: their spectra together). conf/tracker/default.yaml repeats the value for the runner, where it is set.
FLUSH_EVERY = 50


class MetricsWriter:
    """Buffered writer of metric rows; thread-safe.

    Args:
        path: directory of the store, created if absent; None keeps the rows in memory only.
        flush_every: write a part after this many `append` calls (measurements) at the latest.
        resume_after_step: open an existing store to continue a run: rows with ``step`` greater than
            this are removed first (they belong to steps the resumed run will redo). Without it, a
            store that already holds parts is refused rather than mixed with new rows.

    Raises:
        FileExistsError: ``path`` already holds parts and ``resume_after_step`` is None.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        flush_every: int = FLUSH_EVERY,
        *,
        resume_after_step: int | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path) if path is not None else None
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_measurements = 0
        self._memory: list[pa.Table] = []
        self._next_part = 0
        self.closed = False
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for stray in self.path.glob(".part-*.tmp"):  # left by a crash during a write: never complete
            stray.unlink(missing_ok=True)
        parts = list_parts(self.path)
        if parts and resume_after_step is None:
            raise FileExistsError(
                f"{self.path} already holds {len(parts)} metric part(s) from an earlier run; write to a new "
                "path, delete that one, or resume it (resume_after_step=<last checkpointed step>)"
            )
        if resume_after_step is not None:
            self._truncate_after(parts, resume_after_step)
        self._next_part = max((int(p.stem.split("-")[1]) for p in list_parts(self.path)), default=-1) + 1

    def _truncate_after(self, parts: list[Path], step: int) -> None:
        """Drop rows with step > `step`; each rewrite is atomic, so a crash here loses nothing kept."""
        for part in parts:
            table = pq.read_table(part, schema=METRICS_SCHEMA)
            keep = pa.compute.less_equal(table["step"], pa.scalar(step, pa.int64()))
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            if kept.num_rows == 0:
                part.unlink()
                fsync_dir(part.parent)
            else:
                _atomic_write(kept, part)

    def append(self, columns: Mapping[str, object], measurements: int = 1) -> None:
        """Buffer rows and flush when `flush_every` measurements are buffered.

        Args:
            columns: {schema column: scalar or (L,) array}; scalars apply to all L rows.
            measurements: how many measurements these rows hold (for the flush cadence).
        """
        missing = [c for c in COLUMNS if c not in columns]
        extra = [c for c in columns if c not in COLUMNS]
        if missing or extra:
            # Refused here, at the call that is wrong, so that the rows already buffered still flush.
            raise ValueError(
                f"metric rows must have exactly the schema columns; missing {missing}, unknown {extra}"
            )
        lengths = {np.size(v) for v in columns.values() if np.ndim(v) > 0}  # type: ignore[arg-type]
        if len(lengths) > 1:
            raise ValueError(f"columns of one append must share one length, got lengths {sorted(lengths)}")
        n_rows = lengths.pop() if lengths else 1
        rows = {name: _full(v, n_rows) for name, v in columns.items()}
        with self._lock:
            if self.closed:
                raise RuntimeError("this MetricsWriter is closed; open a new one to write more rows")
            self._pending.append(rows)
            self._pending_measurements += measurements
            if self._pending_measurements >= self.flush_every:
                self._flush_locked()

    def _pending_table(self) -> pa.Table | None:
        if not self._pending:
            return None
        return rows_to_table({name: np.concatenate([p[name] for p in self._pending]) for name in COLUMNS})

    def _flush_locked(self) -> None:
        table = self._pending_table()
        if table is None:
            return
        if self.path is None:
            self._memory.append(table)
        else:
            _atomic_write(table, self.path / _part_name(self._next_part))
            self._next_part += 1
        self._pending = []
        self._pending_measurements = 0

    def flush(self) -> None:
        """Write the buffered rows now, as one closed part."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Flush and refuse further rows (idempotent)."""
        with self._lock:
            if not self.closed:
                self._flush_locked()
                self.closed = True

    def read(self) -> pd.DataFrame:
        """Every row written so far (flushed or buffered), sorted by step then layer_index."""
        with self._lock:
            tables = list(self._memory)
            if self.path is not None and list_parts(self.path):
                tables.append(_read_table(self.path))
            pending = self._pending_table()
            if pending is not None:
                tables.append(pending)
        if not tables:
            return empty_frame()
        return _to_frame(pa.concat_tables(tables))


def _full(value: object, n_rows: int) -> np.ndarray:
    """A scalar or (n_rows,) array as an (n_rows,) array; strings and None as object arrays."""
    arr = np.asarray(value, dtype=object if value is None or isinstance(value, str) else None)
    return np.broadcast_to(arr, (n_rows,)) if arr.ndim == 0 else arr


_SORT_KEYS = ["run_id", "step", "layer_index"]


def _read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    dataset = ds.dataset(path, format="parquet", schema=METRICS_SCHEMA)
    return dataset.to_table(columns=None if columns is None else list(columns))


def _to_frame(table: pa.Table) -> pd.DataFrame:
    table = table.unify_dictionaries().combine_chunks()
    df = table.to_pandas()
    keys = [k for k in _SORT_KEYS if k in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True) if keys else df


def empty_frame(columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A zero-row DataFrame with the metrics columns (or the chosen ones) and their dtypes."""
    frame = METRICS_SCHEMA.empty_table().to_pandas()
    return frame if columns is None else frame[list(columns)]


def read_metrics(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a metrics store (directory of parts, or one Parquet file) into a DataFrame.

    Args:
        path: the store.
        columns: schema columns to read (default all); reading fewer skips the others on disk.

    Returns:
        One row per (run, step, layer), sorted by run_id, step and layer_index (those of them that
        were read), columns as in `ndt.storage.schema`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a column that is not in the schema.
    """
    p = Path(path)
    if columns is not None and (unknown := [c for c in columns if c not in COLUMNS]):
        raise ValueError(f"unknown metrics column(s) {unknown}; the schema has {', '.join(COLUMNS)}")
    if not p.exists():
        raise FileNotFoundError(f"no metrics at {p}: expected a directory of part-*.parquet files")
    if p.is_dir() and not list_parts(p):
        return empty_frame(columns)
    try:
        return _to_frame(_read_table(p, columns))
    except (OSError, pa.ArrowException):
        # Name the part that fails instead of pyarrow's generic message (tables list the run as unreadable).
        for part in list_parts(p) if p.is_dir() else [p]:
            check_part(part)
        raise
