"""Investigating a jump: replay a run just before and after it, compare, and write an HTML report.

- options: the command's ``key=value`` options (`InvestigateOptions`, `parse_options`).
- moments: which two measurement steps to compare (`choose_moments`; pure).
- investigation: the replay, the captures, the analysis and the files (`investigate`).
- figures / html: the figures (PNG bytes) and the self-contained report page.

``python -m ndt.investigate`` is the command-line entry point.
"""

from ndt.report.investigation import InvestigationResult, capture_probe, investigate, replay_pair
from ndt.report.moments import Moments, choose_moments, rank_events
from ndt.report.options import InvestigateOptions, InvestigationError, parse_options

__all__ = [
    "InvestigateOptions",
    "InvestigationError",
    "InvestigationResult",
    "Moments",
    "capture_probe",
    "choose_moments",
    "investigate",
    "parse_options",
    "rank_events",
    "replay_pair",
]
