"""What the resilience wrappers did, as counts, for dashboards and /api/summary."""

from __future__ import annotations

from ragobs import semconv
from ragobs.telemetry import Telemetry


def resilience_counts(telemetry: Telemetry) -> dict[str, int]:
    """Totals since start: rate-limit waits, retries, timeouts by kind, fallbacks."""
    acquisitions = telemetry.counter(semconv.RATELIMIT_ACQUISITIONS)
    timeouts = telemetry.counter(semconv.TIMEOUTS)
    return {
        "ratelimit_acquisitions": acquisitions.total(),
        "ratelimit_waits": acquisitions.total(ragobs__ratelimit__waited="true"),
        "ratelimit_rejections": telemetry.counter(semconv.RATELIMIT_REJECTIONS).total(),
        "retries": telemetry.counter(semconv.RETRY_ATTEMPTS).total(),
        "retries_exhausted": telemetry.counter(semconv.RETRY_EXHAUSTED).total(),
        "timeouts": timeouts.total(),
        "timeouts_first_token": timeouts.total(ragobs__timeout__kind="first_token"),
        "timeouts_idle": timeouts.total(ragobs__timeout__kind="idle"),
        "timeouts_total": timeouts.total(ragobs__timeout__kind="total"),
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
