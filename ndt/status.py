"""Where a sweep stands: ``python -m ndt.status results/<sweep_name> [--stale-after MIN] [--json]``.

Counts the done, skipped, running, failed and missing runs from the files alone (works on a sweep
still in progress, on or off the cluster) and lists the failed runs with their error line. All the
work is in `ndt.running.status`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ndt.running.status import DEFAULT_STALE_AFTER_S, format_report, sweep_status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m ndt.status", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep directory: one sub-directory per run (e.g. results/paper)")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER_S / 60,
        metavar="MIN",
        help="a running run whose heartbeat is older than this many minutes has died "
        f"(default {DEFAULT_STALE_AFTER_S / 60:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the sweep's status; exit 0 whatever the runs' states, 2 on a bad path."""
    args = parse_args(argv)
    try:
        status = sweep_status(args.sweep, stale_after_s=args.stale_after * 60)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(status.as_dict(), indent=2) if args.json else format_report(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
