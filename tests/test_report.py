"""One report, two renderers: the terminal text and ``/api/summary`` agree by construction."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ragobs import semconv
from ragobs._report import (
    JSON_ONLY,
    Report,
    Reporter,
    ResilienceCounts,
    as_json,
    build_report,
    format_dashboard,
    format_text,
)
from ragobs._runtime import setup
from ragobs._server.app import create_app
from ragobs._summary import StreamingMetrics
from ragobs._summary import format_dashboard as summary_format_dashboard
from ragobs._summary_stats import CallSummary, Percentiles, Summary, SummaryStats
from ragobs._telemetry import Telemetry
from ragobs._version import __version__
from ragobs.demo.runner import dashboard
from ragobs.resilience._report import resilience_counts
from ragobs.semconv import Outcome
from tests.conftest import OTelHarness

RULE = "=" * 50

#: /api/summary's keys, in order, as the panel, Grafana's summary row and the tests read them.
SUMMARY_KEYS = [
    "total_requests", "successful", "failed", "cancelled", "timeouts", "success_rate",
    "failure_rate", "avg_ttft_seconds", "avg_latency_seconds", "avg_tokens",
    "avg_tokens_per_second", "ttft_seconds", "latency_seconds", "in_flight",
    "avg_input_tokens", "avg_inference_calls", "avg_tool_calls", "ttft_breakdown", "calls",
    "spend_usd", "avg_cost_usd", "unpriced_calls",
    "service", "version", "uptime_seconds",
]
RESILIENCE_KEYS = [
    "ratelimit_acquisitions", "ratelimit_waits", "ratelimit_rejections", "retries",
    "retries_exhausted", "timeouts", "timeouts_first_token", "timeouts_idle", "timeouts_total",
    "fallbacks",
]


def strict_json(data: object) -> Any:
    """``data`` through a strict JSON round trip (no NaN, no infinity)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(json.dumps(data, allow_nan=False), parse_constant=refuse)


def text_figure(text: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}: (\d+)", text, re.MULTILINE)
    assert match is not None, (label, text)
    return int(match.group(1))


def record(stats: SummaryStats, outcome: Outcome, n: int = 1) -> None:
    for _ in range(n):
        stats.started()
        stats.record(outcome, 0.5, 0.1, 10, 20.0)


def add_resilience(telemetry: Telemetry) -> None:
    """Counts in every resilience table, as the wrappers record them."""
    acquisitions = telemetry.counter(semconv.RATELIMIT_ACQUISITIONS)
    acquisitions.add(5, {semconv.RATELIMIT_WAITED: "false"})
    acquisitions.add(3, {semconv.RATELIMIT_WAITED: "true"})
    telemetry.counter(semconv.RATELIMIT_REJECTIONS).add(1, {})
    telemetry.counter(semconv.RETRY_ATTEMPTS).add(4, {})
    telemetry.counter(semconv.RETRY_EXHAUSTED).add(2, {})
    timeouts = telemetry.counter(semconv.TIMEOUTS)
    timeouts.add(2, {semconv.TIMEOUT_KIND: "first_token"})
    timeouts.add(1, {semconv.TIMEOUT_KIND: "idle"})
    telemetry.counter(semconv.FALLBACKS).add(2, {})


# --- one snapshot -------------------------------------------------------------------

def test_text_and_json_of_one_report_agree_while_traffic_runs(otel: OTelHarness) -> None:
    """Requests finish on another thread while reports are built: each report's
    text and JSON show the same totals (one snapshot, not two)."""
    telemetry = otel.telemetry
    stop = threading.Event()

    def traffic() -> None:
        outcomes = [Outcome.OK, Outcome.OK, Outcome.ERROR, Outcome.TIMEOUT, Outcome.CANCELLED]
        i = 0
        while not stop.is_set():
            record(telemetry.summary, outcomes[i % len(outcomes)])
            if i % 7 == 0:
                telemetry.counter(semconv.FALLBACKS).add(1, {})
            i += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    seen: set[int] = set()
    try:
        for _ in range(300):
            report = build_report(telemetry, service="svc")
            text, data = format_text(report), strict_json(as_json(report))
            total = text_figure(text, "Total Requests")
            assert total == data["total_requests"] == report.summary.total_requests
            assert text_figure(text, "Successful") == data["successful"]
            assert text_figure(text, "Failed") == data["failed"]
            cancelled = re.search(r"^Cancelled: (\d+)$", text, re.MULTILINE)
            assert (int(cancelled.group(1)) if cancelled else 0) == data["cancelled"]
            assert total == data["successful"] + data["failed"] + data["cancelled"]
            if total:
                rate = f"{data['success_rate'] * 100:.1f}%"
                assert f"Successful: {data['successful']} ({rate})\n" in text
            fallbacks = re.search(r"^  Fallbacks served: (\d+)$", text, re.MULTILINE)
            assert fallbacks is not None
            assert int(fallbacks.group(1)) == data["resilience"]["fallbacks"]
            seen.add(total)
    finally:
        stop.set()
        worker.join()
    assert len(seen) > 1  # the figures really moved while the reports were built


# --- the terminal -------------------------------------------------------------------

async def test_demo_dashboard_has_the_resilience_block_before_the_last_rule() -> None:
    runtime = setup(serve=False, set_global=False, registry=CollectorRegistry())
    try:
        record(runtime.telemetry.summary, Outcome.OK, 3)
        record(runtime.telemetry.summary, Outcome.ERROR)
        add_resilience(runtime.telemetry)
        text = dashboard(runtime)
    finally:
        runtime.shutdown()
    lines = text.split("\n")
    assert lines[-1] == RULE and lines.count(RULE) == 3
    block = lines.index("🛡️ Resilience:")
    assert lines[block - 1] == "" and lines[block - 2].startswith("  Latency: ")
    assert lines[block + 1:-1] == [
        "  Rate-limit waits: 3 of 8 acquisitions",
        "  Retries: 4 (gave up: 2)",
        "  Timeouts: 3 (first token 2, idle 1, total 0)",
        "  Fallbacks served: 2",
    ]
    # Everything else is the seed's dashboard, byte for byte.
    seed = format_dashboard(runtime.telemetry.summary.snapshot())
    assert "\n".join(lines[:block - 1] + lines[-1:]) == seed


def test_seed_dashboard_is_the_text_of_a_report_without_resilience() -> None:
    stats = SummaryStats()
    record(stats, Outcome.OK, 3)
    record(stats, Outcome.CANCELLED)
    summary = stats.snapshot()
    text = format_text(Report(summary))
    assert text == format_dashboard(summary) == summary_format_dashboard(summary)
    assert "Resilience" not in text
    assert text.split("\n")[:6] == [
        RULE, "📊 STREAMING METRICS DASHBOARD", RULE,
        "Total Requests: 4", "Successful: 3 (75.0%)", "Failed: 0 (0.0%)"]
    assert re.search(r"\n  Latency: [\d.]+s / [\d.]+s / [\d.]+s\n=+$", text)  # sketched


def test_streaming_metrics_prints_its_report(otel: OTelHarness) -> None:
    metrics = StreamingMetrics(telemetry=otel.telemetry)
    session = metrics.start_session()
    metrics.record_first_token(session)
    session["token_count"] = 4
    metrics.finish_session(session)
    out = io.StringIO()
    metrics.display_summary(file=out)
    assert out.getvalue() == format_text(Report(metrics.summary())) + "\n"
    assert "Total Requests: 1\n" in out.getvalue() and "Resilience" not in out.getvalue()


# --- JSON ---------------------------------------------------------------------------

def test_json_keeps_the_api_summary_shape(otel: OTelHarness) -> None:
    add_resilience(otel.telemetry)
    record(otel.telemetry.summary, Outcome.OK, 2)
    data = as_json(Reporter.of(otel.telemetry, service="svc", started=0.0).report())
    assert list(data) == [*SUMMARY_KEYS, "resilience"]
    assert data["resilience"] == resilience_counts(otel.telemetry)
    assert list(resilience_counts(otel.telemetry)) == RESILIENCE_KEYS
    assert data["ttft_seconds"] == {"p50": pytest.approx(0.1, rel=0.01),
                                    "p95": pytest.approx(0.1, rel=0.01),
                                    "p99": pytest.approx(0.1, rel=0.01)}
    assert data["service"] == "svc" and data["version"] == __version__
    assert isinstance(data["uptime_seconds"], float) and data["uptime_seconds"] > 0
    # A bare SummaryStats has no resilience counters: no resilience key (the panel hides it).
    bare = as_json(Reporter(SummaryStats(), service="bare").report())
    assert list(bare) == SUMMARY_KEYS


def test_json_is_strict_with_no_requests_and_with_non_finite_figures() -> None:
    data = strict_json(as_json(Reporter(SummaryStats()).report()))
    assert data["total_requests"] == 0
    for key in ("success_rate", "failure_rate", "avg_ttft_seconds", "avg_latency_seconds",
                "avg_tokens", "avg_tokens_per_second", "uptime_seconds", "service"):
        assert data[key] is None, key
    assert data["latency_seconds"] == {"p50": None, "p95": None, "p99": None}
    # Whatever a figure became, the body stays JSON: NaN and infinity are null.
    nan, inf = math.nan, math.inf
    odd = dataclasses.replace(
        base_report(), summary=dataclasses.replace(
            base_report().summary, avg_tokens_per_second=inf,
            ttft_seconds=Percentiles(nan, -inf, 1.0)),
        uptime_seconds=nan)
    data = strict_json(as_json(odd))
    assert data["avg_tokens_per_second"] is None and data["uptime_seconds"] is None
    assert data["ttft_seconds"] == {"p50": None, "p95": None, "p99": 1.0}


async def test_sidecar_serves_the_json_of_its_reporter(otel: OTelHarness) -> None:
    add_resilience(otel.telemetry)
    reporter = Reporter.of(otel.telemetry, service="rep-svc", started=0.0)
    async with TestClient(TestServer(create_app(CollectorRegistry(), reporter))) as client:
        empty = await client.get("/api/summary")
        assert empty.headers["Cache-Control"] == "no-store"
        data = strict_json(await empty.json())
        assert data["total_requests"] == 0 and data["success_rate"] is None
        record(otel.telemetry.summary, Outcome.OK, 3)
        data = strict_json(await (await client.get("/api/summary")).json())
    want = as_json(reporter.report())
    assert list(data) == list(want)
    data["uptime_seconds"] = want["uptime_seconds"]
    assert data == strict_json(want)
    assert data["service"] == "rep-svc" and data["resilience"]["retries"] == 4


async def test_create_app_still_takes_a_bare_summary_stats() -> None:
    stats = SummaryStats()
    record(stats, Outcome.OK)
    async with TestClient(TestServer(create_app(CollectorRegistry(), stats, "bare"))) as client:
        data = await (await client.get("/api/summary")).json()
    assert list(data) == SUMMARY_KEYS and data["service"] == "bare"
    assert data["total_requests"] == 1 and data["uptime_seconds"] >= 0
    with pytest.raises(TypeError, match="service is given to the Reporter"):
        create_app(CollectorRegistry(), Reporter(stats), "svc")
    with pytest.raises(TypeError, match=r"reporter must be a Reporter \(anything with report"):
        create_app(CollectorRegistry(), {"total_requests": 0})  # type: ignore[arg-type]


# --- every figure reaches both renderers ------------------------------------------------

def base_report() -> Report:
    """A report whose every figure is set, each to a different value."""
    return Report(
        summary=Summary(
            total_requests=41, successful=31, failed=7, cancelled=3, timeouts=2,
            success_rate=0.756, failure_rate=0.171, avg_ttft_seconds=0.25,
            avg_latency_seconds=1.5, avg_tokens=42.0, avg_tokens_per_second=28.0,
            ttft_seconds=Percentiles(0.2, 0.6, 0.9), latency_seconds=Percentiles(1.2, 2.5, 3.5),
            in_flight=5, avg_input_tokens=812.0, avg_inference_calls=2.0, avg_tool_calls=0.5,
            ttft_breakdown={"route": 0.05, "retrieve": 0.07, "llm": 0.12, "other": 0.01},
            calls=(CallSummary("openai", "gpt-4o", 62, 3, 0.11, 0.9, 50344, 2604, 0.152, 2),),
            spend_usd=0.152, avg_cost_usd=0.0049, unpriced_calls=2),
        resilience=ResilienceCounts(*range(11, 11 + len(dataclasses.fields(ResilienceCounts)))),
        service="svc", version="9.9.9", uptime_seconds=12.0)


def leaf_paths(obj: object, prefix: str = "") -> list[str]:
    assert dataclasses.is_dataclass(obj)
    paths: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            paths += leaf_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def changed(obj: Any, path: str) -> Any:
    """``obj`` with the figure at ``path`` changed enough to show in any format."""
    name, _, rest = path.partition(".")
    value = getattr(obj, name)
    if rest:
        new = changed(value, rest)
    elif isinstance(value, bool) or value is None:
        raise AssertionError(f"{path}: give it a value in base_report()")
    elif isinstance(value, int):
        new = value + 1
    elif isinstance(value, float):
        new = value + 1.0
    elif isinstance(value, str):
        new = value + "-changed"
    elif isinstance(value, dict):
        new = {k: v + 1.0 for k, v in value.items()}
    elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        new = tuple(dataclasses.replace(row, calls=row.calls + 1) for row in value)
    else:
        raise AssertionError(f"{path}: no change for a {type(value).__name__}")
    return dataclasses.replace(obj, **{name: new})


def test_every_figure_of_the_report_reaches_both_renderers() -> None:
    """Change one figure of a Report built directly: the JSON changes, and so
    does the text unless the figure is declared JSON-only. A figure added to
    the Report (or to Summary, ResilienceCounts) that a renderer ignores fails
    here; so does a JSON_ONLY entry naming no figure."""
    base = base_report()
    paths = leaf_paths(base)
    assert not JSON_ONLY - set(paths), f"JSON_ONLY names no figure: {JSON_ONLY - set(paths)}"
    text, data = format_text(base), as_json(base)
    for path in paths:
        other = changed(base, path)
        assert as_json(other) != data, f"{path} is missing from as_json()"
        if path in JSON_ONLY:
            assert format_text(other) == text, f"{path} is in the text: drop it from JSON_ONLY"
        else:
            assert format_text(other) != text, (
                f"{path} is missing from format_text() (or add it to JSON_ONLY)")


def test_a_figure_set_on_the_report_shows_in_text_and_json() -> None:
    """One Report built by hand: each figure the terminal shows is in the text
    as the JSON says it."""
    report = base_report()
    text, data = format_text(report), strict_json(as_json(report))
    assert f"Total Requests: {data['total_requests']}\n" in text
    assert f"Successful: {data['successful']} (75.6%)\n" in text
    assert f"Failed: {data['failed']} (17.1%)\n" in text
    assert f"Cancelled: {data['cancelled']}\n" in text
    assert "  Avg TTFT: 0.250s\n  Avg Latency: 1.500s\n" in text
    assert "  Avg Tokens: 42.0\n  Avg Tokens/sec: 28.0\n" in text
    assert "  TTFT:    0.200s / 0.600s / 0.900s\n" in text
    assert "  Latency: 1.200s / 2.500s / 3.500s\n" in text
    r = data["resilience"]
    assert (f"  Rate-limit waits: {r['ratelimit_waits']} of "
            f"{r['ratelimit_acquisitions']} acquisitions\n") in text
    assert f"  Retries: {r['retries']} (gave up: {r['retries_exhausted']})\n" in text
    assert (f"  Timeouts: {r['timeouts']} (first token {r['timeouts_first_token']}, "
            f"idle {r['timeouts_idle']}, total {r['timeouts_total']})\n") in text
    assert text.endswith(f"  Fallbacks served: {r['fallbacks']}\n{RULE}")
    assert data["version"] == "9.9.9" and data["uptime_seconds"] == 12.0
