"""The one definition of a run directory: names, files, and the run record (``run.json``).

A sweep directory holds one directory per run, named by its choices::

    results/<sweep_name>/
        <arch>__<dataset>__s<seed>/
            metrics/part-00000.parquet ...   metric rows (schema: ndt.storage.schema)
            run.json                         the run record (RUN_KEYS below), rewritten atomically
            checkpoints/step_000100.pt ...   model, optimizer, RNG and data position
            run.log                          the run's log
            heartbeat                        touched while training (unix time inside)
            lock                             held (flock) by the process running it; its PID and host inside
            set_aside/                       files found damaged on resume (metrics/, checkpoints/), kept
            COMPLETE                         marker, written last: the run finished and its files are final

Every file but the log and the heartbeat is written durably (`ndt.storage.durable`): temporary
file, fsync, rename, directory fsync.

``run.json`` keys (at least): status ("running", "complete", "failed", "skipped"), arch, dataset, seed,
family, depth, width, params, final_accuracy, n_measurements, device, git_commit, versions, timings,
numerics (`ndt.running.numerics.current_numerics`), nondeterministic_ops (the ops torch warned have no
deterministic kernel, every segment's; each segment lists its own), config (the resolved config),
error (failed/skipped runs: the reason), slurm (job ids, under SLURM), layers and n_layers (complete runs), segments (one entry per process that trained the run: a resumed
run has several; device, git_commit and versions above are the last segment's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndt.storage.durable import write_text_durably

METRICS_DIR = "metrics"
RUN_JSON = "run.json"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "run.log"
DONE_MARKER = "COMPLETE"
#: Touched at every checkpoint and log line while the run trains; a stale one means the process died.
HEARTBEAT = "heartbeat"
#: The run's lock file (see `ndt.storage.lock`).
LOCK_FILE = "lock"
#: Damaged files found on resume are moved here (same relative path), never deleted.
SET_ASIDE_DIR = "set_aside"

#: Values of run.json's ``status``.
STATUSES = ("running", "complete", "failed", "skipped")

#: Keys every run.json written by the runner holds.
RUN_KEYS = (
    "status",
    "arch",
    "dataset",
    "seed",
    "family",
    "depth",
    "width",
    "params",
    "final_accuracy",
    "n_measurements",
    "device",
    "git_commit",
    "versions",
    "timings",
    "config",
)


def run_name(arch: str, dataset: str, seed: int | None) -> str:
    """``<arch>__<dataset>__s<seed>`` (``s-`` when the seed is unknown, e.g. imported legacy runs)."""
    return f"{arch}__{dataset}__s{'-' if seed is None else seed}"


def parse_run_name(name: str) -> tuple[str, str, int | None]:
    """(arch, dataset, seed) of ``<arch>__<dataset>__s<seed>``, the inverse of `run_name` (seed None
    for ``s-`` or no seed part; dataset "" for a name without one)."""
    parts = name.split("__")
    arch = parts[0]
    dataset = parts[1] if len(parts) > 1 else ""
    seed: int | None = None
    if len(parts) > 2 and parts[2].startswith("s") and parts[2][1:].lstrip("-").isdigit():
        seed = int(parts[2][1:])
    return arch, dataset, seed


def iter_run_dirs(sweep_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Run directories of a sweep (those holding a run.json), sorted by name."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no sweep directory at {root}")
    yield from sorted(p.parent for p in root.glob(f"*/{RUN_JSON}"))


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run record of `run_dir`.

    Raises:
        FileNotFoundError: `run_dir` is not an ndt run (no run.json).
    """
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{Path(run_dir)} is not an ndt run directory: it has no {RUN_JSON}")
    with path.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def write_run_json(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Write run.json atomically and durably (a reader sees the old or the new record, never half)."""
    write_text_durably(
        Path(run_dir) / RUN_JSON, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n"
    )


def write_done_marker(run_dir: str | os.PathLike[str], status: str) -> None:
    """Write the COMPLETE marker (its text: the final status), durably: the last write of a run."""
    write_text_durably(Path(run_dir) / DONE_MARKER, f"{status}\n")


def is_complete(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run finished (its completion marker exists)."""
    return (Path(run_dir) / DONE_MARKER).is_file()
