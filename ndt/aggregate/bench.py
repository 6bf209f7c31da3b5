"""Bench: time `make_tables` on synthetic runs written with the real writers.

``bench_aggregate(n_runs=1000)`` writes 1,000 runs of 400 measurements x 8 layers (TAP-like growth per
layer, noise, and a planted step in every third run) to a temporary sweep with `MetricsWriter` and
`write_run_json`, then times `make_tables` on it: reading, the per-run fits and detectors, the tables
and their files (figures off unless asked). Writing the runs is not timed. Target: under 60 s on
2 cores. ``python -m ndt.aggregate.bench`` prints the time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ndt.aggregate.report import make_tables
from ndt.analysis.growth import tap_curve
from ndt.models.registry import ARCH_NAMES, arch_spec
from ndt.storage.layout import DONE_MARKER, METRICS_DIR, run_name, write_run_json
from ndt.storage.parquet import MetricsWriter
from ndt.storage.schema import METRIC_COLUMNS

BENCH_DATASETS = ("mnist", "fashion_mnist", "cifar10", "qmnist")


def write_synthetic_run(
    run_dir: Path,
    arch: str,
    dataset: str,
    seed: int,
    n_measurements: int,
    n_layers: int,
    rng: np.random.Generator,
) -> None:
    """Write one complete synthetic run (metrics, run.json, marker) like the runner would.

    Args:
        run_dir: the run directory (created).
        arch, dataset, seed: the run's identity (arch must be in the registry).
        n_measurements: measurements (steps 0, 10, 20, ...).
        n_layers: layers per measurement.
        rng: draws the series.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = np.arange(n_measurements, dtype=np.int64) * 10
    t = steps / max(steps[-1], 1)
    d_max, a, t0 = rng.uniform(5, 30), rng.uniform(3, 10), rng.uniform(0.3, 0.7)
    base = tap_curve(t, d_max, a, t0)
    if seed % 3 == 0:  # a planted transition in every third run
        base = base + 0.1 * d_max * (
            np.arange(n_measurements) >= rng.integers(n_measurements // 4, 3 * n_measurements // 4)
        )
    # (n_measurements, n_layers): each layer a scaled copy of the growth plus its own noise
    layers = base[:, None] * np.linspace(0.5, 1.5, n_layers)[None, :]
    layers = layers + rng.normal(0, 0.01 * d_max, layers.shape)
    writer = MetricsWriter(run_dir / METRICS_DIR)
    # One append with every row of the run: the writer takes any row count per call, and the bench
    # is about reading, not writing.
    writer.append(
        {
            "run_id": run_name(arch, dataset, seed),
            "arch": arch,
            "dataset": dataset,
            "seed": seed,
            "step": np.repeat(steps, n_layers),
            "epoch": np.repeat(steps // 100, n_layers).astype(np.int32),
            "layer": np.tile(
                np.array([f"layers.{i}" for i in range(n_layers)], dtype=object), n_measurements
            ),
            "layer_index": np.tile(np.arange(n_layers, dtype=np.int16), n_measurements),
            "n_samples": 256,
            "n_features": 64,
            "loss": np.repeat(np.exp(-3 * t), n_layers),
            "grad_norm": 1.0,
            **{m: layers.ravel() * (1 + 0.1 * k) for k, m in enumerate(METRIC_COLUMNS)},
            "wall_time": np.repeat(t * 60.0, n_layers),
        }
    )
    writer.close()
    spec = arch_spec(arch)
    write_run_json(
        run_dir,
        {
            "status": "complete",
            "arch": arch,
            "dataset": dataset,
            "seed": seed,
            "family": spec.family,
            "depth": spec.depth,
            "width": spec.width,
            "params": 10_000 * spec.depth,
            "final_accuracy": float(rng.uniform(0.8, 0.99)),
            "n_measurements": n_measurements,
            "device": "cpu",
            "git_commit": None,
            "versions": {},
            "timings": {},
            "config": {"synthetic": True},
            "error": None,
        },
    )
    (run_dir / DONE_MARKER).touch()


def write_synthetic_sweep(
    dest: str | Path, n_runs: int = 1000, n_measurements: int = 400, n_layers: int = 8, seed: int = 0
) -> Path:
    """Write `n_runs` synthetic runs into `dest`: (arch, dataset) pairs in turn, then the next seed.

    Returns:
        The sweep directory.
    """
    root = Path(dest)
    rng = np.random.default_rng(seed)
    pairs = [(a, d) for a in ARCH_NAMES for d in BENCH_DATASETS]
    for i in range(n_runs):
        arch, dataset = pairs[i % len(pairs)]
        run_seed = i // len(pairs)
        write_synthetic_run(
            root / run_name(arch, dataset, run_seed), arch, dataset, run_seed, n_measurements, n_layers, rng
        )
    return root


def bench_aggregate(
    n_runs: int = 1000,
    n_measurements: int = 400,
    n_layers: int = 8,
    *,
    workers: int | None = None,
    figures: bool = False,
    seed: int = 0,
) -> float:
    """Seconds `make_tables` takes on a fresh synthetic sweep of `n_runs` runs.

    Args:
        n_runs: runs in the sweep.
        n_measurements: measurements per run.
        n_layers: layers per measurement.
        workers: passed to `make_tables` (None: one per CPU).
        figures: also time the figures.
        seed: seed of the synthetic series.

    Returns:
        Wall-clock seconds of the aggregation alone (writing the runs is not timed).
    """
    with tempfile.TemporaryDirectory(prefix="ndt-bench-") as tmp:
        sweep = write_synthetic_sweep(Path(tmp) / "sweep", n_runs, n_measurements, n_layers, seed)
        start = time.perf_counter()
        make_tables(sweep, workers=workers, figures=figures)
        return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Print the aggregation time of a synthetic sweep."""
    parser = argparse.ArgumentParser(prog="python -m ndt.aggregate.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="synthetic runs")
    parser.add_argument("--measurements", type=int, default=400, help="measurements per run")
    parser.add_argument("--layers", type=int, default=8, help="layers per measurement")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    seconds = bench_aggregate(args.runs, args.measurements, args.layers, workers=args.workers)
    print(
        f"aggregate {args.runs} runs x {args.measurements} measurements x {args.layers} layers: {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
