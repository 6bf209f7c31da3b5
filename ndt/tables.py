"""Regenerate the appendix tables of a sweep: ``python -m ndt.tables results/<sweep_name>``.

Reads every run of the sweep directory (run.json + Parquet) and writes Markdown, CSV and LaTeX tables
and PNG figures to ``<sweep>/tables/``; see `ndt.aggregate.report` for the files and
`ndt.aggregate.build` for what each table holds. All the work is in `make_tables`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ndt.aggregate.build import DEFAULT_TARGETS
from ndt.aggregate.report import make_tables
from ndt.aggregate.summaries import DEFAULT_METRIC


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m ndt.tables", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep directory: one sub-directory per run")
    parser.add_argument(
        "--metric", default=DEFAULT_METRIC, help=f"metric averaged over layers (default {DEFAULT_METRIC})"
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="A.3 experiments, comma-separated arch/dataset (default: the study's three)",
    )
    parser.add_argument("--out", default=None, help="output directory (default <sweep>/tables)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the tables; print where, and the runs that were not analysed. Exit 2 on a bad path/option."""
    args = parse_args(argv)
    try:
        result = make_tables(
            args.sweep,
            args.out,
            metric=args.metric,
            targets=[t for t in args.targets.split(",") if t.strip()],
            workers=args.workers,
            figures=not args.no_figures,
            random_state=args.seed,
        )
    except (FileNotFoundError, ValueError) as err:  # a wrong path or option: say so, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    incomplete = result.tables["incomplete"]
    n_done = len(result.per_run) - len(incomplete)
    print(f"{n_done} complete run(s) analysed; {len(result.files)} files written to {result.out_dir}")
    for row in incomplete.itertuples():
        print(f"not analysed: {row.run} (status {row.status}{': ' + row.error if row.error else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
