"""Look inside a run at its largest jump: ``python -m ndt.investigate RUN_DIR [jump=K | step=N] [key=value ...]``.

Replays the run just before and just after the jump (or step), compares the two models on the run's
probe and writes ``RUN_DIR/investigate/<step_a>-<step_b>/report.html`` and ``summary.json``. ``--help``
lists the options; all the work is in `ndt.report.investigate`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report and print its path. Exit 2 on a bad run directory, option, step or jump."""
    from ndt.report import InvestigationError, investigate, parse_options
    from ndt.report.options import help_text

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(help_text())
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        run_dir, options = parse_options(args)
        result = investigate(run_dir, options)
    except (FileNotFoundError, InvestigationError, ValueError) as err:  # a wrong path or option: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in result.summary["findings"]:
        print(line)
    print(f"report: {result.report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
