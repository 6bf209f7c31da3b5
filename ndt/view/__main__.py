"""Watch a sweep in the browser: ``python -m ndt.view RESULTS_DIR [--port 8050] [--host 127.0.0.1]``.

RESULTS_DIR is one sweep (``results/paper``) or a folder of sweeps (``results``). Prints the page's URL
and serves until Ctrl-C; the page refreshes itself every ``--refresh`` seconds while runs train. All the
work is in `ndt.view.data` (what is shown) and `ndt.view.server` (how it is served).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ndt.running.status import DEFAULT_STALE_AFTER_S
from ndt.view.server import DEFAULT_REFRESH_S, serve


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    from ndt.detect import DEFAULT_DETECTOR, DETECTORS

    parser = argparse.ArgumentParser(prog="python -m ndt.view", description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a sweep directory (results/paper) or a folder of sweeps (results)")
    parser.add_argument("--port", type=int, default=8050, help="TCP port (default 8050; 0 picks a free one)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only; use an SSH tunnel from elsewhere)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=DEFAULT_REFRESH_S,
        metavar="S",
        help=f"seconds between the page's updates while runs train (default {DEFAULT_REFRESH_S:g})",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER_S / 60,
        metavar="MIN",
        help="a running run whose heartbeat is older than this many minutes has died, as in ndt.status "
        f"(default {DEFAULT_STALE_AFTER_S / 60:g})",
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        choices=sorted(DETECTORS),
        help=f"jump detector whose events are shown (default {DEFAULT_DETECTOR})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.refresh <= 0:
        parser.error(f"--refresh must be > 0 seconds, got {args.refresh}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the view; exit 2 on a bad results folder, a missing plotly or a port in use."""
    args = parse_args(argv)
    try:
        serve(
            args.results,
            host=args.host,
            port=args.port,
            refresh_s=args.refresh,
            stale_after_s=args.stale_after * 60,
            detector=args.detector,
            quiet=not args.verbose,
        )
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {err} (choose another --port)", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
