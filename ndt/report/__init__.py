"""Investigating a jump: replay a run just before and after it, compare, and write an HTML report.

- options: the command's ``key=value`` options (`InvestigateOptions`, `parse_options`).
- moments: which two measurement steps to compare (`choose_moments`; pure).
- investigation: the replay, the captures, the analysis and the files (`investigate`; any replayable run
  as a `RunSource`: `investigate_source`).
- figures / html: the figures (PNG bytes) and the self-contained report page.

``python -m ndt.investigate`` is the command-line entry point.
"""

from ndt.report.investigation import (
    InvestigationResult,
    Replay,
    RunSource,
    capture_probe,
    investigate,
    investigate_source,
    replay_pair,
)
from ndt.report.moments import Moments, choose_moments, rank_events
from ndt.report.options import InvestigateOptions, InvestigationError, parse_options

__all__ = [
    "InvestigateOptions",
    "InvestigationError",
    "InvestigationResult",
    "Moments",
    "Replay",
    "RunSource",
    "capture_probe",
    "choose_moments",
    "investigate",
    "investigate_source",
    "parse_options",
    "rank_events",
    "replay_pair",
]
