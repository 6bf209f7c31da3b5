"""How fast ``ndt.view`` is in a real browser, on a synthetic 60-run sweep (400 measurements x 10 layers).

The sweep is the aggregation benchmark's synthetic runs (`ndt.aggregate.bench.write_synthetic_sweep`:
the real writers, TAP-like growth, a planted step in every third run), one per (architecture, dataset)
pair of the registry, with a multirun.yaml that expects them; two runs are made to look like runs still
training (their last 40% of rows cut, a fresh heartbeat, no COMPLETE marker) and one failed.

Measured with headless Chromium (Playwright, the system's ``chromium``), in the browser's own clock
(``performance.mark`` set by the page when it has drawn):

- **first page**: navigation start to the sweep grid drawn (every tile, sparkline and status);
  target < 2 s.
- **run view**: a click on a tile to the heatmap, per-layer lines and loss drawn, with the chart bundle
  already fetched in the background while the grid was shown (what a user sees); target < 1 s.
- **run view, cold**: a new browser context opening a run's URL directly (bundle fetched and compiled
  too).
- **poll**: the server's answer to the page's poll when nothing changed (one refresh of 60 runs).

``python -m ndt.bench view`` prints them; ``python -m ndt.bench.view --screenshots results`` also writes
the README's two screenshots (``view_grid.png``, ``view_run.png``) from the same sweep with one run missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ndt.aggregate.bench import BENCH_DATASETS, write_synthetic_sweep
from ndt.models.registry import ARCH_NAMES
from ndt.storage.layout import DONE_MARKER, HEARTBEAT, METRICS_DIR, read_run_json, write_run_json
from ndt.storage.parquet import MetricsWriter, read_metrics
from ndt.view.data import Results
from ndt.view.server import ViewServer

N_RUNS = len(ARCH_NAMES) * len(BENCH_DATASETS)  # 60: one run per pair
N_MEASUREMENTS = 400
N_LAYERS = 10
#: The runs made to look unfinished (running, failed) and, for the screenshots, missing.
RUNNING = ("cnn_deep__mnist__s0", "transformer_medium__qmnist__s0")
FAILED = "mlp_wide__fashion_mnist__s0"
MISSING = "transformer_deep__cifar10__s0"
TARGETS = {"first_page_s": 2.0, "run_view_s": 1.0}


def chromium_path() -> str | None:
    """The system Chromium (Debian: ``apt-get install chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_view_sweep(dest: Path, *, missing: bool = False) -> Path:
    """The benchmark sweep (see the module docstring) in `dest`; `missing` also removes one run."""
    sweep = write_synthetic_sweep(dest, N_RUNS, N_MEASUREMENTS, N_LAYERS)
    cfg = {
        "arch": {"name": ARCH_NAMES[0]},
        "dataset": {"name": BENCH_DATASETS[0]},
        "seed": 0,
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": {"arch": ",".join(ARCH_NAMES), "dataset": ",".join(BENCH_DATASETS)},
            },
            "overrides": {"task": []},
        },
    }
    OmegaConf.save(OmegaConf.create(cfg), sweep / "multirun.yaml")
    for name in RUNNING:
        run = sweep / name
        rows = read_metrics(run / METRICS_DIR)
        steps = sorted(rows["step"].unique())
        kept = rows[rows["step"] <= steps[int(0.6 * len(steps))]]
        shutil.rmtree(run / METRICS_DIR)
        writer = MetricsWriter(run / METRICS_DIR, flush_every=50)  # the runner's default part size
        for _, block in kept.groupby("step", sort=True):
            writer.append({c: block[c].to_numpy() for c in block.columns})
        writer.close()
        record = read_run_json(run)
        record.update(
            status="running",
            final_accuracy=None,
            n_measurements=None,
            config={"trainer": {"max_steps": int(steps[-1]) + 10}},
        )
        write_run_json(run, record)
        (run / DONE_MARKER).unlink()
        (run / HEARTBEAT).write_text(f"{time.time():.0f}\n")
    record = read_run_json(sweep / FAILED)
    record.update(
        status="failed",
        final_accuracy=None,
        error="FloatingPointError: loss is nan at step 1230 (lr too high?)",
    )
    write_run_json(sweep / FAILED, record)
    (sweep / FAILED / DONE_MARKER).unlink()
    if missing:
        shutil.rmtree(sweep / MISSING)
    return sweep


def _mark(page: Any, name: str) -> float:
    """Seconds from the page's navigation start to the performance mark `name` (the last one set)."""
    value: float = page.evaluate(f"performance.getEntriesByName('{name}').at(-1).startTime") / 1000
    return value


def bench_view(repeats: int = 3, screenshots: Path | None = None) -> dict[str, Any]:
    """Time the view in headless Chromium (see the module docstring).

    Args:
        repeats: measurements of each figure (the median is reported).
        screenshots: also write view_grid.png and view_run.png into this folder.

    Returns:
        {runs, n_measurements, n_layers, read_s (the server's first read of the sweep), first_page_s,
        run_view_s, run_view_cold_s, poll_ms}, each time a median over `repeats`.

    Raises:
        RuntimeError: no Chromium or no Playwright.
    """
    chromium = chromium_path()
    if chromium is None:
        raise RuntimeError("no chromium on this machine (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        raise RuntimeError("playwright is not installed (pip install playwright)") from None
    cwd = Path.cwd()
    shots = None if screenshots is None else screenshots.resolve()
    with tempfile.TemporaryDirectory(prefix="ndt-bench-view-") as tmp:
        # Served as results/paper from its parent, as the README's workflow spells it: the page's
        # suggested ndt.investigate commands show that path in the screenshots.
        os.chdir(tmp)
        try:
            sweep = write_view_sweep(Path("results") / "paper", missing=shots is not None)
            return _measure(sweep, chromium, repeats, shots)
        finally:
            os.chdir(cwd)


def _measure(sweep: Path, chromium: str, repeats: int, shots: Path | None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results = Results(sweep)
    start = time.perf_counter()
    results.refresh(force=True)
    read_s = time.perf_counter() - start
    n_runs = sum(1 for r in results.sweep(sweep.name).status.values() if r.state != "missing")
    first, run, cold, poll = [], [], [], []
    server = ViewServer(results, port=0).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for _ in range(repeats):
                context = browser.new_context(viewport={"width": 1500, "height": 1000})
                page = context.new_page()
                page.goto(server.url)
                page.wait_for_selector("body[data-ready=grid]")
                first.append(_mark(page, "ndt-grid-ready"))
                page.wait_for_function("window.Plotly !== undefined")
                if shots is not None:
                    page.screenshot(path=str(shots / "view_grid.png"), full_page=True)
                clicked = page.evaluate(
                    "() => { const t = performance.now(); "
                    f"document.querySelector(\".tile[data-runs='{RUNNING[0]}']\").click(); return t; }}"
                )
                page.wait_for_selector("body[data-ready=run]")
                run.append(_mark(page, "ndt-run-ready") - clicked / 1000)
                if shots is not None:
                    page.screenshot(path=str(shots / "view_run.png"), full_page=True)
                    shots = None
                poll.append(
                    page.evaluate(
                        "async () => { const t = performance.now(); await (await fetch("
                        "'/api/sweep?sweep=paper&v=' + window.ndtView.version)).json(); "
                        "return performance.now() - t; }"
                    )
                )
                context.close()
                context = browser.new_context(viewport={"width": 1500, "height": 1000})
                page = context.new_page()
                page.goto(f"{server.url}#/run/paper/{RUNNING[1]}")
                page.wait_for_selector("body[data-ready=run]")
                cold.append(_mark(page, "ndt-run-ready"))
                context.close()
            browser.close()
    finally:
        server.stop()
    return {
        "runs": n_runs,
        "n_measurements": N_MEASUREMENTS,
        "n_layers": N_LAYERS,
        "read_s": read_s,
        "first_page_s": statistics.median(first),
        "run_view_s": statistics.median(run),
        "run_view_cold_s": statistics.median(cold),
        "poll_ms": statistics.median(poll),
    }


def report_view(r: dict[str, Any]) -> str:
    """The benchmark's lines for ``python -m ndt.bench``."""
    return "\n".join(
        [
            f"view ({r['runs']} runs x {r['n_measurements']} measurements x {r['n_layers']} layers, headless "
            "Chromium, median of 3):",
            f"  first page (navigation to grid drawn) {r['first_page_s']:.2f} s (target < "
            f"{TARGETS['first_page_s']:g} s); server's first read of the sweep {r['read_s']:.2f} s",
            f"  run view (click to charts drawn) {r['run_view_s']:.2f} s (target < {TARGETS['run_view_s']:g} s); "
            f"opened directly in a new context (bundle included) {r['run_view_cold_s']:.2f} s",
            f"  a poll with nothing new: {r['poll_ms']:.0f} ms",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the view benchmark; with --screenshots DIR, also write the README's screenshots there."""
    parser = argparse.ArgumentParser(prog="python -m ndt.bench.view", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--screenshots", type=Path, default=None, metavar="DIR", help="write the screenshots here"
    )
    args = parser.parse_args(argv)
    try:
        print(report_view(bench_view(screenshots=args.screenshots)))
    except RuntimeError as err:
        print(f"view: not measured: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
