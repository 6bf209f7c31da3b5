"""Import the study's original results (one JSON file per experiment) into ndt's run layout.

``python -m ndt.importers.legacy SRC_DIR DEST_SWEEP_DIR`` converts every file of SRC_DIR written by the
study's code, ``<arch>_<dataset>.json``::

    {"arch_name": str, "dataset_name": str,
     "architecture_params": {"depth", "width", "min_width", "max_width", "num_params", "connectivity"},
     "final_accuracy": float, "elapsed_time": float (s), "num_steps": int, "measurement_interval": int,
     "measurements": [{"step", "epoch", "loss", "grad_norm",
                       "layer_metrics": {layer: {"stable_rank", "participation_ratio",
                                                 "effective_rank_90", "nuclear_norm_ratio"}}}]}

into one run directory per file, ``DEST/<arch>__<dataset>__s-`` (`run_name` with an unknown seed), so
that ``python -m ndt.tables DEST`` regenerates the study's appendix from its own data. Per run:

- ``metrics/``: one row per (measurement, layer) through `MetricsWriter`; run_id = the run name,
  seed null (the study did not record it), layer_index = order of first appearance of the layer,
  ``effective_rank_90`` -> ``cumulative_energy_90``; ``pr_eigen`` and ``effective_rank`` null (the study
  did not compute them); ``n_samples`` and ``n_features`` 0 (unknown: the files do not say);
  ``wall_time`` = elapsed_time * step / last step (the study kept only the total, so the time is spread
  linearly over the steps; 0 when unknown). A metric missing from a layer is null.
- ``run.json``: status "complete", arch, dataset, seed null, family from the name's prefix (``mlp_``,
  ``cnn_``, ``transformer_``; "unknown" otherwise), depth, width, params (``num_params``),
  final_accuracy, n_measurements, the file's other fields under ``config``; then the COMPLETE marker.

Files that are not such JSON are reported (one line each) and skipped; an existing run directory is
kept unless ``--overwrite``. The exit status is 0 when at least one file was converted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ndt.storage.layout import DONE_MARKER, METRICS_DIR, run_name, write_run_json
from ndt.storage.parquet import MetricsWriter

#: Legacy metric key -> ndt metric column.
METRIC_MAP: Mapping[str, str] = {
    "stable_rank": "stable_rank",
    "participation_ratio": "participation_ratio",
    "effective_rank_90": "cumulative_energy_90",
    "nuclear_norm_ratio": "nuclear_norm_ratio",
}

#: ndt metric columns the study did not compute: written null.
NOT_COMPUTED = ("pr_eigen", "effective_rank")

REQUIRED_KEYS = ("arch_name", "dataset_name", "measurements")
FAMILY_PREFIXES = (("mlp_", "mlp"), ("cnn_", "cnn"), ("transformer_", "transformer"))


class LegacyFormatError(ValueError):
    """The file is not a study result in the legacy format."""


def family_from_name(arch: str) -> str:
    """The family of a study architecture name from its prefix ("unknown" without a known prefix)."""
    return next((family for prefix, family in FAMILY_PREFIXES if arch.startswith(prefix)), "unknown")


def _number(value: Any) -> float | None:
    """A JSON number as float; None for null or absent (-> null in Parquet)."""
    return None if value is None else float(value)


def validate(record: Any) -> None:
    """Check that `record` (parsed JSON) has the legacy structure.

    Raises:
        LegacyFormatError: with the first problem found.
    """
    if not isinstance(record, dict):
        raise LegacyFormatError(f"top level is a {type(record).__name__}, not an object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise LegacyFormatError(f"missing key(s) {missing}")
    for key in ("arch_name", "dataset_name"):
        if not isinstance(record[key], str) or not record[key]:
            raise LegacyFormatError(f"{key} must be a non-empty string")
    if not isinstance(record["measurements"], list):
        raise LegacyFormatError("measurements must be a list")
    for i, m in enumerate(record["measurements"]):
        if not isinstance(m, dict) or "step" not in m or not isinstance(m.get("layer_metrics"), dict):
            raise LegacyFormatError(f"measurement {i} lacks step or a layer_metrics object")
        if not all(isinstance(v, dict) for v in m["layer_metrics"].values()):
            raise LegacyFormatError(f"measurement {i}: every layer_metrics value must be an object")


def legacy_columns(record: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The metric rows of one legacy record as `MetricsWriter` columns (pure).

    Args:
        record: a validated legacy record.
        run_id: the run name.

    Returns:
        {schema column: (n,) array or scalar}, n = sum over measurements of their layers.
    """
    measurements = record["measurements"]
    layer_index: dict[str, int] = {}
    for m in measurements:  # order of first appearance
        for layer in m["layer_metrics"]:
            layer_index.setdefault(layer, len(layer_index))
    steps = [int(m["step"]) for m in measurements]
    last = max(steps, default=0)
    elapsed = record.get("elapsed_time")
    per_step = float(elapsed) / last if elapsed is not None and last > 0 else 0.0
    cols: dict[str, list[Any]] = {
        k: [] for k in ("step", "epoch", "layer", "layer_index", "loss", "grad_norm")
    }
    cols.update({c: [] for c in METRIC_MAP.values()})
    cols["wall_time"] = []
    for m, step in zip(measurements, steps, strict=True):
        for layer, values in m["layer_metrics"].items():
            cols["step"].append(step)
            cols["epoch"].append(int(m.get("epoch") or 0))
            cols["layer"].append(layer)
            cols["layer_index"].append(layer_index[layer])
            cols["loss"].append(_number(m.get("loss")))
            cols["grad_norm"].append(_number(m.get("grad_norm")))
            for key, col in METRIC_MAP.items():
                cols[col].append(_number(values.get(key)))
            cols["wall_time"].append(per_step * step)
    out: dict[str, Any] = {
        "run_id": run_id,
        "arch": record["arch_name"],
        "dataset": record["dataset_name"],
        "seed": None,
        "n_samples": 0,
        "n_features": 0,
        **{c: None for c in NOT_COMPUTED},
    }
    for name, values in cols.items():
        out[name] = np.array(values, dtype=object if name == "layer" else None)
    # lists holding None became object arrays: keep them (None -> null); all-number ones are numeric
    return out


def legacy_run_record(record: Mapping[str, Any], source: str) -> dict[str, Any]:
    """run.json of an imported legacy record (pure).

    Args:
        record: a validated legacy record.
        source: the file name it came from.
    """
    params = record.get("architecture_params") or {}
    accuracy = record.get("final_accuracy")
    return {
        "status": "complete",
        "arch": record["arch_name"],
        "dataset": record["dataset_name"],
        "seed": None,
        "family": family_from_name(record["arch_name"]),
        "depth": params.get("depth"),
        "width": params.get("width"),
        "params": params.get("num_params"),
        "final_accuracy": None if accuracy is None else float(accuracy),
        "n_measurements": len(record["measurements"]),
        "device": None,
        "git_commit": None,
        "versions": {},
        "timings": {"elapsed_time": record.get("elapsed_time")},
        "config": {
            "source": "legacy",
            "num_steps": record.get("num_steps"),
            "measurement_interval": record.get("measurement_interval"),
            "architecture_params": params,
        },
        "error": None,
        "imported_from": source,
    }


def load_legacy(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate one legacy file.

    Raises:
        LegacyFormatError: not JSON, or not the legacy structure.
    """
    try:
        with Path(path).open(encoding="utf-8") as f:
            record = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LegacyFormatError(f"not JSON ({err})") from err
    validate(record)
    return dict(record)


def write_legacy_run(
    record: Mapping[str, Any], dest_dir: str | os.PathLike[str], source: str, *, overwrite: bool = False
) -> Path:
    """Write one validated legacy record as a run directory of `dest_dir`.

    Returns:
        The run directory written.

    Raises:
        FileExistsError: the run directory already exists and `overwrite` is False.
    """
    name = run_name(record["arch_name"], record["dataset_name"], None)
    run_dir = Path(dest_dir) / name
    if run_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{run_dir} exists (imported before?); pass --overwrite to replace it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    writer = MetricsWriter(run_dir / METRICS_DIR)
    if record["measurements"]:
        # the whole run in one append: the writer accepts any number of rows per call
        writer.append(legacy_columns(record, name))
    writer.close()
    write_run_json(run_dir, legacy_run_record(record, source))
    (run_dir / DONE_MARKER).touch()  # last: the run is final
    return run_dir


def convert_file(
    path: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Convert one legacy file into a run directory of `dest_dir` (`load_legacy` + `write_legacy_run`).

    Returns:
        The run directory written.

    Raises:
        LegacyFormatError: not a legacy result file.
        FileExistsError: the run directory already exists and `overwrite` is False.
    """
    return write_legacy_run(load_legacy(path), dest_dir, Path(path).name, overwrite=overwrite)


@dataclass
class ImportReport:
    """Outcome of `import_legacy`.

    Attributes:
        converted: (source file, run directory) per converted file.
        skipped: (source file, reason) per skipped file.
    """

    converted: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def import_legacy(
    src_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> ImportReport:
    """Convert every file of `src_dir` (not recursive, hidden files ignored), in name order.

    Returns:
        `ImportReport`; files that are not legacy results are in ``skipped`` with the reason.

    Raises:
        FileNotFoundError: `src_dir` is not a directory.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"no directory of legacy results at {src}")
    report = ImportReport()
    seen: dict[str, Path] = {}  # run name -> the file it came from
    for path in sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            record = load_legacy(path)
            name = run_name(record["arch_name"], record["dataset_name"], None)
            if name in seen:  # a second file of one experiment must not replace the first
                report.skipped.append((path, f"same experiment as {seen[name].name}"))
                continue
            run_dir = write_legacy_run(record, dest_dir, path.name, overwrite=overwrite)
        except (LegacyFormatError, FileExistsError) as err:
            report.skipped.append((path, str(err)))
            continue
        seen[name] = path
        report.converted.append((path, run_dir))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Convert a folder; print one line per file. Exit 0 if at least one file was converted, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m ndt.importers.legacy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src_dir", help="folder of the study's <arch>_<dataset>.json files")
    parser.add_argument("dest_dir", help="sweep directory to write the runs into")
    parser.add_argument("--overwrite", action="store_true", help="replace run directories imported before")
    args = parser.parse_args(argv)
    report = import_legacy(args.src_dir, args.dest_dir, overwrite=args.overwrite)
    for src, run_dir in report.converted:
        print(f"converted {src.name} -> {run_dir}")
    for src, reason in report.skipped:
        print(f"skipped {src.name}: {reason}")
    print(f"{len(report.converted)} converted, {len(report.skipped)} skipped")
    return 0 if report.converted else 1


if __name__ == "__main__":
    sys.exit(main())
