"""Aggregation: from a sweep's runs to the appendix tables, figures, the detector battery and the bench.

- `collect_sweep`: one summary row per run (growth fit, both detectors), in parallel for large sweeps.
- `build_tables` / the builders in `ndt.aggregate.build`: pure DataFrame -> DataFrame tables.
- `make_tables`: the whole pipeline, sweep directory -> Markdown/CSV/LaTeX files and PNG figures.
- `ndt.validate.battery`: the validity battery of the jump detectors.
- `ndt.aggregate.bench`: time the aggregation of synthetic runs.
"""

from ndt.aggregate.build import DEFAULT_TARGETS, bootstrap_ci
from ndt.aggregate.report import TablesResult, build_tables, make_tables
from ndt.aggregate.summaries import DEFAULT_METRIC, PER_RUN_COLUMNS, collect_sweep, summarize_series

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_TARGETS",
    "PER_RUN_COLUMNS",
    "TablesResult",
    "bootstrap_ci",
    "build_tables",
    "collect_sweep",
    "make_tables",
    "summarize_series",
]
