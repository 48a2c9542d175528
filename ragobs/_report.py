"""One report, built in one place, rendered for the terminal and for ``/api/summary``.

A :class:`Report` is one snapshot of everything the dashboards show: the
summary figures (:class:`~ragobs._summary_stats.Summary`), what the resilience
wrappers did (:class:`ResilienceCounts`, when the source has them) and, for the
sidecar, service name, version and uptime. :class:`Reporter` is the one place
reports are built; two renderers show them:

* :func:`format_text`: the terminal dashboard (the seed's, byte for byte, plus
  the resilience block before the final rule when the report has one);
* :func:`as_json`: the body of ``GET /api/summary``, which the live panel reads.

Both read the same :class:`Report`, so a terminal line and a JSON value
printed from one report always agree. Adding a figure: a field here (or in
:class:`~ragobs._summary_stats.Summary`, with what computes it), its line in
:func:`format_text` (or its path in :data:`JSON_ONLY`); :func:`as_json` picks
every field up by itself. ``tests/test_report.py`` fails for a field one of
the renderers ignores.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Final, Protocol

from ragobs import semconv
from ragobs._summary_stats import Summary, SummaryStats
from ragobs._telemetry import Telemetry
from ragobs._version import __version__

__all__ = [
    "JSON_ONLY",
    "Report",
    "ReportSource",
    "Reporter",
    "ResilienceCounts",
    "as_json",
    "build_report",
    "format_dashboard",
    "format_text",
    "read_resilience",
]


@dataclass(frozen=True, slots=True)
class ResilienceCounts:
    """What the resilience wrappers did since start: rate-limit acquisitions
    (and how many waited or were rejected), retries (and how many gave up),
    timeouts by kind, fallbacks served."""

    ratelimit_acquisitions: int = 0
    ratelimit_waits: int = 0
    ratelimit_rejections: int = 0
    retries: int = 0
    retries_exhausted: int = 0
    timeouts: int = 0
    timeouts_first_token: int = 0
    timeouts_idle: int = 0
    timeouts_total: int = 0
    fallbacks: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def read_resilience(telemetry: Telemetry) -> ResilienceCounts:
    """The resilience counters of ``telemetry`` (one snapshot of each counter table)."""
    acquisitions = telemetry.counter(semconv.RATELIMIT_ACQUISITIONS).totals_by(
        semconv.RATELIMIT_WAITED)
    timeouts = telemetry.counter(semconv.TIMEOUTS).totals_by(semconv.TIMEOUT_KIND)
    return ResilienceCounts(
        ratelimit_acquisitions=sum(acquisitions.values()),
        ratelimit_waits=acquisitions.get("true", 0),
        ratelimit_rejections=telemetry.counter(semconv.RATELIMIT_REJECTIONS).total(),
        retries=telemetry.counter(semconv.RETRY_ATTEMPTS).total(),
        retries_exhausted=telemetry.counter(semconv.RETRY_EXHAUSTED).total(),
        timeouts=sum(timeouts.values()),
        timeouts_first_token=timeouts.get("first_token", 0),
        timeouts_idle=timeouts.get("idle", 0),
        timeouts_total=timeouts.get("total", 0),
        fallbacks=telemetry.counter(semconv.FALLBACKS).total(),
    )


@dataclass(frozen=True, slots=True)
class Report:
    """One snapshot of every figure the dashboards show.

    ``resilience`` is ``None`` when the source has no resilience counters (a
    bare :class:`SummaryStats`, the seed's ``StreamingMetrics``): the terminal
    then shows no resilience block and the JSON has no ``resilience`` key.
    ``service`` and ``uptime_seconds`` are the sidecar's (``None`` elsewhere).
    """

    summary: Summary
    resilience: ResilienceCounts | None = None
    service: str | None = None
    version: str = __version__
    uptime_seconds: float | None = None


#: Figures the terminal dashboard leaves out, by their path in :class:`Report`
#: (the seed's dashboard is pinned byte for byte, so it gains no lines): they
#: are in the JSON, and the live panel shows them.
JSON_ONLY: Final = frozenset({
    "summary.timeouts",
    "summary.in_flight",
    "resilience.ratelimit_rejections",
    "service",
    "version",
    "uptime_seconds",
})




class ReportSource(Protocol):
    """Anything that builds :class:`Report` objects: a :class:`Reporter` (one
    process), or the host sidecar's reporter over merged worker metrics."""

    def report(self) -> Report: ...


@dataclass(frozen=True, slots=True)
class Reporter:
    """What reports are built from; :meth:`report` is the one place that builds them.

    Args:
        stats: the running summary.
        telemetry: where the resilience counters are; ``None``: no resilience figures.
        service: the service name the sidecar reports.
        started: ``time.monotonic()`` when serving started; ``None``: no uptime.
    """

    stats: SummaryStats
    telemetry: Telemetry | None = None
    service: str | None = None
    started: float | None = None

    @classmethod
    def of(cls, telemetry: Telemetry, *, service: str | None = None,
           started: float | None = None) -> Reporter:
        """Reports of ``telemetry``: its running summary and its resilience counters."""
        return cls(telemetry.summary, telemetry, service, started)

    def report(self) -> Report:
        return Report(
            summary=self.stats.snapshot(
                () if self.telemetry is None else self.telemetry.calls.snapshot()),
            resilience=None if self.telemetry is None else read_resilience(self.telemetry),
            service=self.service,
            uptime_seconds=None if self.started is None else time.monotonic() - self.started,
        )


def build_report(telemetry: Telemetry, *, service: str | None = None,
                 started: float | None = None) -> Report:
    """A report of ``telemetry`` now (see :meth:`Reporter.of`)."""
    return Reporter.of(telemetry, service=service, started=started).report()


# --- the terminal ------------------------------------------------------------

def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "0.0%" if value is None else f"{value * 100:.1f}%"


def _resilience_lines(r: ResilienceCounts) -> list[str]:
    return [
        "🛡️ Resilience:",
        f"  Rate-limit waits: {r.ratelimit_waits} of {r.ratelimit_acquisitions} acquisitions",
        f"  Retries: {r.retries} (gave up: {r.retries_exhausted})",
        f"  Timeouts: {r.timeouts} (first token {r.timeouts_first_token}, "
        f"idle {r.timeouts_idle}, total {r.timeouts_total})",
        f"  Fallbacks served: {r.fallbacks}",
    ]


def format_text(report: Report) -> str:
    """The terminal dashboard: the seed's, plus the resilience block (when the
    report has one) before the final rule."""
    s = report.summary
    rule = "=" * 50
    lines = [
        rule,
        "📊 STREAMING METRICS DASHBOARD",
        rule,
        f"Total Requests: {s.total_requests}",
        f"Successful: {s.successful} ({_pct(s.success_rate)})",
        f"Failed: {s.failed} ({_pct(s.failure_rate)})",
    ]
    if s.cancelled:
        lines.append(f"Cancelled: {s.cancelled}")
    lines += [
        "",
        "⚡ Performance (successful requests):",
        f"  Avg TTFT: {_seconds(s.avg_ttft_seconds)}",
        f"  Avg Latency: {_seconds(s.avg_latency_seconds)}",
        f"  Avg Tokens: {_number(s.avg_tokens)}",
        f"  Avg Tokens/sec: {_number(s.avg_tokens_per_second)}",
        "",
        "📈 Percentiles (p50 / p95 / p99):",
        "  TTFT:    " + " / ".join(_seconds(v) for v in (
            s.ttft_seconds.p50, s.ttft_seconds.p95, s.ttft_seconds.p99)),
        "  Latency: " + " / ".join(_seconds(v) for v in (
            s.latency_seconds.p50, s.latency_seconds.p95, s.latency_seconds.p99)),
    ]
    if s.calls:
        lines += ["", *_turn_lines(s)]
    if report.resilience is not None:
        lines += ["", *_resilience_lines(report.resilience)]
    lines.append(rule)
    return "\n".join(lines)


def _turn_lines(s: Summary) -> list[str]:
    """Turns and their LLM calls, side by side (when the report has calls)."""
    lines = [
        "🤖 Per successful request (turn):",
        f"  LLM calls: {_number(s.avg_inference_calls)}  Tool calls: "
        f"{_number(s.avg_tool_calls)}  Input tokens: {_number(s.avg_input_tokens)}",
    ]
    if s.ttft_breakdown:
        lines.append("  TTFT went to: " + ", ".join(
            f"{name} {seconds:.3f}s" for name, seconds in s.ttft_breakdown.items()))
    if s.spend_usd or s.unpriced_calls or s.avg_cost_usd is not None:  # something was priced
        lines.append(f"💵 Spend: {_usd(s.spend_usd)}  Avg per answer: {_usd(s.avg_cost_usd)}"
                     f"  Unpriced calls: {s.unpriced_calls}")
    lines.append("🔌 LLM calls by model (calls, failed, avg TTFT, avg latency, tokens in/out, "
                 "spend, unpriced):")
    for row in s.calls:
        name = " ".join(part for part in (row.provider, row.model) if part) or "(unnamed)"
        lines.append(f"  {name}: {row.calls}, {row.failed}, {_seconds(row.avg_ttft_seconds)}, "
                     f"{_seconds(row.avg_latency_seconds)}, "
                     f"{row.input_tokens}/{row.output_tokens}, {_usd(row.cost_usd)}, "
                     f"{row.unpriced}")
    return lines


def _usd(amount: float | None) -> str:
    """Dollars to the hundredth of a cent (calls cost fractions of one)."""
    return "n/a" if amount is None else f"${amount:.4f}"


def format_dashboard(summary: Summary) -> str:
    """The seed's terminal dashboard for one :class:`Summary` (no resilience block)."""
    return format_text(Report(summary))


# --- JSON ----------------------------------------------------------------------

def _finite(value: object) -> object:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def as_json(report: Report) -> dict[str, object]:
    """The body of ``GET /api/summary``: the summary figures at the top level
    (percentiles as ``{"p50", "p95", "p99"}`` objects), then ``service``,
    ``version``, ``uptime_seconds`` and, when the report has them, the
    ``resilience`` counts. Strict JSON: no NaN or infinity, ``null`` instead."""
    data: dict[str, object] = report.summary.as_dict()
    data["service"] = report.service
    data["version"] = report.version
    data["uptime_seconds"] = report.uptime_seconds
    if report.resilience is not None:
        data["resilience"] = report.resilience.as_dict()
    return {k: _finite(v) for k, v in data.items()}
