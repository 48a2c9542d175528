"""What the resilience wrappers did, as a dict of counts (kept for callers of
``resilience_counts``).

The counts themselves, how they are read and how they are shown live in
:mod:`ragobs._report` (:class:`~ragobs._report.ResilienceCounts`): one report
for the terminal, ``/api/summary`` and the panel.
"""

from __future__ import annotations

from ragobs._report import read_resilience
from ragobs._telemetry import Telemetry


def resilience_counts(telemetry: Telemetry) -> dict[str, int]:
    """Totals since start: rate-limit waits, retries, timeouts by kind, fallbacks
    (one snapshot of each counter table), as ``/api/summary``'s ``resilience``."""
    return read_resilience(telemetry).as_dict()
