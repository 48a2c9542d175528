"""What the resilience wrappers did, as counts, for dashboards and /api/summary."""

from __future__ import annotations

from ragobs import semconv
from ragobs.telemetry import Telemetry


def resilience_counts(telemetry: Telemetry) -> dict[str, int]:
    """Totals since start: rate-limit waits, retries, timeouts by kind, fallbacks
    (one snapshot of each counter table)."""
    acquisitions = telemetry.counter(semconv.RATELIMIT_ACQUISITIONS).totals_by(
        semconv.RATELIMIT_WAITED)
    timeouts = telemetry.counter(semconv.TIMEOUTS).totals_by(semconv.TIMEOUT_KIND)
    return {
        "ratelimit_acquisitions": sum(acquisitions.values()),
        "ratelimit_waits": acquisitions.get("true", 0),
        "ratelimit_rejections": telemetry.counter(semconv.RATELIMIT_REJECTIONS).total(),
        "retries": telemetry.counter(semconv.RETRY_ATTEMPTS).total(),
        "retries_exhausted": telemetry.counter(semconv.RETRY_EXHAUSTED).total(),
        "timeouts": sum(timeouts.values()),
        "timeouts_first_token": timeouts.get("first_token", 0),
        "timeouts_idle": timeouts.get("idle", 0),
        "timeouts_total": timeouts.get("total", 0),
        "fallbacks": telemetry.counter(semconv.FALLBACKS).total(),
    }


def format_resilience(counts: dict[str, int]) -> str:
    """The demo dashboard's resilience lines."""
    return "\n".join([
        "🛡️ Resilience:",
        f"  Rate-limit waits: {counts['ratelimit_waits']} of "
        f"{counts['ratelimit_acquisitions']} acquisitions",
        f"  Retries: {counts['retries']} (gave up: {counts['retries_exhausted']})",
        f"  Timeouts: {counts['timeouts']} (first token {counts['timeouts_first_token']}, "
        f"idle {counts['timeouts_idle']}, total {counts['timeouts_total']})",
        f"  Fallbacks served: {counts['fallbacks']}",
    ])
