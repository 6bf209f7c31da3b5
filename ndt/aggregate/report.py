"""From a sweep directory to the appendix files: the one function `make_tables`.

Writes to ``<sweep>/tables/`` (or ``out_dir``):

======================================  ==============================================================
A1_summary.{md,csv,tex}                 A.1: experiments, architectures, datasets, measurements, R^2
A2_jumps_by_family.{md,csv,tex}         A.2: per family, the study's index count, events, robust count
A2c_transitions_by_family.{md,csv,tex}  A.2c: per family, the default detector's transitions (layer mean and
                                        per layer), runs with an escape from initialisation, the study's
                                        events beside; in appendix.md when the sweep has corrected runs
A3_targets.{md,csv,tex}                 A.3: the target experiments
incomplete_runs.{md,csv,tex}            runs not complete, failed or missing, with status and error
per_pair.{md,csv,tex}                   per (arch, dataset): seeds, means and 95% bootstrap intervals
per_run.csv                             one row per run (`ndt.aggregate.summaries.PER_RUN_COLUMNS`)
appendix.md                             A.1, A.2, A.3 and the incomplete runs, in one file
figures/<run>.png                       each target run: series, TAP fit, jumps
figures/families.png                    the families compared
======================================  ==============================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ndt.aggregate import build, render
from ndt.aggregate.summaries import (
    DEFAULT_METRIC,
    analyse_series,
    check_metric,
    collect_sweep,
    read_series,
)

TABLES_DIR = "tables"
FIGURES_DIR = "figures"


@dataclass(frozen=True)
class TableSpec:
    """Where and how one table is written."""

    stem: str
    title: str
    latex_label: str


#: The tables, in appendix order.
TABLE_SPECS: dict[str, TableSpec] = {
    "summary": TableSpec("A1_summary", "A.1 Summary of the experiments", "tab:a1-summary"),
    "families": TableSpec("A2_jumps_by_family", "A.2 Jumps by architecture family", "tab:a2-families"),
    "transitions": TableSpec(
        "A2c_transitions_by_family",
        "A.2c Transitions by family (default detector, escape from initialisation apart)",
        "tab:a2c-transitions",
    ),
    "targets": TableSpec("A3_targets", "A.3 Target experiments", "tab:a3-targets"),
    "incomplete": TableSpec("incomplete_runs", "Runs not complete or failed", "tab:incomplete"),
    "pairs": TableSpec("per_pair", "Per architecture and dataset, over seeds", "tab:per-pair"),
}

#: Tables gathered in appendix.md (per_pair is long; it has its own files).
APPENDIX_TABLES = ("summary", "families", "targets", "incomplete")


@dataclass(frozen=True)
class TablesResult:
    """What `make_tables` produced.

    Attributes:
        out_dir: directory written.
        files: every file written, in write order.
        per_run: the per-run frame the tables were built from.
        tables: {table name: DataFrame}, names as in `TABLE_SPECS`.
    """

    out_dir: Path
    files: tuple[Path, ...]
    per_run: pd.DataFrame = field(repr=False)
    tables: dict[str, pd.DataFrame] = field(repr=False)


def build_tables(
    per_run: pd.DataFrame,
    *,
    metric: str = DEFAULT_METRIC,
    targets: Sequence[str] = build.DEFAULT_TARGETS,
    random_state: int = 0,
) -> dict[str, pd.DataFrame]:
    """All tables from the per-run frame (pure).

    Returns:
        {name: table} for every name of `TABLE_SPECS`.
    """
    return {
        "summary": build.summary_table(per_run, metric),
        "families": build.family_table(per_run, random_state=random_state),
        "transitions": build.transition_table(per_run, random_state=random_state),
        "targets": build.target_table(per_run, targets, random_state=random_state),
        "incomplete": build.incomplete_table(per_run),
        "pairs": build.pair_table(per_run, random_state=random_state),
    }


def has_intervals(table: pd.DataFrame) -> bool:
    """Whether a table has bootstrap-interval columns (then `build.CI_NOTE` is printed under it)."""
    return any(str(c).endswith(render.CI_LOW) for c in table.columns)


def table_markdown(table: pd.DataFrame) -> str:
    """A table as Markdown, with the intervals' footnote when it has intervals."""
    body = render.to_markdown(table) if len(table) else "(none)\n"
    return body + (f"\n{build.CI_NOTE}\n" if has_intervals(table) and len(table) else "")


def appendix_markdown(tables: dict[str, pd.DataFrame], metric: str) -> str:
    """appendix.md: the appendix tables under headings, in order; the corrected A.2c after A.2 when any
    run used the corrected protocol (a study-protocol sweep's appendix is the paper's)."""
    parts = [f"# Appendix tables\n\nSeries: mean `{metric}` over the measured layers of each run.\n"]
    names = list(APPENDIX_TABLES)
    protocols = "+".join(tables["transitions"].get("protocols", pd.Series(dtype=str)).astype(str))
    if "corrected" in protocols:
        names.insert(names.index("families") + 1, "transitions")
    for name in names:
        parts.append(f"## {TABLE_SPECS[name].title}\n\n{table_markdown(tables[name])}")
    return "\n".join(parts)


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")
    written.append(path)


def make_tables(
    sweep_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    metric: str = DEFAULT_METRIC,
    targets: Sequence[str] = build.DEFAULT_TARGETS,
    workers: int | None = None,
    figures: bool = True,
    random_state: int = 0,
) -> TablesResult:
    """Read every run of a sweep and write the appendix tables (and figures).

    Args:
        sweep_dir: sweep directory (one sub-directory per run, each with run.json and metrics/).
        out_dir: where to write; default ``<sweep_dir>/tables``.
        metric: metric column averaged over layers into each run's series.
        targets: A.3's experiments, as "arch/dataset".
        workers: worker processes for reading and fitting (see `collect_sweep`).
        figures: also draw the PNG figures.
        random_state: bootstrap seed.

    Returns:
        `TablesResult`.

    Raises:
        FileNotFoundError: `sweep_dir` does not exist.
        ValueError: unknown metric or malformed target.
    """
    check_metric(metric)
    build.parse_targets(targets)  # fail on a malformed target before the (long) read
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / TABLES_DIR
    per_run = collect_sweep(sweep_dir, metric, workers)
    tables = build_tables(per_run, metric=metric, targets=targets, random_state=random_state)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, spec in TABLE_SPECS.items():
        table = tables[name]
        _write(out / f"{spec.stem}.csv", render.to_csv(table), written)
        _write(out / f"{spec.stem}.md", table_markdown(table), written)
        caption = f"{spec.title}. {build.CI_NOTE}" if has_intervals(table) else spec.title
        _write(out / f"{spec.stem}.tex", render.to_latex(table, caption, spec.latex_label), written)
    _write(out / "per_run.csv", render.to_csv(per_run), written)
    _write(out / "appendix.md", appendix_markdown(tables, metric), written)
    if figures:
        written.extend(_draw_figures(Path(sweep_dir), out / FIGURES_DIR, per_run, targets, metric))
    return TablesResult(out_dir=out, files=tuple(written), per_run=per_run, tables=tables)


def _draw_figures(
    sweep_dir: Path, fig_dir: Path, per_run: pd.DataFrame, targets: Sequence[str], metric: str
) -> list[Path]:
    from ndt.aggregate.figures import plot_families, plot_run

    fig_dir.mkdir(parents=True, exist_ok=True)
    done = build.complete_runs(per_run)
    written = []
    for arch, dataset in build.parse_targets(targets):
        for run in done.loc[(done["arch"] == arch) & (done["dataset"] == dataset), "run"]:
            steps, values = read_series(sweep_dir / run, metric)
            fit, study, robust = analyse_series(steps, values)
            written.append(
                plot_run(fig_dir / f"{run}.png", steps, values, fit, study, robust, title=run, metric=metric)
            )
    families = build.ordered_families(done["family"])
    if families:
        written.append(plot_families(fig_dir / "families.png", done, families))
    return written
